//! Every project route, tried by an outsider (expect 404) and by a viewer on every mutation
//! (expect 403); neither changes anything.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use spark_ops_tests::{spawn_app, TestApp};

struct World {
    app: TestApp,
    owner: String,
    project: String,
    owner_id: String,
    key_id: String,
}

async fn world() -> World {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Guarded").await;
    let owner_id = app.get("/api/v1/auth/me", &owner).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = app
        .post(
            &format!("/api/v1/projects/{project}/api-keys"),
            Some(&owner),
            json!({"name": "k", "role": "viewer"}),
        )
        .await;
    let key_id = key.body["id"].as_str().unwrap().to_owned();
    World {
        app,
        owner,
        project,
        owner_id,
        key_id,
    }
}

fn routes(w: &World, invitee_email: &str) -> Vec<(Method, String, Option<Value>)> {
    let p = &w.project;
    vec![
        (Method::GET, format!("/api/v1/projects/{p}"), None),
        (
            Method::PATCH,
            format!("/api/v1/projects/{p}"),
            Some(json!({"name": "Taken over"})),
        ),
        (Method::DELETE, format!("/api/v1/projects/{p}"), None),
        (Method::GET, format!("/api/v1/projects/{p}/members"), None),
        (
            Method::POST,
            format!("/api/v1/projects/{p}/members"),
            Some(json!({"email": invitee_email, "role": "viewer"})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/projects/{p}/members/{}", w.owner_id),
            Some(json!({"role": "viewer"})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/projects/{p}/members/{}", w.owner_id),
            None,
        ),
        (Method::GET, format!("/api/v1/projects/{p}/api-keys"), None),
        (
            Method::POST,
            format!("/api/v1/projects/{p}/api-keys"),
            Some(json!({"name": "x", "role": "viewer"})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/projects/{p}/api-keys/{}", w.key_id),
            None,
        ),
    ]
}

async fn snapshot(w: &World) -> (Value, Value, Value) {
    let p = &w.project;
    let project = w
        .app
        .get(&format!("/api/v1/projects/{p}"), &w.owner)
        .await
        .body;
    let members = w
        .app
        .get(&format!("/api/v1/projects/{p}/members"), &w.owner)
        .await
        .body;
    let keys = w
        .app
        .get(&format!("/api/v1/projects/{p}/api-keys"), &w.owner)
        .await
        .body;
    (project, members, keys)
}

#[tokio::test]
async fn a_non_member_gets_404_on_every_project_route_and_changes_nothing() {
    let w = world().await;
    let outsider = w.app.user("Outsider").await;
    let invitee = w.app.user("Invitee").await;
    let invitee_email = w.app.get("/api/v1/auth/me", &invitee).await.body["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = snapshot(&w).await;
    for (method, path, body) in routes(&w, &invitee_email) {
        let reply = w
            .app
            .call(method.clone(), &path, Some(&outsider), body)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            reply.text
        );
    }
    let listed = w.app.get("/api/v1/projects", &outsider).await;
    assert!(listed.body["items"].as_array().unwrap().is_empty());
    assert_eq!(snapshot(&w).await, before);
}

#[tokio::test]
async fn a_viewer_gets_403_on_every_mutation_and_changes_nothing() {
    let w = world().await;
    let viewer = w.app.user("Viewer").await;
    w.app
        .add_member(&w.owner, &w.project, &viewer, "viewer")
        .await;
    let invitee = w.app.user("Invitee").await;
    let invitee_email = w.app.get("/api/v1/auth/me", &invitee).await.body["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = snapshot(&w).await;
    for (method, path, body) in routes(&w, &invitee_email) {
        let reply = w.app.call(method.clone(), &path, Some(&viewer), body).await;
        let expected = match (method.as_str(), path.ends_with("/api-keys")) {
            ("GET", false) => StatusCode::OK,
            _ => StatusCode::FORBIDDEN,
        };
        assert_eq!(reply.status, expected, "{method} {path}: {}", reply.text);
    }
    assert_eq!(snapshot(&w).await, before);
}

#[tokio::test]
async fn a_key_of_another_project_gets_404_on_every_route() {
    let w = world().await;
    let other_project = w.app.project(&w.owner, "Other").await;
    let key = w
        .app
        .post(
            &format!("/api/v1/projects/{other_project}/api-keys"),
            Some(&w.owner),
            json!({"name": "k", "role": "admin"}),
        )
        .await
        .body["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = snapshot(&w).await;
    for (method, path, body) in routes(&w, "nobody@example.com") {
        let reply = w.app.call(method.clone(), &path, Some(&key), body).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            reply.text
        );
    }
    assert_eq!(snapshot(&w).await, before);
}

#[tokio::test]
async fn every_route_but_health_and_docs_requires_credentials() {
    let w = world().await;
    let p = &w.project;
    let protected = [
        (Method::GET, "/api/v1/auth/me".to_owned()),
        (Method::DELETE, "/api/v1/auth/me".to_owned()),
        (Method::GET, "/api/v1/projects".to_owned()),
        (Method::POST, "/api/v1/projects".to_owned()),
        (Method::GET, format!("/api/v1/projects/{p}")),
        (Method::GET, format!("/api/v1/projects/{p}/members")),
        (Method::GET, format!("/api/v1/projects/{p}/api-keys")),
    ];
    for (method, path) in protected {
        let reply = w
            .app
            .call(method.clone(), &path, None, Some(json!({})))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    let health = w.app.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text);
    assert_eq!(health.body["checks"]["dynamodb"]["status"], "ok");
    assert_eq!(health.body["checks"]["sqs"]["status"], "ok");
    assert_eq!(health.body["checks"]["secretsmanager"]["status"], "ok");
    assert_eq!(health.body["checks"]["stepfunctions"]["status"], "ok");
}
