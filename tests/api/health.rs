//! `GET /health` answers anyone, so it says only `ok` or `degraded` per dependency, keeps
//! the reasons for the log, and checks AWS at most once per cache window however often it
//! is asked.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use spark_ops::health::CACHE_FOR;
use spark_ops_tests::{capture_logs, spawn_app};

#[tokio::test]
async fn a_failing_dependency_is_reported_degraded_without_its_error_which_goes_to_the_log() {
    let logs = capture_logs();
    // GIVEN a deployment whose run queue is gone
    let app = spawn_app().await;
    let queue = app.state.config.run_queue_name();
    let sqs = &app.state.clients.sqs;
    let url = sqs
        .get_queue_url()
        .queue_name(&queue)
        .send()
        .await
        .expect("the queue exists")
        .queue_url
        .expect("a queue url");
    sqs.delete_queue().queue_url(&url).send().await.unwrap();

    // WHEN an anonymous caller asks for health
    let reply = app.call(Method::GET, "/health", None, None).await;

    // THEN the queue is degraded (the others are ok, unless a busy machine makes one miss
    // its timeout), and nothing says why
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(reply.body["status"], "degraded");
    let statuses: Vec<(String, String)> = reply.body["checks"]
        .as_object()
        .expect("checks")
        .iter()
        .map(|(name, check)| (name.clone(), check["status"].as_str().unwrap().to_owned()))
        .collect();
    let names: Vec<&str> = statuses.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["dynamodb", "secretsmanager", "sqs", "stepfunctions"]
    );
    for (name, status) in &statuses {
        let expected: &[&str] = if name == "sqs" {
            &["degraded"]
        } else {
            &["ok", "degraded"]
        };
        assert!(expected.contains(&status.as_str()), "{name}: {status}");
    }
    for check in reply.body["checks"].as_object().unwrap().values() {
        let mut fields: Vec<&String> = check.as_object().unwrap().keys().collect();
        fields.sort();
        assert_eq!(fields, ["latency_ms", "status"], "{}", reply.text);
    }
    for secret in [
        queue.as_str(),
        "NonExistentQueue",
        "does not exist",
        &app.prefix,
    ] {
        assert!(
            !reply.text.contains(secret),
            "{secret} leaked: {}",
            reply.text
        );
    }
    // AND the log says why
    let log = logs.text();
    assert!(log.contains("health check failed"), "{log}");
    assert!(log.contains("NonExistentQueue"), "{log}");
}

#[tokio::test]
async fn health_is_checked_at_most_once_per_cache_window() {
    // GIVEN a deployment that was just asked (under load a check may time out; either way
    // the report is reused)
    let app = spawn_app().await;
    let first = app.call(Method::GET, "/health", None, None).await;
    assert!(
        app.ddb_requests.count() >= 1,
        "the first call checks DynamoDB"
    );

    // WHEN anonymous callers ask again, many at once, within the window
    app.ddb_requests.reset();
    let replies =
        futures::future::join_all((0..20).map(|_| app.call(Method::GET, "/health", None, None)))
            .await;

    // THEN they all get the same report, and AWS is not asked again
    for reply in &replies {
        assert_eq!(reply.status, first.status);
        assert_eq!(reply.body, first.body);
    }
    assert_eq!(
        app.ddb_requests.count(),
        0,
        "{:?}",
        app.ddb_requests.operations()
    );

    // WHEN the window has passed, THEN the next call checks again
    tokio::time::sleep(CACHE_FOR + Duration::from_millis(100)).await;
    let later = app.call(Method::GET, "/health", None, None).await;
    assert!(
        later.body["checks"]["dynamodb"].is_object(),
        "{}",
        later.text
    );
    assert!(app.ddb_requests.count() >= 1);
}
