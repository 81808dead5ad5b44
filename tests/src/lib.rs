//! Test harness: every test gets its own world on the real local services — its own tables,
//! queues and signing key under a unique prefix — so tests run in parallel and repeat cleanly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_credential_types::Credentials;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use chrono::Utc;
use http_body_util::BodyExt;
use serde_json::Value;
use spark_ops::clock::{Clock, ManualClock};
use spark_ops::engine::run::Engine;
use spark_ops::engine::worker::QueueMessage;
use spark_ops::outbound::{Egress, EgressPolicy, HostPort};
use spark_ops::run::{Run, RunChange, RunStatus};
use spark_ops::state::Clients;
use spark_ops::store::provision::provision;
use spark_ops::{api, AppState, Config};
use tower::ServiceExt;

pub use aws_smithy_types;

/// Endpoint of LocalStack unless `AWS_ENDPOINT_URL` says otherwise.
pub fn localstack_url() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// Endpoint of DynamoDB Local unless `AWS_ENDPOINT_URL_DYNAMODB` says otherwise.
pub fn dynamodb_url() -> String {
    std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .unwrap_or_else(|_| "http://127.0.0.1:8000".to_owned())
}

/// SDK configuration that can only reach the local services.
/// Clients of the local services from `sdk`, DynamoDB on its own endpoint; `ddb` adds to
/// DynamoDB's configuration (an interceptor, say).
pub fn local_clients(
    sdk: &aws_config::SdkConfig,
    ddb: impl FnOnce(aws_sdk_dynamodb::config::Builder) -> aws_sdk_dynamodb::config::Builder,
) -> Clients {
    let ddb_config = ddb(aws_sdk_dynamodb::config::Builder::from(sdk).endpoint_url(dynamodb_url()));
    Clients {
        ddb: aws_sdk_dynamodb::Client::from_conf(ddb_config.build()),
        sqs: aws_sdk_sqs::Client::new(sdk),
        secrets: aws_sdk_secretsmanager::Client::new(sdk),
        sfn: aws_sdk_sfn::Client::new(sdk),
        s3: spark_ops::clients::s3_client(sdk),
        events: aws_sdk_eventbridge::Client::new(sdk),
    }
}

pub async fn local_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::for_tests())
        .endpoint_url(localstack_url())
        .load()
        .await
}

/// Counts DynamoDB HTTP requests, by operation name.
#[derive(Debug, Default)]
pub struct RequestCounter {
    count: AtomicUsize,
    operations: Mutex<Vec<String>>,
}

impl RequestCounter {
    /// Requests sent so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Operation names sent so far, in order.
    pub fn operations(&self) -> Vec<String> {
        self.operations
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default()
    }

    /// Forgets what was counted.
    pub fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        if let Ok(mut ops) = self.operations.lock() {
            ops.clear();
        }
    }
}

#[derive(Debug, Clone)]
struct CountingInterceptor(Arc<RequestCounter>);

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "CountingInterceptor"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.count.fetch_add(1, Ordering::SeqCst);
        let name = cfg
            .load::<Metadata>()
            .map(|m| m.name().to_owned())
            .unwrap_or_default();
        if let Ok(mut ops) = self.0.operations.lock() {
            ops.push(name);
        }
        Ok(())
    }
}

/// The password of every user [`TestApp::register`] creates.
pub const PASSWORD: &str = "violet-tundra-cascade-42";

/// One isolated deployment of the API.
pub struct TestApp {
    /// The state the router runs on.
    pub state: AppState,
    /// The whole API.
    pub router: Router,
    /// The clock every handler reads.
    pub clock: Arc<ManualClock>,
    /// DynamoDB requests made through the app's client.
    pub ddb_requests: Arc<RequestCounter>,
    /// The unique prefix of this app's resources.
    pub prefix: String,
}

impl Drop for TestApp {
    /// Deletes the app's tables: DynamoDB Local slows down for every request as tables pile
    /// up (a suite leaves hundreds), so each test cleans up after itself.
    fn drop(&mut self) {
        let tables: Vec<String> = self
            .state
            .store
            .table_names()
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                // A client of its own: the app's pools connections on the test's runtime,
                // which is blocked on this thread.
                let sdk = local_sdk_config().await;
                let ddb = aws_sdk_dynamodb::Client::from_conf(
                    aws_sdk_dynamodb::config::Builder::from(&sdk)
                        .endpoint_url(dynamodb_url())
                        .build(),
                );
                for table in tables {
                    let _ = ddb.delete_table().table_name(table).send().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as JSON (`Null` if empty or not JSON).
    pub body: Value,
    /// Body as text.
    pub text: String,
}

impl Reply {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `field` of every entry of a problem's `errors`.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Builds and provisions a fresh app with a unique prefix.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], adjusting the configuration first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let prefix = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut config = Config::from_lookup(|key| (key == "SPARK_OPS_PREFIX").then(|| prefix.clone()))
        .expect("test configuration is valid");
    // As in a deployment, where AWS_ENDPOINT_URL* name them: never reachable by a tenant.
    config.egress.deny_also(
        [localstack_url(), dynamodb_url()]
            .iter()
            .filter_map(|url| HostPort::of_endpoint(url)),
    );
    // Every in-process request comes from the same `unknown` address; the per-address
    // throttles are tested with addresses of their own.
    config.login_max_failures_per_address = 10_000;
    config.register_max_per_address = 10_000;
    adjust(&mut config);
    let sdk = local_sdk_config().await;
    let counter = Arc::new(RequestCounter::default());
    let clients = local_clients(&sdk, |ddb| {
        ddb.interceptor(CountingInterceptor(counter.clone()))
    });
    provision(&clients, &mut config)
        .await
        .expect("provisioning against the local services; are they running? (make services)");
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let state = AppState::load(config, clients, clock.clone())
        .await
        .expect("state loads");
    counter.reset();
    TestApp {
        router: api::app(state.clone()),
        state,
        clock,
        ddb_requests: counter,
        prefix,
    }
}

impl TestApp {
    /// Sends a request with an optional bearer credential and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        self.send(request.expect("request builds")).await
    }

    /// Sends a prepared request.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body reads")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    /// `GET` with a credential.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// `POST` JSON with an optional credential.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// `PATCH` JSON with a credential.
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    /// `DELETE` with a credential.
    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Registers a user with a unique email; returns `(email, password)`.
    pub async fn register(&self, name: &str) -> (String, String) {
        let email = format!(
            "{}-{}@example.com",
            name.to_lowercase(),
            uuid::Uuid::now_v7().simple()
        );
        let password = PASSWORD.to_owned();
        let reply = self
            .post(
                "/api/v1/auth/register",
                None,
                serde_json::json!({"email": email, "password": password, "name": name}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "register: {}",
            reply.text
        );
        (email, password)
    }

    /// Logs in; returns the token pair body.
    pub async fn login(&self, email: &str, password: &str) -> Value {
        let reply = self
            .post(
                "/api/v1/auth/login",
                None,
                serde_json::json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "login: {}", reply.text);
        reply.body
    }

    /// Registers and logs in a user; returns their access token.
    pub async fn user(&self, name: &str) -> String {
        let (email, password) = self.register(name).await;
        self.login(&email, &password).await["access_token"]
            .as_str()
            .expect("access token")
            .to_owned()
    }

    /// Creates a project; returns its id.
    pub async fn project(&self, token: &str, name: &str) -> String {
        let reply = self
            .post(
                "/api/v1/projects",
                Some(token),
                serde_json::json!({"name": name, "slug": unique_slug(name)}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "create project: {}",
            reply.text
        );
        reply.body["id"].as_str().expect("project id").to_owned()
    }

    /// Adds the user behind `member_token` (registered by [`Self::register`]) to a project
    /// with `role`: invites their email, then logs them in, which accepts the invitation.
    /// `member_token` keeps working.
    pub async fn add_member(
        &self,
        owner_token: &str,
        project: &str,
        member_token: &str,
        role: &str,
    ) -> String {
        let me = self.get("/api/v1/auth/me", member_token).await;
        let email = me.body["email"].as_str().expect("user email");
        let reply = self
            .post(
                &format!("/api/v1/projects/{project}/members"),
                Some(owner_token),
                serde_json::json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "invite member: {}",
            reply.text
        );
        self.login(email, PASSWORD).await;
        me.body["id"].as_str().expect("user id").to_owned()
    }
}

/// The sample API Gateway (REST) event `events/<file>`, as the Lambda runtime hands it to the
/// router of a deployed function. The template sets `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH`,
/// so routes see `/api/v1/...` without the stage; the stage is taken off here the same way.
pub fn api_gateway_event(file: &str) -> Request<Body> {
    let path = format!("{}/../events/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let stage = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|event| event["requestContext"]["stage"].as_str().map(str::to_owned));
    let request = lambda_http::request::from_str(&text).expect("a valid API Gateway event");
    let (mut parts, body) = request.into_parts();
    if let Some(stage) = stage {
        let prefix = format!("/{stage}/");
        let uri = parts.uri.to_string();
        if let Some(at) = uri.find(&prefix) {
            let unstaged = format!("{}{}", &uri[..at], &uri[at + prefix.len() - 1..]);
            parts.uri = unstaged
                .parse()
                .expect("the event's path without its stage");
        }
    }
    Request::from_parts(parts, Body::from(body.to_vec()))
}

/// Local fakes (`http://127.0.0.1:<port>` URLs) as `EGRESS_ALLOW` entries.
pub fn allow_list(urls: &[&str]) -> Vec<HostPort> {
    urls.iter()
        .map(|url| HostPort::of_endpoint(url).expect("a fake's URL"))
        .collect()
}

/// An outbound client that may reach the local fakes at `urls`, and nothing else private.
pub fn egress_allowing(urls: &[&str]) -> Egress {
    Egress::new(EgressPolicy::new(allow_list(urls), [])).expect("the egress client builds")
}

impl TestApp {
    /// The app's state with the local fakes at `urls` on the egress allow-list, as
    /// `EGRESS_ALLOW` puts them.
    pub fn state_allowing(&self, urls: &[&str]) -> AppState {
        let mut config = (*self.state.config).clone();
        config.egress.allow.extend(allow_list(urls));
        let mut state = self.state.clone();
        state.config = Arc::new(config);
        state
    }

    /// A run engine that may reach the local fakes at `urls`.
    pub fn engine_allowing(&self, urls: &[&str]) -> Engine {
        Engine::new(self.state_allowing(urls)).expect("the engine builds")
    }
}

/// A slug that no other test uses.
pub fn unique_slug(base: &str) -> String {
    let base: String = base
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(30)
        .collect();
    format!(
        "{}-{}",
        base.trim_matches('-'),
        &uuid::Uuid::now_v7().simple().to_string()[16..]
    )
}

/// Every log line (all levels, JSON as in production) written on the current thread while it
/// is held; use it in a `current_thread` test so the handlers run on that thread.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
    // With a single live dispatcher, tracing-core judges a callsite by whichever thread reaches
    // it first; a second one makes it consult every dispatcher, so parallel tests that hit
    // the handlers first cannot switch this capture off.
    _second: tracing::Dispatch,
}

#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut bytes) = self.0.lock() {
            bytes.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing the current thread's logs.
pub fn capture_logs() -> LogCapture {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let writer = SharedWriter(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    LogCapture {
        buffer,
        _guard: tracing::subscriber::set_default(subscriber),
        _second: tracing::Dispatch::new(tracing_subscriber::registry()),
    }
}

impl LogCapture {
    /// What was captured so far.
    pub fn text(&self) -> String {
        let bytes = self.buffer.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A lifecycle heartbeat that goes nowhere, for driving the engine directly.
pub struct NoHeartbeat;

#[async_trait::async_trait]
impl spark_ops::engine::run::Heartbeat for NoHeartbeat {
    async fn beat(&self) {}
}

impl TestApp {
    /// Registers an agent of `model` without its own LLM endpoint; returns its id.
    pub async fn agent(&self, token: &str, project: &str, model: &str) -> String {
        let reply = self
            .post(
                "/api/v1/agents",
                Some(token),
                serde_json::json!({"project_id": project, "name": "agent", "runtime": "python",
                                   "model": model, "env": "dev"}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "create agent: {}",
            reply.text
        );
        reply.body["id"].as_str().expect("agent id").to_owned()
    }

    /// Creates a workflow of `definition` and releases its version 1; returns its id.
    pub async fn released_workflow(&self, token: &str, project: &str, definition: Value) -> String {
        let reply = self
            .post(
                "/api/v1/workflows",
                Some(token),
                serde_json::json!({"project_id": project, "name": "workflow", "definition": definition}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "create workflow: {}",
            reply.text
        );
        let id = reply.body["id"].as_str().expect("workflow id").to_owned();
        let versions = format!("/api/v1/workflows/{id}/versions");
        let version = self
            .post(&versions, Some(token), serde_json::json!({}))
            .await;
        assert_eq!(
            version.status,
            StatusCode::CREATED,
            "create version: {}",
            version.text
        );
        let released = self
            .patch(
                &format!("{versions}/1"),
                token,
                serde_json::json!({"status": "released"}),
            )
            .await;
        assert_eq!(
            released.status,
            StatusCode::OK,
            "release: {}",
            released.text
        );
        id
    }

    /// Starts a run through the API; returns its id.
    pub async fn start_run(&self, token: &str, body: Value) -> uuid::Uuid {
        let reply = self.post("/api/v1/runs", Some(token), body).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "start run: {}",
            reply.text
        );
        uuid::Uuid::parse_str(reply.body["id"].as_str().expect("run id")).expect("a UUID")
    }
}

impl TestApp {
    /// Waits (up to 60 s) for the lifecycle to send a `kind` message about each of `runs` on
    /// the run queue; the first of each, in the order of `runs`. Other messages received
    /// meanwhile stay hidden for the queue's visibility timeout.
    pub async fn run_messages(&self, kind: &str, runs: &[&str]) -> Vec<QueueMessage> {
        let queue = self
            .state
            .config
            .run_queue_url
            .clone()
            .expect("the run queue is provisioned");
        let mut found: Vec<Option<QueueMessage>> = vec![None; runs.len()];
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while found.iter().any(Option::is_none) {
            assert!(
                std::time::Instant::now() < give_up,
                "no `{kind}` message for some of {runs:?} within 60 s"
            );
            let out = self
                .state
                .clients
                .sqs
                .receive_message()
                .queue_url(&queue)
                .max_number_of_messages(10)
                .wait_time_seconds(2)
                .send()
                .await
                .expect("the run queue answers");
            for message in out.messages.unwrap_or_default() {
                let body = message.body.unwrap_or_default();
                let task: Value = serde_json::from_str(&body).unwrap_or_default();
                let place = runs.iter().position(|run| task["run_id"] == *run);
                if let Some(slot) = place
                    .filter(|_| task["kind"] == kind)
                    .map(|i| &mut found[i])
                {
                    slot.get_or_insert(QueueMessage {
                        message_id: message.message_id.unwrap_or_default(),
                        receipt_handle: None,
                        body,
                    });
                }
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Waits (60 s at most) for the lifecycle to send a `kind` message about `run_id` on the
    /// run queue. It and every message read before it leave the queue, as if a worker took
    /// them: hand it to a [`Worker`](spark_ops::engine::worker::Worker), or drop it to lose it.
    pub async fn next_lifecycle_message(&self, kind: &str, run_id: &str) -> QueueMessage {
        let queue = self
            .state
            .config
            .run_queue_url
            .clone()
            .expect("the run queue is provisioned");
        let sqs = &self.state.clients.sqs;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = sqs
                .receive_message()
                .queue_url(&queue)
                .max_number_of_messages(10)
                .wait_time_seconds(2)
                .send()
                .await
                .expect("the run queue answers");
            for message in out.messages.unwrap_or_default() {
                if let Some(receipt) = &message.receipt_handle {
                    sqs.delete_message()
                        .queue_url(&queue)
                        .receipt_handle(receipt)
                        .send()
                        .await
                        .expect("the run queue deletes a message");
                }
                let body = message.body.unwrap_or_default();
                let task: Value = serde_json::from_str(&body).unwrap_or_default();
                if task["kind"] == kind && task["run_id"] == run_id {
                    return QueueMessage {
                        message_id: message.message_id.unwrap_or_default(),
                        receipt_handle: None,
                        body,
                    };
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no `{kind}` message for run {run_id} within 60 s"
            );
        }
    }

    /// Moves the stored run `id` to `running`, as a worker starting it would.
    pub async fn run_to_running(&self, id: uuid::Uuid) -> Run {
        let run = self
            .state
            .store
            .get_run(id)
            .await
            .expect("the run reads")
            .expect("the run exists");
        let now = self.clock.now();
        let change = RunChange {
            started_at: Some(now),
            ..RunChange::default()
        };
        self.state
            .store
            .transition_run(&run, RunStatus::Running, now, change)
            .await
            .expect("the run starts")
    }

    /// The bodies waiting in the run queue's dead-letter queue (received, so hidden for a
    /// while from the next call).
    pub async fn dead_letters(&self) -> Vec<String> {
        let sqs = &self.state.clients.sqs;
        let url = sqs
            .get_queue_url()
            .queue_name(self.state.config.run_dlq_name())
            .send()
            .await
            .expect("the dead-letter queue is provisioned")
            .queue_url
            .expect("a queue URL");
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("the dead-letter queue answers");
        out.messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.body)
            .collect()
    }
}
