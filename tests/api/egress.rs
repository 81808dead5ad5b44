//! The egress policy, attacked as a tenant who signed up a minute ago would: tools, webhook
//! steps, model endpoints and OAuth token endpoints aimed at the deployment's own services,
//! instance metadata and private addresses, through redirects, templated hosts and `..`.
//! The local services are real: a refusal that failed would read the JWT signing key back
//! from LocalStack's Secrets Manager.

use axum::http::StatusCode;
use serde_json::{json, Value};
use spark_ops::engine::run::Outcome;
use spark_ops::engine::tool::ToolError;
use spark_ops::run::{StepRecord, StepStatus};
use spark_ops_tests::{egress_allowing, localstack_url, spawn_app, NoHeartbeat, TestApp};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A tenant: an owner, their project and an agent without its own model endpoint.
struct Tenant {
    app: TestApp,
    owner: String,
    project: String,
    agent: String,
}

async fn tenant() -> Tenant {
    let app = spawn_app().await;
    let owner = app.user("Mallory").await;
    let project = app.project(&owner, "Egress").await;
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    Tenant {
        app,
        owner,
        project,
        agent,
    }
}

impl Tenant {
    /// Registers an http tool; answers the API's reply.
    async fn create_tool(
        &self,
        config: Value,
        credentials: Option<Value>,
    ) -> spark_ops_tests::Reply {
        let mut body = json!({"project_id": self.project, "name": "probe", "kind": "http",
                              "auth_type": "none", "env": "dev", "config": config});
        if let Some(credentials) = credentials {
            body["auth_type"] = json!("apikey");
            body["credentials"] = credentials;
        }
        self.app
            .post("/api/v1/tools", Some(&self.owner), body)
            .await
    }

    async fn tool(&self, config: Value, credentials: Option<Value>) -> String {
        let reply = self.create_tool(config, credentials).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "create tool: {}",
            reply.text
        );
        reply.body["id"].as_str().unwrap().to_owned()
    }

    /// Runs a one-workflow `definition` with `input` to its end, the fakes at `allowed` on
    /// the egress allow-list; answers the outcome and the step records.
    async fn run(
        &self,
        definition: Value,
        input: Value,
        allowed: &[&str],
    ) -> (Outcome, Vec<StepRecord>) {
        let workflow = self
            .app
            .released_workflow(&self.owner, &self.project, definition)
            .await;
        let id = self
            .app
            .start_run(
                &self.owner,
                json!({"workflow_id": workflow, "agent_id": self.agent, "env": "dev", "input": input}),
            )
            .await;
        let run = self.app.state.store.get_run(id).await.unwrap().unwrap();
        let outcome = self
            .app
            .engine_allowing(allowed)
            .execute(run, &NoHeartbeat)
            .await
            .unwrap();
        (outcome, self.app.state.store.all_steps(id).await.unwrap())
    }

    /// Runs a single tool step calling `tool` with `input`.
    async fn run_tool(&self, tool: &str, input: Value, allowed: &[&str]) -> StepRecord {
        let definition = json!({"steps": [
            {"id": "call", "type": "tool", "config": {"tool_id": tool, "input": input}}
        ]});
        let (outcome, mut steps) = self.run(definition, json!({}), allowed).await;
        assert_eq!(outcome, Outcome::Failed, "{steps:?}");
        steps.remove(0)
    }

    /// The JWT signing key of this deployment, as LocalStack holds it.
    async fn jwt_key(&self) -> String {
        let name = self.app.state.config.jwt_secret_name();
        let secret = self
            .app
            .state
            .clients
            .secrets
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .unwrap();
        secret.secret_string().unwrap().to_owned()
    }
}

fn error_of(step: &StepRecord) -> String {
    assert_eq!(step.status, StepStatus::Failed, "{step:?}");
    step.error_message.clone().unwrap_or_default()
}

async fn requests(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

#[tokio::test]
async fn a_tool_aimed_at_the_local_secrets_manager_cannot_read_the_jwt_key_even_when_allowed() {
    // GIVEN a tenant's tool that asks LocalStack's Secrets Manager for the JWT signing key
    let t = tenant().await;
    let tool = t
        .tool(
            json!({"url": format!("{}/", localstack_url()), "method": "POST",
                   "headers": {"X-Amz-Target": "secretsmanager.GetSecretValue"}}),
            None,
        )
        .await;
    let input = json!({"SecretId": t.app.state.config.jwt_secret_name()});

    // WHEN it runs with an empty allow-list, and again with LocalStack on the allow-list
    for allowed in [vec![], vec![localstack_url()]] {
        let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let step = t.run_tool(&tool, input.clone(), &allowed).await;

        // THEN the step fails with the refusal, and the key is nowhere in it
        let error = error_of(&step);
        assert!(
            error.contains(
                "egress refused: 127.0.0.1:4566 is one of this deployment's own endpoints"
            ),
            "{error}"
        );
        let key = t.jwt_key().await;
        assert!(
            !format!("{step:?}").contains(&key),
            "the key leaked: {step:?}"
        );
        assert!(step.response.is_none());
    }
}

#[tokio::test]
async fn internal_addresses_are_refused_in_every_spelling_without_a_hang() {
    // GIVEN a local service that is allowed only as 127.0.0.1:<port>
    let t = tenant().await;
    let fake = MockServer::start().await;
    let port = fake.address().port();
    let cases = [
        (
            "http://169.254.169.254/latest/meta-data/iam/".to_owned(),
            "169.254.169.254 is a link-local address",
        ),
        (
            "http://[fd00:ec2::254]/latest/".to_owned(),
            "fd00:ec2::254 is a private (unique local) address",
        ),
        (
            "http://10.0.0.8/admin".to_owned(),
            "10.0.0.8 is a private address",
        ),
        (
            "http://100.64.1.1/".to_owned(),
            "100.64.1.1 is a shared (CGNAT) address",
        ),
        (
            "http://0.0.0.0:4566/".to_owned(),
            "0.0.0.0 is an unspecified address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "::ffff:127.0.0.1 is a loopback address",
        ),
        (
            "http://0x7f.1:9/".to_owned(),
            "127.0.0.1 is a loopback address",
        ),
        (format!("http://localhost:{port}/"), "localhost resolves to"),
    ];
    for (url, expected) in cases {
        // WHEN a tool step calls it
        let tool = t.tool(json!({"url": url, "method": "GET"}), None).await;
        let step = t.run_tool(&tool, json!({}), &[&fake.uri()]).await;

        // THEN it fails at once, saying why
        let error = error_of(&step);
        assert!(
            error.contains(&format!("egress refused: {expected}")),
            "{url}: {error}"
        );
    }
    // AND the local service was never reached by another name
    assert_eq!(requests(&fake).await, 0);
}

#[tokio::test]
async fn a_redirect_is_an_answer_never_followed_even_to_an_allowed_address() {
    // GIVEN a tool whose API redirects to another service that would accept the credentials
    let t = tenant().await;
    let first = MockServer::start().await;
    let second = MockServer::start().await;
    Mock::given(path("/start"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/steal", second.uri()).as_str()),
        )
        .mount(&first)
        .await;
    let tool = t
        .tool(
            json!({"url": format!("{}/start", first.uri()), "method": "POST",
                   "headers": {"Authorization": "Bearer {{ credentials.api_key }}"}}),
            Some(json!({"api_key": "sk-redirect-me-please"})),
        )
        .await;

    // WHEN it runs, both services allowed
    let step = t
        .run_tool(&tool, json!({}), &[&first.uri(), &second.uri()])
        .await;

    // THEN the step fails on the 307, and the second service saw nothing
    assert!(error_of(&step).contains("HTTP 307"), "{step:?}");
    assert_eq!(requests(&first).await, 1);
    assert_eq!(requests(&second).await, 0);
}

#[tokio::test]
async fn a_url_template_may_fill_only_the_path_and_query_and_never_climb() {
    // GIVEN a tenant
    let t = tenant().await;

    // WHEN tools are saved whose host, port, scheme or user info come from the input
    for url in [
        "https://{{ input.host }}/v1/secret",
        "https://api.example.com:{{ input.port }}/",
        "{{ input.scheme }}://api.example.com/",
        "https://{{ input.user }}@api.example.com/",
        "https://api.example.com{{ input.rest }}",
    ] {
        let reply = t
            .create_tool(json!({"url": url, "method": "GET"}), None)
            .await;

        // THEN each is refused, naming the field
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            reply.text
        );
        assert_eq!(reply.error_fields(), ["config.url"], "{url}");
    }

    // AND a path filled with `..` is refused before anything is sent
    let fake = MockServer::start().await;
    let tool = t
        .tool(
            json!({"url": format!("{}/v1/items/{{{{ input.id }}}}/view", fake.uri()), "method": "POST",
                   "headers": {"Authorization": "Bearer {{ credentials.api_key }}"}}),
            Some(json!({"api_key": "sk-stays-on-items"})),
        )
        .await;
    for id in ["..", "."] {
        let step = t.run_tool(&tool, json!({"id": id}), &[&fake.uri()]).await;
        let error = error_of(&step);
        assert!(error.contains("`/id`") && error.contains("`..`"), "{error}");
    }
    assert_eq!(requests(&fake).await, 0);
}

#[tokio::test]
async fn credentials_travel_only_over_https_unless_the_address_is_allowed() {
    // GIVEN a tool sending an API key to a plain-http public URL
    let t = tenant().await;
    let tool = t
        .tool(
            json!({"url": "http://api.example.com/v1", "method": "POST",
                   "headers": {"X-Api-Key": "{{ credentials.api_key }}"}}),
            Some(json!({"api_key": "sk-not-in-clear-text"})),
        )
        .await;

    // WHEN it runs THEN it is refused before any connection
    let step = t.run_tool(&tool, json!({}), &[]).await;
    assert_eq!(
        error_of(&step),
        "tool `probe`: egress refused: credentials are sent only over https, not to http://api.example.com"
    );
}

#[tokio::test]
async fn a_webhook_step_and_a_models_endpoint_aimed_inside_are_refused() {
    // GIVEN a workflow with a webhook step aimed at LocalStack
    let t = tenant().await;
    let hook = json!({"steps": [{"id": "hook", "type": "webhook",
        "config": {"url": format!("{}/", localstack_url()), "body": {"a": 1}}}]});
    let (outcome, steps) = t.run(hook, json!({}), &[]).await;
    assert_eq!(outcome, Outcome::Failed);
    assert!(
        error_of(&steps[0]).contains("egress refused: 127.0.0.1:4566"),
        "{steps:?}"
    );

    // AND an agent whose model endpoint is the instance metadata service
    let agent = t
        .app
        .post(
            "/api/v1/agents",
            Some(&t.owner),
            json!({"project_id": t.project, "name": "meta", "runtime": "python", "model": "gpt-4o",
                   "env": "dev", "llm": {"base_url": "http://169.254.169.254/latest", "api_key": "sk-x"}}),
        )
        .await;
    assert_eq!(agent.status, StatusCode::CREATED, "{}", agent.text);
    let t = Tenant {
        agent: agent.body["id"].as_str().unwrap().to_owned(),
        ..t
    };
    let prompt = json!({"steps": [{"id": "ask", "type": "prompt", "config": {"prompt": "hi"}}]});
    let (outcome, steps) = t.run(prompt, json!({}), &[]).await;
    assert_eq!(outcome, Outcome::Failed);
    assert!(
        error_of(&steps[0]).contains("egress refused: 169.254.169.254 is a link-local address"),
        "{steps:?}"
    );
}

#[tokio::test]
async fn an_oauth_token_url_aimed_inside_is_refused_before_the_client_secret_is_sent() {
    // GIVEN an OAuth tool whose token endpoint is LocalStack
    let t = tenant().await;
    let fake = MockServer::start().await;
    let reply = t
        .app
        .post(
            "/api/v1/tools",
            Some(&t.owner),
            json!({"project_id": t.project, "name": "oauth", "kind": "http", "auth_type": "oauth", "env": "dev",
                   "config": {"url": format!("{}/api", fake.uri()), "method": "POST",
                              "headers": {"Authorization": "Bearer {{ credentials.access_token }}"}},
                   "credentials": {"oauth": {"client_id": "c", "client_secret": "s3cret-client",
                                              "token_url": format!("{}/token", localstack_url())}}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);

    // WHEN it is called
    let step = t
        .run_tool(
            reply.body["id"].as_str().unwrap(),
            json!({}),
            &[&fake.uri()],
        )
        .await;

    // THEN the token fetch is refused and the API is never called
    assert!(
        error_of(&step).contains("egress refused: 127.0.0.1:4566"),
        "{step:?}"
    );
    assert_eq!(requests(&fake).await, 0);
}

#[tokio::test]
async fn a_tool_that_echoes_its_credentials_has_them_scrubbed_from_the_output() {
    // GIVEN an API that echoes the key it was sent
    let t = tenant().await;
    let fake = MockServer::start().await;
    let key = "sk-echoed-back-violet-42";
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"you_sent": format!("Bearer {key}"), "nested": [key]})),
        )
        .mount(&fake)
        .await;
    let tool = t
        .tool(
            json!({"url": format!("{}/echo", fake.uri()), "method": "POST",
                   "headers": {"Authorization": "Bearer {{ credentials.api_key }}"}}),
            Some(json!({"api_key": key})),
        )
        .await;
    let definition = json!({"steps": [
        {"id": "call", "type": "tool", "config": {"tool_id": tool, "input": {}}}
    ]});

    // WHEN it succeeds
    let (outcome, steps) = t.run(definition, json!({}), &[&fake.uri()]).await;

    // THEN the stored output carries no credential
    assert_eq!(outcome, Outcome::Succeeded);
    let stored = format!("{:?}", steps[0]);
    assert!(!stored.contains(key), "{stored}");
    assert_eq!(
        steps[0].response,
        Some(json!({"you_sent": "Bearer [REDACTED]", "nested": ["[REDACTED]"]}))
    );
}

#[tokio::test]
async fn a_refusal_is_a_final_error_of_its_own() {
    // GIVEN a credentialed tool aimed at a private address
    let t = tenant().await;
    let id = t
        .tool(
            json!({"url": "https://10.1.2.3/api", "method": "POST",
                   "headers": {"Authorization": "Bearer {{ credentials.api_key }}"}}),
            Some(json!({"api_key": "sk-private"})),
        )
        .await;
    let tool = t
        .app
        .state
        .store
        .get_tool(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let executor = spark_ops::engine::tool::ToolExecutor::new(
        egress_allowing(&[]),
        t.app.state.store.clone(),
        t.app.state.secrets.clone(),
        t.app.state.clock.clone(),
    );

    // WHEN it is called THEN the error is the refusal, final
    let err = executor.call(&tool, json!({})).await.unwrap_err();
    assert!(matches!(&err, ToolError::Egress(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "egress refused: 10.1.2.3 is a private address"
    );
}
