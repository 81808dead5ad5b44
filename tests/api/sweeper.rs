//! The sweeper repairs runs that stopped moving, on the real local services: each broken
//! state is made directly in the store or the queue, then one sweep is run.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};
use spark_ops::engine::lifecycle::{self, Execution};
use spark_ops::engine::run::Outcome;
use spark_ops::engine::sweeper::{self, SweepReport};
use spark_ops::engine::worker::{QueueMessage, Worker};
use spark_ops::run::{Run, RunStatus, MAX_TURNS};
use spark_ops::store::provision::Provisioner;
use spark_ops::store::schema::{TableDef, GSI1, GSI2, GSI3, GSI4, GSI5, GSI7, RUNS};
use spark_ops_tests::{spawn_app, unique_slug, NoHeartbeat, TestApp};
use uuid::Uuid;

/// A project that allows self-approval, with an agent and a released one-`human`-step
/// workflow; returns `(owner token, run request body)`.
async fn world(app: &TestApp) -> (String, Value) {
    let owner = app.user("Owner").await;
    let created = app
        .post(
            "/api/v1/projects",
            Some(&owner),
            json!({"name": "Sweep", "slug": unique_slug("sweep"),
                   "settings": {"approvals": {"allow_self_approval": true}}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let project = created.body["id"].as_str().unwrap().to_owned();
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    let definition = json!({"steps": [
        {"id": "ask", "type": "human", "config": {"instructions": "Check it"}}
    ]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let body = json!({"workflow_id": workflow, "agent_id": agent, "env": "dev"});
    (owner, body)
}

async fn stored(app: &TestApp, id: Uuid) -> Run {
    app.state.store.get_run(id).await.unwrap().unwrap()
}

/// One sweep, once every change so far is older than the sweeper's quiet time.
async fn sweep_later(app: &TestApp) -> SweepReport {
    app.clock.advance(
        chrono::Duration::from_std(app.state.config.sweeper_quiet).unwrap()
            + chrono::Duration::seconds(1),
    );
    sweeper::sweep(&app.state).await.expect("the sweep runs")
}

/// Takes the lifecycle's next `kind` message about `run_id` off the run queue, as a worker
/// that then lost it would.
async fn take_message(app: &TestApp, kind: &str, run_id: Uuid) -> QueueMessage {
    app.next_lifecycle_message(kind, &run_id.to_string()).await
}

/// A run waiting for approval whose approval message was lost before a worker parked its
/// token; returns `(owner token, run id)`.
async fn approval_lost(app: &TestApp) -> (String, Uuid) {
    let (owner, mut body) = world(app).await;
    body["require_approval"] = json!(true);
    let id = app.start_run(&owner, body).await;
    take_message(app, "approval", id).await;
    (owner, id)
}

/// Has a worker handle `message`, which must succeed.
async fn handle(app: &TestApp, message: QueueMessage) {
    let worker = Worker::new(app.state.clone()).await.unwrap();
    assert!(worker.handle_batch(vec![message]).await.is_empty());
}

/// A copy of the stored run `id` under a new id, stored without an execution, as when the
/// lifecycle's start failed after the run was written.
async fn orphan_of(app: &TestApp, id: Uuid) -> Run {
    let orphan = Run {
        id: Uuid::now_v7(),
        ..stored(app, id).await
    };
    app.state.store.create_run(&orphan, None).await.unwrap();
    orphan
}

#[tokio::test]
async fn a_queued_run_whose_lifecycle_never_started_is_started_once() {
    // GIVEN a queued run stored without an execution, as when the start failed after the
    // run was written
    let app = spawn_app().await;
    let (owner, body) = world(&app).await;
    let orphan = orphan_of(&app, app.start_run(&owner, body).await).await;
    assert_eq!(
        lifecycle::execution(&app.state, orphan.id).await.unwrap(),
        Execution::Missing
    );

    // WHEN the sweeper runs
    let report = sweep_later(&app).await;

    // THEN it started the orphan's lifecycle, which asks a worker to execute it
    assert_eq!(report.started, 1, "{report:?}");
    assert_eq!(
        lifecycle::execution(&app.state, orphan.id).await.unwrap(),
        Execution::Running
    );
    take_message(&app, "execute", orphan.id).await;
    // AND a sweep right after leaves it alone: it was put at the back of the list
    let again = sweeper::sweep(&app.state).await.unwrap();
    assert_eq!(again.started, 0, "{again:?}");
}

#[tokio::test]
async fn a_lost_approval_message_is_sent_again_and_its_token_parked() {
    // GIVEN a run waiting for approval whose approval message was lost before a worker
    // parked its token
    let app = spawn_app().await;
    let (_, id) = approval_lost(&app).await;
    assert!(stored(&app, id).await.task_token.is_none());

    // WHEN the sweeper runs
    let report = sweep_later(&app).await;

    // THEN the approval message is on the run queue again, and a worker parks its token
    assert_eq!(report.redelivered, 1, "{report:?}");
    handle(&app, take_message(&app, "approval", id).await).await;
    let run = stored(&app, id).await;
    assert_eq!(run.status, RunStatus::AwaitingApproval);
    assert!(run.task_token.is_some());
    // AND the parked run is off the list: it waits on a person now
    let again = sweep_later(&app).await;
    assert_eq!(again.examined, 0, "{again:?}");
}

#[tokio::test]
async fn an_approved_run_whose_approval_was_never_parked_goes_on_and_is_not_cancelled() {
    // GIVEN a run approved while its approval message was lost (no token was parked, so the
    // approval answered nothing)
    let app = spawn_app().await;
    let (owner, id) = approval_lost(&app).await;
    let approved = app
        .post(
            &format!("/api/v1/runs/{id}/approve"),
            Some(&owner),
            json!({}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);

    // WHEN the sweeper runs and a worker handles what it sent again
    let report = sweep_later(&app).await;
    assert_eq!(report.redelivered, 1, "{report:?}");
    handle(&app, take_message(&app, "approval", id).await).await;

    // THEN the worker answered the approval: the lifecycle asks to execute the run, which
    // is still queued, never cancelled
    take_message(&app, "execute", id).await;
    assert_eq!(stored(&app, id).await.status, RunStatus::Queued);
}

#[tokio::test]
async fn an_execute_task_unanswered_too_long_is_sent_again_and_a_fresh_one_is_not() {
    // GIVEN a run whose `execute` message was lost
    let app = spawn_app().await;
    let (owner, body) = world(&app).await;
    let id = app.start_run(&owner, body).await;
    take_message(&app, "execute", id).await;

    // WHEN the sweeper runs before the task counts as stalled
    let early = sweep_later(&app).await;

    // THEN it leaves the task alone
    assert_eq!((early.examined, early.redelivered), (1, 0), "{early:?}");

    // WHEN it runs once the task has waited longer than a slice and a step's lease
    app.clock
        .advance(chrono::Duration::from_std(sweeper::stalled(&app.state.config)).unwrap());
    let late = sweeper::sweep(&app.state).await.unwrap();

    // THEN the same task is on the run queue again, and a worker runs the slice
    assert_eq!(late.redelivered, 1, "{late:?}");
    handle(&app, take_message(&app, "execute", id).await).await;
    assert_eq!(stored(&app, id).await.status, RunStatus::AwaitingInput);
}

#[tokio::test]
async fn a_running_run_whose_execution_was_lost_gets_a_new_one_and_goes_on() {
    // GIVEN a running run whose execution is gone, as when LocalStack restarts and forgets
    // every execution
    let app = spawn_app().await;
    let (owner, body) = world(&app).await;
    let orphan = orphan_of(&app, app.start_run(&owner, body).await).await;
    app.run_to_running(orphan.id).await;

    // WHEN the sweeper runs
    let report = sweep_later(&app).await;

    // THEN it started a new execution of the run's lifecycle, which asks a worker to go on
    // from the run's step records
    assert_eq!((report.started, report.ended), (1, 0), "{report:?}");
    assert_eq!(
        lifecycle::execution(&app.state, orphan.id).await.unwrap(),
        Execution::Running
    );
    handle(&app, take_message(&app, "execute", orphan.id).await).await;
    assert_eq!(
        stored(&app, orphan.id).await.status,
        RunStatus::AwaitingInput
    );
    // AND a sweep right after starts nothing more
    let again = sweeper::sweep(&app.state).await.unwrap();
    assert_eq!(again.started, 0, "{again:?}");
}

#[tokio::test]
async fn a_run_that_used_its_turns_fails_instead_of_waiting_again_and_cannot_be_retried() {
    // GIVEN a run whose next step waits for input, once below the bound and once at it
    let app = spawn_app().await;
    let (owner, body) = world(&app).await;
    let fresh = app.start_run(&owner, body.clone()).await;
    let worn = app.start_run(&owner, body).await;
    app.state
        .clients
        .ddb
        .update_item()
        .table_name(app.state.store.table_names()[3])
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("RUN#{worn}")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("RUN".into()),
        )
        .update_expression("SET waits = :max")
        .expression_attribute_values(
            ":max",
            aws_sdk_dynamodb::types::AttributeValue::N(MAX_TURNS.to_string()),
        )
        .send()
        .await
        .unwrap();

    // WHEN a worker executes both
    let engine = app.engine_allowing(&[]);
    let waits = engine
        .execute(stored(&app, fresh).await, &NoHeartbeat)
        .await
        .unwrap();
    let fails = engine
        .execute(stored(&app, worn).await, &NoHeartbeat)
        .await
        .unwrap();

    // THEN the first waits, counting the turn; the worn one fails saying why
    assert_eq!(waits, Outcome::AwaitingInput);
    assert_eq!(stored(&app, fresh).await.waits, 1);
    assert_eq!(fails, Outcome::Failed);
    let run = stored(&app, worn).await;
    assert!(run
        .error_message
        .unwrap_or_default()
        .contains(&format!("{MAX_TURNS} times")),);
    // AND a retry is refused for the same reason
    let retry = app
        .post(
            &format!("/api/v1/runs/{worn}/retry"),
            Some(&owner),
            json!({}),
        )
        .await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text);
}

#[tokio::test]
async fn redrive_moves_every_dead_letter_back_to_the_run_queue() {
    // GIVEN three messages in the run dead-letter queue
    let app = spawn_app().await;
    let sqs = &app.state.clients.sqs;
    let dlq = sqs
        .get_queue_url()
        .queue_name(app.state.config.run_dlq_name())
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    for n in 0..3 {
        sqs.send_message()
            .queue_url(&dlq)
            .message_body(json!({"kind": "finalize", "run_id": Uuid::now_v7(), "n": n}).to_string())
            .send()
            .await
            .unwrap();
    }

    // WHEN they are redriven
    let moved = spark_ops::engine::redrive::redrive(sqs, &app.state.config)
        .await
        .unwrap();

    // THEN all three are on the run queue, and the dead-letter queue is empty
    assert_eq!(moved, 3);
    let queue = app.state.config.run_queue_url.clone().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 && Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in out.messages.unwrap_or_default() {
            let body: Value =
                serde_json::from_str(message.body().unwrap_or_default()).unwrap_or_default();
            seen.push(body["n"].as_i64().unwrap_or(-1));
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2]);
    let left = sqs
        .receive_message()
        .queue_url(&dlq)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert!(left.messages.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn provisioning_adds_the_index_of_runs_in_motion_to_an_older_runs_table() {
    // GIVEN a runs table created without the index of runs in motion (DynamoDB builds one
    // new index per table at a time, so it lacks only that one)
    let app = spawn_app().await;
    let clients = &app.state.clients;
    let provisioner = Provisioner::of(clients);
    let name = format!("{}-older-runs", app.prefix);
    let older = TableDef {
        indexes: &[GSI1, GSI2, GSI3, GSI4, GSI5, GSI7],
        ..RUNS
    };
    provisioner.ensure_table(&name, &older).await.unwrap();

    // WHEN it is provisioned with today's schema
    provisioner.ensure_table(&name, &RUNS).await.unwrap();

    // THEN it has every index of the schema
    let described = clients
        .ddb
        .describe_table()
        .table_name(&name)
        .send()
        .await
        .unwrap();
    let mut indexes: Vec<String> = described
        .table()
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .filter_map(|i| i.index_name().map(str::to_owned))
        .collect();
    indexes.sort();
    let _ = clients.ddb.delete_table().table_name(&name).send().await;
    assert_eq!(
        indexes,
        ["gsi1", "gsi2", "gsi3", "gsi4", "gsi5", "gsi6", "gsi7"]
    );
}
