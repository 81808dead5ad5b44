//! Password guessing and mass sign-up meet throttles that hold under parallel requests, per
//! account and per source address.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use spark_ops_tests::{api_gateway_event, spawn_app, spawn_app_with, Reply, TestApp};

/// `POST` JSON as if from `address` (what the dev server's connection info reports).
async fn post_from(app: &TestApp, address: &str, path: &str, body: Value) -> Reply {
    let mut request = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        // A client-written header, never trusted.
        .header("x-forwarded-for", "198.51.100.99")
        .body(Body::from(body.to_string()))
        .unwrap();
    let peer: SocketAddr = address.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    app.send(request).await
}

fn login(email: &str, password: &str) -> Value {
    json!({"email": email, "password": password})
}

#[tokio::test]
async fn twenty_parallel_wrong_logins_check_at_most_the_allowed_number_of_passwords() {
    // GIVEN an account that tolerates 5 failed logins per window
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    assert_eq!(app.state.config.login_max_failures, 5);

    // WHEN 20 wrong passwords arrive at once
    let attempts = (0..20).map(|i| {
        app.post(
            "/api/v1/auth/login",
            None,
            login(&email, &format!("wrong-guess-{i}")),
        )
    });
    let replies = futures::future::join_all(attempts).await;

    // THEN at most 5 were checked (401); the rest were refused before any check (429)
    let checked = replies
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    let refused = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(checked <= 5, "{checked} passwords were checked");
    assert_eq!(checked + refused, 20);
    assert!(replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .all(|r| r.header("retry-after").is_some()));
    // AND even the right password waits for the window
    let right = app
        .post("/api/v1/auth/login", None, login(&email, &password))
        .await;
    assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn one_address_guessing_across_many_emails_is_throttled_but_others_are_not() {
    // GIVEN 3 tolerated failures per address and plenty per account
    let app = spawn_app_with(|config| {
        config.login_max_failures_per_address = 3;
        config.login_max_failures = 100;
    })
    .await;
    let (email, password) = app.register("Ada").await;

    // WHEN one address tries a wrong password on 3 different emails
    for i in 0..3 {
        let reply = post_from(
            &app,
            "203.0.113.5:40000",
            "/api/v1/auth/login",
            login(&format!("victim-{i}@example.com"), "wrong-guess-123"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
    }

    // THEN its next attempt, on any email and from any port, is refused, whatever
    // X-Forwarded-For claims
    let fourth = post_from(
        &app,
        "203.0.113.5:40001",
        "/api/v1/auth/login",
        login(&email, &password),
    )
    .await;
    assert_eq!(fourth.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(fourth.header("retry-after").is_some());
    // AND another address logs in normally
    let elsewhere = post_from(
        &app,
        "192.0.2.44:50000",
        "/api/v1/auth/login",
        login(&email, &password),
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::OK, "{}", elsewhere.text);
    // AND an IPv6 neighbour in the same /64 shares the budget of its network
    for _ in 0..3 {
        post_from(
            &app,
            "[2001:db8:1:2::1]:1000",
            "/api/v1/auth/login",
            login("nobody@example.com", "wrong-guess-123"),
        )
        .await;
    }
    let neighbour = post_from(
        &app,
        "[2001:db8:1:2:ffff::7]:1000",
        "/api/v1/auth/login",
        login(&email, &password),
    )
    .await;
    assert_eq!(neighbour.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn successful_logins_do_not_use_up_their_address() {
    // GIVEN 3 tolerated failures per address
    let app = spawn_app_with(|config| config.login_max_failures_per_address = 3).await;
    let (email, password) = app.register("Ada").await;

    // WHEN an office behind one address logs in 6 times, correctly
    for _ in 0..6 {
        let reply = post_from(
            &app,
            "203.0.113.9:1",
            "/api/v1/auth/login",
            login(&email, &password),
        )
        .await;
        // THEN every login succeeds
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
}

#[tokio::test]
async fn registrations_are_limited_per_source_address() {
    // GIVEN 2 registrations allowed per address and window
    let app = spawn_app_with(|config| config.register_max_per_address = 2).await;
    let register = |n: usize| json!({"email": format!("user-{n}@example.com"), "password": "violet-tundra-cascade-42", "name": "U"});

    // WHEN one address registers 3 accounts
    let first = post_from(&app, "203.0.113.7:1", "/api/v1/auth/register", register(1)).await;
    let second = post_from(&app, "203.0.113.7:2", "/api/v1/auth/register", register(2)).await;
    let third = post_from(&app, "203.0.113.7:3", "/api/v1/auth/register", register(3)).await;

    // THEN the third is refused and creates nothing
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: i64 = third.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    let login = app
        .post(
            "/api/v1/auth/login",
            None,
            login("user-3@example.com", "violet-tundra-cascade-42"),
        )
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
    // AND another address still registers
    let other = post_from(&app, "192.0.2.1:1", "/api/v1/auth/register", register(4)).await;
    assert_eq!(other.status, StatusCode::ACCEPTED);
    // AND once the window has passed, the first address may register again
    app.clock
        .advance(chrono::Duration::seconds(retry_after + 1));
    let later = post_from(&app, "203.0.113.7:4", "/api/v1/auth/register", register(3)).await;
    assert_eq!(later.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn in_lambda_the_api_gateway_source_ip_is_the_address() {
    // GIVEN one registration allowed per address
    let app = spawn_app_with(|config| config.register_max_per_address = 1).await;
    let replay = || app.send(api_gateway_event("apigw-register.json"));

    // WHEN the sample API Gateway event (source IP 203.0.113.10) arrives twice
    let first = replay().await;
    let second = replay().await;

    // THEN the second is refused for its source IP, while a request without one is not
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    let unknown = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "other@example.com", "password": "violet-tundra-cascade-42", "name": "O"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_right_password_gives_the_account_its_attempts_back() {
    // GIVEN an account with 4 failed logins (one short of the limit)
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    for _ in 0..4 {
        let reply = app
            .post("/api/v1/auth/login", None, login(&email, "wrong-guess-123"))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }

    // WHEN she logs in
    app.login(&email, &password).await;

    // THEN she has 5 attempts again
    for _ in 0..5 {
        let reply = app
            .post("/api/v1/auth/login", None, login(&email, "wrong-guess-123"))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let sixth = app
        .post("/api/v1/auth/login", None, login(&email, "wrong-guess-123"))
        .await;
    assert_eq!(sixth.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_failure_window_stored_before_reservations_does_not_lock_the_account() {
    // GIVEN an account whose throttle item has the old shape (`failures`, no `attempts`)
    use aws_sdk_dynamodb::types::AttributeValue;
    let app = spawn_app().await;
    let (email, password) = app.register("Ada").await;
    let now = spark_ops::domain::ts::format(&spark_ops::clock::Clock::now(&*app.clock));
    app.state
        .clients
        .ddb
        .put_item()
        .table_name(app.state.config.table_name("auth"))
        .item("pk", AttributeValue::S(format!("LOGIN#{email}")))
        .item("sk", AttributeValue::S("THROTTLE".into()))
        .item("failures", AttributeValue::N("1".into()))
        .item("window_start", AttributeValue::S(now))
        .send()
        .await
        .unwrap();

    // WHEN she logs in
    let reply = app
        .post("/api/v1/auth/login", None, login(&email, &password))
        .await;

    // THEN it works, and the window counts from here
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}
