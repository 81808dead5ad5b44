//! Router tests of `/api/v1/agents`: CRUD, tools of the same project, the write-only LLM key,
//! heartbeats with a project API key, health driven by the injected clock, filtered lists,
//! metrics history, isolation and optimistic concurrency.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::Duration;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use spark_ops_tests::{capture_logs, spawn_app, Reply, TestApp};

const SECRET_KEY: &str = "sk-live-4f1c9e0d7a2b4b8e9f3a6c5d2e1b0a97";

/// A project with its owner's token.
struct Project {
    owner: String,
    id: String,
}

async fn project(app: &TestApp) -> Project {
    let owner = app.user("Owner").await;
    let id = app.project(&owner, "Agents").await;
    Project { owner, id }
}

/// The seed's `customer_support_agent`, with the tools given.
fn support_agent(project: &str, tools: &[&str]) -> Value {
    json!({
        "project_id": project,
        "name": "customer_support_agent",
        "runtime": "python",
        "model": "gpt-4o-mini",
        "tools": tools,
        "env": "prod",
        "capabilities": ["faq_handling", "order_tracking", "lead_capture", "complaint_escalation"],
        "max_tokens": 4000,
        "temperature": 0.7,
        "system_prompt": "You are a helpful customer support agent.\nAnswer questions based on the knowledge base and escalate complex issues.\n",
        "owner": "platform-team",
        "changelog": "Initial customer support agent implementation",
        "description": "Handles customer support queries with FAQ and escalation",
    })
}

/// A minimal agent of `env` with `capabilities`.
fn agent_body(project: &str, name: &str, env: &str, capabilities: &[&str]) -> Value {
    json!({
        "project_id": project,
        "name": name,
        "runtime": "node",
        "model": "llama3",
        "env": env,
        "capabilities": capabilities,
    })
}

async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    let reply = app.post("/api/v1/agents", Some(token), body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body
}

async fn create_tool(app: &TestApp, token: &str, project: &str, name: &str) -> String {
    let reply = app
        .post(
            "/api/v1/tools",
            Some(token),
            json!({"project_id": project, "name": name, "kind": "custom", "auth_type": "none", "env": "dev"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body["id"].as_str().unwrap().to_owned()
}

async fn api_key(app: &TestApp, owner: &str, project: &str, role: &str) -> String {
    let reply = app
        .post(
            &format!("/api/v1/projects/{project}/api-keys"),
            Some(owner),
            json!({"name": format!("{role} key"), "role": role}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body["key"].as_str().unwrap().to_owned()
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {}", reply.text))
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn listed(app: &TestApp, token: &str, project: &str, filter: &str) -> Vec<String> {
    let reply = app
        .get(
            &format!("/api/v1/agents?project_id={project}{filter}"),
            token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{filter}: {}", reply.text);
    ids(&reply)
}

fn id_of(agent: &Value) -> String {
    agent["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_agent_is_created_read_listed_changed_and_deleted() {
    let app = spawn_app().await;
    let p = project(&app).await;

    // GIVEN the seed's support agent registered in a project
    let created = app
        .post("/api/v1/agents", Some(&p.owner), support_agent(&p.id, &[]))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = id_of(&created.body);
    let path = format!("/api/v1/agents/{id}");
    assert_eq!(created.header("location"), Some(path.as_str()));
    assert_eq!(created.header("etag"), Some("\"1\""));
    let agent = &created.body;
    assert_eq!(agent["version"], 1);
    assert_eq!(agent["project_id"], p.id.as_str());
    assert_eq!(agent["temperature"], 0.7);
    assert_eq!(agent["max_tokens"], 4000);
    assert_eq!(agent["capabilities"].as_array().unwrap().len(), 4);
    assert_eq!(agent["owner"], "platform-team");
    // Defaults from the spec and the issue.
    assert_eq!(agent["concurrency"], 4);
    assert_eq!(agent["heartbeat_interval_seconds"], 30);
    assert_eq!(agent["metadata"], json!({}));
    assert_eq!(agent["release"], "1.0.0");
    assert_eq!(agent["deprecated"], false);
    assert_eq!(agent["health_status"], "healthy");
    assert_eq!(agent["last_heartbeat"], Value::Null);
    assert_eq!(agent["llm"], Value::Null);

    // WHEN it is read and listed THEN it is the same agent
    let read = app.get(&path, &p.owner).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.header("etag"), Some("\"1\""));
    assert_eq!(read.body, created.body);
    assert_eq!(listed(&app, &p.owner, &p.id, "").await, vec![id.clone()]);

    // WHEN it is changed THEN only the given fields change and the version moves on
    let changed = app
        .patch(
            &path,
            &p.owner,
            json!({
                "version": 1,
                "name": "support v2",
                "temperature": null,
                "concurrency": 8,
                "metadata": {"tier": "gold", "weights": [0.5, 1]},
                "autoscale_config": {"min": 1, "max": 5},
                "release": "1.1.0",
                "deprecated": true,
            }),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.header("etag"), Some("\"2\""));
    assert_eq!(changed.body["version"], 2);
    assert_eq!(changed.body["name"], "support v2");
    assert_eq!(changed.body["temperature"], Value::Null);
    assert_eq!(changed.body["concurrency"], 8);
    assert_eq!(changed.body["metadata"]["weights"], json!([0.5, 1]));
    assert_eq!(changed.body["autoscale_config"]["max"], 5);
    assert_eq!(changed.body["deprecated"], true);
    assert_eq!(changed.body["model"], "gpt-4o-mini", "untouched");
    assert_eq!(app.get(&path, &p.owner).await.body, changed.body);

    // WHEN it is deleted THEN it is gone from reads and every list
    assert_eq!(
        app.delete(&path, &p.owner).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&path, &p.owner).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&path, &p.owner).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(listed(&app, &p.owner, &p.id, "").await.is_empty());
    assert!(listed(&app, &p.owner, &p.id, "&capability=faq_handling")
        .await
        .is_empty());
    assert!(listed(&app, &p.owner, &p.id, "&env=prod").await.is_empty());
    assert!(listed(&app, &p.owner, &p.id, "&health=healthy")
        .await
        .is_empty());
}

#[tokio::test]
async fn invalid_fields_are_all_named_and_nothing_is_written() {
    let app = spawn_app().await;
    let p = project(&app).await;
    let reply = app
        .post(
            "/api/v1/agents",
            Some(&p.owner),
            json!({
                "project_id": p.id,
                "name": " ",
                "runtime": "Python 3",
                "model": "",
                "tools": ["not-a-uuid"],
                "env": "prod",
                "concurrency": 0,
                "capabilities": ["ok", "Not OK"],
                "temperature": 2.5,
                "max_tokens": 0,
                "heartbeat_interval_seconds": 4,
                "metadata": {"huge": 1e200},
                "llm": {"base_url": "ftp://example.com", "api_key": ""},
                "release": "v1",
            }),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    let mut fields = reply.error_fields();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "capabilities[1]",
            "concurrency",
            "heartbeat_interval_seconds",
            "llm.api_key",
            "llm.base_url",
            "max_tokens",
            "metadata.huge",
            "model",
            "name",
            "release",
            "runtime",
            "temperature",
            "tools[0]",
        ]
    );
    let unknown_env = app
        .post(
            "/api/v1/agents",
            Some(&p.owner),
            json!({"project_id": p.id, "name": "a", "runtime": "go", "model": "m", "env": "qa"}),
        )
        .await;
    assert_eq!(unknown_env.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown_env.error_fields(), vec!["env"]);
    let unknown_field = app
        .post(
            "/api/v1/agents",
            Some(&p.owner),
            json!({"project_id": p.id, "name": "a", "runtime": "go", "model": "m", "env": "dev", "health_status": "healthy"}),
        )
        .await;
    assert_eq!(unknown_field.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(listed(&app, &p.owner, &p.id, "").await.is_empty());
}

#[tokio::test]
async fn tools_must_exist_in_the_agents_own_project() {
    let app = spawn_app().await;
    let p = project(&app).await;
    let other = app.project(&p.owner, "Other").await;
    let own_tool = create_tool(&app, &p.owner, &p.id, "crm_tool").await;
    let foreign_tool = create_tool(&app, &p.owner, &other, "crm_tool").await;

    // A tool of another project is reported exactly like a missing one.
    let missing = uuid::Uuid::now_v7().to_string();
    let mut replies = Vec::new();
    for tools in [
        vec![foreign_tool.as_str()],
        vec![missing.as_str()],
        vec![own_tool.as_str(), foreign_tool.as_str()],
    ] {
        replies.push(
            app.post(
                "/api/v1/agents",
                Some(&p.owner),
                support_agent(&p.id, &tools),
            )
            .await,
        );
    }
    for (reply, field) in replies.iter().zip(["tools[0]", "tools[0]", "tools[1]"]) {
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.text
        );
        assert_eq!(reply.error_fields(), vec![field]);
    }
    assert_eq!(
        replies[0].body["errors"][0]["message"],
        replies[1].body["errors"][0]["message"]
    );
    assert!(listed(&app, &p.owner, &p.id, "").await.is_empty());

    let agent = create(&app, &p.owner, support_agent(&p.id, &[&own_tool])).await;
    assert_eq!(agent["tools"], json!([own_tool]));
    let path = format!("/api/v1/agents/{}", id_of(&agent));
    let patch = app
        .patch(&path, &p.owner, json!({"tools": [own_tool, foreign_tool]}))
        .await;
    assert_eq!(patch.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(patch.error_fields(), vec!["tools[1]"]);
    assert_eq!(app.get(&path, &p.owner).await.body["version"], 1);
}

#[tokio::test]
async fn the_llm_api_key_goes_to_secrets_manager_and_never_into_a_response_log_or_record() {
    let logs = capture_logs();
    let app = spawn_app().await;
    let p = project(&app).await;

    // GIVEN an agent created with an LLM endpoint and key
    let mut body = support_agent(&p.id, &[]);
    body["llm"] = json!({"base_url": "https://llm.example.com/v1", "api_key": SECRET_KEY});
    let created = app.post("/api/v1/agents", Some(&p.owner), body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = id_of(&created.body);
    let path = format!("/api/v1/agents/{id}");
    assert_eq!(
        created.body["llm"],
        json!({"base_url": "https://llm.example.com/v1", "has_api_key": true})
    );

    // THEN the key is in Secrets Manager
    let secret_path = spark_ops::store::secrets::path::agent_llm_key(id.parse().unwrap());
    let stored = app.state.secrets.get(&secret_path).await.unwrap().unwrap();
    assert_eq!(stored.expose_secret(), SECRET_KEY);

    // AND no response shows it: create, read, list, change (same origin, keeping the key),
    // heartbeat, metrics
    let mut replies = vec![created];
    replies.push(app.get(&path, &p.owner).await);
    replies.push(
        app.get(&format!("/api/v1/agents?project_id={}", p.id), &p.owner)
            .await,
    );
    replies.push(
        app.get(
            &format!("/api/v1/agents?project_id={}&capability=faq_handling", p.id),
            &p.owner,
        )
        .await,
    );
    let kept = app
        .patch(
            &path,
            &p.owner,
            json!({"llm": {"base_url": "https://llm.example.com/v2"}}),
        )
        .await;
    assert_eq!(kept.status, StatusCode::OK, "{}", kept.text);
    assert_eq!(kept.body["llm"]["has_api_key"], true, "the key is kept");
    replies.push(kept);
    replies.push(
        app.call(
            Method::POST,
            &format!("{path}/heartbeat"),
            Some(&p.owner),
            None,
        )
        .await,
    );
    replies.push(app.get(&format!("{path}/metrics"), &p.owner).await);
    // A rejected change that carries a key does not echo it either.
    let rejected = app
        .patch(
            &path,
            &p.owner,
            json!({"name": "", "llm": {"base_url": "nope", "api_key": SECRET_KEY}}),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::UNPROCESSABLE_ENTITY);
    replies.push(rejected);
    for reply in &replies {
        assert!(!reply.text.contains(SECRET_KEY), "leaked in {}", reply.text);
        assert!(!reply.text.contains(&SECRET_KEY[8..20]));
    }

    // AND the DynamoDB record does not hold it
    let item = app
        .state
        .clients
        .ddb
        .get_item()
        .table_name(format!("{}-registry", app.prefix))
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("AGENT#{id}")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("AGENT".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(!format!("{item:?}").contains(SECRET_KEY));

    // WHEN the key is replaced THEN Secrets Manager holds the new one
    let replaced = app
        .patch(
            &path,
            &p.owner,
            json!({"llm": {"base_url": "https://llm2.example.com/v1", "api_key": "sk-second-key-123456"}}),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.text);
    assert!(!replaced.text.contains("sk-second-key-123456"));
    let stored = app.state.secrets.get(&secret_path).await.unwrap().unwrap();
    assert_eq!(stored.expose_secret(), "sk-second-key-123456");

    // WHEN the key is removed and later given again THEN each step is reflected
    let removed = app
        .patch(
            &path,
            &p.owner,
            json!({"llm": {"base_url": "https://llm2.example.com/v1", "api_key": null}}),
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    assert_eq!(removed.body["llm"]["has_api_key"], false);
    let again = app
        .patch(
            &path,
            &p.owner,
            json!({"llm": {"base_url": "https://llm2.example.com/v1", "api_key": SECRET_KEY}}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["llm"]["has_api_key"], true);
    assert!(!again.text.contains(SECRET_KEY));
    let stored = app.state.secrets.get(&secret_path).await.unwrap().unwrap();
    assert_eq!(stored.expose_secret(), SECRET_KEY);

    // WHEN the agent is deleted THEN its key is scheduled for deletion
    let dropped = app.patch(&path, &p.owner, json!({"llm": null})).await;
    assert_eq!(dropped.body["llm"], Value::Null);
    assert_eq!(
        app.delete(&path, &p.owner).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(
        !matches!(app.state.secrets.get(&secret_path).await, Ok(Some(_))),
        "the key is no longer readable"
    );

    // AND no log line ever carried the key
    let logs = logs.text();
    assert!(logs.contains("agent created"), "logs were captured: {logs}");
    assert!(!logs.contains(SECRET_KEY), "the key was logged");
    assert!(!logs.contains("sk-second-key-123456"), "the key was logged");
}

#[tokio::test]
async fn a_developer_api_key_reports_heartbeats_with_status_and_metrics() {
    let app = spawn_app().await;
    let p = project(&app).await;
    let agent = create(&app, &p.owner, agent_body(&p.id, "worker", "prod", &[])).await;
    let path = format!("/api/v1/agents/{}", id_of(&agent));
    let developer_key = api_key(&app, &p.owner, &p.id, "developer").await;
    let viewer_key = api_key(&app, &p.owner, &p.id, "viewer").await;

    // WHEN the agent reports with a developer key (sent as X-API-Key)
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{path}/heartbeat"))
        .header("x-api-key", &developer_key)
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"status": "busy", "metrics": {"queue_depth": 3, "p95_ms": 412.5, "region": "eu-west-1"}})
                .to_string(),
        ))
        .unwrap();
    let beat = app.send(request).await;

    // THEN it is recorded on the agent, which stays at version 1
    assert_eq!(beat.status, StatusCode::OK, "{}", beat.text);
    assert_eq!(beat.body["health_status"], "healthy");
    let read = app.get(&path, &p.owner).await;
    assert_eq!(read.body["last_heartbeat"], beat.body["last_heartbeat"]);
    assert_eq!(read.body["last_status"], "busy");
    assert_eq!(
        read.body["latest_metrics"],
        json!({"queue_depth": 3, "p95_ms": 412.5, "region": "eu-west-1"})
    );
    assert_eq!(read.body["version"], 1);

    // AND an empty heartbeat (no body at all) is accepted too
    app.clock.advance(Duration::seconds(1));
    let empty = app
        .call(
            Method::POST,
            &format!("{path}/heartbeat"),
            Some(&developer_key),
            None,
        )
        .await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.text);

    // AND a viewer key may not report; bad metrics are named
    let viewer = app
        .post(&format!("{path}/heartbeat"), Some(&viewer_key), json!({}))
        .await;
    assert_eq!(viewer.status, StatusCode::FORBIDDEN);
    let bad = app
        .post(
            &format!("{path}/heartbeat"),
            Some(&developer_key),
            json!({"status": "ok", "metrics": {"nested": {"a": 1}, "fine": 1, "huge": 1e300}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut fields = bad.error_fields();
    fields.sort();
    assert_eq!(fields, vec!["metrics.huge", "metrics.nested"]);
    let big = app
        .post(
            &format!("{path}/heartbeat"),
            Some(&developer_key),
            json!({"metrics": {"blob": "x".repeat(9000)}}),
        )
        .await;
    assert_eq!(big.error_fields(), vec!["metrics"]);
    let history = app.get(&format!("{path}/metrics"), &p.owner).await;
    assert_eq!(history.body["history"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn health_follows_the_clock_from_healthy_to_degraded_to_unhealthy_and_back() {
    let app = spawn_app().await;
    let p = project(&app).await;
    let mut body = agent_body(&p.id, "pulse", "dev", &[]);
    body["heartbeat_interval_seconds"] = json!(10);
    let agent = create(&app, &p.owner, body).await;
    let id = id_of(&agent);
    let path = format!("/api/v1/agents/{id}");
    // A second agent that keeps reporting stays healthy throughout.
    let steady = id_of(&create(&app, &p.owner, agent_body(&p.id, "steady", "dev", &[])).await);

    let health = |reply: Reply| reply.body["health_status"].as_str().unwrap().to_owned();
    let lists = || async {
        let mut out = Vec::new();
        for status in ["healthy", "degraded", "unhealthy"] {
            out.push(listed(&app, &p.owner, &p.id, &format!("&health={status}")).await);
        }
        out
    };

    // GIVEN a new agent that never reported: it counts from its creation
    assert_eq!(health(app.get(&path, &p.owner).await), "healthy");
    let [healthy, degraded, unhealthy] = <[Vec<String>; 3]>::try_from(lists().await).unwrap();
    assert!(healthy.contains(&id) && healthy.contains(&steady));
    assert!(degraded.is_empty() && unhealthy.is_empty());

    // WHEN almost two intervals pass THEN it is still healthy
    app.clock.advance(Duration::milliseconds(19_999));
    assert_eq!(health(app.get(&path, &p.owner).await), "healthy");
    assert!(lists().await[0].contains(&id));

    // WHEN two intervals have passed THEN it is degraded, in the lists too
    app.clock.advance(Duration::milliseconds(1));
    assert_eq!(health(app.get(&path, &p.owner).await), "degraded");
    assert_eq!(
        lists().await,
        vec![vec![steady.clone()], vec![id.clone()], vec![]]
    );
    let metrics = app.get(&format!("{path}/metrics"), &p.owner).await;
    assert_eq!(metrics.body["health_status"], "degraded");

    // WHEN five intervals have passed THEN it is unhealthy
    app.clock.advance(Duration::seconds(30));
    assert_eq!(health(app.get(&path, &p.owner).await), "unhealthy");
    assert_eq!(
        lists().await,
        vec![vec![steady.clone()], vec![], vec![id.clone()]]
    );

    // WHEN it reports again THEN it is healthy again
    let beat = app
        .post(
            &format!("{path}/heartbeat"),
            Some(&p.owner),
            json!({"status": "ok"}),
        )
        .await;
    assert_eq!(beat.status, StatusCode::OK, "{}", beat.text);
    assert_eq!(health(app.get(&path, &p.owner).await), "healthy");
    let [healthy, degraded, unhealthy] = <[Vec<String>; 3]>::try_from(lists().await).unwrap();
    assert!(healthy.contains(&id));
    assert!(degraded.is_empty() && unhealthy.is_empty());

    // WHEN it goes quiet past five intervals, then its interval is lengthened
    // THEN its health is judged by the new interval, in the lists too
    app.clock.advance(Duration::seconds(60));
    assert_eq!(health(app.get(&path, &p.owner).await), "unhealthy");
    let patched = app
        .patch(&path, &p.owner, json!({"heartbeat_interval_seconds": 3600}))
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.body["health_status"], "healthy");
    let [healthy, degraded, unhealthy] = <[Vec<String>; 3]>::try_from(lists().await).unwrap();
    assert!(healthy.contains(&id));
    assert!(!degraded.contains(&id) && !unhealthy.contains(&id));
}

#[tokio::test]
async fn agents_are_listed_by_capability_and_by_env() {
    let app = spawn_app().await;
    let p = project(&app).await;
    let a = id_of(
        &create(
            &app,
            &p.owner,
            agent_body(&p.id, "a", "prod", &["faq", "orders"]),
        )
        .await,
    );
    let b = id_of(&create(&app, &p.owner, agent_body(&p.id, "b", "dev", &["faq"])).await);
    let c = id_of(&create(&app, &p.owner, agent_body(&p.id, "c", "prod", &[])).await);
    // An agent of another project with the same capability never shows up.
    let other = app.project(&p.owner, "Other").await;
    create(&app, &p.owner, agent_body(&other, "x", "prod", &["faq"])).await;

    assert_eq!(
        listed(&app, &p.owner, &p.id, "").await,
        vec![a.clone(), b.clone(), c.clone()]
    );
    assert_eq!(
        listed(&app, &p.owner, &p.id, "&capability=faq").await,
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        listed(&app, &p.owner, &p.id, "&capability=orders").await,
        vec![a.clone()]
    );
    assert!(listed(&app, &p.owner, &p.id, "&capability=nothing")
        .await
        .is_empty());
    assert_eq!(
        listed(&app, &p.owner, &p.id, "&env=prod").await,
        vec![a.clone(), c.clone()]
    );
    assert_eq!(
        listed(&app, &p.owner, &p.id, "&env=dev").await,
        vec![b.clone()]
    );
    assert!(listed(&app, &p.owner, &p.id, "&env=staging")
        .await
        .is_empty());

    // WHEN capabilities and env change THEN the markers and indexes follow
    let patched = app
        .patch(
            &format!("/api/v1/agents/{b}"),
            &p.owner,
            json!({"capabilities": ["orders", "orders"], "env": "prod"}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.body["capabilities"], json!(["orders"]));
    assert_eq!(
        listed(&app, &p.owner, &p.id, "&capability=faq").await,
        vec![a.clone()]
    );
    assert_eq!(
        listed(&app, &p.owner, &p.id, "&capability=orders").await,
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        listed(&app, &p.owner, &p.id, "&env=prod").await,
        vec![a.clone(), b.clone(), c.clone()]
    );
    assert!(listed(&app, &p.owner, &p.id, "&env=dev").await.is_empty());

    // AND a capability list pages with cursors bound to that list
    let first = app
        .get(
            &format!(
                "/api/v1/agents?project_id={}&capability=orders&limit=1",
                p.id
            ),
            &p.owner,
        )
        .await;
    assert_eq!(ids(&first), vec![a.clone()]);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = app
        .get(
            &format!(
                "/api/v1/agents?project_id={}&capability=orders&limit=1&cursor={cursor}",
                p.id
            ),
            &p.owner,
        )
        .await;
    assert_eq!(ids(&second), vec![b.clone()]);
    let elsewhere = app
        .get(
            &format!(
                "/api/v1/agents?project_id={}&env=prod&cursor={cursor}",
                p.id
            ),
            &p.owner,
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST);
    assert_eq!(elsewhere.error_fields(), vec!["cursor"]);

    // AND bad list requests get 400 naming the parameter
    for (query, fields) in [
        ("", vec!["project_id"]),
        (
            &*format!("project_id={}&env=prod&capability=faq", p.id),
            vec!["env", "capability"],
        ),
        (&*format!("project_id={}&env=qa", p.id), vec!["env"]),
        (&*format!("project_id={}&health=sick", p.id), vec!["health"]),
        (
            &*format!("project_id={}&capability=Not%20OK", p.id),
            vec!["capability"],
        ),
        ("project_id=nope", vec!["project_id"]),
    ] {
        let reply = app.get(&format!("/api/v1/agents?{query}"), &p.owner).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            reply.text
        );
        assert_eq!(reply.error_fields(), fields, "{query}");
    }
}

#[tokio::test]
async fn metrics_history_is_newest_first_and_bounded() {
    let app = spawn_app().await;
    let p = project(&app).await;
    let agent = create(&app, &p.owner, agent_body(&p.id, "reporter", "dev", &[])).await;
    let path = format!("/api/v1/agents/{}", id_of(&agent));
    let before = app.get(&format!("{path}/metrics"), &p.owner).await;
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(before.body["history"], json!([]));
    assert_eq!(before.body["latest_metrics"], Value::Null);

    for n in 0..5 {
        app.clock.advance(Duration::seconds(1));
        let beat = app
            .post(
                &format!("{path}/heartbeat"),
                Some(&p.owner),
                json!({"status": format!("s{n}"), "metrics": {"n": n}}),
            )
            .await;
        assert_eq!(beat.status, StatusCode::OK, "{}", beat.text);
    }

    let bounded = app.get(&format!("{path}/metrics?limit=3"), &p.owner).await;
    assert_eq!(bounded.status, StatusCode::OK, "{}", bounded.text);
    let history = bounded.body["history"].as_array().unwrap();
    let ns: Vec<&Value> = history.iter().map(|h| &h["metrics"]["n"]).collect();
    assert_eq!(ns, vec![&json!(4), &json!(3), &json!(2)]);
    assert_eq!(history[0]["status"], "s4");
    assert!(history[0]["at"].as_str().unwrap() > history[1]["at"].as_str().unwrap());
    assert_eq!(bounded.body["latest_metrics"], json!({"n": 4}));
    assert_eq!(bounded.body["last_status"], "s4");
    assert_eq!(bounded.body["last_heartbeat"], history[0]["at"]);

    let all = app.get(&format!("{path}/metrics"), &p.owner).await;
    assert_eq!(all.body["history"].as_array().unwrap().len(), 5);
    for bad in ["0", "201", "many"] {
        let reply = app
            .get(&format!("{path}/metrics?limit={bad}"), &p.owner)
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.error_fields(), vec!["limit"]);
    }
}

#[tokio::test]
async fn outsiders_get_404_and_viewers_get_403_on_every_agent_route_and_nothing_changes() {
    let app = spawn_app().await;
    let p = project(&app).await;
    let agent = create(
        &app,
        &p.owner,
        agent_body(&p.id, "guarded", "prod", &["faq"]),
    )
    .await;
    let id = id_of(&agent);
    let path = format!("/api/v1/agents/{id}");
    let viewer = app.user("Viewer").await;
    app.add_member(&p.owner, &p.id, &viewer, "viewer").await;
    let outsider = app.user("Outsider").await;
    let outsider_project = app.project(&outsider, "Theirs").await;
    let outsider_key = api_key(&app, &outsider, &outsider_project, "admin").await;
    let viewer_key = api_key(&app, &p.owner, &p.id, "viewer").await;

    let mutations: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/api/v1/agents".to_owned(),
            Some(agent_body(&p.id, "sneaky", "dev", &[])),
        ),
        (
            Method::PATCH,
            path.clone(),
            Some(json!({"name": "taken over"})),
        ),
        (Method::DELETE, path.clone(), None),
        (
            Method::POST,
            format!("{path}/heartbeat"),
            Some(json!({"status": "ok"})),
        ),
    ];
    let reads: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, path.clone(), None),
        (Method::GET, format!("{path}/metrics"), None),
        (
            Method::GET,
            format!("/api/v1/agents?project_id={}", p.id),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/agents?project_id={}&capability=faq", p.id),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/agents?project_id={}&env=prod", p.id),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/agents?project_id={}&health=healthy", p.id),
            None,
        ),
    ];

    for token in [&outsider, &outsider_key] {
        for (method, route, body) in mutations.iter().chain(reads.iter()) {
            let reply = app
                .call(method.clone(), route, Some(token), body.clone())
                .await;
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{method} {route}: {}",
                reply.text
            );
            assert!(!reply.text.contains("guarded"));
        }
    }
    for token in [&viewer, &viewer_key] {
        for (method, route, body) in &mutations {
            let reply = app
                .call(method.clone(), route, Some(token), body.clone())
                .await;
            assert_eq!(
                reply.status,
                StatusCode::FORBIDDEN,
                "{method} {route}: {}",
                reply.text
            );
        }
        for (method, route, body) in &reads {
            let reply = app
                .call(method.clone(), route, Some(token), body.clone())
                .await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{method} {route}: {}",
                reply.text
            );
        }
    }

    // Nothing changed: same record, no heartbeat, one agent in every list.
    let after = app.get(&path, &p.owner).await;
    assert_eq!(after.body, app.get(&path, &viewer).await.body);
    assert_eq!(after.body["version"], 1);
    assert_eq!(after.body["name"], "guarded");
    assert_eq!(after.body["last_heartbeat"], Value::Null);
    let metrics = app.get(&format!("{path}/metrics"), &p.owner).await;
    assert_eq!(metrics.body["history"], json!([]));
    assert_eq!(listed(&app, &p.owner, &p.id, "").await, vec![id.clone()]);
    assert_eq!(
        listed(&app, &p.owner, &p.id, "&capability=faq").await,
        vec![id.clone()]
    );
    // A malformed id is just as unknown as a missing one.
    assert_eq!(
        app.get("/api/v1/agents/not-an-id", &p.owner).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_stale_version_gets_409_and_changes_nothing() {
    let app = spawn_app().await;
    let p = project(&app).await;
    let agent = create(
        &app,
        &p.owner,
        agent_body(&p.id, "contended", "dev", &["a"]),
    )
    .await;
    let path = format!("/api/v1/agents/{}", id_of(&agent));

    let first = app
        .patch(&path, &p.owner, json!({"version": 1, "model": "m2"}))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let stale = app
        .patch(
            &path,
            &p.owner,
            json!({"version": 1, "model": "m3", "capabilities": ["b"]}),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.text);
    let stale_header = app
        .send(
            Request::builder()
                .method(Method::PATCH)
                .uri(&path)
                .header("authorization", format!("Bearer {}", p.owner))
                .header("content-type", "application/json")
                .header("if-match", "\"1\"")
                .body(Body::from(json!({"model": "m4"}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(stale_header.status, StatusCode::CONFLICT);
    let stale_delete = app
        .send(
            Request::builder()
                .method(Method::DELETE)
                .uri(&path)
                .header("authorization", format!("Bearer {}", p.owner))
                .header("if-match", "\"1\"")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(stale_delete.status, StatusCode::CONFLICT);

    let read = app.get(&path, &p.owner).await;
    assert_eq!(read.body["version"], 2);
    assert_eq!(read.body["model"], "m2");
    assert_eq!(read.body["capabilities"], json!(["a"]));
    assert!(listed(&app, &p.owner, &p.id, "&capability=b")
        .await
        .is_empty());

    // A heartbeat between a read and a change does not make the change stale.
    app.post(&format!("{path}/heartbeat"), Some(&p.owner), json!({}))
        .await;
    let after_beat = app
        .patch(&path, &p.owner, json!({"version": 2, "model": "m5"}))
        .await;
    assert_eq!(after_beat.status, StatusCode::OK, "{}", after_beat.text);
    assert_eq!(after_beat.body["version"], 3);
    assert!(
        after_beat.body["last_heartbeat"].is_string(),
        "the heartbeat survives"
    );
}
