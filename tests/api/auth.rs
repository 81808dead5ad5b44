use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use spark_ops::api::sessions::REFRESH_RETRY_GRACE;
use spark_ops::auth::jwt::Claims;
use spark_ops::clock::Clock;
use spark_ops_tests::spawn_app;

const STRONG: &str = "violet-tundra-cascade-42";

#[tokio::test]
async fn registering_answers_202_with_the_normalised_email_and_no_secret() {
    // WHEN someone registers
    let app = spawn_app().await;
    let reply = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "Ada@Example.com", "password": STRONG, "name": "Ada"}),
        )
        .await;

    // THEN the answer says to log in next, and holds no secret
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.body["email"], "ada@example.com");
    assert_eq!(reply.body["status"], "accepted");
    assert!(reply.body.get("password_hash").is_none());
    assert!(!reply.text.contains(STRONG));
    // AND the account works at once
    app.login("ada@example.com", STRONG).await;
}

#[tokio::test]
async fn registering_a_taken_email_answers_like_a_new_one_and_changes_nothing() {
    // GIVEN Ada's account
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let fresh_email = format!("fresh-{}", email);

    // WHEN an outsider registers her email (in another case, with their own password), and
    // a fresh email for comparison
    let taken = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": email.to_uppercase(), "password": "amber-glacier-lantern-77", "name": "Eve"}),
        )
        .await;
    let fresh = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": fresh_email, "password": "amber-glacier-lantern-77", "name": "Eve"}),
        )
        .await;

    // THEN both answers are the same but for the email itself
    assert_eq!(taken.status, fresh.status);
    assert_eq!(taken.status, StatusCode::ACCEPTED);
    assert_eq!(taken.body["email"], email);
    let mut masked = fresh.body.clone();
    masked["email"] = taken.body["email"].clone();
    assert_eq!(masked, taken.body);
    assert_eq!(taken.header("content-type"), fresh.header("content-type"));

    // AND Ada's account is untouched: her password works, the outsider's does not
    app.login(&email, &password).await;
    let outsider = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": "amber-glacier-lantern-77"}),
        )
        .await;
    assert_eq!(outsider.status, StatusCode::UNAUTHORIZED);
    let me = app
        .get(
            "/api/v1/auth/me",
            app.login(&email, &password).await["access_token"]
                .as_str()
                .unwrap(),
        )
        .await;
    assert_eq!(me.body["name"], "Ada");
}

#[tokio::test]
async fn weak_passwords_and_bad_emails_are_named_and_store_nothing() {
    let app = spawn_app().await;
    let reply = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "not-an-email", "password": "password123", "name": " "}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["email", "name", "password"]);
    // The same email with a weak password leaves no trace: registering it properly works.
    let weak = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "bo@example.com", "password": "short", "name": "Bo"}),
        )
        .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    let ok = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "bo@example.com", "password": STRONG, "name": "Bo"}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED);
    app.login("bo@example.com", STRONG).await;
}

#[tokio::test]
async fn login_returns_a_bearer_pair_and_me_returns_the_user() {
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let tokens = app.login(&email, &password).await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    let me = app
        .get("/api/v1/auth/me", tokens["access_token"].as_str().unwrap())
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["email"], email);
    assert!(me.body["last_login_at"].is_string());
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_401() {
    let app = spawn_app().await;
    let (email, _) = app.register("Ada").await;
    let wrong = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": "not-the-password"}),
        )
        .await;
    let unknown = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "nobody@example.com", "password": STRONG}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.body["detail"], unknown.body["detail"]);
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_until_the_window_passes() {
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    for _ in 0..5 {
        let reply = app
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": "wrong-guess-123"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    // Even the right password is refused while throttled.
    let throttled = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: i64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");

    app.clock
        .advance(chrono::Duration::seconds(retry_after + 1));
    let reply = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_rotates_and_reusing_a_rotated_token_revokes_the_family() {
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let first = app.login(&email, &password).await;
    let r1 = first["refresh_token"].as_str().unwrap();

    let second = app
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r1}))
        .await;
    assert_eq!(second.status, StatusCode::OK);
    let r2 = second.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);

    // Past the grace period for a client retrying after a lost reply, presenting r1 is reuse.
    app.clock
        .advance(REFRESH_RETRY_GRACE + chrono::Duration::seconds(1));
    let reuse = app
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r1}))
        .await;
    assert_eq!(reuse.status, StatusCode::UNAUTHORIZED);
    // The whole family is gone, including the token that was still current.
    let after = app
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r2}))
        .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    // Other sessions of the same user are untouched.
    let other = app.login(&email, &password).await;
    let reply = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": other["refresh_token"]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn logout_revokes_the_family() {
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let tokens = app.login(&email, &password).await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let rotated = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
    let current = rotated.body["refresh_token"].as_str().unwrap();
    let out = app
        .post(
            "/api/v1/auth/logout",
            None,
            json!({"refresh_token": current}),
        )
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let again = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": current}),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    let unknown = app
        .post(
            "/api/v1/auth/logout",
            None,
            json!({"refresh_token": "made-up"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused() {
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let tokens = app.login(&email, &password).await;
    app.clock
        .advance(chrono::Duration::days(7) + chrono::Duration::seconds(1));
    let reply = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

fn forge(header: &str, claims: &serde_json::Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    )
}

#[tokio::test]
async fn forged_and_stale_access_tokens_get_401_problems() {
    let app = spawn_app().await;
    let token = app.user("Ada").await;
    let claims: Claims = app
        .state
        .keys()
        .unwrap()
        .verify(&token, app.clock.now())
        .unwrap();
    let claims_json = serde_json::to_value(&claims).unwrap();
    let secret = app
        .state
        .clients
        .secrets
        .get_secret_value()
        .secret_id(app.state.config.jwt_secret_name())
        .send()
        .await
        .unwrap()
        .secret_string
        .unwrap();
    let signature = token.rsplit('.').next().unwrap();
    let mut tampered = claims_json.clone();
    tampered["sub"] = json!(uuid::Uuid::now_v7());
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let forgeries = [
        (
            "alg none",
            forge(r#"{"alg":"none","typ":"JWT"}"#, &claims_json, ""),
        ),
        (
            "bad signature",
            forge(r#"{"alg":"HS256","typ":"JWT"}"#, &tampered, signature),
        ),
        ("unexpected algorithm", hs512),
        (
            "wrong issuer",
            app.state
                .keys()
                .unwrap()
                .sign(&Claims {
                    iss: "evil".into(),
                    ..claims.clone()
                })
                .unwrap(),
        ),
        (
            "wrong audience",
            app.state
                .keys()
                .unwrap()
                .sign(&Claims {
                    aud: "evil".into(),
                    ..claims.clone()
                })
                .unwrap(),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, forged) in forgeries {
        let reply = app.get("/api/v1/auth/me", &forged).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
    }
    app.clock.advance(chrono::Duration::minutes(15));
    let expired = app.get("/api/v1/auth/me", &token).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert!(expired.body["detail"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn a_deleted_users_token_stops_working() {
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let tokens = app.login(&email, &password).await;
    let token = tokens["access_token"].as_str().unwrap();
    let wrong = app
        .call(
            axum::http::Method::DELETE,
            "/api/v1/auth/me",
            Some(token),
            Some(json!({"password": "nope-nope-nope"})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let deleted = app
        .call(
            axum::http::Method::DELETE,
            "/api/v1/auth/me",
            Some(token),
            Some(json!({"password": password})),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_eq!(
        app.get("/api/v1/auth/me", token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let refresh = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED);
    let login = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_last_owner_of_a_project_cannot_delete_their_account() {
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let token = app.login(&email, &password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.project(&token, "Solo").await;
    let reply = app
        .call(
            axum::http::Method::DELETE,
            "/api/v1/auth/me",
            Some(&token),
            Some(json!({"password": password})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(
        app.get("/api/v1/auth/me", &token).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_owner_of_only_deleted_projects_may_delete_their_account() {
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let token = app.login(&email, &password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let project = app.project(&token, "Gone").await;
    assert_eq!(
        app.delete(&format!("/api/v1/projects/{project}"), &token)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let reply = app
        .call(
            axum::http::Method::DELETE,
            "/api/v1/auth/me",
            Some(&token),
            Some(json!({"password": password})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text);
}

#[tokio::test]
async fn wrong_passwords_on_account_deletion_are_throttled_too() {
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let token = app.login(&email, &password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..5 {
        let reply = app
            .call(
                axum::http::Method::DELETE,
                "/api/v1/auth/me",
                Some(&token),
                Some(json!({"password": "guess-guess-guess"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let throttled = app
        .call(
            axum::http::Method::DELETE,
            "/api/v1/auth/me",
            Some(&token),
            Some(json!({"password": password})),
        )
        .await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        app.get("/api/v1/auth/me", &token).await.status,
        StatusCode::OK
    );
}
