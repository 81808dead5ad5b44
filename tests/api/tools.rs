//! Router tests of `/api/v1/tools`: CRUD, validation (enums, http config, JSON Schemas),
//! write-only credentials in Secrets Manager, isolation, pagination and concurrency.

use aws_sdk_dynamodb::types::AttributeValue;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use spark_ops_tests::{capture_logs, spawn_app, Reply, TestApp};

/// The seed's `crm_tool` contract.
fn crm_inputs_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["create_customer", "search_customers", "update_customer"]},
            "data": {"type": "object"}
        },
        "required": ["action", "data"]
    })
}

fn crm_outputs_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "success": {"type": "boolean"},
            "result": {"type": "object"},
            "error": {"type": "string"}
        }
    })
}

/// A valid http tool in `project`, with the seed's schemas.
fn crm_tool(project: &str) -> Value {
    json!({
        "project_id": project,
        "name": "crm_tool",
        "kind": "http",
        "provider": "acme-crm",
        "auth_type": "apikey",
        "scopes": ["crm.read", "crm.write"],
        "env": "dev",
        "rate_limit_per_min": 120,
        "config": {
            "url": "https://crm.example.com/api/v2/run",
            "method": "POST",
            "headers": {"Authorization": "Bearer {{ credentials.api_key }}", "X-Action": "{{ input.action }}"},
            "timeout_ms": 5000,
            "retry_attempts": 3,
            "circuit_breaker_threshold": 5,
            "inputs_schema": crm_inputs_schema(),
            "outputs_schema": crm_outputs_schema()
        },
        "description": "Customer Relationship Management operations",
        "owner": "platform-team",
        "release": "1.2.0",
        "changelog": "Added circuit breaker and retry patterns",
        "category": "data"
    })
}

/// A minimal tool of `kind` in `env`.
fn plain_tool(project: &str, name: &str, kind: &str, env: &str) -> Value {
    json!({"project_id": project, "name": name, "kind": kind, "auth_type": "none", "env": env})
}

/// A credential value no other test uses, so finding it anywhere is proof of a leak.
fn unique_secret(label: &str) -> String {
    format!("sk-{label}-{}", uuid::Uuid::now_v7().simple())
}

async fn create(app: &TestApp, token: &str, body: Value) -> Reply {
    let reply = app.post("/api/v1/tools", Some(token), body).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "create tool: {}",
        reply.text
    );
    reply
}

fn list_path(project: &str) -> String {
    format!("/api/v1/tools?project_id={project}")
}

/// The secret at `path`, as Secrets Manager describes it: `(exists, scheduled for deletion)`.
async fn describe_secret(app: &TestApp, path: &str) -> (bool, bool) {
    match app
        .state
        .clients
        .secrets
        .describe_secret()
        .secret_id(app.state.secrets.name(path))
        .send()
        .await
    {
        Ok(described) => (true, described.deleted_date().is_some()),
        Err(_) => (false, false),
    }
}

/// Every attribute of a tool's DynamoDB item, as text.
async fn raw_item(app: &TestApp, id: &str) -> String {
    let item = app
        .state
        .store
        .client()
        .get_item()
        .table_name(app.state.config.table_name("registry"))
        .key("pk", AttributeValue::S(format!("TOOL#{id}")))
        .key("sk", AttributeValue::S("TOOL".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("the registry table reads")
        .item;
    format!("{item:?}")
}

#[tokio::test]
async fn a_tool_is_created_read_listed_changed_and_deleted() {
    // GIVEN a developer's project
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;

    // WHEN they register the seed's crm tool
    let created = create(&app, &owner, crm_tool(&project)).await;

    // THEN every field comes back, with defaults and read-only fields
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tools/{id}");
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(created.header("location"), Some(path.as_str()));
    let tool = &created.body;
    assert_eq!(tool["project_id"], project.as_str());
    assert_eq!(tool["name"], "crm_tool");
    assert_eq!(tool["kind"], "http");
    assert_eq!(tool["provider"], "acme-crm");
    assert_eq!(tool["auth_type"], "apikey");
    assert_eq!(tool["scopes"], json!(["crm.read", "crm.write"]));
    assert_eq!(tool["env"], "dev");
    assert_eq!(tool["rate_limit_per_min"], 120);
    assert_eq!(tool["config"]["method"], "POST");
    assert_eq!(tool["config"]["timeout_ms"], 5000);
    assert_eq!(tool["config"]["inputs_schema"], crm_inputs_schema());
    assert_eq!(tool["config"]["outputs_schema"], crm_outputs_schema());
    assert_eq!(tool["release"], "1.2.0");
    assert_eq!(tool["owner"], "platform-team");
    assert_eq!(tool["category"], "data");
    assert_eq!(tool["deprecated"], false);
    assert_eq!(tool["last_error_at"], Value::Null);
    assert_eq!(tool["has_credentials"], false);
    assert_eq!(tool["version"], 1);

    // AND it reads back and lists the same
    let read = app.get(&path, &owner).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, created.body);
    assert_eq!(read.header("etag"), Some("\"1\""));
    let listed = app.get(&list_path(&project), &owner).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["items"], json!([created.body]));
    assert_eq!(listed.body["next_cursor"], Value::Null);

    // WHEN it is changed
    let changed = app
        .patch(
            &path,
            &owner,
            json!({"name": "crm", "release": "1.3.0", "deprecated": true, "env": "prod",
                   "changelog": null, "rate_limit_per_min": null, "version": 1}),
        )
        .await;

    // THEN the change shows, the version moves on, and cleared fields are null
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.header("etag"), Some("\"2\""));
    assert_eq!(changed.body["name"], "crm");
    assert_eq!(changed.body["release"], "1.3.0");
    assert_eq!(changed.body["deprecated"], true);
    assert_eq!(changed.body["env"], "prod");
    assert_eq!(changed.body["changelog"], Value::Null);
    assert_eq!(changed.body["rate_limit_per_min"], Value::Null);
    assert_eq!(changed.body["config"], created.body["config"]);
    assert_eq!(app.get(&path, &owner).await.body, changed.body);
    let prod = app
        .get(&format!("{}&env=prod", list_path(&project)), &owner)
        .await;
    assert_eq!(
        prod.body["items"][0]["id"],
        id.as_str(),
        "the env index follows"
    );

    // AND read-only fields cannot be written
    let read_only = app
        .patch(&path, &owner, json!({"has_credentials": true}))
        .await;
    assert_eq!(read_only.status, StatusCode::UNPROCESSABLE_ENTITY);

    // WHEN it is deleted THEN it is gone
    assert_eq!(
        app.delete(&path, &owner).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&path, &owner).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&path, &owner).await.status,
        StatusCode::NOT_FOUND
    );
    let listed = app.get(&list_path(&project), &owner).await;
    assert_eq!(listed.body["items"], json!([]));
}

#[tokio::test]
async fn an_http_tool_gets_default_resilience_settings() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;
    let created = create(
        &app,
        &owner,
        json!({"project_id": project, "name": "ping", "kind": "http", "auth_type": "none",
               "env": "dev", "config": {"url": "http://status.example.com/ping", "method": "get"}}),
    )
    .await;
    assert_eq!(
        created.body["config"],
        json!({"url": "http://status.example.com/ping", "method": "GET", "headers": {},
               "timeout_ms": 10000, "retry_attempts": 0, "circuit_breaker_threshold": 5})
    );
    assert_eq!(created.body["release"], "1.0.0");
    assert_eq!(created.body["scopes"], json!([]));
}

#[tokio::test]
async fn bad_enums_and_settings_are_each_named_and_nothing_is_stored() {
    // GIVEN a project
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;

    // WHEN a tool is sent with a bad kind, auth type, env and more
    let reply = app
        .post(
            "/api/v1/tools",
            Some(&owner),
            json!({"project_id": project, "name": " ", "kind": "ftp", "auth_type": "basic",
                   "env": "qa", "rate_limit_per_min": 0, "release": "v1", "scopes": ["ok", ""]}),
        )
        .await;

    // THEN one 422 names every field, and nothing is stored
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.error_fields(),
        vec![
            "name",
            "kind",
            "auth_type",
            "env",
            "scopes[1]",
            "rate_limit_per_min",
            "release"
        ]
    );
    assert!(reply
        .text
        .contains("http, db, saas, browser, search, storage, custom"));
    assert!(reply.text.contains("oauth, apikey, none"));

    // AND an http tool's config is checked setting by setting
    let mut bad_http = crm_tool(&project);
    bad_http["config"] = json!({"url": "ftp://crm.example.com", "method": "FETCH",
                                "headers": {"Authorization": "Bearer sk-literal"},
                                "timeout_ms": 300001, "retries": 2});
    let reply = app.post("/api/v1/tools", Some(&owner), bad_http).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.error_fields(),
        vec![
            "config.url",
            "config.method",
            "config.headers.Authorization",
            "config.timeout_ms",
            "config.retries"
        ]
    );

    // AND a free config is capped at 32 KiB
    let mut big = plain_tool(&project, "big", "custom", "dev");
    big["config"] = json!({"blob": "x".repeat(33 * 1024)});
    let reply = app.post("/api/v1/tools", Some(&owner), big).await;
    assert_eq!(reply.error_fields(), vec!["config"]);

    // AND a PATCH with a bad enum changes nothing
    let tool = create(&app, &owner, plain_tool(&project, "ok", "search", "dev")).await;
    let path = format!("/api/v1/tools/{}", tool.body["id"].as_str().unwrap());
    let reply = app
        .patch(
            &path,
            &owner,
            json!({"kind": "teleport", "auth_type": "magic"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["kind", "auth_type"]);
    let listed = app.get(&list_path(&project), &owner).await;
    assert_eq!(listed.body["items"], json!([tool.body]));
}

#[tokio::test]
async fn templates_are_parsed_when_the_tool_is_saved_with_the_workflow_path_syntax() {
    // GIVEN a project
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;

    // WHEN a tool indexes its input with `[n]` in its URL and a header
    let mut indexed = crm_tool(&project);
    indexed["config"]["url"] = json!("https://crm.example.com/orders/{{ input.orders[0].id }}");
    indexed["config"]["headers"]["X-Tag"] = json!("{{ input.tags[1] }}");
    let saved = create(&app, &owner, indexed).await;

    // THEN it is saved as written
    assert_eq!(
        saved.body["config"]["url"],
        "https://crm.example.com/orders/{{ input.orders[0].id }}"
    );

    // WHEN a template's path is malformed or names an unknown root
    let mut broken = crm_tool(&project);
    broken["name"] = json!("broken");
    broken["config"]["url"] = json!("https://crm.example.com/orders/{{ input.orders[x] }}");
    broken["config"]["headers"]["X-Tag"] = json!("{{ steps.a.output }}");
    let reply = app.post("/api/v1/tools", Some(&owner), broken).await;

    // THEN one 422 names each field, and nothing more is stored
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.error_fields(),
        vec!["config.url", "config.headers.X-Tag"]
    );
    let listed = app.get(&list_path(&project), &owner).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_invalid_json_schema_gets_422_at_its_path_and_nothing_is_stored() {
    // GIVEN a project
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;
    let secret = unique_secret("schema");

    // WHEN a tool's inputs_schema has a bad type deep inside, with credentials attached
    let mut body = crm_tool(&project);
    body["config"]["inputs_schema"]["properties"]["action"]["type"] = json!("strin");
    body["credentials"] = json!({"api_key": secret});
    let reply = app.post("/api/v1/tools", Some(&owner), body).await;

    // THEN the error names the schema path, and nothing is stored
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.error_fields(),
        vec!["config.inputs_schema.properties.action.type"]
    );
    assert!(!reply.text.contains(&secret));
    let listed = app.get(&list_path(&project), &owner).await;
    assert_eq!(listed.body["items"], json!([]));

    // AND schemas of any kind are checked, including ones that do not compile
    let mut custom = plain_tool(&project, "custom", "custom", "dev");
    custom["config"] = json!({"outputs_schema": {"$ref": "https://schemas.example.com/x.json"},
                              "inputs_schema": {"required": "action"}});
    let reply = app.post("/api/v1/tools", Some(&owner), custom).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.error_fields(),
        vec!["config.inputs_schema.required", "config.outputs_schema"]
    );

    // AND a PATCH with an invalid outputs_schema leaves the tool as it was
    let tool = create(&app, &owner, crm_tool(&project)).await;
    let path = format!("/api/v1/tools/{}", tool.body["id"].as_str().unwrap());
    let mut config = tool.body["config"].clone();
    config["outputs_schema"]["properties"]["success"] = json!({"type": ["boolean", 7]});
    let reply = app.patch(&path, &owner, json!({"config": config})).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.error_fields(),
        vec!["config.outputs_schema.properties.success.type"]
    );
    assert_eq!(app.get(&path, &owner).await.body, tool.body);
}

#[tokio::test]
async fn credentials_are_kept_in_secrets_manager_and_never_returned() {
    // GIVEN a tool created with an API key
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;
    let api_key = unique_secret("apikey");
    let mut body = crm_tool(&project);
    body["credentials"] = json!({"api_key": api_key});
    let created = create(&app, &owner, body).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tools/{id}");
    let secret_path = format!("tools/{id}/credentials");

    // THEN the response only says credentials exist
    assert_eq!(created.body["has_credentials"], true);
    assert!(created.body.get("credentials").is_none());

    // AND the key is in Secrets Manager, and not in DynamoDB
    let stored = app.state.secrets.get(&secret_path).await.unwrap().unwrap();
    let stored: Value = serde_json::from_str(stored.expose_secret()).unwrap();
    assert_eq!(stored, json!({"api_key": api_key}));
    assert!(!raw_item(&app, &id).await.contains(&api_key));

    // WHEN it is read, listed and changed
    let read = app.get(&path, &owner).await;
    let listed = app.get(&list_path(&project), &owner).await;
    let renamed = app.patch(&path, &owner, json!({"name": "crm2"})).await;
    assert_eq!(renamed.status, StatusCode::OK);

    // AND its credentials are replaced by OAuth ones
    let client_secret = unique_secret("client");
    let refresh_token = unique_secret("refresh");
    let switched = app
        .patch(
            &path,
            &owner,
            json!({"auth_type": "oauth", "credentials": {"oauth": {
                "client_id": "crm-client", "client_secret": client_secret,
                "token_url": "https://auth.example.com/oauth/token",
                "refresh_token": refresh_token, "scopes": ["crm.read"]}}}),
        )
        .await;
    assert_eq!(switched.status, StatusCode::OK, "{}", switched.text);
    assert_eq!(switched.body["has_credentials"], true);
    let stored = app.state.secrets.get(&secret_path).await.unwrap().unwrap();
    let stored: Value = serde_json::from_str(stored.expose_secret()).unwrap();
    assert_eq!(stored["oauth"]["client_secret"], client_secret.as_str());
    assert_eq!(stored["oauth"]["refresh_token"], refresh_token.as_str());
    let reread = app.get(&path, &owner).await;

    // THEN no response ever contains a secret, and DynamoDB holds none
    for reply in [&created, &read, &listed, &renamed, &switched, &reread] {
        assert!(reply.status.is_success(), "{}", reply.text);
        for secret in [&api_key, &client_secret, &refresh_token] {
            assert!(
                !reply.text.contains(secret.as_str()),
                "leaked in {}",
                reply.text
            );
        }
    }
    let item = raw_item(&app, &id).await;
    assert!(!item.contains(&client_secret) && !item.contains(&refresh_token));

    // WHEN the credentials are removed THEN the secret is scheduled for deletion
    let removed = app
        .patch(
            &path,
            &owner,
            json!({"auth_type": "none", "credentials": null}),
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    assert_eq!(removed.body["has_credentials"], false);
    assert_eq!(describe_secret(&app, &secret_path).await, (true, true));

    // AND credentials can be given again later
    let again = unique_secret("again");
    let restored = app
        .patch(
            &path,
            &owner,
            json!({"auth_type": "apikey", "credentials": {"api_key": again}}),
        )
        .await;
    assert_eq!(restored.status, StatusCode::OK, "{}", restored.text);
    assert!(!restored.text.contains(&again));
    assert_eq!(describe_secret(&app, &secret_path).await, (true, false));
    let stored = app.state.secrets.get(&secret_path).await.unwrap().unwrap();
    assert!(stored.expose_secret().contains(&again));
}

#[tokio::test]
async fn credentials_must_match_the_auth_type_and_bad_ones_are_not_echoed() {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;
    let secret = unique_secret("mismatch");

    let mut none_with_key = plain_tool(&project, "a", "saas", "dev");
    none_with_key["credentials"] = json!({"api_key": secret});
    let reply = app.post("/api/v1/tools", Some(&owner), none_with_key).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["credentials"]);

    let mut bare = plain_tool(&project, "b", "saas", "dev");
    bare["auth_type"] = json!("apikey");
    bare["credentials"] = json!(secret);
    let reply = app.post("/api/v1/tools", Some(&owner), bare).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["credentials"]);
    assert!(!reply.text.contains(&secret));

    let mut oauth_for_key = plain_tool(&project, "c", "saas", "dev");
    oauth_for_key["auth_type"] = json!("apikey");
    oauth_for_key["credentials"] =
        json!({"oauth": {"client_id": "id", "client_secret": secret, "token_url": "nope"}});
    let reply = app.post("/api/v1/tools", Some(&owner), oauth_for_key).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["credentials.oauth.token_url"]);
    assert!(!reply.text.contains(&secret));

    let listed = app.get(&list_path(&project), &owner).await;
    assert_eq!(listed.body["items"], json!([]));
}

#[tokio::test]
async fn deleting_a_tool_schedules_its_credentials_for_deletion() {
    // GIVEN a tool with credentials
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;
    let mut body = crm_tool(&project);
    body["credentials"] = json!({"api_key": unique_secret("doomed")});
    let created = create(&app, &owner, body).await;
    let id = created.body["id"].as_str().unwrap();
    let secret_path = format!("tools/{id}/credentials");
    assert_eq!(describe_secret(&app, &secret_path).await, (true, false));

    // WHEN it is deleted
    let deleted = app.delete(&format!("/api/v1/tools/{id}"), &owner).await;

    // THEN the record is gone and the secret is scheduled for deletion, so it no longer reads
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(raw_item(&app, id).await, "None");
    assert_eq!(describe_secret(&app, &secret_path).await, (true, true));
    let read = app.state.secrets.get(&secret_path).await;
    assert!(matches!(read, Ok(None) | Err(_)), "the secret still reads");
}

#[tokio::test]
async fn other_projects_see_no_tool_and_viewers_change_nothing() {
    // GIVEN a tool in the owner's project, a viewer of it, and a stranger with a project
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let viewer = app.user("Viewer").await;
    let stranger = app.user("Stranger").await;
    let project = app.project(&owner, "Mine").await;
    let elsewhere = app.project(&stranger, "Theirs").await;
    app.add_member(&owner, &project, &viewer, "viewer").await;
    let tool = create(&app, &owner, crm_tool(&project)).await;
    let path = format!("/api/v1/tools/{}", tool.body["id"].as_str().unwrap());
    let key = app
        .post(
            &format!("/api/v1/projects/{elsewhere}/api-keys"),
            Some(&stranger),
            json!({"name": "ci", "role": "developer"}),
        )
        .await
        .body["key"]
        .as_str()
        .unwrap()
        .to_owned();

    // WHEN the stranger (as a user or with their project's key) tries every route
    for token in [&stranger, &key] {
        let attempts = [
            app.get(&path, token).await,
            app.patch(&path, token, json!({"name": "pwned"})).await,
            app.delete(&path, token).await,
            app.get(&list_path(&project), token).await,
            app.post("/api/v1/tools", Some(token), crm_tool(&project))
                .await,
        ];
        // THEN every one is a 404, disclosing nothing
        for reply in attempts {
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
        }
    }
    let bogus = app.get("/api/v1/tools/not-a-uuid", &owner).await;
    assert_eq!(bogus.status, StatusCode::NOT_FOUND);

    // WHEN the viewer tries every mutation THEN each is a 403
    let mutations = [
        app.post("/api/v1/tools", Some(&viewer), crm_tool(&project))
            .await,
        app.patch(&path, &viewer, json!({"name": "nope"})).await,
        app.delete(&path, &viewer).await,
    ];
    for reply in mutations {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    }

    // AND the viewer can read, and nothing changed
    assert_eq!(app.get(&path, &viewer).await.body, tool.body);
    let listed = app.get(&list_path(&project), &viewer).await;
    assert_eq!(listed.body["items"], json!([tool.body]));
    let theirs = app.get(&list_path(&elsewhere), &stranger).await;
    assert_eq!(theirs.body["items"], json!([]));
}

#[tokio::test]
async fn lists_are_paginated_and_filtered_by_env_and_kind() {
    // GIVEN five tools across environments and kinds
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;
    let mut ids = Vec::new();
    for (name, kind, env) in [
        ("a", "http", "dev"),
        ("b", "db", "prod"),
        ("c", "search", "dev"),
        ("d", "db", "dev"),
        ("e", "custom", "prod"),
    ] {
        let mut body = plain_tool(&project, name, kind, env);
        if kind == "http" {
            body["config"] = json!({"url": "https://a.example.com", "method": "GET"});
        }
        ids.push(create(&app, &owner, body).await.body["id"].clone());
    }

    // WHEN the list is read two at a time THEN the pages chain over all of them, oldest first
    let mut seen = Vec::new();
    let mut next = list_path(&project) + "&limit=2";
    loop {
        let page = app.get(&next, &owner).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|t| t["id"].clone()));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => next = format!("{}&limit=2&cursor={cursor}", list_path(&project)),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    // AND filters select by environment and kind
    let names = |reply: &Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let prod = app
        .get(&format!("{}&env=prod", list_path(&project)), &owner)
        .await;
    assert_eq!(names(&prod), vec!["b", "e"]);
    let dev_db = app
        .get(&format!("{}&env=dev&kind=db", list_path(&project)), &owner)
        .await;
    assert_eq!(names(&dev_db), vec!["d"]);
    let staging = app
        .get(&format!("{}&env=staging", list_path(&project)), &owner)
        .await;
    assert_eq!(names(&staging), Vec::<String>::new());

    // AND a filtered list pages too; a cursor only works for the list that issued it
    let first = app
        .get(&format!("{}&env=dev&limit=1", list_path(&project)), &owner)
        .await;
    assert_eq!(names(&first), vec!["a"]);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = app
        .get(
            &format!("{}&env=dev&limit=1&cursor={cursor}", list_path(&project)),
            &owner,
        )
        .await;
    assert_eq!(names(&second), vec!["c"]);
    let crossed = app
        .get(
            &format!("{}&env=prod&limit=1&cursor={cursor}", list_path(&project)),
            &owner,
        )
        .await;
    assert_eq!(crossed.status, StatusCode::BAD_REQUEST);
    assert_eq!(crossed.error_fields(), vec!["cursor"]);

    // AND bad parameters are named
    let no_project = app.get("/api/v1/tools", &owner).await;
    assert_eq!(no_project.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_project.error_fields(), vec!["project_id"]);
    let bad_env = app
        .get(&format!("{}&env=qa", list_path(&project)), &owner)
        .await;
    assert_eq!(bad_env.error_fields(), vec!["env"]);
    let bad_kind = app
        .get(&format!("{}&kind=ftp", list_path(&project)), &owner)
        .await;
    assert_eq!(bad_kind.error_fields(), vec!["kind"]);
}

#[tokio::test]
async fn a_stale_version_gets_409_and_changes_nothing() {
    // GIVEN a tool changed once
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;
    let tool = create(&app, &owner, crm_tool(&project)).await;
    let path = format!("/api/v1/tools/{}", tool.body["id"].as_str().unwrap());
    let first = app
        .patch(&path, &owner, json!({"release": "1.2.1", "version": 1}))
        .await;
    assert_eq!(first.status, StatusCode::OK);

    // WHEN writers still based on version 1 try again
    let stale_body = app
        .patch(&path, &owner, json!({"release": "9.9.9", "version": 1}))
        .await;
    let stale_header = app
        .send(
            Request::builder()
                .method(Method::PATCH)
                .uri(&path)
                .header("authorization", format!("Bearer {owner}"))
                .header("content-type", "application/json")
                .header("if-match", "\"1\"")
                .body(Body::from(json!({"deprecated": true}).to_string()))
                .unwrap(),
        )
        .await;
    let stale_delete = app
        .send(
            Request::builder()
                .method(Method::DELETE)
                .uri(&path)
                .header("authorization", format!("Bearer {owner}"))
                .header("if-match", "\"1\"")
                .body(Body::empty())
                .unwrap(),
        )
        .await;

    // THEN each gets 409 and the tool is as the first change left it
    for reply in [&stale_body, &stale_header, &stale_delete] {
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    }
    assert_eq!(app.get(&path, &owner).await.body, first.body);

    // AND concurrent writers from the same version: exactly one wins
    let attempts = (0..4).map(|i| {
        let app = &app;
        let owner = &owner;
        let path = &path;
        async move {
            app.patch(
                path,
                owner,
                json!({"changelog": format!("writer {i}"), "version": 2}),
            )
            .await
            .status
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT));
    assert_eq!(app.get(&path, &owner).await.body["version"], 3);
}

#[tokio::test(flavor = "current_thread")]
async fn credentials_never_reach_the_logs() {
    // GIVEN a project and secrets no other test uses
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Tools").await;
    let api_key = unique_secret("logged");
    let client_secret = unique_secret("logged-client");

    // WHEN, with every log line captured, a tool is created, read, listed and given new
    // credentials, and a malformed credential is refused
    let logs = capture_logs();
    let mut body = crm_tool(&project);
    body["credentials"] = json!({"api_key": api_key});
    let created = create(&app, &owner, body).await;
    let path = format!("/api/v1/tools/{}", created.body["id"].as_str().unwrap());
    let read = app.get(&path, &owner).await;
    let listed = app.get(&list_path(&project), &owner).await;
    let patched = app
        .patch(
            &path,
            &owner,
            json!({"auth_type": "oauth", "credentials": {"oauth": {"client_id": "id",
                   "client_secret": client_secret, "token_url": "https://auth.example.com/t"}}}),
        )
        .await;
    let refused = app
        .patch(&path, &owner, json!({"credentials": api_key}))
        .await;

    // THEN the logs hold the requests but never a secret
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let text = logs.text();
    assert!(text.contains("tool created"), "no log was captured");
    assert!(text.contains("tool updated"), "no log was captured");
    for secret in [&api_key, &client_secret] {
        assert!(!text.contains(secret.as_str()), "a secret was logged");
        for reply in [&created, &read, &listed, &patched, &refused] {
            assert!(!reply.text.contains(secret.as_str()));
        }
    }
}
