//! Store transactions that collide on one item retry until they land: a cancel racing the
//! commits of many steps loses none of their tokens or cost, and counts none twice.
//!
//! DynamoDB Local runs transactions one at a time, so it never answers `TransactionConflict`
//! itself; [`Conflicts`] makes the store's client see that answer where DynamoDB would give
//! it, with nothing applied, as DynamoDB applies nothing of a cancelled transaction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextMut,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode as SdkStatus;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use axum::http::{Method, StatusCode};
use futures::future::join_all;
use rust_decimal::Decimal;
use serde_json::json;
use spark_ops::payload::Payload;
use spark_ops::run::{Run, RunStatus, StepRecord, StepStatus, Usage};
use spark_ops::store::runs::{Claim, StepEnd};
use spark_ops::store::{Store, StoreError};
use spark_ops_tests::{dynamodb_url, local_sdk_config, spawn_app, TestApp};

/// Steps committed at once, each adding to the same run item.
const STEPS: u32 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_many_step_commits_loses_no_tokens_or_cost() {
    // GIVEN a running run with many claimed steps
    let app = spawn_app().await;
    let (owner, run) = running_run(&app).await;
    let id = run.id;
    let store = &app.state.store;
    let now = app.state.clock.now();
    let mut records = Vec::new();
    for idx in 0..STEPS {
        records.push(claimed(&app, &run, idx).await);
    }

    // WHEN every step commits its usage at once while the owner cancels the run
    let commits = join_all(records.iter().map(|r| {
        let end = costing(now, Decimal::new(i64::from(r.idx) + 1, 4));
        async move { store.finish_step(r, &end).await }
    }));
    let cancel_path = format!("/api/v1/runs/{id}/cancel");
    let cancel = app.call(Method::PATCH, &cancel_path, Some(&owner), None);
    let (finished, cancelled) = tokio::join!(commits, cancel);

    // THEN every commit landed and the cancel too
    for result in finished {
        assert!(result.expect("a commit that lost a race is retried"));
    }
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    // AND the run's usage is exactly the sum of its steps' records
    let run = store.get_run(id).await.unwrap().unwrap();
    let steps = store.all_steps(id).await.unwrap();
    assert_eq!(steps.len(), STEPS as usize);
    let cost: Decimal = steps.iter().map(|s| s.usage.usd_cost).sum();
    let prompt: u64 = steps.iter().map(|s| s.usage.tokens_prompt).sum();
    let completion: u64 = steps.iter().map(|s| s.usage.tokens_completion).sum();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(
        (
            run.usage.usd_cost,
            run.usage.tokens_prompt,
            run.usage.tokens_completion
        ),
        (cost, prompt, completion)
    );
    assert_eq!(cost, Decimal::new(136, 4), "0.0001 + … + 0.0016");
    assert_eq!(prompt, 10 * u64::from(STEPS));
}

/// DynamoDB's answer to a transaction whose second item another transaction holds.
const CONFLICT: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","Message":"Transaction cancelled, please refer cancellation reasons for specific reasons [None, TransactionConflict]","CancellationReasons":[{"Code":"None"},{"Code":"TransactionConflict","Message":"Transaction is ongoing for the item"}]}"#;

/// Makes the next `lose` transactions of a client lose a race: the request is emptied, so
/// DynamoDB Local refuses it and applies nothing, and its answer becomes [`CONFLICT`].
/// Counts every transaction sent.
#[derive(Debug, Default)]
struct Conflicts {
    lose: AtomicUsize,
    sent: AtomicUsize,
}

#[derive(Debug)]
struct Lost;

impl Storable for Lost {
    type Storer = StoreReplace<Self>;
}

#[derive(Debug, Clone)]
struct Inject(Arc<Conflicts>);

impl Intercept for Inject {
    fn name(&self) -> &'static str {
        "Conflicts"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg.load::<Metadata>().map(Metadata::name) != Some("TransactWriteItems") {
            return Ok(());
        }
        self.0.sent.fetch_add(1, Ordering::SeqCst);
        let lose = self
            .0
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            *context.request_mut().body_mut() = SdkBody::from("{}");
            context.request_mut().headers_mut().remove("content-length");
            cfg.interceptor_state().store_put(Lost);
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg.load::<Lost>().is_some() {
            let response = context.response_mut();
            *response.status_mut() = SdkStatus::try_from(400u16)?;
            response.headers_mut().remove("content-length");
            response
                .headers_mut()
                .insert("x-amzn-errortype", "TransactionCanceledException");
            *response.body_mut() = SdkBody::from(CONFLICT);
        }
        Ok(())
    }
}

/// The app's store, through a client whose transactions [`Conflicts`] can make lose.
async fn conflicting_store(app: &TestApp) -> (Store, Arc<Conflicts>) {
    let conflicts = Arc::new(Conflicts::default());
    let sdk = local_sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(dynamodb_url())
            .interceptor(Inject(conflicts.clone()))
            .build(),
    );
    (Store::new(ddb, &app.state.config), conflicts)
}

/// A running run of a one-step workflow, and its owner's token.
async fn running_run(app: &TestApp) -> (String, Run) {
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Races").await;
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    let definition = json!({"steps": [
        {"id": "ask", "type": "human", "config": {"instructions": "Check it"}}
    ]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let id = app
        .start_run(
            &owner,
            json!({"workflow_id": workflow, "agent_id": agent, "env": "dev"}),
        )
        .await;
    (owner, app.run_to_running(id).await)
}

/// Claims step `idx` of a running run; returns its record.
async fn claimed(app: &TestApp, run: &Run, idx: u32) -> StepRecord {
    let now = app.state.clock.now();
    let record = StepRecord::claim(
        run.id,
        idx,
        None,
        &format!("s{idx}"),
        "prompt",
        now,
        now + chrono::Duration::minutes(5),
        0,
    );
    assert!(matches!(
        app.state.store.claim_step(&record).await.unwrap(),
        Claim::Claimed
    ));
    record
}

/// A running run of one claimed step; returns the step's record.
async fn one_claimed_step(app: &TestApp) -> StepRecord {
    let (_, run) = running_run(app).await;
    claimed(app, &run, 0).await
}

async fn stored(app: &TestApp, id: uuid::Uuid) -> Run {
    app.state.store.get_run(id).await.unwrap().unwrap()
}

/// A successful attempt's end that spent 10 + 5 tokens costing `cost`.
fn costing(at: chrono::DateTime<chrono::Utc>, cost: Decimal) -> StepEnd {
    StepEnd {
        status: StepStatus::Succeeded,
        at,
        duration_ms: 5,
        error_message: None,
        request: None,
        response: Some(Payload::Inline(json!({}))),
        usage: Usage {
            tokens_prompt: 10,
            tokens_completion: 5,
            usd_cost: cost,
        },
    }
}

#[tokio::test]
async fn a_commit_that_loses_races_is_retried_until_it_lands_once() {
    // GIVEN a claimed step, and a store whose next three transactions lose a race
    let app = spawn_app().await;
    let record = one_claimed_step(&app).await;
    let (store, conflicts) = conflicting_store(&app).await;
    conflicts.lose.store(3, Ordering::SeqCst);

    // WHEN the step commits its usage
    let landed = store
        .finish_step(
            &record,
            &costing(app.state.clock.now(), Decimal::new(25, 3)),
        )
        .await
        .expect("a commit that lost a race is retried");

    // THEN it landed on the fourth attempt, and the run counts its usage once
    assert!(landed);
    assert_eq!(conflicts.sent.load(Ordering::SeqCst), 4);
    let run = stored(&app, record.run_id).await;
    assert_eq!(
        (run.usage.usd_cost, run.usage.tokens_prompt),
        (Decimal::new(25, 3), 10)
    );

    // WHEN the same attempt commits again: its condition fails
    let again = store
        .finish_step(
            &record,
            &costing(app.state.clock.now(), Decimal::new(25, 3)),
        )
        .await
        .unwrap();

    // THEN that is final at once: one more transaction, nothing counted
    assert!(!again);
    assert_eq!(conflicts.sent.load(Ordering::SeqCst), 5);
    let run = stored(&app, record.run_id).await;
    assert_eq!(run.usage.usd_cost, Decimal::new(25, 3));
}

#[tokio::test]
async fn a_commit_that_keeps_losing_races_gives_up_with_the_conflict() {
    // GIVEN a claimed step, and a store whose transactions always lose a race
    let app = spawn_app().await;
    let record = one_claimed_step(&app).await;
    let (store, conflicts) = conflicting_store(&app).await;
    conflicts.lose.store(usize::MAX, Ordering::SeqCst);

    // WHEN the step commits its usage
    let err = store
        .finish_step(&record, &costing(app.state.clock.now(), Decimal::ONE))
        .await
        .unwrap_err();

    // THEN the store gave up after a bounded number of attempts, saying it lost a race,
    // and nothing was counted
    assert!(
        matches!(err, StoreError::Cancelled(_)) && err.is_conflict(),
        "{err:?}"
    );
    assert_eq!(conflicts.sent.load(Ordering::SeqCst), 8);
    let run = stored(&app, record.run_id).await;
    assert_eq!(run.usage.usd_cost, Decimal::ZERO);
}
