//! The `tool` and `webhook` step executors against fake third parties (wiremock), with the
//! real local services holding credentials, webhook secrets, breakers and rate windows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spark_ops::clock::Clock;
use spark_ops::engine::tool::{ToolError, ToolExecutor, REDACTED};
use spark_ops::engine::webhook::{
    self, project_secret, verify, Delivery, WebhookError, WebhookSender, DELIVERY_HEADER,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use spark_ops::outbound::send::Backoff;
use spark_ops::store::tools::Tool;
use spark_ops_tests::{capture_logs, egress_allowing, spawn_app, TestApp};
use uuid::Uuid;
use wiremock::matchers::{body_json, body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Waits short enough that retries do not slow the suite down.
const FAST: Backoff = Backoff {
    base: Duration::from_millis(2),
    cap: Duration::from_millis(20),
};

/// The seed CRM contract.
fn crm_inputs_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["create_customer", "search_customers"]},
            "data": {"type": "object"}
        },
        "required": ["action", "data"]
    })
}

fn crm_outputs_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"success": {"type": "boolean"}, "result": {"type": "object"}},
        "required": ["success"]
    })
}

fn search() -> Value {
    json!({"action": "search_customers", "data": {"email": "ada@example.com"}})
}

fn found() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"success": true, "result": {"id": "c-1"}}))
}

/// A project, a fake tool API and a credential no other test uses.
struct World {
    app: TestApp,
    owner: String,
    project: String,
    server: MockServer,
    api_key: String,
}

async fn world() -> World {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Engine").await;
    World {
        app,
        owner,
        project,
        server: MockServer::start().await,
        api_key: format!("sk-engine-{}", Uuid::now_v7().simple()),
    }
}

/// Shallow-merges `extra` into `target`.
fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}

impl World {
    /// Registers an http tool through the API (credentials to Secrets Manager) calling the
    /// fake at `/crm`; `config` and `fields` override the defaults.
    async fn tool(&self, config: Value, fields: Value) -> Tool {
        let mut tool_config = json!({
            "url": format!("{}/crm", self.server.uri()),
            "method": "POST",
            "headers": {"Authorization": "Bearer {{ credentials.api_key }}", "X-Action": "{{ input.action }}"},
            "timeout_ms": 2000,
            "retry_attempts": 0,
            "circuit_breaker_threshold": 5,
            "inputs_schema": crm_inputs_schema(),
            "outputs_schema": crm_outputs_schema(),
        });
        merge(&mut tool_config, config);
        let mut body = json!({
            "project_id": self.project,
            "name": "crm_tool",
            "kind": "http",
            "auth_type": "apikey",
            "env": "dev",
            "config": tool_config,
            "credentials": {"api_key": self.api_key},
        });
        merge(&mut body, fields);
        let reply = self
            .app
            .post("/api/v1/tools", Some(&self.owner), body)
            .await;
        assert_eq!(reply.status, 201, "create tool: {}", reply.text);
        let id: Uuid = reply.body["id"].as_str().unwrap().parse().unwrap();
        self.app.state.store.get_tool(id).await.unwrap().unwrap()
    }

    fn executor(&self) -> ToolExecutor {
        self.executor_allowing(&[&self.server.uri()])
    }

    /// An executor that may reach the local addresses `urls` (and no other).
    fn executor_allowing(&self, urls: &[&str]) -> ToolExecutor {
        ToolExecutor::new(
            egress_allowing(urls),
            self.app.state.store.clone(),
            self.app.state.secrets.clone(),
            self.app.state.clock.clone(),
        )
        .with_backoff(FAST)
    }

    /// Requests the fake received so far.
    async fn requests(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .len()
    }
}

#[tokio::test]
async fn a_call_sends_rendered_credentials_and_returns_the_validated_output() {
    // GIVEN an http tool whose headers take the API key and the action from templates
    let world = world().await;
    let tool = world
        .tool(json!({}), json!({"rate_limit_per_min": 120}))
        .await;
    Mock::given(method("POST"))
        .and(path("/crm"))
        .and(header(
            "authorization",
            format!("Bearer {}", world.api_key).as_str(),
        ))
        .and(header("x-action", "search_customers"))
        .and(header("content-type", "application/json"))
        .and(body_json(search()))
        .respond_with(found())
        .expect(1)
        .mount(&world.server)
        .await;

    // WHEN it is called
    world.app.ddb_requests.reset();
    let outcome = world.executor().call(&tool, search()).await.unwrap();

    // THEN the output is the response JSON, after one attempt
    assert_eq!(
        outcome.output,
        json!({"success": true, "result": {"id": "c-1"}})
    );
    assert_eq!((outcome.status, outcome.attempts), (200, 1));
    // AND the recorded request shows what was sent, the secret header redacted
    assert_eq!(outcome.request["method"], "POST");
    assert_eq!(outcome.request["headers"]["Authorization"], REDACTED);
    assert_eq!(outcome.request["headers"]["X-Action"], "search_customers");
    assert_eq!(outcome.request["body"], search());
    assert!(!outcome.request.to_string().contains(&world.api_key));
    // AND a healthy call costs two DynamoDB requests: the breaker read and the rate slot
    assert_eq!(
        world.app.ddb_requests.operations(),
        vec!["GetItem", "UpdateItem"]
    );
}

#[tokio::test]
async fn an_input_that_breaks_the_inputs_schema_is_refused_before_any_request() {
    // GIVEN a tool with the CRM input schema
    let world = world().await;
    let tool = world.tool(json!({}), json!({})).await;
    Mock::given(method("POST"))
        .respond_with(found())
        .mount(&world.server)
        .await;
    let executor = world.executor();

    // WHEN it is called with an action outside the enum, or without `data`
    world.app.ddb_requests.reset();
    let bad_action = executor
        .call(&tool, json!({"action": "drop_tables", "data": {}}))
        .await
        .unwrap_err();
    let no_data = executor
        .call(&tool, json!({"action": "search_customers"}))
        .await
        .unwrap_err();

    // THEN each is InvalidInput naming where, final, and nothing was called or read
    assert!(
        matches!(&bad_action, ToolError::InvalidInput { pointer, .. } if pointer == "/action"),
        "{bad_action:?}"
    );
    assert!(
        matches!(&no_data, ToolError::InvalidInput { pointer, message } if pointer.is_empty() && message.contains("data")),
        "{no_data:?}"
    );
    assert!(!bad_action.is_retryable());
    assert!(
        !bad_action.to_string().contains("drop_tables"),
        "the value is masked"
    );
    assert_eq!(world.requests().await, 0);
    assert_eq!(world.app.ddb_requests.count(), 0);
}

#[tokio::test]
async fn two_503s_then_a_200_succeed_on_the_third_attempt() {
    // GIVEN a tool allowed 3 retries, whose API fails twice with 503
    let world = world().await;
    let tool = world.tool(json!({"retry_attempts": 3}), json!({})).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&world.server)
        .await;
    Mock::given(method("POST"))
        .respond_with(found())
        .mount(&world.server)
        .await;

    // WHEN it is called
    let outcome = world.executor().call(&tool, search()).await.unwrap();

    // THEN the third attempt succeeds
    assert_eq!(outcome.attempts, 3);
    assert_eq!(world.requests().await, 3);
    // AND the two failed attempts do not count as a failed call
    let breaker = world.app.state.store.tool_breaker(tool.id).await.unwrap();
    assert_eq!(breaker.consecutive_failures, 0);
}

#[tokio::test]
async fn a_400_is_final_and_not_retried() {
    // GIVEN a tool allowed 3 retries, whose API refuses the request
    let world = world().await;
    let tool = world.tool(json!({"retry_attempts": 3}), json!({})).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"error": "data.email is required"})),
        )
        .mount(&world.server)
        .await;

    // WHEN it is called
    let err = world.executor().call(&tool, search()).await.unwrap_err();

    // THEN one attempt was made and the error quotes the answer
    assert!(
        matches!(
            &err,
            ToolError::Status {
                status: 400,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("data.email is required"), "{err}");
    assert_eq!(world.requests().await, 1);
    // AND a tool that answers is not failing: its breaker counts nothing
    let breaker = world.app.state.store.tool_breaker(tool.id).await.unwrap();
    assert_eq!(breaker.consecutive_failures, 0);
}

#[tokio::test]
async fn a_tool_that_never_answers_in_time_is_retried_then_times_out() {
    // GIVEN a tool with a 200 ms timeout and one retry, whose API takes 2 s
    let world = world().await;
    let tool = world
        .tool(json!({"timeout_ms": 200, "retry_attempts": 1}), json!({}))
        .await;
    Mock::given(method("POST"))
        .respond_with(found().set_delay(Duration::from_secs(2)))
        .mount(&world.server)
        .await;

    // WHEN it is called
    let err = world.executor().call(&tool, search()).await.unwrap_err();

    // THEN both attempts timed out, and the failure may be retried later
    assert!(
        matches!(
            err,
            ToolError::Timeout {
                timeout_ms: 200,
                attempts: 2
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(world.requests().await, 2);
    // AND the failed call is counted by the breaker and dated on the tool
    let breaker = world.app.state.store.tool_breaker(tool.id).await.unwrap();
    assert_eq!(breaker.consecutive_failures, 1);
    let stored = world
        .app
        .state
        .store
        .get_tool(tool.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.last_error_at.map(|at| at.timestamp_millis()),
        Some(world.app.clock.now().timestamp_millis())
    );
    assert_eq!(stored.version, tool.version, "the engine bumps no version");
}

/// Fails `threshold` calls with 500 so the breaker opens.
async fn trip(world: &World, executor: &ToolExecutor, tool: &Tool, threshold: usize) {
    let failing = Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .named("failing")
        .mount_as_scoped(&world.server)
        .await;
    for _ in 0..threshold {
        let err = executor.call(tool, search()).await.unwrap_err();
        assert!(
            matches!(err, ToolError::Status { status: 500, .. }),
            "{err:?}"
        );
    }
    drop(failing);
}

#[tokio::test]
async fn consecutive_failed_calls_open_the_breaker_and_then_calls_fail_fast() {
    // GIVEN a tool whose breaker opens after 2 consecutive failures
    let world = world().await;
    let tool = world
        .tool(json!({"circuit_breaker_threshold": 2}), json!({}))
        .await;
    let executor = world.executor();

    // WHEN two calls fail
    trip(&world, &executor, &tool, 2).await;
    let breaker = world.app.state.store.tool_breaker(tool.id).await.unwrap();
    assert_eq!(breaker.consecutive_failures, 2);
    assert_eq!(
        breaker.open_until.map(|at| at.timestamp_millis()),
        Some((world.app.clock.now() + chrono::Duration::seconds(30)).timestamp_millis())
    );

    // THEN the next call fails fast, without any request, and says when to come back
    Mock::given(method("POST"))
        .respond_with(found())
        .mount(&world.server)
        .await;
    let err = executor.call(&tool, search()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ToolError::CircuitOpen {
                retry_after_secs: 30
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(world.requests().await, 2);
    // AND another worker (another executor) sees the same open breaker
    let other = world.executor().call(&tool, search()).await.unwrap_err();
    assert!(matches!(other, ToolError::CircuitOpen { .. }), "{other:?}");
    assert_eq!(world.requests().await, 2);
}

#[tokio::test]
async fn after_the_cooldown_a_single_probe_goes_through_and_its_success_closes_the_breaker() {
    // GIVEN an open breaker, and an API that has recovered but answers slowly
    let world = world().await;
    let tool = world
        .tool(json!({"circuit_breaker_threshold": 2}), json!({}))
        .await;
    let executor = world.executor();
    trip(&world, &executor, &tool, 2).await;
    world.server.reset().await;
    Mock::given(method("POST"))
        .respond_with(found().set_delay(Duration::from_millis(300)))
        .mount(&world.server)
        .await;

    // WHEN the cooldown passes and two workers call at once
    world.app.clock.advance(chrono::Duration::seconds(31));
    let other = world.executor();
    let (first, second) = tokio::join!(executor.call(&tool, search()), other.call(&tool, search()));

    // THEN exactly one of them probed the tool; the other failed fast
    let (probed, refused) = match (first, second) {
        (Ok(probed), Err(refused)) | (Err(refused), Ok(probed)) => (probed, refused),
        other => panic!("expected one probe and one refusal, got {other:?}"),
    };
    assert_eq!(probed.status, 200);
    assert!(
        matches!(refused, ToolError::CircuitOpen { .. }),
        "{refused:?}"
    );
    assert_eq!(world.requests().await, 1);
    // AND the probe's success closed the breaker: calls flow again
    let breaker = world.app.state.store.tool_breaker(tool.id).await.unwrap();
    assert_eq!(breaker.consecutive_failures, 0);
    assert_eq!(breaker.open_until, None);
    executor.call(&tool, search()).await.unwrap();
    other.call(&tool, search()).await.unwrap();
    assert_eq!(world.requests().await, 3);
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker_for_another_cooldown() {
    // GIVEN an open breaker whose cooldown has passed, and an API still failing
    let world = world().await;
    let tool = world
        .tool(json!({"circuit_breaker_threshold": 2}), json!({}))
        .await;
    let executor = world.executor();
    trip(&world, &executor, &tool, 2).await;
    world.app.clock.advance(chrono::Duration::seconds(31));
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&world.server)
        .await;

    // WHEN the probe fails
    let probe = executor.call(&tool, search()).await.unwrap_err();
    assert!(
        matches!(probe, ToolError::Status { status: 502, .. }),
        "{probe:?}"
    );

    // THEN the breaker is open again for a full cooldown, and calls fail fast
    let breaker = world.app.state.store.tool_breaker(tool.id).await.unwrap();
    assert_eq!(
        breaker.open_until.map(|at| at.timestamp_millis()),
        Some((world.app.clock.now() + chrono::Duration::seconds(30)).timestamp_millis())
    );
    assert_eq!(breaker.consecutive_failures, 3);
    let err = executor.call(&tool, search()).await.unwrap_err();
    assert!(matches!(err, ToolError::CircuitOpen { .. }), "{err:?}");
    assert_eq!(world.requests().await, 3);
}

#[tokio::test]
async fn the_rate_limit_refuses_the_third_call_of_a_minute_and_admits_the_next_minute() {
    // GIVEN a tool limited to 2 calls per minute
    let world = world().await;
    let tool = world
        .tool(json!({}), json!({"rate_limit_per_min": 2}))
        .await;
    Mock::given(method("POST"))
        .respond_with(found())
        .mount(&world.server)
        .await;
    let executor = world.executor();

    // WHEN two workers make three calls within one minute
    executor.call(&tool, search()).await.unwrap();
    world.executor().call(&tool, search()).await.unwrap();
    let third = executor.call(&tool, search()).await.unwrap_err();

    // THEN the third is refused without a request, and may be retried next minute
    let ToolError::RateLimited {
        limit,
        retry_after_secs,
    } = third
    else {
        panic!("expected RateLimited, got {third:?}");
    };
    assert_eq!(limit, 2);
    assert!((1..=60).contains(&retry_after_secs));
    assert_eq!(world.requests().await, 2);

    // AND in the next minute calls go through again
    world.app.clock.advance(chrono::Duration::seconds(60));
    executor.call(&tool, search()).await.unwrap();
    assert_eq!(world.requests().await, 3);
}

#[tokio::test]
async fn an_answer_that_breaks_the_outputs_schema_or_is_not_json_is_invalid_output() {
    // GIVEN a tool whose API answers with a wrong type, then with HTML
    let world = world().await;
    let tool = world.tool(json!({}), json!({})).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": "yes"})))
        .up_to_n_times(1)
        .mount(&world.server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"))
        .mount(&world.server)
        .await;
    let executor = world.executor();

    // WHEN it is called twice
    let wrong_type = executor.call(&tool, search()).await.unwrap_err();
    let not_json = executor.call(&tool, search()).await.unwrap_err();

    // THEN both are final InvalidOutput errors saying where
    assert!(
        matches!(&wrong_type, ToolError::InvalidOutput { pointer, status: 200, .. } if pointer == "/success"),
        "{wrong_type:?}"
    );
    assert!(
        matches!(&not_json, ToolError::InvalidOutput { message, .. } if message.contains("not JSON")),
        "{not_json:?}"
    );
    assert!(!wrong_type.is_retryable());
}

/// Answers 401 quoting the `Authorization` header it received, like a careless API.
struct EchoingAuth;

impl Respond for EchoingAuth {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let sent = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        ResponseTemplate::new(401).set_body_string(format!("invalid credentials: {sent}"))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_api_key_never_appears_in_errors_outcomes_or_logs() {
    // GIVEN a tool whose API first succeeds, then refuses and echoes the key back
    let world = world().await;
    let tool = world.tool(json!({}), json!({})).await;
    Mock::given(method("POST"))
        .respond_with(found())
        .up_to_n_times(1)
        .mount(&world.server)
        .await;
    Mock::given(method("POST"))
        .respond_with(EchoingAuth)
        .mount(&world.server)
        .await;
    let executor = world.executor();

    // WHEN it is called twice, with every log line captured
    let logs = capture_logs();
    let outcome = executor.call(&tool, search()).await.unwrap();
    let refused = executor.call(&tool, search()).await.unwrap_err();

    // THEN neither the outcome, nor the error (shown or debugged), nor the logs hold the key
    let text = logs.text();
    assert!(text.contains("tool call failed"), "no log was captured");
    assert!(!text.contains(&world.api_key), "the key was logged");
    assert!(!outcome.request.to_string().contains(&world.api_key));
    assert!(!format!("{outcome:?}").contains(&world.api_key));
    assert!(!refused.to_string().contains(&world.api_key));
    assert!(!format!("{refused:?}").contains(&world.api_key));
    // AND the echoed key shows as redacted
    assert!(
        refused
            .to_string()
            .contains(&format!("invalid credentials: Bearer {REDACTED}")),
        "{refused}"
    );
}

#[tokio::test]
async fn a_get_tool_sends_its_input_as_query_parameters() {
    // GIVEN a GET search tool with an id in its path
    let world = world().await;
    let tool = world
        .tool(
            json!({
                "url": format!("{}/customers/{{{{ input.region }}}}/search", world.server.uri()),
                "method": "GET",
                "inputs_schema": null,
                "outputs_schema": null,
                "headers": {"X-Api-Key": "{{ credentials.api_key }}"},
            }),
            json!({}),
        )
        .await;
    Mock::given(method("GET"))
        .and(path("/customers/eu%20west/search"))
        .and(query_param("q", "blue shoes"))
        .and(query_param("limit", "5"))
        .and(header("x-api-key", world.api_key.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": 1}])))
        .expect(1)
        .mount(&world.server)
        .await;

    // WHEN it is called
    let outcome = world
        .executor()
        .call(
            &tool,
            json!({"region": "eu west", "q": "blue shoes", "limit": 5}),
        )
        .await
        .unwrap();

    // THEN the query carried the input and the record shows the full URL, no body
    assert_eq!(outcome.output, json!([{"id": 1}]));
    let url = outcome.request["url"].as_str().unwrap();
    assert!(
        url.ends_with("/customers/eu%20west/search?limit=5&q=blue+shoes&region=eu+west"),
        "{url}"
    );
    assert!(outcome.request.get("body").is_none());
    assert_eq!(outcome.request["headers"]["X-Api-Key"], REDACTED);
}

#[tokio::test]
async fn a_429_is_waited_out_when_retry_after_is_short_and_not_when_it_is_long() {
    // GIVEN a tool allowed 2 retries, whose API asks to wait 1 s once
    let world = world().await;
    let tool = world.tool(json!({"retry_attempts": 2}), json!({})).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .mount(&world.server)
        .await;
    Mock::given(method("POST"))
        .respond_with(found())
        .up_to_n_times(1)
        .mount(&world.server)
        .await;
    let executor = world.executor().with_backoff(Backoff {
        base: Duration::from_millis(2),
        cap: Duration::from_secs(5),
    });

    // WHEN it is called THEN the retry waited as asked and succeeded
    let started = Instant::now();
    let outcome = executor.call(&tool, search()).await.unwrap();
    assert_eq!(outcome.attempts, 2);
    assert!(started.elapsed() >= Duration::from_secs(1));

    // WHEN the API asks to wait longer than the backoff cap
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "120"))
        .mount(&world.server)
        .await;
    let err = executor.call(&tool, search()).await.unwrap_err();

    // THEN the call gives up at once and passes the wait on
    assert!(
        matches!(
            err,
            ToolError::Status {
                status: 429,
                attempts: 1,
                retry_after_secs: Some(120),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn an_oauth_tool_gets_an_access_token_once_and_reuses_it() {
    // GIVEN a tool with OAuth client credentials and a fake token endpoint
    let world = world().await;
    let client_secret = format!("cs-{}", Uuid::now_v7().simple());
    let access_token = format!("at-{}", Uuid::now_v7().simple());
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("scope=crm.read"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": access_token, "expires_in": 3600})),
        )
        .expect(1)
        .mount(&world.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm"))
        .and(header(
            "authorization",
            format!("Bearer {access_token}").as_str(),
        ))
        .respond_with(found())
        .expect(2)
        .mount(&world.server)
        .await;
    let tool = world
        .tool(
            json!({"headers": {"Authorization": "Bearer {{ credentials.access_token }}"}}),
            json!({"auth_type": "oauth", "credentials": {"oauth": {
                "client_id": "spark", "client_secret": client_secret,
                "token_url": format!("{}/token", world.server.uri()), "scopes": ["crm.read"]}}}),
        )
        .await;
    let executor = world.executor();

    // WHEN it is called twice
    let first = executor.call(&tool, search()).await.unwrap();
    executor.call(&tool, search()).await.unwrap();

    // THEN one token was fetched (the mocks verify counts on drop) and nothing leaked
    let recorded = first.request.to_string();
    assert!(!recorded.contains(&access_token) && !recorded.contains(&client_secret));
}

#[tokio::test]
async fn misconfigured_tools_and_other_kinds_fail_without_a_request() {
    let world = world().await;
    let executor = world.executor();
    Mock::given(method("POST"))
        .respond_with(found())
        .mount(&world.server)
        .await;

    // GIVEN a db tool THEN the engine cannot call it
    let db = world
        .tool(
            json!(null),
            json!({"kind": "db", "config": {}, "auth_type": "none", "credentials": null}),
        )
        .await;
    let err = executor.call(&db, json!({})).await.unwrap_err();
    assert!(
        matches!(&err, ToolError::Unsupported(kind) if kind == "db"),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // GIVEN a header using a credential the tool's kind of credentials lacks
    let wrong = world
        .tool(
            json!({"headers": {"Authorization": "Bearer {{ credentials.access_token }}"}}),
            json!({}),
        )
        .await;
    let err = executor.call(&wrong, search()).await.unwrap_err();
    assert!(matches!(err, ToolError::Config(_)), "{err:?}");

    // GIVEN a header template with a typo THEN saving it is refused, naming the header
    let refused = world
        .app
        .post(
            "/api/v1/tools",
            Some(&world.owner),
            json!({"project_id": world.project, "name": "typo", "kind": "http", "auth_type": "apikey",
                   "env": "dev", "credentials": {"api_key": world.api_key},
                   "config": {"url": format!("{}/crm", world.server.uri()), "method": "POST",
                              "headers": {"Authorization": "Bearer {{ credentials.api_kye }}"}}}),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(refused.error_fields(), ["config.headers.Authorization"]);
    // AND a record holding one (saved under older rules) fails without a request
    let mut typo = wrong.clone();
    let mut config = typo.config.as_map().clone();
    config["headers"] = json!({"Authorization": "Bearer {{ credentials.api_kye }}"});
    typo.config = config.into();
    let err = executor.call(&typo, search()).await.unwrap_err();
    assert!(matches!(err, ToolError::Config(_)), "{err:?}");
    assert_eq!(world.requests().await, 0);
}

#[tokio::test]
async fn an_idempotency_key_is_sent_on_every_attempt() {
    // GIVEN a POST tool allowed one retry, whose API fails once
    let world = world().await;
    let tool = world.tool(json!({"retry_attempts": 1}), json!({})).await;
    assert!(!spark_ops::engine::tool::is_idempotent(&tool));
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&world.server)
        .await;
    Mock::given(method("POST"))
        .respond_with(found())
        .mount(&world.server)
        .await;

    // WHEN it is called with a key
    let outcome = world
        .executor()
        .call_with_key(&tool, search(), Some("run-7:lookup"))
        .await
        .unwrap();

    // THEN both attempts carried the same key, and the record shows it
    let received = world.server.received_requests().await.unwrap();
    assert_eq!(received.len(), 2);
    assert!(received
        .iter()
        .all(|r| header_text(r, "idempotency-key") == "run-7:lookup"));
    assert_eq!(
        outcome.request["headers"]["Idempotency-Key"],
        "run-7:lookup"
    );
}

#[tokio::test]
async fn an_unreachable_tool_is_retried_then_reported_as_retryable() {
    // GIVEN a GET tool pointing at a port where nothing listens
    let world = world().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let tool = world
        .tool(
            json!({"url": format!("http://127.0.0.1:{port}/x"), "method": "GET",
                   "retry_attempts": 2, "inputs_schema": null,
                   "headers": {"Authorization": "Bearer {{ credentials.api_key }}"}}),
            json!({}),
        )
        .await;
    assert!(spark_ops::engine::tool::is_idempotent(&tool));

    // WHEN it is called, its address allowed as a local fake's would be
    let err = world
        .executor_allowing(&[&format!("http://127.0.0.1:{port}")])
        .call(&tool, json!({"q": "x"}))
        .await
        .unwrap_err();

    // THEN every attempt failed to connect, and the call may be retried later
    assert!(
        matches!(&err, ToolError::Unreachable { attempts: 3, reason } if reason.contains("connection")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let breaker = world.app.state.store.tool_breaker(tool.id).await.unwrap();
    assert_eq!(breaker.consecutive_failures, 1);
}

// ---------------------------------------------------------------------------------------
// Webhooks

/// A receiver that checks every request's signature with the project's secret.
struct VerifyingReceiver {
    secret: Vec<u8>,
    now: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl Respond for VerifyingReceiver {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if signed_by(request, &self.secret, (self.now)()) {
            ResponseTemplate::new(200).set_body_json(json!({"received": true}))
        } else {
            ResponseTemplate::new(401).set_body_string("bad signature")
        }
    }
}

fn header_text<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn signed_by(request: &Request, secret: &[u8], now: i64) -> bool {
    let Ok(timestamp) = header_text(request, TIMESTAMP_HEADER).parse::<i64>() else {
        return false;
    };
    verify(
        secret,
        timestamp,
        &request.body,
        header_text(request, SIGNATURE_HEADER),
        now,
        webhook::DEFAULT_TOLERANCE,
    )
}

/// A sender that may reach the receiver fakes at `urls`.
fn sender(app: &TestApp, urls: &[&str]) -> WebhookSender {
    WebhookSender::new(
        egress_allowing(urls),
        app.state.secrets.clone(),
        app.state.clock.clone(),
    )
    .with_backoff(FAST)
}

async fn stored_secret(app: &TestApp, project: Uuid) -> Vec<u8> {
    use secrecy::ExposeSecret;
    app.state
        .secrets
        .get(&spark_ops::store::secrets::path::project_webhook_secret(
            project,
        ))
        .await
        .unwrap()
        .expect("the webhook secret exists")
        .expose_secret()
        .as_bytes()
        .to_vec()
}

#[tokio::test]
async fn a_webhook_is_signed_with_the_projects_secret_and_the_receiver_verifies_it() {
    // GIVEN a project that never sent a webhook, and a receiver
    let app = spawn_app().await;
    let project = Uuid::now_v7();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let body = json!({"run_id": "r-1", "status": "succeeded", "text": "Grüße"});

    // WHEN a webhook is sent
    let url = format!("{}/hook", server.uri());
    let outcome = sender(&app, &[&server.uri()])
        .send(project, &url, &body, 0)
        .await
        .unwrap();
    assert_eq!((outcome.status, outcome.attempts), (204, 1));

    // THEN the project's secret now exists in Secrets Manager, and it signs the request
    let secret = stored_secret(&app, project).await;
    assert_eq!(secret.len(), 64);
    let received = server.received_requests().await.unwrap();
    let now = app.clock.now().timestamp();
    assert!(signed_by(&received[0], &secret, now));
    assert_eq!(
        serde_json::from_slice::<Value>(&received[0].body).unwrap(),
        body
    );
    assert_eq!(
        header_text(&received[0], "content-type"),
        "application/json"
    );
    assert_eq!(
        header_text(&received[0], DELIVERY_HEADER),
        outcome.delivery_id
    );

    // WHEN a receiver verifying with that secret gets the project's next webhook
    let clock = app.clock.clone();
    Mock::given(method("POST"))
        .and(path("/verified"))
        .respond_with(VerifyingReceiver {
            secret: secret.clone(),
            now: Arc::new(move || clock.now().timestamp()),
        })
        .mount(&server)
        .await;
    let verified_url = format!("{}/verified", server.uri());
    let accepted = sender(&app, &[&server.uri()])
        .send(project, &verified_url, &body, 0)
        .await
        .unwrap();
    // THEN it accepts it, and the receiver's answer is the outcome's response
    assert_eq!(accepted.status, 200);
    assert_eq!(accepted.response, json!({"received": true}));

    // AND a webhook of another project (another secret) is refused: the step fails
    let forged = sender(&app, &[&server.uri()])
        .send(Uuid::now_v7(), &verified_url, &body, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(forged, WebhookError::Status { status: 401, .. }),
        "{forged:?}"
    );
    assert!(forged.to_string().contains("401"));
}

#[tokio::test]
async fn concurrent_first_uses_agree_on_one_project_secret() {
    // GIVEN a project without a webhook secret
    let app = spawn_app().await;
    let project = Uuid::now_v7();

    // WHEN five workers need it at once
    let secrets: Vec<_> =
        futures::future::join_all((0..5).map(|_| project_secret(&app.state.secrets, project)))
            .await
            .into_iter()
            .map(|s| s.unwrap().key().to_vec())
            .collect();

    // THEN they all got the one stored in Secrets Manager
    let stored = stored_secret(&app, project).await;
    assert!(secrets.iter().all(|s| *s == stored));
}

#[tokio::test]
async fn a_receiver_failing_with_5xx_is_retried_then_the_step_fails_with_the_status() {
    // GIVEN a receiver that keeps failing
    let app = spawn_app().await;
    let project = Uuid::now_v7();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502).set_body_string("upstream down"))
        .mount(&server)
        .await;

    // WHEN a webhook is sent with 2 retries
    let err = sender(&app, &[&server.uri()])
        .send(project, &server.uri(), &json!({"n": 1}), 2)
        .await
        .unwrap_err();

    // THEN three signed attempts were made, one delivery, and the error names the status
    assert!(
        matches!(
            err,
            WebhookError::Status {
                status: 502,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(err.to_string().contains("HTTP 502"), "{err}");
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 3);
    let secret = stored_secret(&app, project).await;
    let now = app.clock.now().timestamp();
    assert!(received.iter().all(|r| signed_by(r, &secret, now)));
    let delivery = header_text(&received[0], DELIVERY_HEADER);
    assert!(received
        .iter()
        .all(|r| header_text(r, DELIVERY_HEADER) == delivery));
}

#[tokio::test]
async fn a_4xx_fails_at_once_and_a_flaky_receiver_succeeds_on_retry() {
    let app = spawn_app().await;
    let project = Uuid::now_v7();
    let server = MockServer::start().await;
    let gone_hits = Arc::new(AtomicUsize::new(0));
    let counter = gone_hits.clone();
    Mock::given(method("POST"))
        .and(path("/gone"))
        .respond_with(move |_: &Request| {
            counter.fetch_add(1, Ordering::SeqCst);
            ResponseTemplate::new(410)
        })
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let sender = sender(&app, &[&server.uri()]);

    // WHEN a receiver answers 410 THEN the step fails after one attempt, for good
    let gone = sender
        .send(project, &format!("{}/gone", server.uri()), &json!({}), 3)
        .await
        .unwrap_err();
    assert!(
        matches!(
            gone,
            WebhookError::Status {
                status: 410,
                attempts: 1,
                ..
            }
        ),
        "{gone:?}"
    );
    assert!(!gone.is_retryable());
    assert_eq!(gone_hits.load(Ordering::SeqCst), 1);

    // WHEN a receiver fails once with 503 THEN the retry delivers it
    let flaky = sender
        .deliver(&Delivery {
            project_id: project,
            url: &format!("{}/flaky", server.uri()),
            body: &json!({"n": 2}),
            headers: &[("X-Trace".to_owned(), "t-1".to_owned())].into(),
            retries: 1,
            id: Some("run-1:notify"),
            secret_header: None,
        })
        .await
        .unwrap();
    assert_eq!((flaky.status, flaky.attempts), (200, 2));
    assert_eq!(flaky.delivery_id, "run-1:notify");
    let received = server.received_requests().await.unwrap();
    let retried: Vec<_> = received
        .iter()
        .filter(|r| r.url.path() == "/flaky")
        .collect();
    assert_eq!(retried.len(), 2);
    assert!(retried
        .iter()
        .all(|r| header_text(r, DELIVERY_HEADER) == "run-1:notify"
            && header_text(r, "x-trace") == "t-1"));
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_after_retries() {
    let app = spawn_app().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;

    let err = sender(&app, &[&server.uri()])
        .with_timeout(Duration::from_millis(200))
        .send(Uuid::now_v7(), &server.uri(), &json!({}), 1)
        .await
        .unwrap_err();

    assert!(
        matches!(
            err,
            WebhookError::Timeout {
                timeout_ms: 200,
                attempts: 2
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_webhook_may_not_override_the_signature_headers() {
    let app = spawn_app().await;
    let err = sender(&app, &[])
        .deliver(&Delivery {
            project_id: Uuid::now_v7(),
            url: "http://127.0.0.1:9/hook",
            body: &json!({}),
            headers: &[(SIGNATURE_HEADER.to_owned(), "v1=forged".to_owned())].into(),
            retries: 0,
            id: None,
            secret_header: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::InvalidHeader(..)), "{err:?}");
    assert!(!err.is_retryable());
}
