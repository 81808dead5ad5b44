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
