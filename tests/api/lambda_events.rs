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
async fn the_register_event_creates_a_user() {
    let reply = replay("apigw-register.json").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["email"], "lambda-event@example.com");
}
