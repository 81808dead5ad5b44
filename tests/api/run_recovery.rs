//! A worker killed mid-step: the engine takes the step over only when it is safe to repeat,
//! and never while another worker's lease on it is alive.

use axum::http::StatusCode;
use chrono::Duration;
use serde_json::json;
use spark_ops::clock::Clock;
use spark_ops::engine::run::Outcome;
use spark_ops::run::{Run, RunChange, RunStatus, StepRecord, StepStatus};
use spark_ops_tests::{spawn_app, NoHeartbeat, TestApp};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A queued run of a one-step workflow calling an http tool with `http_method`.
async fn one_tool_run(app: &TestApp, server: &MockServer, http_method: &str) -> Run {
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Recovery").await;
    let tool = app
        .post(
            "/api/v1/tools",
            Some(&owner),
            json!({"project_id": project, "name": "crm", "kind": "http", "auth_type": "none",
                   "env": "dev", "config": {"url": format!("{}/crm", server.uri()),
                   "method": http_method, "timeout_ms": 2000, "retry_attempts": 0}}),
        )
        .await;
    assert_eq!(tool.status, StatusCode::CREATED, "{}", tool.text);
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    let definition = json!({"steps": [
        {"id": "call", "type": "tool", "config": {"tool_id": tool.body["id"], "input": {}}}
    ]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let id = app
        .start_run(
            &owner,
            json!({"workflow_id": workflow, "agent_id": agent, "env": "dev"}),
        )
        .await;
    app.state.store.get_run(id).await.unwrap().unwrap()
}

/// Moves the run to `running` and leaves its only step claimed by a worker whose lease ends
/// at `lease_from_now`, as a worker that died (or is still busy) mid-call would.
async fn claimed_by_another_worker(app: &TestApp, run: &Run, lease_from_now: Duration) -> Run {
    let now = app.clock.now();
    let change = RunChange {
        started_at: Some(now),
        ..RunChange::default()
    };
    let run = app
        .state
        .store
        .transition_run(run, RunStatus::Running, now, change)
        .await
        .unwrap();
    let record = StepRecord {
        started_at: now - Duration::minutes(10),
        ..StepRecord::claim(
            run.id,
            0,
            None,
            "call",
            "tool",
            now,
            now + lease_from_now,
            0,
        )
    };
    let claim = app.state.store.claim_step(&record).await.unwrap();
    assert!(matches!(claim, spark_ops::store::runs::Claim::Claimed));
    run
}

async fn step(app: &TestApp, run_id: Uuid) -> StepRecord {
    let mut steps = app.state.store.all_steps(run_id).await.unwrap();
    assert_eq!(steps.len(), 1);
    steps.remove(0)
}

async fn tool_answers(server: &MockServer) {
    Mock::given(path("/crm"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(server)
        .await;
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

#[tokio::test]
async fn an_idempotent_step_left_by_a_dead_worker_is_taken_over_once() {
    // GIVEN a GET tool step claimed by a worker whose lease expired a minute ago
    let app = spawn_app().await;
    let server = MockServer::start().await;
    tool_answers(&server).await;
    let run = one_tool_run(&app, &server, "GET").await;
    let run = claimed_by_another_worker(&app, &run, Duration::minutes(-1)).await;

    // WHEN a worker executes the run
    let engine = app.engine_allowing(&[&server.uri()]);
    let outcome = engine.execute(run.clone(), &NoHeartbeat).await.unwrap();

    // THEN it repeats the call once, as attempt 2, and the run succeeds
    assert_eq!(outcome, Outcome::Succeeded);
    let record = step(&app, run.id).await;
    assert_eq!(
        (record.status, record.attempts, record.response),
        (StepStatus::Succeeded, 2, Some(json!({"ok": true})))
    );
    assert_eq!(calls(&server).await, 1);
    // AND a duplicate delivery afterwards changes nothing
    let again = app.state.store.get_run(run.id).await.unwrap().unwrap();
    let outcome = engine.execute(again, &NoHeartbeat).await.unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(calls(&server).await, 1);
    assert_eq!(step(&app, run.id).await.attempts, 2);
}

#[tokio::test]
async fn a_post_step_left_by_a_dead_worker_fails_as_interrupted_without_calling_again() {
    // GIVEN a POST tool step claimed by a worker that died mid-call
    let app = spawn_app().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    let run = one_tool_run(&app, &server, "POST").await;
    let run = claimed_by_another_worker(&app, &run, Duration::minutes(-1)).await;

    // WHEN a worker executes the run
    let outcome = app
        .engine_allowing(&[&server.uri()])
        .execute(run.clone(), &NoHeartbeat)
        .await
        .unwrap();

    // THEN the call is not repeated: the step and the run fail, saying why
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(calls(&server).await, 0);
    let record = step(&app, run.id).await;
    assert_eq!(record.status, StepStatus::Failed);
    let error = record.error_message.unwrap_or_default();
    assert!(error.contains("not safe to repeat"), "{error}");
    let run = app.state.store.get_run(run.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let message = run.error_message.unwrap_or_default();
    assert!(message.starts_with("step `call` failed:"), "{message}");
    assert!(run.ended_at.is_some() && run.duration_ms.is_some());
}

#[tokio::test]
async fn a_step_under_a_live_lease_is_left_to_its_worker() {
    // GIVEN a step another worker holds, its lease running for five more minutes
    let app = spawn_app().await;
    let server = MockServer::start().await;
    tool_answers(&server).await;
    let run = one_tool_run(&app, &server, "GET").await;
    let run = claimed_by_another_worker(&app, &run, Duration::minutes(5)).await;

    // WHEN a duplicate delivery reaches another worker
    let outcome = app
        .engine_allowing(&[&server.uri()])
        .execute(run.clone(), &NoHeartbeat)
        .await
        .unwrap();

    // THEN it backs off without calling the tool or touching the record
    assert_eq!(outcome, Outcome::Busy);
    assert_eq!(calls(&server).await, 0);
    let record = step(&app, run.id).await;
    assert_eq!((record.status, record.attempts), (StepStatus::Running, 1));
    let run = app.state.store.get_run(run.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.usage.tokens_prompt, 0);
}
