//! Sessions after login: a refresh retried after a lost reply, password changes and "log out
//! everywhere".

use axum::http::StatusCode;
use serde_json::{json, Value};
use spark_ops::api::sessions::REFRESH_RETRY_GRACE;
use spark_ops_tests::{spawn_app, Reply, TestApp};

async fn refresh(app: &TestApp, token: &Value) -> Reply {
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": token}),
    )
    .await
}

fn access(pair: &Value) -> &str {
    pair["access_token"].as_str().unwrap()
}

#[tokio::test]
async fn a_refresh_retried_within_seconds_gets_the_same_successor_and_keeps_the_session() {
    // GIVEN a session whose first refresh succeeded, but whose client lost the reply
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let session = app.login(&email, &password).await;
    let lost = refresh(&app, &session["refresh_token"]).await;
    assert_eq!(lost.status, StatusCode::OK);

    // WHEN the client retries with the same refresh token a few seconds later
    app.clock.advance(chrono::Duration::seconds(3));
    let retried = refresh(&app, &session["refresh_token"]).await;

    // THEN it gets the successor already issued, with a working access token
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!(retried.body["refresh_token"], lost.body["refresh_token"]);
    assert_eq!(
        app.get("/api/v1/auth/me", access(&retried.body))
            .await
            .status,
        StatusCode::OK
    );
    // AND the session goes on
    let next = refresh(&app, &retried.body["refresh_token"]).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
}

#[tokio::test]
async fn two_tabs_refreshing_the_same_token_at_once_both_continue_the_session() {
    // GIVEN a session
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let session = app.login(&email, &password).await;

    // WHEN two requests exchange its refresh token at the same time
    let (a, b) = tokio::join!(
        refresh(&app, &session["refresh_token"]),
        refresh(&app, &session["refresh_token"]),
    );

    // THEN both get the same successor, which still works
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    assert_eq!(a.body["refresh_token"], b.body["refresh_token"]);
    assert_eq!(
        refresh(&app, &a.body["refresh_token"]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn replaying_a_token_whose_successor_was_used_revokes_the_session_even_within_seconds() {
    // GIVEN a session refreshed twice in a row
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let session = app.login(&email, &password).await;
    let second = refresh(&app, &session["refresh_token"]).await;
    let third = refresh(&app, &second.body["refresh_token"]).await;
    assert_eq!(third.status, StatusCode::OK);

    // WHEN the first token shows up again, within the grace period
    let replay = refresh(&app, &session["refresh_token"]).await;

    // THEN that is theft, not a retry: refused, and the whole session is revoked
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&app, &third.body["refresh_token"]).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_retry_after_the_grace_period_is_reuse_and_revokes_the_session() {
    // GIVEN a refreshed session
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let session = app.login(&email, &password).await;
    let next = refresh(&app, &session["refresh_token"]).await;

    // WHEN the old token comes back after the grace period
    app.clock
        .advance(REFRESH_RETRY_GRACE + chrono::Duration::seconds(1));
    let late = refresh(&app, &session["refresh_token"]).await;

    // THEN it is refused and the successor is revoked with it
    assert_eq!(late.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&app, &next.body["refresh_token"]).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn changing_the_password_ends_every_session_and_answers_a_fresh_one() {
    // GIVEN Ada logged in on a laptop and on a phone (the phone is the attacker's)
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let laptop = app.login(&email, &password).await;
    let phone = app.login(&email, &password).await;

    // WHEN she changes her password from the laptop
    let changed = app
        .post(
            "/api/v1/auth/password",
            Some(access(&laptop)),
            json!({"current_password": password, "new_password": "amber-glacier-lantern-77"}),
        )
        .await;

    // THEN she gets a fresh session
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(
        app.get("/api/v1/auth/me", access(&changed.body))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        refresh(&app, &changed.body["refresh_token"]).await.status,
        StatusCode::OK
    );
    // AND every earlier token stops working at once: refresh and access, phone and laptop
    for old in [&laptop, &phone] {
        assert_eq!(
            refresh(&app, &old["refresh_token"]).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            app.get("/api/v1/auth/me", access(old)).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // AND only the new password logs in
    let old_password = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(old_password.status, StatusCode::UNAUTHORIZED);
    app.login(&email, "amber-glacier-lantern-77").await;
}

#[tokio::test]
async fn a_password_change_needs_the_current_password_and_a_strong_new_one() {
    // GIVEN a session
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let session = app.login(&email, &password).await;
    let path = "/api/v1/auth/password";

    // WHEN the current password is wrong, or the new one weak
    let wrong = app
        .post(
            path,
            Some(access(&session)),
            json!({"current_password": "not-it-at-all", "new_password": "amber-glacier-lantern-77"}),
        )
        .await;
    let weak = app
        .post(
            path,
            Some(access(&session)),
            json!({"current_password": password, "new_password": "password123"}),
        )
        .await;

    // THEN both are refused, naming the problem, and nothing changed
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(weak.error_fields(), vec!["new_password"]);
    assert_eq!(
        app.get("/api/v1/auth/me", access(&session)).await.status,
        StatusCode::OK
    );
    app.login(&email, &password).await;
    // AND wrong current passwords count against the account's attempts
    for _ in 0..5 {
        app.post(
            path,
            Some(access(&session)),
            json!({"current_password": "not-it-at-all", "new_password": "amber-glacier-lantern-77"}),
        )
        .await;
    }
    let throttled = app
        .post(
            path,
            Some(access(&session)),
            json!({"current_password": password, "new_password": "amber-glacier-lantern-77"}),
        )
        .await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn logging_out_everywhere_ends_every_session_and_access_token() {
    // GIVEN two sessions
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let first = app.login(&email, &password).await;
    let second = app.login(&email, &password).await;

    // WHEN one of them logs out everywhere
    let out = app
        .call(
            axum::http::Method::POST,
            "/api/v1/auth/logout-all",
            Some(access(&first)),
            None,
        )
        .await;

    // THEN every token of both stops working
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    for old in [&first, &second] {
        assert_eq!(
            app.get("/api/v1/auth/me", access(old)).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            refresh(&app, &old["refresh_token"]).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // AND logging in again works
    let again = app.login(&email, &password).await;
    assert_eq!(
        app.get("/api/v1/auth/me", access(&again)).await.status,
        StatusCode::OK
    );
}
