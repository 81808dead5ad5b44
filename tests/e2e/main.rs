//! End to end over HTTP against the dev server binary, on the real local services:
//! register → login → project → member → refresh rotation and reuse detection → API key → logout.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::start_dev_server;

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request.send().await.expect("the dev server answers");
        assert!(reply.headers().contains_key("x-request-id"));
        let status = reply.status();
        let body = reply.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, Some(token), None)
            .await
    }
}

#[tokio::test]
async fn a_team_signs_up_collaborates_and_signs_out_over_http() {
    let server = start_dev_server(&[]).await;
    let api = Api {
        client: reqwest::Client::new(),
        base: server.base.clone(),
    };
    let password = "violet-tundra-cascade-42";
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let (ada, bob) = (
        format!("ada-{unique}@example.com"),
        format!("bob-{unique}@example.com"),
    );

    // GIVEN two registered users
    for (email, name) in [(&ada, "Ada"), (&bob, "Bob")] {
        let (status, user) = api
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": email, "password": password, "name": name}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{user}");
    }
    // WHEN Ada logs in and creates a project
    let (status, session) = api
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": ada, "password": password}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let access = session["access_token"].as_str().unwrap().to_owned();
    let (status, me) = api.get("/api/v1/auth/me", &access).await;
    assert_eq!(
        (status, me["email"].as_str()),
        (StatusCode::OK, Some(ada.as_str()))
    );
    let (status, project) = api
        .post(
            "/api/v1/projects",
            Some(&access),
            json!({"name": "Support bots", "slug": format!("support-{}", &unique[20..])}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    let project_id = project["id"].as_str().unwrap();

    // AND invites Bob as a developer, which he accepts by logging in
    let (status, member) = api
        .post(
            &format!("/api/v1/projects/{project_id}/members"),
            Some(&access),
            json!({"email": bob, "role": "developer"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{member}");
    let (_, bob_session) = api
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": bob, "password": password}),
        )
        .await;
    let (status, bobs_view) = api
        .get(
            &format!("/api/v1/projects/{project_id}"),
            bob_session["access_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(
        (status, bobs_view["role"].as_str()),
        (StatusCode::OK, Some("developer"))
    );

    // THEN refresh rotates, and replaying the old refresh token once its successor was used
    // revokes the session
    let first_refresh = session["refresh_token"].as_str().unwrap();
    let (status, rotated) = api
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": first_refresh}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, latest) = api
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": rotated["refresh_token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": first_refresh}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": latest["refresh_token"]}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the whole family is revoked"
    );

    // AND an API key acts inside the project only
    let (_, fresh) = api
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": ada, "password": password}),
        )
        .await;
    let access = fresh["access_token"].as_str().unwrap().to_owned();
    let (status, key) = api
        .post(
            &format!("/api/v1/projects/{project_id}/api-keys"),
            Some(&access),
            json!({"name": "ci", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let key = key["key"].as_str().unwrap();
    let (status, seen) = api
        .get(&format!("/api/v1/projects/{project_id}"), key)
        .await;
    assert_eq!(
        (status, seen["role"].as_str()),
        (StatusCode::OK, Some("viewer"))
    );
    let (status, _) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/projects/{project_id}"),
            Some(key),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // AND logout ends the session
    let (status, _) = api
        .post(
            "/api/v1/auth/logout",
            None,
            json!({"refresh_token": fresh["refresh_token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": fresh["refresh_token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
