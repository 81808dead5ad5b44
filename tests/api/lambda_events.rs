//! The sample API Gateway events in `events/` go through the same router as in Lambda.

use axum::body::Body;
use axum::http::StatusCode;
use spark_ops_tests::spawn_app;

async fn replay(file: &str) -> spark_ops_tests::Reply {
    // REST API events carry the stage; the template sets this so routes see `/api/v1/...`.
    std::env::set_var("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true");
    let app = spawn_app().await;
    let path = format!("{}/../events/{file}", env!("CARGO_MANIFEST_DIR"));
    let event = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let request = lambda_http::request::from_str(&event).expect("a valid API Gateway event");
    let (parts, body) = request.into_parts();
    app.send(axum::http::Request::from_parts(
        parts,
        Body::from(body.to_vec()),
    ))
    .await
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
async fn the_run_worker_event_reports_only_the_unreadable_message_as_failed() {
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
    let response = worker.handle_event(event).await;

    // THEN the task for the missing run is settled (its task is failed, not retried) and only
    // the unreadable message is reported, so SQS redelivers it alone
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["5f1c5d3e-0000-4000-8000-000000000002"]);
}
