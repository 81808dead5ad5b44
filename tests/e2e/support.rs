//! What the run end-to-end tests share: the dev server as a child process, an API client
//! signed in as a project's owner, and fakes of the third parties a run talks to — an
//! OpenAI-compatible LLM, a tool API that counts calls, and a webhook receiver that checks
//! signatures with the project's secret from Secrets Manager.

// Each e2e test binary uses part of this harness.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use spark_ops::engine::lifecycle::execution_arn;
use spark_ops::engine::webhook::{self, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use spark_ops::state::Clients;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// How long a run may take to reach a status before a test gives up.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// How often a run is polled.
const POLL_EVERY: Duration = Duration::from_millis(200);

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
pub async fn local_sdk() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "e2e",
        ))
        .endpoint_url(localstack_url())
        .load()
        .await
}

/// Clients of the local services, DynamoDB on its own endpoint.
pub async fn local_clients() -> Clients {
    let sdk = local_sdk().await;
    let ddb = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .endpoint_url(dynamodb_url())
        .build();
    Clients {
        ddb: aws_sdk_dynamodb::Client::from_conf(ddb),
        sqs: aws_sdk_sqs::Client::new(&sdk),
        secrets: aws_sdk_secretsmanager::Client::new(&sdk),
        sfn: aws_sdk_sfn::Client::new(&sdk),
        s3: spark_ops::clients::s3_client(&sdk),
        events: aws_sdk_eventbridge::Client::new(&sdk),
    }
}

/// The dev server as a child process under its own prefix, killed when dropped. Its log
/// goes to a file, named in every failure message and removed after a passing test.
pub struct DevServer {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The prefix of its tables, queues, secrets and state machine.
    pub prefix: String,
    /// Where its log is written.
    pub log: PathBuf,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The log is kept only for a failed test to be looked into.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// How many local fakes (model, tool APIs, webhook receivers) one test binary may start.
const FAKE_POOL: usize = 32;

/// Listeners bound up front for the local fakes, so every dev server can be started with
/// their addresses on its egress allow-list (`EGRESS_ALLOW`), the one switch that lets it
/// reach a private address.
struct FakePool {
    listeners: Mutex<Vec<std::net::TcpListener>>,
    allow: String,
}

fn fake_pool() -> &'static FakePool {
    static POOL: std::sync::OnceLock<FakePool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let listeners: Vec<std::net::TcpListener> = (0..FAKE_POOL)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port"))
            .collect();
        let allow = listeners
            .iter()
            .map(|l| l.local_addr().expect("a bound address").to_string())
            .collect::<Vec<_>>()
            .join(",");
        FakePool {
            listeners: Mutex::new(listeners),
            allow,
        }
    })
}

/// The pool's addresses as an `EGRESS_ALLOW` value.
pub fn fake_allow_list() -> String {
    fake_pool().allow.clone()
}

/// A fake third party on one of the pool's listeners.
pub async fn fake_server() -> MockServer {
    let listener = fake_pool()
        .listeners
        .lock()
        .expect("the fake pool is usable")
        .pop()
        .unwrap_or_else(|| panic!("more than {FAKE_POOL} fakes in one test binary"));
    MockServer::builder().listener(listener).start().await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// Starts the dev server with `env` on top of the local-services settings; returns once it
/// is healthy.
pub async fn start_dev_server(env: &[(&str, &str)]) -> DevServer {
    let prefix = format!("e2r{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    start_dev_server_as(&prefix, env).await
}

/// Starts a dev server with `env` on the deployment `prefix` (another server's, to take
/// over its tables, queues and executions); returns once it is healthy.
pub async fn start_dev_server_as(prefix: &str, env: &[(&str, &str)]) -> DevServer {
    let port = free_port();
    let prefix = prefix.to_owned();
    let log = std::env::temp_dir().join(format!("spark-ops-{prefix}-{port}.log"));
    let log_file = std::fs::File::create(&log).expect("the dev server log can be created");
    let mut command = Command::new(env!("CARGO_BIN_EXE_spark-ops-dev"));
    command
        .env("PORT", port.to_string())
        .env("SPARK_OPS_PREFIX", &prefix)
        .env("AWS_ENDPOINT_URL", localstack_url())
        .env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("RUST_LOG", "info")
        .env("EGRESS_ALLOW", fake_allow_list())
        .stdout(log_file.try_clone().expect("the log file can be shared"))
        .stderr(log_file);
    for (key, value) in env {
        command.env(key, value);
    }
    let server = DevServer {
        child: command.spawn().expect("the dev server starts"),
        base: format!("http://127.0.0.1:{port}"),
        prefix,
        log,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(reply) = client.get(format!("{}/health", server.base)).send().await {
            if reply.status() == StatusCode::OK {
                return server;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the dev server did not become healthy within 90 s; log: {}",
            server.log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Body as JSON (`Null` if empty or not JSON).
    pub body: Value,
}

/// The API, signed in as a project's owner.
#[derive(Clone)]
pub struct Project {
    client: reqwest::Client,
    base: String,
    token: String,
    log: PathBuf,
    /// The project's id.
    pub id: String,
    /// The dev server's prefix.
    pub prefix: String,
}

/// Registers a user, signs in, and creates a project whose `settings.model_prices` are
/// `model_prices` (when given).
pub async fn project(server: &DevServer, model_prices: Option<Value>) -> Project {
    let client = reqwest::Client::new();
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let email = format!("owner-{unique}@example.com");
    let password = "violet-tundra-cascade-42";
    let mut project = Project {
        client,
        base: server.base.clone(),
        token: String::new(),
        log: server.log.clone(),
        id: String::new(),
        prefix: server.prefix.clone(),
    };
    let reply = project
        .call(
            Method::POST,
            "/api/v1/auth/register",
            Some(json!({"email": email, "password": password, "name": "Owner"})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "register: {}",
        reply.body
    );
    let reply = project
        .call(
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({"email": email, "password": password})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "login: {}", reply.body);
    project.token = reply.body["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned();
    let reply = project
        .post(
            "/api/v1/projects",
            json!({"name": "Runs", "slug": format!("runs-{}", &unique[16..])}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "project: {}", reply.body);
    project.id = reply.body["id"].as_str().expect("a project id").to_owned();
    if let Some(prices) = model_prices {
        let reply = project
            .patch(
                &format!("/api/v1/projects/{}", project.id),
                json!({"settings": {"model_prices": prices}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "prices: {}", reply.body);
    }
    project
}

impl Project {
    /// The same project, signed in the same way, through another dev server of its
    /// deployment.
    pub fn on(&self, server: &DevServer) -> Project {
        Project {
            base: server.base.clone(),
            log: server.log.clone(),
            ..self.clone()
        }
    }

    /// Sends a request with the owner's token (once signed in) and an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request.send().await.expect("the dev server answers");
        let status = reply.status();
        let body = reply.json().await.unwrap_or(Value::Null);
        Reply { status, body }
    }

    /// `GET`.
    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// `POST` JSON.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `PATCH` JSON.
    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(body)).await
    }

    /// Registers an http tool without credentials; `config` is merged over
    /// `{url, method: POST, retry_attempts: 0}`. Returns its id.
    pub async fn tool(&self, name: &str, url: String, config: Value) -> String {
        let mut full = json!({"url": url, "method": "POST", "retry_attempts": 0});
        if let (Some(full), Value::Object(extra)) = (full.as_object_mut(), config) {
            full.extend(extra);
        }
        let reply = self
            .post(
                "/api/v1/tools",
                json!({
                    "project_id": self.id, "name": name, "kind": "http", "auth_type": "none",
                    "env": "dev", "config": full,
                }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "tool: {}", reply.body);
        reply.body["id"].as_str().expect("a tool id").to_owned()
    }

    /// Registers an agent of `model` talking to `llm`. Returns its id.
    pub async fn agent(&self, model: &str, llm: &FakeLlm) -> String {
        let reply = self
            .post(
                "/api/v1/agents",
                json!({
                    "project_id": self.id, "name": "Support agent", "runtime": "python",
                    "model": model, "env": "dev",
                    "system_prompt": "You are a support agent.",
                    "temperature": 0.2, "max_tokens": 256,
                    "llm": {"base_url": llm.base_url(), "api_key": llm.api_key},
                }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "agent: {}", reply.body);
        reply.body["id"].as_str().expect("an agent id").to_owned()
    }

    /// Creates a workflow with `definition` and releases its version 1. Returns its id.
    pub async fn workflow(&self, definition: Value) -> String {
        let reply = self
            .post(
                "/api/v1/workflows",
                json!({"project_id": self.id, "name": "Support flow", "definition": definition}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "workflow: {}",
            reply.body
        );
        let id = reply.body["id"].as_str().expect("a workflow id").to_owned();
        let reply = self
            .post(&format!("/api/v1/workflows/{id}/versions"), json!({}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "version: {}", reply.body);
        let number = reply.body["version"].as_u64().expect("a version number");
        let reply = self
            .patch(
                &format!("/api/v1/workflows/{id}/versions/{number}"),
                json!({"status": "released"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "release: {}", reply.body);
        id
    }

    /// Starts a run of the released workflow in `dev`; `extra` is merged into the body.
    /// Returns the created run.
    pub async fn start_run(
        &self,
        workflow: &str,
        agent: &str,
        input: Value,
        extra: Value,
    ) -> Value {
        let mut body =
            json!({"workflow_id": workflow, "agent_id": agent, "input": input, "env": "dev"});
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        let reply = self.post("/api/v1/runs", body).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "start run: {}",
            reply.body
        );
        reply.body
    }

    /// `GET /runs/{id}`.
    pub async fn run(&self, id: &str) -> Value {
        let reply = self.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(reply.status, StatusCode::OK, "get run: {}", reply.body);
        reply.body
    }

    /// Every item of a paginated list under `path`.
    async fn all_items(&self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                Some(c) => format!("{path}?cursor={c}"),
                None => path.to_owned(),
            };
            let reply = self.get(&page).await;
            assert_eq!(reply.status, StatusCode::OK, "{page}: {}", reply.body);
            items.extend(reply.body["items"].as_array().cloned().unwrap_or_default());
            match reply.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    /// `GET /runs/{id}/steps`, every page.
    pub async fn steps(&self, id: &str) -> Vec<Value> {
        self.all_items(&format!("/api/v1/runs/{id}/steps")).await
    }

    /// `GET /runs/{id}/logs`, every page.
    pub async fn logs(&self, id: &str) -> Vec<Value> {
        self.all_items(&format!("/api/v1/runs/{id}/logs")).await
    }

    /// What a failure message shows about a run: itself, its steps and its logs.
    pub async fn describe(&self, id: &str) -> String {
        let run = self.get(&format!("/api/v1/runs/{id}")).await.body;
        let steps = self.get(&format!("/api/v1/runs/{id}/steps")).await.body;
        let logs = self.get(&format!("/api/v1/runs/{id}/logs")).await.body;
        format!(
            "run: {run:#}\nsteps: {steps:#}\nlogs: {logs:#}\ndev server log: {}",
            self.log.display()
        )
    }

    /// Polls the run until it has `status`; fails at once if it ends with another one.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            let run = self.run(id).await;
            let now = run["status"].as_str().unwrap_or_default().to_owned();
            if now == status {
                return run;
            }
            let terminal = matches!(now.as_str(), "succeeded" | "failed" | "cancelled");
            if terminal || Instant::now() > deadline {
                panic!(
                    "run {id} was expected to reach `{status}` but is `{now}` (after {} s)\n{}",
                    RUN_DEADLINE.as_secs(),
                    self.describe(id).await
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The ARN of the run's Step Functions execution.
    async fn execution_arn(&self, sfn: &aws_sdk_sfn::Client, run_id: &str) -> String {
        let name = format!("{}-run-lifecycle", self.prefix);
        let machines = sfn
            .list_state_machines()
            .max_results(1000)
            .send()
            .await
            .expect("state machines list");
        let machine = machines
            .state_machines()
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("state machine {name} exists"));
        execution_arn(
            machine.state_machine_arn(),
            run_id.parse().expect("a run uuid"),
        )
    }

    /// The run's Step Functions execution status, e.g. `RUNNING`, `SUCCEEDED`, `ABORTED`.
    pub async fn execution_status(&self, run_id: &str) -> String {
        let sfn = aws_sdk_sfn::Client::new(&local_sdk().await);
        let arn = self.execution_arn(&sfn, run_id).await;
        sfn.describe_execution()
            .execution_arn(&arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("execution {arn}: {e:?}"))
            .status()
            .as_str()
            .to_owned()
    }

    /// The run's execution history, oldest first: each event's type, and the state's name
    /// for `…StateEntered` events.
    pub async fn execution_events(&self, run_id: &str) -> Vec<(String, Option<String>)> {
        let sfn = aws_sdk_sfn::Client::new(&local_sdk().await);
        let arn = self.execution_arn(&sfn, run_id).await;
        let mut events = Vec::new();
        let mut next = None;
        loop {
            let page = sfn
                .get_execution_history()
                .execution_arn(&arn)
                .max_results(1000)
                .set_next_token(next)
                .send()
                .await
                .unwrap_or_else(|e| panic!("history of {arn}: {e:?}"));
            events.extend(page.events().iter().map(|e| {
                (
                    e.r#type().as_str().to_owned(),
                    e.state_entered_event_details().map(|d| d.name().to_owned()),
                )
            }));
            next = page.next_token().map(str::to_owned);
            if next.is_none() {
                return events;
            }
        }
    }

    /// Polls until the run's execution waits in `state` on a task token and a worker has
    /// taken that task off the run queue, i.e. the token is parked on the run.
    pub async fn wait_until_parked(&self, run_id: &str, state: &str) {
        let sqs = aws_sdk_sqs::Client::new(&local_sdk().await);
        let queue = sqs
            .get_queue_url()
            .queue_name(format!("{}-runs", self.prefix))
            .send()
            .await
            .expect("the run queue")
            .queue_url()
            .expect("a queue URL")
            .to_owned();
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            let events = self.execution_events(run_id).await;
            let entered = events.iter().rev().find_map(|(_, name)| name.as_deref());
            let waiting = entered == Some(state)
                && events
                    .last()
                    .is_some_and(|(kind, _)| kind == "TaskSubmitted");
            let attributes = sqs
                .get_queue_attributes()
                .queue_url(&queue)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .expect("queue attributes");
            let queued: u64 = attributes
                .attributes()
                .into_iter()
                .flat_map(|a| a.values())
                .filter_map(|v| v.parse::<u64>().ok())
                .sum();
            if waiting && queued == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} never parked in {state}: {events:?}, {queued} queued\n{}",
                self.describe(run_id).await
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Polls until the run's execution is no longer `RUNNING`; returns its status.
    pub async fn wait_for_execution_end(&self, run_id: &str) -> String {
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            let status = self.execution_status(run_id).await;
            if status != "RUNNING" {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "execution of run {run_id} still RUNNING\n{}",
                self.describe(run_id).await
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// The step record with `step_id` (iteration records aside).
pub fn step<'a>(steps: &'a [Value], step_id: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step_id"] == step_id && s["iteration"].is_null())
        .unwrap_or_else(|| panic!("no record of step `{step_id}` in {steps:#?}"))
}

/// The step ids of the records, in order.
pub fn step_ids(steps: &[Value]) -> Vec<&str> {
    steps
        .iter()
        .map(|s| s["step_id"].as_str().unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The LLM

/// What the fake model does: while the conversation holds no tool result and `tool_call`
/// names an offered function, it calls that function; otherwise it answers.
#[derive(Clone, Debug)]
pub struct Script {
    /// The function to call, with its JSON arguments, and the call's `usage`.
    pub tool_call: Option<(String, Value, (u64, u64))>,
    /// The answer and its `usage`.
    pub answer: (String, (u64, u64)),
}

/// An OpenAI-compatible `POST /chat/completions` that follows a [`Script`] and insists on
/// its API key.
pub struct FakeLlm {
    server: MockServer,
    /// The key agents must send.
    pub api_key: String,
}

struct ScriptedModel {
    script: Script,
    authorization: String,
}

fn completion(message: Value, usage: (u64, u64)) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1,
                  "total_tokens": usage.0 + usage.1},
    }))
}

impl Respond for ScriptedModel {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let authorized = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(self.authorization.as_str());
        if !authorized {
            return ResponseTemplate::new(401)
                .set_body_json(json!({"error": {"message": "missing or wrong API key"}}));
        }
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return ResponseTemplate::new(400)
                .set_body_json(json!({"error": {"message": "the body is not JSON"}}));
        };
        let answered_tool = body["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
        let offered: Vec<&str> = body["tools"]
            .as_array()
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t["function"]["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        match &self.script.tool_call {
            Some((name, arguments, usage))
                if !answered_tool && offered.contains(&name.as_str()) =>
            {
                completion(
                    json!({"role": "assistant", "content": null, "tool_calls": [{
                        "id": format!("call_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments.to_string()},
                    }]}),
                    *usage,
                )
            }
            _ => {
                let (text, usage) = &self.script.answer;
                completion(json!({"role": "assistant", "content": text}), *usage)
            }
        }
    }
}

impl FakeLlm {
    /// Starts a fake model following `script`.
    pub async fn start(script: Script) -> Self {
        let server = fake_server().await;
        let api_key = format!("sk-e2e-{}", uuid::Uuid::now_v7().simple());
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(ScriptedModel {
                script,
                authorization: format!("Bearer {api_key}"),
            })
            .mount(&server)
            .await;
        Self { server, api_key }
    }

    /// The base URL agents are given.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.uri())
    }

    /// The bodies of every chat-completions request so far.
    pub async fn requests(&self) -> Vec<Value> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/v1/chat/completions")
            .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Tool APIs

/// A fake tool API: fixed answers per path, and a record of every call.
pub struct ToolApi {
    server: MockServer,
}

/// Answers `ok` while `healthy` is set, `failing` otherwise.
struct Switchable {
    healthy: Arc<AtomicBool>,
    ok: Value,
    failing: u16,
}

impl Respond for Switchable {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        if self.healthy.load(Ordering::SeqCst) {
            ResponseTemplate::new(200).set_body_json(self.ok.clone())
        } else {
            ResponseTemplate::new(self.failing)
                .set_body_json(json!({"error": "the payment service is down"}))
        }
    }
}

impl ToolApi {
    /// Starts an API with no routes yet.
    pub async fn start() -> Self {
        Self {
            server: fake_server().await,
        }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.uri())
    }

    /// `path` answers `body` after `delay`.
    pub async fn answer_after(&self, path_: &str, body: Value, delay: Duration) {
        Mock::given(path(path_))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(body)
                    .set_delay(delay),
            )
            .mount(&self.server)
            .await;
    }

    /// `path` answers `body`.
    pub async fn answer(&self, path_: &str, body: Value) {
        self.answer_after(path_, body, Duration::ZERO).await;
    }

    /// `path` answers `ok` while the returned switch is on, and HTTP `failing` while off
    /// (as it starts).
    pub async fn switchable(&self, path_: &str, ok: Value, failing: u16) -> Arc<AtomicBool> {
        let healthy = Arc::new(AtomicBool::new(false));
        Mock::given(path(path_))
            .respond_with(Switchable {
                healthy: healthy.clone(),
                ok,
                failing,
            })
            .mount(&self.server)
            .await;
        healthy
    }

    /// The JSON bodies of the calls to `path` so far (`null` for an empty body).
    pub async fn calls(&self, path_: &str) -> Vec<Value> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == path_)
            .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
            .collect()
    }

    /// Polls until `path` was called at least once.
    pub async fn wait_for_call(&self, path_: &str) {
        let deadline = Instant::now() + RUN_DEADLINE;
        while self.calls(path_).await.is_empty() {
            assert!(Instant::now() < deadline, "{path_} was never called");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Webhooks

/// One webhook as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The path it was sent to.
    pub path: String,
    /// Its JSON body.
    pub body: Value,
    /// `X-Spark-Ops-Delivery`.
    pub delivery_id: String,
    /// Whether `X-Spark-Ops-Signature` verified with the project's secret.
    pub verified: bool,
}

/// A webhook receiver that verifies each request's signature with the project's secret,
/// read from Secrets Manager on first use, and answers `401` when it does not verify.
pub struct WebhookReceiver {
    server: MockServer,
    seen: Arc<Mutex<Vec<Received>>>,
}

struct Verifier {
    secret_name: String,
    secret: Mutex<Option<Vec<u8>>>,
    seen: Arc<Mutex<Vec<Received>>>,
}

/// The value of a secret in the local Secrets Manager.
pub async fn read_secret(name: &str) -> Option<String> {
    aws_sdk_secretsmanager::Client::new(&local_sdk().await)
        .get_secret_value()
        .secret_id(name)
        .send()
        .await
        .ok()
        .and_then(|s| s.secret_string().map(str::to_owned))
}

impl Verifier {
    /// The secret, fetched once. `respond` is synchronous, so the fetch runs on a thread of
    /// its own with its own runtime.
    fn secret(&self) -> Option<Vec<u8>> {
        let mut cached = self.secret.lock().ok()?;
        if cached.is_none() {
            let name = self.secret_name.clone();
            *cached = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?
                    .block_on(read_secret(&name))
            })
            .join()
            .ok()
            .flatten()
            .map(String::into_bytes);
        }
        cached.clone()
    }
}

fn header_text<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Whether `request` carries a valid signature of its timestamp and body under `secret`.
pub fn signed_by(request: &Request, secret: &[u8]) -> bool {
    let Ok(timestamp) = header_text(request, TIMESTAMP_HEADER).parse::<i64>() else {
        return false;
    };
    webhook::verify(
        secret,
        timestamp,
        &request.body,
        header_text(request, SIGNATURE_HEADER),
        chrono::Utc::now().timestamp(),
        webhook::DEFAULT_TOLERANCE,
    )
}

impl Respond for Verifier {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let verified = self.secret().is_some_and(|s| signed_by(request, &s));
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(Received {
                path: request.url.path().to_owned(),
                body: serde_json::from_slice(&request.body).unwrap_or(Value::Null),
                delivery_id: header_text(request, DELIVERY_HEADER).to_owned(),
                verified,
            });
        }
        if verified {
            ResponseTemplate::new(200).set_body_json(json!({"received": true}))
        } else {
            ResponseTemplate::new(401).set_body_string("bad signature")
        }
    }
}

impl WebhookReceiver {
    /// A receiver for the webhooks of `project`.
    pub async fn start(project: &Project) -> Self {
        let server = fake_server().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        Mock::given(method("POST"))
            .respond_with(Verifier {
                secret_name: format!(
                    "{}/{}",
                    project.prefix,
                    spark_ops::store::secrets::path::project_webhook_secret(
                        project.id.parse().expect("a project uuid")
                    )
                ),
                secret: Mutex::new(None),
                seen: seen.clone(),
            })
            .mount(&server)
            .await;
        Self { server, seen }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.uri())
    }

    /// What was received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
