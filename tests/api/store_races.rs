//! Store transactions that collide on one item retry until they land: a cancel racing the
//! commits of many steps loses none of their tokens or cost, and counts none twice.

use axum::http::{Method, StatusCode};
use futures::future::join_all;
use rust_decimal::Decimal;
use serde_json::json;
use spark_ops::run::{RunStatus, StepRecord, StepStatus, Usage};
use spark_ops::store::runs::{Claim, StepEnd};
use spark_ops_tests::spawn_app;

/// Steps committed at once, each adding to the same run item.
const STEPS: u32 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_many_step_commits_loses_no_tokens_or_cost() {
    // GIVEN a running run with many claimed steps
    let app = spawn_app().await;
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
    let store = &app.state.store;
    let run = app.run_to_running(id).await;
    let now = app.state.clock.now();
    let mut records = Vec::new();
    for idx in 0..STEPS {
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
            store.claim_step(&record).await.unwrap(),
            Claim::Claimed
        ));
        records.push(record);
    }

    // WHEN every step commits its usage at once while the owner cancels the run
    let end = |idx: u32| StepEnd {
        status: StepStatus::Succeeded,
        at: now,
        duration_ms: 5,
        error_message: None,
        request: None,
        response: Some(json!({"n": idx})),
        usage: Usage {
            tokens_prompt: 3,
            tokens_completion: 2,
            usd_cost: Decimal::new(i64::from(idx) + 1, 4),
        },
    };
    let commits = join_all(records.iter().map(|r| {
        let end = end(r.idx);
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
    assert_eq!(prompt, 3 * u64::from(STEPS));
}
