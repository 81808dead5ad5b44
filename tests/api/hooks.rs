//! Inbound webhooks on the real local services: signed deliveries start runs of webhook
//! schedules once per delivery; unsigned, stale or oversized ones start nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::Duration;
use serde_json::{json, Value};
use spark_ops::engine::webhook::{
    signature_header, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use spark_ops::run::Trigger;
use spark_ops_tests::{capture_logs, spawn_app, Reply, TestApp};

use crate::schedules::runs_of;

/// A project with an agent, a released workflow and a webhook schedule; `(owner token,
/// project, schedule id, secret)`.
async fn world(app: &TestApp) -> (String, String, String, String) {
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Hooks").await;
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    let definition = json!({"steps": [
        {"id": "ask", "type": "human", "config": {"instructions": "Check it"}}
    ]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let created = app
        .post(
            "/api/v1/schedules",
            Some(&owner),
            json!({"project_id": project, "name": "on push", "type": "webhook",
                   "target_workflow_id": workflow, "agent_id": agent,
                   "input": {"repo": "spark"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["next_run_at"], Value::Null);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    let id = created.body["id"].as_str().unwrap().to_owned();
    (owner, project, id, secret)
}

/// Posts `body` to the schedule's hook, signed with `secret` at `timestamp` (default: now).
async fn deliver(
    app: &TestApp,
    id: &str,
    secret: Option<&str>,
    timestamp: Option<i64>,
    delivery: Option<&str>,
    body: &[u8],
) -> Reply {
    let ts = timestamp.unwrap_or_else(|| app.state.clock.now().timestamp());
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/hooks/{id}"))
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, ts.to_string());
    if let Some(secret) = secret {
        request = request.header(
            SIGNATURE_HEADER,
            signature_header(secret.as_bytes(), ts, body),
        );
    }
    if let Some(delivery) = delivery {
        request = request.header(DELIVERY_HEADER, delivery);
    }
    app.send(request.body(Body::from(body.to_vec())).unwrap())
        .await
}

#[tokio::test]
async fn a_signed_delivery_starts_one_run_with_the_body_as_its_event() {
    let app = spawn_app().await;
    let (owner, project, id, secret) = world(&app).await;
    // WHEN a signed delivery arrives
    let body = br#"{"ref":"main","commits":2}"#;
    let reply = deliver(&app, &id, Some(&secret), None, Some("d-1"), body).await;
    // THEN it starts a webhook run whose input carries the body and the delivery
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let run_id: uuid::Uuid = reply.body["run_id"].as_str().unwrap().parse().unwrap();
    let run = app.stored_run(run_id).await;
    assert_eq!(run.trigger, Trigger::Webhook);
    assert_eq!(run.schedule_id.unwrap().to_string(), id);
    assert_eq!(
        run.input,
        json!({"repo": "spark", "event": {"body": {"ref": "main", "commits": 2},
                                          "delivery_id": "d-1"}})
    );
    // AND it is the schedule's last run, with a started fire
    let schedule = app.get(&format!("/api/v1/schedules/{id}"), &owner).await;
    assert_eq!(schedule.body["last_run_id"], run_id.to_string());
    assert_eq!(
        schedule.body.get("secret"),
        None,
        "the secret is shown once"
    );
    let fires = app
        .get(&format!("/api/v1/schedules/{id}/fires"), &owner)
        .await;
    assert_eq!(fires.body["items"][0]["outcome"], "started");
    assert_eq!(fires.body["items"][0]["run_id"], run_id.to_string());

    // WHEN the same delivery is replayed, even without its id (the signature then keys it)
    let again = deliver(&app, &id, Some(&secret), None, Some("d-1"), body).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["run_id"], run_id.to_string());
    let ts = app.state.clock.now().timestamp();
    let first = deliver(&app, &id, Some(&secret), Some(ts), None, b"{}").await;
    let second = deliver(&app, &id, Some(&secret), Some(ts), None, b"{}").await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(first.body["run_id"], second.body["run_id"]);
    // THEN two runs exist in all
    assert_eq!(runs_of(&app, &owner, &project, &id).await.len(), 2);
}

#[tokio::test]
async fn concurrent_identical_deliveries_start_one_run() {
    let app = spawn_app().await;
    let (owner, project, id, secret) = world(&app).await;
    let body = br#"{"n":1}"#;
    let replies = futures::future::join_all(
        (0..4).map(|_| deliver(&app, &id, Some(&secret), None, Some("same"), body)),
    )
    .await;
    let ids: std::collections::BTreeSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            r.body["run_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(runs_of(&app, &owner, &project, &id).await.len(), 1);
}

#[tokio::test]
async fn unsigned_stale_or_misaddressed_deliveries_start_nothing() {
    let app = spawn_app().await;
    let (owner, project, id, secret) = world(&app).await;
    let body = br#"{"a":1}"#;
    let now = app.state.clock.now().timestamp();
    let cases = [
        (
            "no signature",
            deliver(&app, &id, None, None, None, body).await,
        ),
        (
            "another secret",
            deliver(&app, &id, Some(&"0".repeat(64)), None, None, body).await,
        ),
        (
            "stale",
            deliver(&app, &id, Some(&secret), Some(now - 301), None, body).await,
        ),
        (
            "future",
            deliver(&app, &id, Some(&secret), Some(now + 301), None, body).await,
        ),
        (
            "unknown schedule",
            deliver(
                &app,
                &uuid::Uuid::now_v7().to_string(),
                Some(&secret),
                None,
                None,
                body,
            )
            .await,
        ),
        (
            "not an id",
            deliver(&app, "nope", Some(&secret), None, None, body).await,
        ),
    ];
    for (case, reply) in cases {
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{case}: {}",
            reply.text
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }
    // A body signed for another body is refused too.
    let ts = app.state.clock.now().timestamp();
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/hooks/{id}"))
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(
            SIGNATURE_HEADER,
            signature_header(secret.as_bytes(), ts, b"{\"a\":2}"),
        )
        .body(Body::from(body.to_vec()))
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::UNAUTHORIZED);
    // Well signed but not an object, or too big
    let list = deliver(&app, &id, Some(&secret), None, None, b"[1]").await;
    assert_eq!(list.status, StatusCode::BAD_REQUEST, "{}", list.text);
    assert_eq!(list.error_fields(), ["body"]);
    let long_id = "d".repeat(256);
    let long_id = deliver(&app, &id, Some(&secret), None, Some(&long_id), b"{}").await;
    assert_eq!(long_id.status, StatusCode::BAD_REQUEST, "{}", long_id.text);
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(256 * 1024));
    let big = deliver(&app, &id, Some(&secret), None, None, big.as_bytes()).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", big.text);
    assert_eq!(runs_of(&app, &owner, &project, &id).await.len(), 0);
}

#[tokio::test]
async fn a_paused_webhook_schedule_refuses_deliveries() {
    let app = spawn_app().await;
    let (owner, project, id, secret) = world(&app).await;
    let paused = app
        .patch(
            &format!("/api/v1/schedules/{id}"),
            &owner,
            json!({"status": "paused"}),
        )
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    let reply = deliver(&app, &id, Some(&secret), None, None, b"{}").await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert_eq!(runs_of(&app, &owner, &project, &id).await.len(), 0);
}

#[tokio::test]
async fn a_rotated_secret_keeps_the_old_one_valid_for_an_hour() {
    let app = spawn_app().await;
    let logs = capture_logs();
    let (owner, project, id, old) = world(&app).await;
    // WHEN the secret is rotated
    let rotated = app
        .post(
            &format!("/api/v1/schedules/{id}/rotate-secret"),
            Some(&owner),
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let new = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    // THEN both sign for now
    let with_new = deliver(&app, &id, Some(&new), None, Some("n1"), b"{}").await;
    assert_eq!(with_new.status, StatusCode::ACCEPTED, "{}", with_new.text);
    let with_old = deliver(&app, &id, Some(&old), None, Some("o1"), b"{}").await;
    assert_eq!(with_old.status, StatusCode::ACCEPTED, "{}", with_old.text);
    // AND neither secret is ever shown again or logged
    let listed = app
        .get(&format!("/api/v1/schedules?project_id={project}"), &owner)
        .await;
    let read = app.get(&format!("/api/v1/schedules/{id}"), &owner).await;
    assert_eq!(runs_of(&app, &owner, &project, &id).await.len(), 2);
    // AND an hour later only the new one does (the owner's session has expired by then)
    app.clock.advance(Duration::hours(1) + Duration::seconds(1));
    let with_old = deliver(&app, &id, Some(&old), None, Some("o2"), b"{}").await;
    assert_eq!(with_old.status, StatusCode::UNAUTHORIZED);
    let later = deliver(&app, &id, Some(&new), None, Some("n2"), b"{}").await;
    assert_eq!(later.status, StatusCode::ACCEPTED, "{}", later.text);
    assert_ne!(later.body["run_id"], with_new.body["run_id"]);
    let logged = logs.text();
    for secret in [&old, &new] {
        assert!(!listed.text.contains(secret.as_str()));
        assert!(!read.text.contains(secret.as_str()));
        assert!(!logged.contains(secret.as_str()), "a secret was logged");
    }
}

#[tokio::test]
async fn only_developers_rotate_and_only_webhook_schedules_have_a_secret() {
    let app = spawn_app().await;
    let (owner, project, id, secret) = world(&app).await;
    let viewer = app.user("Viewer").await;
    app.add_member(&owner, &project, &viewer, "viewer").await;
    let path = format!("/api/v1/schedules/{id}/rotate-secret");
    let denied = app.post(&path, Some(&viewer), json!({})).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text);
    let cron = app
        .get(&format!("/api/v1/schedules/{id}"), &owner)
        .await
        .body;
    let cron = app
        .post(
            "/api/v1/schedules",
            Some(&owner),
            json!({"project_id": project, "name": "nightly", "type": "cron",
                   "expression": "0 3 * * *", "target_workflow_id": cron["target_workflow_id"],
                   "agent_id": cron["agent_id"]}),
        )
        .await;
    assert_eq!(cron.status, StatusCode::CREATED);
    assert_eq!(cron.body.get("secret"), None);
    let not_webhook = app
        .post(
            &format!(
                "/api/v1/schedules/{}/rotate-secret",
                cron.body["id"].as_str().unwrap()
            ),
            Some(&owner),
            json!({}),
        )
        .await;
    assert_eq!(not_webhook.status, StatusCode::CONFLICT);
    // Deleting the schedule retires its secret: its hook answers like any unknown one.
    let deleted = app.delete(&format!("/api/v1/schedules/{id}"), &owner).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = deliver(&app, &id, Some(&secret), None, None, b"{}").await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
    let path = spark_ops::store::secrets::path::schedule_webhook_secret(id.parse().unwrap());
    assert!(
        !matches!(app.state.secrets.get(&path).await, Ok(Some(_))),
        "the secret is scheduled for deletion"
    );
}

#[tokio::test]
async fn a_delivery_whose_owner_may_no_longer_start_runs_is_denied_and_recorded() {
    let app = spawn_app().await;
    let (owner, project, first, _) = world(&app).await;
    let targets = app
        .get(&format!("/api/v1/schedules/{first}"), &owner)
        .await
        .body;
    // GIVEN a webhook schedule created by a developer, who is then made a viewer
    let developer = app.user("Developer").await;
    let developer_id = app
        .add_member(&owner, &project, &developer, "developer")
        .await;
    let created = app
        .post(
            "/api/v1/schedules",
            Some(&developer),
            json!({"project_id": project, "name": "theirs", "type": "webhook",
                   "target_workflow_id": targets["target_workflow_id"],
                   "agent_id": targets["agent_id"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap();
    let secret = created.body["secret"].as_str().unwrap();
    let demoted = app
        .patch(
            &format!("/api/v1/projects/{project}/members/{developer_id}"),
            &owner,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(demoted.status, StatusCode::OK, "{}", demoted.text);
    // WHEN a signed delivery arrives
    let reply = deliver(&app, id, Some(secret), None, Some("d"), b"{}").await;
    // THEN it is refused, nothing starts, and the fire says why
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    assert!(runs_of(&app, &owner, &project, id).await.is_empty());
    let fires = app
        .get(&format!("/api/v1/schedules/{id}/fires"), &owner)
        .await;
    let fire = &fires.body["items"][0];
    assert_eq!(fire["outcome"], "denied");
    assert!(
        fire["reason"].as_str().unwrap().contains("viewer"),
        "{fire}"
    );
}
