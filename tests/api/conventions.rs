//! Conventions every route shares: problem errors, body limits, request ids, CORS, OpenAPI,
//! `nosniff`, and the docs page's Content-Security-Policy.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use spark_ops_tests::{capture_logs, spawn_app, spawn_app_with};

fn raw(method: Method, path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn malformed_or_mistyped_bodies_get_precise_problems() {
    let app = spawn_app().await;
    let malformed = app
        .send(raw(
            Method::POST,
            "/api/v1/auth/register",
            "application/json",
            "{\"email\":",
        ))
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        malformed.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(malformed.body["status"], 400);
    assert!(malformed.body["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:spark-ops:problem:"));

    let missing = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "a@example.com", "name": "A"}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing.error_fields(), vec!["password"]);

    let mistyped = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": ["a"], "password": "x"}),
        )
        .await;
    assert_eq!(mistyped.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(mistyped.error_fields(), vec!["email"]);

    let unknown = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "a@example.com", "password": "x", "admin": true}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);

    let not_json = app
        .send(raw(
            Method::POST,
            "/api/v1/auth/login",
            "text/plain",
            "hello",
        ))
        .await;
    assert_eq!(not_json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn a_body_over_one_mebibyte_gets_413_and_writes_nothing() {
    let app = spawn_app().await;
    let name = "x".repeat(1024 * 1024 + 1);
    let body =
        json!({"email": "big@example.com", "password": "violet-tundra-cascade-42", "name": name})
            .to_string();
    let reply = app
        .send(raw(
            Method::POST,
            "/api/v1/auth/register",
            "application/json",
            body,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let login = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "big@example.com", "password": "violet-tundra-cascade-42"}),
        )
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problems() {
    let app = spawn_app().await;
    let missing = app
        .call(Method::GET, "/api/v1/nothing-here", None, None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
    let wrong_method = app
        .call(Method::PUT, "/api/v1/auth/login", None, None)
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong_method.header("content-type"),
        Some("application/problem+json")
    );
}

#[tokio::test]
async fn every_response_carries_a_server_made_request_id_and_the_callers_is_only_logged() {
    let logs = capture_logs();
    let app = spawn_app().await;

    // WHEN a caller sends no request id, THEN the response carries a fresh UUIDv7
    let generated = app
        .call(Method::GET, "/api/v1/nothing-here", None, None)
        .await;
    let id = generated.header("x-request-id").expect("a request id");
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    // WHEN a caller sends their own id, one that tries to forge a log line
    let request = Request::builder()
        .uri("/api/v1/auth/me")
        .header(
            "x-request-id",
            "trace-me-123 {\"level\":\"ERROR\",\"request_id\":\"someone-else\"}",
        )
        .body(Body::empty())
        .unwrap();
    let reply = app.send(request).await;

    // THEN the correlation id is still the server's, not the caller's
    let id = reply
        .header("x-request-id")
        .expect("a request id")
        .to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    // AND the log keeps the caller's id, cleaned, as client_request_id next to the server's
    let lines: Vec<Value> = logs
        .text()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let span = lines
        .iter()
        .map(|line| &line["span"])
        .find(|span| span["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no log line of request {id}:\n{}", logs.text()));
    assert_eq!(
        span["client_request_id"],
        "trace-me-123level:ERRORrequest_id:someone-else"
    );
    assert!(
        !logs.text().contains("\"request_id\":\"someone-else\""),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn every_response_tells_browsers_not_to_sniff_and_the_docs_page_loads_nothing_remote() {
    let app = spawn_app().await;
    for path in ["/api/v1/nothing-here", "/api/v1/openapi.json", "/docs/"] {
        let reply = app.call(Method::GET, path, None, None).await;
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
    for path in [
        "/docs/",
        "/docs/swagger-initializer.js",
        "/docs/swagger-ui.css",
    ] {
        let reply = app.call(Method::GET, path, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        let csp = reply
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{path} has no Content-Security-Policy"));
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(
            !csp.contains("http"),
            "{path} allows a remote source: {csp}"
        );
    }
    // The page's own configuration turns off the online validator, which would fetch from
    // a third party.
    let initializer = app
        .call(Method::GET, "/docs/swagger-initializer.js", None, None)
        .await;
    assert!(
        initializer
            .text
            .replace(' ', "")
            .contains("\"validatorUrl\":\"none\""),
        "{}",
        initializer.text
    );
}

#[tokio::test]
async fn cors_allows_the_configured_origin_only() {
    let app = spawn_app_with(|config| {
        config.cors_allowed_origins = vec!["http://localhost:5173".to_owned()];
    })
    .await;
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api/v1/projects")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let allowed = app.send(preflight("http://localhost:5173")).await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    let denied = app.send(preflight("https://evil.example")).await;
    assert_eq!(denied.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn by_default_cors_allows_no_origin_in_the_code_and_in_the_template() {
    // GIVEN the default configuration
    let app = spawn_app().await;
    assert!(app.state.config.cors_allowed_origins.is_empty());

    // WHEN a page on localhost asks, THEN it is not allowed either
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/api/v1/projects")
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    let reply = app.send(preflight).await;
    assert_eq!(reply.header("access-control-allow-origin"), None);

    // AND a stack deployed with the template's defaults allows none
    let path = format!("{}/../template.yaml", env!("CARGO_MANIFEST_DIR"));
    let template: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        template["Parameters"]["CorsAllowedOrigins"]["Default"],
        serde_yaml::Value::String(String::new())
    );
}

/// Every operation the API serves, exactly: adding a route means adding it here, documented.
pub const OPERATIONS: &[&str] = &[
    "GET /health",
    "POST /api/v1/auth/register",
    "POST /api/v1/auth/login",
    "POST /api/v1/auth/refresh",
    "POST /api/v1/auth/logout",
    "POST /api/v1/auth/logout-all",
    "POST /api/v1/auth/password",
    "GET /api/v1/auth/me",
    "DELETE /api/v1/auth/me",
    "GET /api/v1/projects",
    "POST /api/v1/projects",
    "GET /api/v1/projects/{id}",
    "PATCH /api/v1/projects/{id}",
    "DELETE /api/v1/projects/{id}",
    "GET /api/v1/projects/{id}/members",
    "POST /api/v1/projects/{id}/members",
    "PATCH /api/v1/projects/{id}/members/{user_id}",
    "DELETE /api/v1/projects/{id}/members/{user_id}",
    "GET /api/v1/projects/{id}/invitations",
    "DELETE /api/v1/projects/{id}/invitations/{email}",
    "GET /api/v1/projects/{id}/api-keys",
    "POST /api/v1/projects/{id}/api-keys",
    "DELETE /api/v1/projects/{id}/api-keys/{key_id}",
    "GET /api/v1/registry/public-key",
    "GET /api/v1/agents",
    "POST /api/v1/agents",
    "GET /api/v1/agents/{id}",
    "PATCH /api/v1/agents/{id}",
    "DELETE /api/v1/agents/{id}",
    "POST /api/v1/agents/{id}/heartbeat",
    "GET /api/v1/agents/{id}/metrics",
    "GET /api/v1/agents/{id}/manifest",
    "POST /api/v1/agents/import",
    "GET /api/v1/tools",
    "POST /api/v1/tools",
    "GET /api/v1/tools/{id}",
    "PATCH /api/v1/tools/{id}",
    "DELETE /api/v1/tools/{id}",
    "GET /api/v1/tools/{id}/manifest",
    "POST /api/v1/tools/import",
    "GET /api/v1/credentials",
    "POST /api/v1/credentials",
    "GET /api/v1/credentials/{id}",
    "PATCH /api/v1/credentials/{id}",
    "DELETE /api/v1/credentials/{id}",
    "GET /api/v1/workflows",
    "POST /api/v1/workflows",
    "GET /api/v1/workflows/{id}",
    "PATCH /api/v1/workflows/{id}",
    "DELETE /api/v1/workflows/{id}",
    "GET /api/v1/workflows/{id}/versions",
    "POST /api/v1/workflows/{id}/versions",
    "GET /api/v1/workflows/{id}/versions/{n}",
    "PATCH /api/v1/workflows/{id}/versions/{n}",
    "GET /api/v1/runs",
    "POST /api/v1/runs",
    "GET /api/v1/runs/{id}",
    "PATCH /api/v1/runs/{id}/cancel",
    "POST /api/v1/runs/{id}/retry",
    "POST /api/v1/runs/{id}/resume",
    "POST /api/v1/runs/{id}/approve",
    "POST /api/v1/runs/{id}/reject",
    "GET /api/v1/runs/{id}/steps",
    "GET /api/v1/runs/{id}/logs",
    "POST /api/v1/events",
    "GET /api/v1/schedules",
    "POST /api/v1/schedules",
    "GET /api/v1/schedules/{id}",
    "PATCH /api/v1/schedules/{id}",
    "DELETE /api/v1/schedules/{id}",
    "POST /api/v1/schedules/{id}/trigger",
    "GET /api/v1/schedules/{id}/preview",
    "GET /api/v1/schedules/{id}/fires",
    "POST /api/v1/schedules/{id}/rotate-secret",
    "POST /api/v1/hooks/{schedule_id}",
];

/// `path` with its placeholders filled with values a route accepts.
pub fn concrete(path: &str) -> String {
    path.replace("{id}", &uuid::Uuid::now_v7().to_string())
        .replace("{user_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{key_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{schedule_id}", &uuid::Uuid::now_v7().to_string())
        .replace("{email}", "someone%40example.com")
        .replace("{n}", "1")
}

#[tokio::test]
async fn openapi_31_documents_exactly_the_operations_the_router_serves() {
    let app = spawn_app().await;
    let doc = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    let documented: std::collections::BTreeSet<String> = paths
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    let expected: std::collections::BTreeSet<String> =
        OPERATIONS.iter().map(|op| op.to_string()).collect();
    assert_eq!(
        expected.len(),
        OPERATIONS.len(),
        "OPERATIONS lists one twice"
    );
    assert_eq!(
        documented.difference(&expected).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "documented but not in OPERATIONS"
    );
    assert_eq!(
        expected.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in OPERATIONS but not documented"
    );

    // Every documented operation is served; every other method on a documented path is not.
    let all = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    for (path, methods) in paths {
        let served: Vec<String> = methods.as_object().unwrap().keys().cloned().collect();
        for method in &all {
            let reply = app.call(method.clone(), &concrete(path), None, None).await;
            assert_ne!(
                reply.body["detail"], "no such route",
                "{method} {path}: the path is documented but not routed"
            );
            if served.contains(&method.as_str().to_lowercase()) {
                assert_ne!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but not served"
                );
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented"
                );
            }
        }
    }
    for schema in [
        "Problem",
        "ProjectView",
        "TokenPair",
        "MemberView",
        "CreatedApiKey",
    ] {
        assert!(
            doc.body["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }
    let docs = app.call(Method::GET, "/docs/", None, None).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(
        docs.text.contains("swagger"),
        "the docs page is served from the binary"
    );
}

#[test]
fn every_api_route_is_declared_with_its_openapi_path() {
    // Routes registered through `routes!` carry their `#[utoipa::path]` into the document;
    // a bare axum `.route(..)` would serve an operation the document never mentions. Only the
    // docs module, which serves the document itself, may add routes that way.
    let api = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/src/api");
    let mut stack = vec![api];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            if path.file_name().unwrap() == "docs.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for bare in [".route(", ".route_service(", ".nest("] {
                assert!(
                    !text.contains(bare),
                    "{} adds a route with `{bare}`, outside the OpenAPI document",
                    path.display()
                );
            }
        }
    }
    assert!(files > 10, "the API sources were not found");
}
