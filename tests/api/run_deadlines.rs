//! Every step runs under a budget taken from the worker invocation's deadline, and one tenant's
//! hostile steps fail alone: its batch-mates from other projects go on.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use spark_ops::clock::Clock;
use spark_ops::engine::budget::{Deadline, MIN_STEP};
use spark_ops::engine::run::{Engine, Outcome};
use spark_ops::engine::worker::{QueueMessage, Worker, OVERRUN_GRACE};
use spark_ops::run::{RunStatus, StepStatus};
use spark_ops_tests::{
    allow_list, spawn_app_with, spawn_app_with_default_llm, NoHeartbeat, TestApp,
};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn a_tarpit_model_and_a_cel_bomb_fail_their_own_steps_while_another_tenant_succeeds() {
    // GIVEN a model endpoint that takes a minute to answer
    let tarpit = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"choices": [{"message": {"content": "late"}}]}))
                .set_delay(Duration::from_secs(60)),
        )
        .mount(&tarpit)
        .await;
    let app = spawn_app_with_default_llm(&tarpit.uri()).await;
    // AND project X with a run whose prompt calls it and a run whose decision nests three
    // comprehensions over 1000 items (a billion evaluations)
    let owner = app.user("Owner").await;
    let x = app.project(&owner, "Tenant X").await;
    let y = app.project(&owner, "Tenant Y").await;
    let x_agent = app.agent(&owner, &x, "house-model").await;
    let y_agent = app.agent(&owner, &y, "house-model").await;
    let prompt = app
        .released_workflow(
            &owner,
            &x,
            json!({"steps": [{"id": "ask", "type": "prompt", "config": {"prompt": "Hello"}}]}),
        )
        .await;
    let bomb = "input.items.all(a, input.items.all(b, input.items.all(x, true)))";
    let decision = |condition: &str| {
        json!({"steps": [{"id": "route", "type": "decision",
                          "config": {"condition": condition, "then": [], "else": []}}]})
    };
    let bombing = app.released_workflow(&owner, &x, decision(bomb)).await;
    // AND project Y with a run of one trivial decision
    let trivial = app
        .released_workflow(&owner, &y, decision("input.ok == true"))
        .await;
    let items: Vec<u32> = (0..1000).collect();
    let tarpit_run = app
        .start_run(
            &owner,
            json!({"workflow_id": prompt, "agent_id": x_agent, "env": "dev", "input": {}}),
        )
        .await;
    let bomb_run = app
        .start_run(
            &owner,
            json!({"workflow_id": bombing, "agent_id": x_agent, "env": "dev", "input": {"items": items}}),
        )
        .await;
    let neighbour_run = app
        .start_run(
            &owner,
            json!({"workflow_id": trivial, "agent_id": y_agent, "env": "dev", "input": {"ok": true}}),
        )
        .await;
    let runs = [tarpit_run, bomb_run, neighbour_run].map(|id| id.to_string());
    let mut batch = app
        .run_messages("execute", &runs.each_ref().map(String::as_str))
        .await;
    // AND a message that is no run task at all
    batch.push(QueueMessage {
        message_id: "garbage".into(),
        receipt_handle: None,
        body: "{\"kind\": \"execute\", \"run_id\": 42".into(),
    });

    // WHEN one worker invocation with 4 s left handles them in one batch
    let worker = Worker::new(app.state.clone())
        .await
        .expect("the worker builds");
    let invocation = Duration::from_secs(4);
    let started = Instant::now();
    let failed = worker
        .handle_batch_until(batch, Deadline::after(invocation))
        .await;
    let took = started.elapsed();

    // THEN the batch ended within the invocation, and no message is reported failed: each
    // run's task was answered, and the garbage went to the dead-letter queue
    assert!(took < invocation + OVERRUN_GRACE, "the batch took {took:?}");
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(app.dead_letters().await.len(), 1);
    // AND the tarpit's prompt failed once its step budget ran out, after one model call
    let tarpit_step = only_step(&app, tarpit_run).await;
    assert_eq!(tarpit_step.0, StepStatus::Failed);
    assert!(
        tarpit_step.1.contains("step budget of")
            && tarpit_step.1.contains("exhausted after 1 attempts"),
        "{}",
        tarpit_step.1
    );
    assert_eq!(
        tarpit.received_requests().await.unwrap_or_default().len(),
        1
    );
    // AND the bomb was refused before it ran, naming its cost
    let bomb_step = only_step(&app, bomb_run).await;
    assert_eq!(bomb_step.0, StepStatus::Failed);
    assert!(
        bomb_step.1.contains("expression too costly: about"),
        "{}",
        bomb_step.1
    );
    for run in [tarpit_run, bomb_run] {
        let run = app.state.store.get_run(run).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Failed);
    }
    // AND the other tenant's run succeeded
    let neighbour = app
        .state
        .store
        .get_run(neighbour_run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(neighbour.status, RunStatus::Succeeded);
    assert_eq!(
        only_step(&app, neighbour_run).await.0,
        StepStatus::Succeeded
    );
}

/// The status and error of a one-step run's step.
async fn only_step(app: &TestApp, run: Uuid) -> (StepStatus, String) {
    let steps = app.state.store.all_steps(run).await.unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    (
        steps[0].status,
        steps[0].error_message.clone().unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_tool_at_its_rate_limit_yields_to_the_next_slice_instead_of_failing_the_run() {
    // GIVEN a POST tool (not safe to repeat) allowed one call a minute, whose slot for this
    // minute is taken, at the start of a minute
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/orders"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    let app = spawn_app_with(|config| {
        config.egress.allow.extend(allow_list(&[&server.uri()]));
    })
    .await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Throttled").await;
    let tool = app
        .post(
            "/api/v1/tools",
            Some(&owner),
            json!({"project_id": project, "name": "orders", "kind": "http", "auth_type": "none",
                   "env": "dev", "rate_limit_per_min": 1,
                   "config": {"url": format!("{}/orders", server.uri()), "method": "POST", "retry_attempts": 0}}),
        )
        .await;
    assert_eq!(tool.status, StatusCode::CREATED, "{}", tool.text);
    let tool_id = Uuid::parse_str(tool.body["id"].as_str().unwrap()).unwrap();
    let second = chrono::Timelike::second(&app.clock.now());
    app.clock
        .advance(chrono::Duration::seconds(i64::from(60 - second)));
    assert!(app
        .state
        .store
        .take_rate_slot(tool_id, app.clock.now(), 1)
        .await
        .unwrap());
    let agent = app.agent(&owner, &project, "house-model").await;
    let definition = json!({"steps": [{"id": "order", "type": "tool",
                                       "config": {"tool_id": tool_id, "input": {"n": 1}}}]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let id = app
        .start_run(
            &owner,
            json!({"workflow_id": workflow, "agent_id": agent, "env": "dev", "input": {}}),
        )
        .await;
    let engine = app.engine_allowing(&[&server.uri()]);

    // WHEN a slice with 5 s left runs it: the minute's wait does not fit
    let outcome = slice(&app, &engine, id, Duration::from_secs(5)).await;

    // THEN the step gave its attempt back unsent, and the slice asks to continue
    assert_eq!(outcome, Outcome::Continue);
    let steps = app.state.store.all_steps(id).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].status, StepStatus::Running);
    assert!(steps[0].yielded);
    assert!(server
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty());

    // WHEN the next slice runs in the next minute
    app.clock.advance(chrono::Duration::seconds(60));
    let outcome = slice(&app, &engine, id, Duration::from_secs(5)).await;

    // THEN it took the step over although a POST is not safe to repeat (nothing was sent),
    // called the tool once, and the run succeeded
    assert_eq!(outcome, Outcome::Succeeded);
    let steps = app.state.store.all_steps(id).await.unwrap();
    assert_eq!(steps[0].status, StepStatus::Succeeded);
    assert_eq!(steps[0].attempts, 2);
    assert!(!steps[0].yielded);
    assert_eq!(
        server.received_requests().await.unwrap_or_default().len(),
        1
    );
}

#[tokio::test]
async fn a_step_that_cannot_fit_before_the_deadline_waits_for_the_next_slice() {
    // GIVEN a run of one trivial step
    let app = spawn_app_with(|_| {}).await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Late").await;
    let agent = app.agent(&owner, &project, "house-model").await;
    let definition = json!({"steps": [{"id": "route", "type": "decision",
                                       "config": {"condition": "true", "then": [], "else": []}}]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let id = app
        .start_run(
            &owner,
            json!({"workflow_id": workflow, "agent_id": agent, "env": "dev", "input": {}}),
        )
        .await;
    let engine = app.engine_allowing(&[]);

    // WHEN a slice starts with less than the least time a step is given
    let outcome = slice(&app, &engine, id, MIN_STEP / 2).await;

    // THEN it starts nothing and asks to continue
    assert_eq!(outcome, Outcome::Continue);
    assert!(app.state.store.all_steps(id).await.unwrap().is_empty());

    // AND the next slice, with time left, runs the step
    let outcome = slice(&app, &engine, id, Duration::from_secs(30)).await;
    assert_eq!(outcome, Outcome::Succeeded);
}

/// Runs one slice of run `id` with `left` before the invocation's deadline.
async fn slice(app: &TestApp, engine: &Engine, id: Uuid, left: Duration) -> Outcome {
    let run = app.state.store.get_run(id).await.unwrap().unwrap();
    engine
        .execute_within(run, &NoHeartbeat, Deadline::after(left))
        .await
        .unwrap()
}
