//! The sample API Gateway events in `events/` go through the same router as in Lambda.

use axum::http::StatusCode;
use spark_ops_tests::{api_gateway_event, spawn_app};

async fn replay(file: &str) -> spark_ops_tests::Reply {
    let app = spawn_app().await;
    app.send(api_gateway_event(file)).await
}

#[tokio::test]
async fn the_health_event_reaches_the_health_route() {
    let reply = replay("apigw-health.json").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "ok");
}

#[tokio::test]
async fn the_register_event_registers_a_user() {
    let reply = replay("apigw-register.json").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.body["email"], "lambda-event@example.com");
}

#[tokio::test]
async fn the_run_worker_event_settles_the_missing_run_and_dead_letters_the_unreadable_message() {
    // GIVEN the sample SQS event: a task for a run that does not exist, and a body that is no
    // task at all
    let app = spawn_app().await;
    let path = format!(
        "{}/../events/sqs-run-worker.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let event = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let event: aws_lambda_events::event::sqs::SqsEvent =
        serde_json::from_str(&event).expect("a valid SQS event");

    // WHEN the run worker's Lambda handler receives it, built as its main builds it: without
    // the JWT signing key, which its role may not read
    let state = spark_ops::AppState::without_keys(
        (*app.state.config).clone(),
        app.state.clients.clone(),
        app.state.clock.clone(),
    );
    let worker = spark_ops::engine::worker::Worker::new(state).await.unwrap();
    let deadline = spark_ops::engine::budget::Deadline::after(std::time::Duration::from_secs(60));
    let response = worker.handle_event_until(event, deadline).await;

    // THEN the task for the missing run is settled (its task is failed, not retried), and the
    // unreadable message went to the dead-letter queue at once: nothing is redelivered
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
    assert_eq!(app.dead_letters().await, ["not a run task"]);
}

/// The sample SQS event `events/<file>`.
fn sqs_event(file: &str) -> aws_lambda_events::event::sqs::SqsEvent {
    let path = format!("{}/../events/{file}", env!("CARGO_MANIFEST_DIR"));
    let event = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&event).expect("a valid SQS event")
}

#[tokio::test]
async fn the_tick_event_claims_a_due_schedule_and_the_fire_event_of_a_deleted_one_is_dropped() {
    // GIVEN a schedule whose slot is due, and the scheduler's state as its main builds it
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = crate::schedules::world(&app).await;
    let created = app
        .post(
            "/api/v1/schedules",
            Some(&owner),
            serde_json::json!({"project_id": project, "name": "tick", "type": "cron",
                               "expression": "* * * * *", "target_workflow_id": workflow,
                               "agent_id": agent}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    app.clock.advance(chrono::Duration::seconds(61));
    let state = spark_ops::AppState::without_keys(
        (*app.state.config).clone(),
        app.state.clients.clone(),
        app.state.clock.clone(),
    );

    // WHEN the scheduler function receives the sample tick, then the sample fire (of a
    // schedule that no longer exists)
    let ticked =
        spark_ops::scheduler::handle_event(&state, sqs_event("sqs-scheduler-tick.json")).await;
    let fired =
        spark_ops::scheduler::handle_event(&state, sqs_event("sqs-schedule-fire.json")).await;

    // THEN both are handled, and the due schedule moved on with its fire recorded
    assert!(ticked.batch_item_failures.is_empty());
    assert!(fired.batch_item_failures.is_empty());
    let id = created.body["id"].as_str().unwrap();
    let fires = app
        .get(&format!("/api/v1/schedules/{id}/fires"), &owner)
        .await;
    assert_eq!(
        fires.body["items"][0]["outcome"], "pending",
        "{}",
        fires.text
    );
    let after = app.get(&format!("/api/v1/schedules/{id}"), &owner).await;
    assert_ne!(after.body["next_run_at"], created.body["next_run_at"]);
}

#[tokio::test]
async fn the_trigger_event_starts_its_event_schedules_run_once() {
    // GIVEN an event schedule, and the sample trigger message retargeted at it and its
    // project
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = crate::schedules::world(&app).await;
    let id =
        crate::event_schedules::orders_schedule(&app, &owner, (&project, &workflow, &agent)).await;
    let id = id.as_str();
    let mut event = sqs_event("sqs-trigger.json");
    for record in &mut event.records {
        let body = record.body.take().unwrap();
        record.body = Some(
            body.replace("01a20000-0000-7000-8000-0000000000f2", id)
                .replace("01a20000-0000-7000-8000-0000000000e0", &project),
        );
    }

    // WHEN the scheduler function receives it twice (a redelivery)
    let first = spark_ops::scheduler::handle_event(&app.state, event.clone()).await;
    let again = spark_ops::scheduler::handle_event(&app.state, event).await;

    // THEN both are handled, and one run started for the event's time
    assert!(first.batch_item_failures.is_empty());
    assert!(again.batch_item_failures.is_empty());
    let runs = app
        .get(
            &format!("/api/v1/runs?project_id={project}&schedule_id={id}"),
            &owner,
        )
        .await;
    let items = runs.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", runs.text);
    assert_eq!(items[0]["trigger"], "event");
    assert_eq!(items[0]["nominal_time"], "2027-01-01T10:00:00.000Z");
}
