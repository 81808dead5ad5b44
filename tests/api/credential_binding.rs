//! Stored credentials stay bound to where they were meant to go: a change that would send a
//! tool's or an agent's secret to another origin needs the secret sent again.

use axum::http::StatusCode;
use serde_json::{json, Value};
use spark_ops::engine::run::Outcome;
use spark_ops_tests::{spawn_app, NoHeartbeat, TestApp};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Owner {
    app: TestApp,
    token: String,
    project: String,
}

async fn owner() -> Owner {
    let app = spawn_app().await;
    let token = app.user("Owner").await;
    let project = app.project(&token, "Binding").await;
    Owner {
        app,
        token,
        project,
    }
}

impl Owner {
    async fn patch(&self, path: &str, body: Value) -> spark_ops_tests::Reply {
        self.app.patch(path, &self.token, body).await
    }
}

#[tokio::test]
async fn moving_a_credentialed_tool_to_another_origin_needs_its_credentials_again() {
    // GIVEN a tool holding an API key for crm.example.com
    let o = owner().await;
    let created = o
        .app
        .post(
            "/api/v1/tools",
            Some(&o.token),
            json!({"project_id": o.project, "name": "crm", "kind": "http", "auth_type": "apikey", "env": "dev",
                   "config": {"url": "https://crm.example.com/v1/customers", "method": "GET",
                              "headers": {"Authorization": "Bearer {{ credentials.api_key }}"}},
                   "credentials": {"api_key": "sk-crm-only"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let path = format!("/api/v1/tools/{}", created.body["id"].as_str().unwrap());
    let config =
        |url: &str, headers: Value| json!({"url": url, "method": "GET", "headers": headers});
    let bearer = json!({"Authorization": "Bearer {{ credentials.api_key }}"});

    // WHEN a developer points it at another host, port or scheme without the key
    for url in [
        "https://attacker.example/collect",
        "https://crm.example.com:8443/v1/customers",
        "http://crm.example.com/v1/customers",
    ] {
        let reply = o
            .patch(&path, json!({"config": config(url, bearer.clone())}))
            .await;

        // THEN it is refused, naming `credentials`, and nothing changes
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            reply.text
        );
        assert_eq!(reply.error_fields(), ["credentials"], "{url}");
    }
    // AND a new header carrying the key is refused the same way
    let leaky = json!({"Authorization": "Bearer {{ credentials.api_key }}",
                       "X-Forward-Token": "{{ credentials.api_key }}"});
    let reply = o
        .patch(
            &path,
            json!({"config": config("https://crm.example.com/v1/customers", leaky)}),
        )
        .await;
    assert_eq!(reply.error_fields(), ["credentials"], "{}", reply.text);
    let unchanged = o.app.get(&path, &o.token).await;
    assert_eq!(unchanged.body["version"], 1);
    assert_eq!(
        unchanged.body["config"]["url"],
        "https://crm.example.com/v1/customers"
    );

    // WHEN only the path changes THEN the key stays, without being sent again
    let reply = o
        .patch(
            &path,
            json!({"config": config("https://crm.example.com/v2/customers", bearer.clone())}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["has_credentials"], true);

    // AND with the credentials sent again, the move is accepted
    let reply = o
        .patch(
            &path,
            json!({"config": config("https://crm2.example.com/v1", bearer),
                   "credentials": {"api_key": "sk-for-the-new-host"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test]
async fn moving_an_agents_model_endpoint_to_another_origin_drops_its_key() {
    // GIVEN an agent whose model endpoint (a local fake) holds its key
    let o = owner().await;
    let first = MockServer::start().await;
    let second = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}
        })))
        .mount(&second)
        .await;
    let agent = o
        .app
        .post(
            "/api/v1/agents",
            Some(&o.token),
            json!({"project_id": o.project, "name": "a", "runtime": "python", "model": "gpt-4o-mini",
                   "env": "dev", "llm": {"base_url": format!("{}/v1", first.uri()), "api_key": "sk-first-only"}}),
        )
        .await;
    assert_eq!(agent.status, StatusCode::CREATED, "{}", agent.text);
    let id = agent.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/agents/{id}");

    // WHEN only its path changes THEN the key stays
    let same = o
        .patch(
            &path,
            json!({"llm": {"base_url": format!("{}/v2", first.uri())}}),
        )
        .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text);
    assert_eq!(same.body["llm"]["has_api_key"], true);

    // WHEN it moves to another origin without the key
    let moved = o
        .patch(
            &path,
            json!({"llm": {"base_url": format!("{}/v1", second.uri())}}),
        )
        .await;

    // THEN the key is dropped
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(moved.body["llm"]["has_api_key"], false);

    // AND a prompt run sends no key to the new endpoint
    let workflow = o
        .app
        .released_workflow(
            &o.token,
            &o.project,
            json!({"steps": [{"id": "ask", "type": "prompt", "config": {"prompt": "hi"}}]}),
        )
        .await;
    let run = o
        .app
        .start_run(
            &o.token,
            json!({"workflow_id": workflow, "agent_id": id, "env": "dev"}),
        )
        .await;
    let run = o.app.state.store.get_run(run).await.unwrap().unwrap();
    let outcome = o
        .app
        .engine_allowing(&[&first.uri(), &second.uri()])
        .execute(run, &NoHeartbeat)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    let received = second.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    assert!(
        !received[0].headers.contains_key("authorization"),
        "{:?}",
        received[0].headers
    );
}

/// Creates a credential bound to `origin`; answers the reply.
async fn create_credential(o: &Owner, origin: &str, value: &str) -> spark_ops_tests::Reply {
    o.app
        .post(
            "/api/v1/credentials",
            Some(&o.token),
            json!({"project_id": o.project, "name": "hook token", "origin": origin, "value": value}),
        )
        .await
}

#[tokio::test]
async fn a_project_credential_is_write_only_project_scoped_and_bound_to_its_origin() {
    // GIVEN an owner who stores a webhook token
    let o = owner().await;
    let secret = "whk-violet-tundra-cascade";
    let created = create_credential(&o, "https://hooks.example.com/in?x=1", secret).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["origin"], "https://hooks.example.com");
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/credentials/{id}");

    // THEN no answer ever shows the value
    let read = o.app.get(&path, &o.token).await;
    let list = o
        .app
        .get(
            &format!("/api/v1/credentials?project_id={}", o.project),
            &o.token,
        )
        .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    for reply in [&created, &read, &list] {
        assert!(!reply.text.contains(secret), "{}", reply.text);
    }

    // AND an outsider cannot see it
    let outsider = o.app.user("Outsider").await;
    assert_eq!(
        o.app.get(&path, &outsider).await.status,
        StatusCode::NOT_FOUND
    );

    // AND moving it to another origin needs the value again
    let moved = o
        .patch(&path, json!({"origin": "https://attacker.example"}))
        .await;
    assert_eq!(
        moved.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        moved.text
    );
    assert_eq!(moved.error_fields(), ["value"]);
    let moved = o
        .patch(
            &path,
            json!({"origin": "https://hooks2.example.com", "value": "whk-second"}),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(moved.body["version"], 2);

    // AND bad input is named
    let bad = o
        .app
        .post(
            "/api/v1/credentials",
            Some(&o.token),
            json!({"project_id": o.project, "name": "", "origin": "ftp://x", "value": ""}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut fields = bad.error_fields();
    fields.sort();
    assert_eq!(fields, ["name", "origin", "value"]);

    // AND deleting it answers 204, then 404
    let deleted = o.app.delete(&path, &o.token).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_eq!(
        o.app.get(&path, &o.token).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_webhook_step_keeps_secrets_out_of_its_version_and_sends_its_credential_only_to_its_origin(
) {
    // GIVEN a receiver (a local fake) and a credential bound to it
    let o = owner().await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"echo": "whk-fake-receiver"})),
        )
        .mount(&receiver)
        .await;
    let created = create_credential(&o, &receiver.uri(), "whk-fake-receiver").await;
    let credential = created.body["id"].as_str().unwrap().to_owned();
    let create = |definition: Value| {
        let app = &o.app;
        let token = o.token.clone();
        let project = o.project.clone();
        async move {
            app.post(
                "/api/v1/workflows",
                Some(&token),
                json!({"project_id": project, "name": "hooks", "definition": definition}),
            )
            .await
        }
    };
    let hook =
        |config: Value| json!({"steps": [{"id": "hook", "type": "webhook", "config": config}]});

    // WHEN a workflow writes a secret header literally THEN it is refused at that header
    let literal = create(hook(json!({"url": format!("{}/in", receiver.uri()),
        "headers": {"Authorization": "Bearer whk-literal"}})))
    .await;
    assert_eq!(
        literal.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        literal.text
    );
    assert_eq!(
        literal.error_fields(),
        ["definition.steps[0].config.headers.Authorization"]
    );
    // AND so is a framing header, and a credential used for another origin
    let framing = create(hook(json!({"url": format!("{}/in", receiver.uri()),
        "headers": {"Transfer-Encoding": "chunked"}})))
    .await;
    assert_eq!(
        framing.error_fields(),
        ["definition.steps[0].config.headers.Transfer-Encoding"]
    );
    let elsewhere = create(hook(json!({"url": "https://attacker.example/collect",
        "credentials": {"id": credential}})))
    .await;
    assert_eq!(
        elsewhere.error_fields(),
        ["definition.steps[0].config.credentials.id"],
        "{}",
        elsewhere.text
    );

    // WHEN the step names the credential instead
    let definition = hook(json!({"url": format!("{}/in", receiver.uri()),
        "credentials": {"id": credential, "scheme": "Bearer"}}));
    let workflow = o
        .app
        .released_workflow(&o.token, &o.project, definition)
        .await;
    let version = o
        .app
        .get(
            &format!("/api/v1/workflows/{workflow}/versions/1"),
            &o.token,
        )
        .await;
    assert!(
        !version.text.contains("whk-fake-receiver"),
        "{}",
        version.text
    );
    let agent = o.app.agent(&o.token, &o.project, "gpt-4o-mini").await;
    let run = o
        .app
        .start_run(
            &o.token,
            json!({"workflow_id": workflow, "agent_id": agent, "env": "dev"}),
        )
        .await;
    let stored = o.app.state.store.get_run(run).await.unwrap().unwrap();
    let outcome = o
        .app
        .engine_allowing(&[&receiver.uri()])
        .execute(stored, &NoHeartbeat)
        .await
        .unwrap();

    // THEN the receiver got it, and the step shows neither it nor the receiver's echo of it
    assert_eq!(outcome, Outcome::Succeeded);
    let received = receiver.received_requests().await.unwrap();
    assert_eq!(
        received[0].headers.get("authorization").unwrap(),
        "Bearer whk-fake-receiver"
    );
    let steps = o.app.state.store.all_steps(run).await.unwrap();
    let shown = format!("{steps:?}");
    assert!(!shown.contains("whk-fake-receiver"), "{shown}");
    assert!(shown.contains("[REDACTED]"), "{shown}");
}
