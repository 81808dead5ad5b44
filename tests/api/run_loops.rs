//! Loops: every iteration is its own record, and the bound is hard.

use axum::http::StatusCode;
use serde_json::{json, Value};
use spark_ops::engine::run::Outcome;
use spark_ops::run::{RunStatus, StepStatus};
use spark_ops_tests::{spawn_app, NoHeartbeat, TestApp};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Runs a workflow of one loop (`loop_config`) around a GET tool of `server`, in-process,
/// for one slice; returns the outcome, the run and its step records.
async fn run_loop(
    app: &TestApp,
    server: &MockServer,
    loop_config: Value,
    input: Value,
) -> (
    Outcome,
    spark_ops::run::Run,
    Vec<spark_ops::run::StepRecord>,
) {
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Loops").await;
    let tool = app
        .post(
            "/api/v1/tools",
            Some(&owner),
            json!({"project_id": project, "name": "echo", "kind": "http", "auth_type": "none", "env": "dev",
                   "config": {"url": format!("{}/echo", server.uri()), "method": "GET", "retry_attempts": 0}}),
        )
        .await;
    assert_eq!(tool.status, StatusCode::CREATED, "{}", tool.text);
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    let mut config = loop_config;
    config["step"] = json!({"type": "tool", "config": {"tool_id": tool.body["id"], "input": {"item": "{{ item }}"}}});
    let definition = json!({"steps": [{"id": "each", "type": "loop", "config": config}]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let id = app
        .start_run(
            &owner,
            json!({"workflow_id": workflow, "agent_id": agent, "env": "dev", "input": input}),
        )
        .await;
    let run = app.state.store.get_run(id).await.unwrap().unwrap();
    let outcome = app
        .engine_allowing(&[&server.uri()])
        .execute(run, &NoHeartbeat)
        .await
        .unwrap();
    let run = app.state.store.get_run(id).await.unwrap().unwrap();
    let steps = app.state.store.all_steps(id).await.unwrap();
    (outcome, run, steps)
}

async fn echo_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/echo"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    server
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

#[tokio::test]
async fn a_while_loop_runs_until_its_condition_fails_recording_each_round() {
    let app = spawn_app().await;
    let server = echo_server().await;
    let (outcome, run, steps) = run_loop(
        &app,
        &server,
        json!({"while": "iteration < input.rounds", "max_iterations": 10}),
        json!({"rounds": 3}),
    )
    .await;
    assert_eq!(
        (outcome, run.status),
        (Outcome::Succeeded, RunStatus::Succeeded)
    );
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["each", "each[0]", "each[1]", "each[2]"]);
    assert!(steps.iter().all(|s| s.status == StepStatus::Succeeded));
    assert_eq!(steps[0].response.as_ref().unwrap()["iterations"], 3);
    // `{{ item }}` is the round number in a while loop
    let url = steps[2].request.as_ref().unwrap()["url"]
        .as_str()
        .unwrap_or_default();
    assert!(url.ends_with("/echo?item=1"), "{url}");
    assert_eq!(calls(&server).await, 3);
}

#[tokio::test]
async fn a_while_loop_still_true_at_its_bound_fails_the_run() {
    let app = spawn_app().await;
    let server = echo_server().await;
    let (outcome, run, steps) = run_loop(
        &app,
        &server,
        json!({"while": "true", "max_iterations": 2}),
        json!({}),
    )
    .await;
    assert_eq!((outcome, run.status), (Outcome::Failed, RunStatus::Failed));
    let message = run.error_message.unwrap_or_default();
    assert!(message.contains("max_iterations (2)"), "{message}");
    assert_eq!(steps.len(), 3, "the loop and its two rounds are recorded");
    assert_eq!(calls(&server).await, 2);
}

#[tokio::test]
async fn a_loop_over_more_items_than_its_bound_fails_before_any_call() {
    let app = spawn_app().await;
    let server = echo_server().await;
    let (outcome, run, steps) = run_loop(
        &app,
        &server,
        json!({"over": "input.items", "max_iterations": 2}),
        json!({"items": ["a", "b", "c"]}),
    )
    .await;
    assert_eq!((outcome, run.status), (Outcome::Failed, RunStatus::Failed));
    let message = run.error_message.unwrap_or_default();
    assert!(
        message.contains("3 items, more than max_iterations (2)"),
        "{message}"
    );
    assert_eq!(steps.len(), 1);
    assert_eq!(calls(&server).await, 0);
}
