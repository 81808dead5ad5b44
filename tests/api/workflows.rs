//! Router tests of `/api/v1/workflows`: CRUD, DAG validation at exact paths, tools of other
//! projects, gap-free version numbers under concurrency, version status and
//! `current_version`, isolation.

use aws_sdk_dynamodb::types::AttributeValue;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use spark_ops_tests::{spawn_app, Reply, TestApp};

/// Registers a minimal tool in `project` through the tools API; returns its id.
async fn tool(app: &TestApp, token: &str, project: &str, name: &str) -> String {
    let reply = app
        .post(
            "/api/v1/tools",
            Some(token),
            json!({"project_id": project, "name": name, "kind": "custom", "auth_type": "none", "env": "dev"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "create tool: {}",
        reply.text
    );
    reply.body["id"].as_str().expect("tool id").to_owned()
}

/// The example DAG, using `tool` everywhere a tool is named.
fn example(tool: &str) -> Value {
    json!({"steps": [
      {"id": "draft",  "type": "prompt",   "depends_on": [],         "config": {"prompt": "Reply to: {{ input.message }}", "tools": [tool], "max_iterations": 5}},
      {"id": "lookup", "type": "tool",     "depends_on": ["draft"],  "config": {"tool_id": tool, "input": {"q": "{{ steps.draft.output.text }}"}}},
      {"id": "route",  "type": "decision", "depends_on": ["lookup"], "config": {"condition": "steps.lookup.output.tier == 'gold'", "then": ["vip"], "else": ["done"]}},
      {"id": "vip",    "type": "webhook",  "depends_on": ["route"],  "config": {"url": "https://example.com/hook", "body": {"who": "{{ input.customer }}"}}},
      {"id": "review", "type": "human",    "depends_on": ["vip"],    "config": {"instructions": "Check the reply"}},
      {"id": "each",   "type": "loop",     "depends_on": ["lookup"], "config": {"over": "steps.lookup.output.items", "max_iterations": 20, "step": {"type": "tool", "config": {"tool_id": tool, "input": {"item": "{{ item }}"}}}}},
      {"id": "done",   "type": "webhook",  "depends_on": ["route"],  "config": {"url": "https://example.com/done", "body": {}}}
    ]})
}

/// A one-step definition needing no tool.
fn simple(instructions: &str) -> Value {
    json!({"steps": [{"id": "ask", "type": "human", "depends_on": [], "config": {"instructions": instructions}}]})
}

async fn create(app: &TestApp, token: &str, project: &str, definition: Value) -> Reply {
    app.post(
        "/api/v1/workflows",
        Some(token),
        json!({"project_id": project, "name": "Support triage", "tags": ["support"], "definition": definition}),
    )
    .await
}

/// Creates a workflow and returns its id.
async fn workflow(app: &TestApp, token: &str, project: &str, definition: Value) -> String {
    let reply = create(app, token, project, definition).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "create workflow: {}",
        reply.text
    );
    reply.body["id"].as_str().expect("workflow id").to_owned()
}

async fn new_version(app: &TestApp, token: &str, id: &str, body: Value) -> Reply {
    app.post(
        &format!("/api/v1/workflows/{id}/versions"),
        Some(token),
        body,
    )
    .await
}

async fn set_status(app: &TestApp, token: &str, id: &str, n: u64, status: &str) -> Reply {
    app.patch(
        &format!("/api/v1/workflows/{id}/versions/{n}"),
        token,
        json!({"status": status}),
    )
    .await
}

async fn current_version(app: &TestApp, token: &str, id: &str) -> Value {
    let reply = app.get(&format!("/api/v1/workflows/{id}"), token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["current_version"].clone()
}

#[tokio::test]
async fn a_developer_creates_reads_lists_changes_and_deletes_a_workflow() {
    // GIVEN a project with a tool
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Flows").await;
    let crm = tool(&app, &owner, &project, "crm").await;

    // WHEN the example is saved
    let created = create(&app, &owner, &project, example(&crm)).await;

    // THEN it is stored with no version yet
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.header("etag"), Some("\"1\""));
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("/api/v1/workflows/{id}").as_str())
    );
    assert_eq!(created.body["current_version"], Value::Null);
    assert_eq!(created.body["latest_version"], 0);
    assert_eq!(created.body["tags"], json!(["support"]));
    assert_eq!(
        created.body["definition"]["steps"][2]["config"]["then"],
        json!(["vip"])
    );
    assert_eq!(
        created.body["definition"]["steps"][5]["config"]["step"]["config"]["tool_id"],
        crm
    );

    let read = app.get(&format!("/api/v1/workflows/{id}"), &owner).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, created.body);

    // Lists need the project and can filter by tag.
    let missing = app.get("/api/v1/workflows", &owner).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.error_fields(), vec!["project_id"]);
    let other = workflow(&app, &owner, &project, simple("Approve")).await;
    let retagged = app
        .patch(
            &format!("/api/v1/workflows/{other}"),
            &owner,
            json!({"tags": ["billing"]}),
        )
        .await;
    assert_eq!(retagged.status, StatusCode::OK, "{}", retagged.text);
    assert_eq!(retagged.body["tags"], json!(["billing"]));
    let all = app
        .get(&format!("/api/v1/workflows?project_id={project}"), &owner)
        .await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
    let tagged = app
        .get(
            &format!("/api/v1/workflows?project_id={project}&tag=billing"),
            &owner,
        )
        .await;
    let ids: Vec<&str> = tagged.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![other.as_str()]);
    let first_page = app
        .get(
            &format!("/api/v1/workflows?project_id={project}&limit=1"),
            &owner,
        )
        .await;
    let cursor = first_page.body["next_cursor"].as_str().unwrap();
    let second_page = app
        .get(
            &format!("/api/v1/workflows?project_id={project}&limit=1&cursor={cursor}"),
            &owner,
        )
        .await;
    assert_eq!(second_page.body["items"][0]["id"], other.as_str());

    // WHEN it is renamed and its definition replaced, THEN the version moves on
    let path = format!("/api/v1/workflows/{id}");
    let changed = app
        .patch(
            &path,
            &owner,
            json!({"name": "Triage v2", "description": "Routes tickets", "definition": simple("Look"), "version": 1}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.body["version"], 2);
    assert_eq!(changed.header("etag"), Some("\"2\""));
    assert_eq!(changed.body["name"], "Triage v2");
    assert_eq!(changed.body["description"], "Routes tickets");
    assert_eq!(changed.body["definition"], simple("Look"));
    assert_eq!(changed.body["tags"], json!(["support"]));

    // A stale version is refused, and so is a bad definition; neither changes anything.
    let stale = app
        .patch(&path, &owner, json!({"name": "Stale", "version": 1}))
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    let bad = app
        .patch(
            &path,
            &owner,
            json!({"name": "Bad", "definition": {"steps": [{"id": "x", "type": "human", "config": {}}]}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        bad.error_fields(),
        vec!["definition.steps[0].config.instructions"]
    );
    let after = app.get(&path, &owner).await;
    assert_eq!(after.body, changed.body);

    // WHEN it is deleted, THEN it and its versions are gone
    assert_eq!(
        new_version(&app, &owner, &id, json!({"note": "first"}))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.delete(&path, &owner).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&path, &owner).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&format!("{path}/versions"), &owner).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&path, &owner).await.status,
        StatusCode::NOT_FOUND
    );
    let left = app
        .state
        .store
        .client()
        .query()
        .table_name(app.state.config.table_name("registry"))
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("WORKFLOW#{id}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert_eq!(left.count, 0, "no version outlives its workflow");
}

#[tokio::test]
async fn invalid_dags_are_refused_with_the_exact_path_of_each_problem() {
    // GIVEN a project with a tool
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Flows").await;
    let crm = tool(&app, &owner, &project, "crm").await;
    let set = |pointer: &str, value: Value| {
        let mut definition = example(&crm);
        *definition.pointer_mut(pointer).unwrap() = value;
        definition
    };
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "a then target that does not exist",
            set("/steps/2/config/then/0", json!("vips")),
            vec!["definition.steps[2].config.then[0]"],
        ),
        (
            "a then target that does not depend on its decision",
            set("/steps/2/config/then/0", json!("review")),
            vec!["definition.steps[2].config.then[0]"],
        ),
        (
            "a duplicate step id",
            set("/steps/4/id", json!("draft")),
            vec!["definition.steps[4].id"],
        ),
        (
            "a step id with capitals",
            set("/steps/4/id", json!("Review")),
            vec!["definition.steps[4].id"],
        ),
        (
            "an unknown step type",
            set("/steps/4/type", json!("email")),
            vec!["definition.steps[4].type"],
        ),
        (
            "a cycle",
            set("/steps/3/depends_on", json!(["route", "review"])),
            vec!["definition.steps[4].depends_on[0]"],
        ),
        (
            "a dependency on a missing step",
            set("/steps/4/depends_on/0", json!("ghost")),
            vec!["definition.steps[4].depends_on[0]"],
        ),
        (
            "a template reading a step that is not upstream",
            set("/steps/1/config/input/q", json!("{{ steps.route.output }}")),
            vec!["definition.steps[1].config.input.q"],
        ),
        (
            "item outside a loop",
            set("/steps/4/config/instructions", json!("{{ item }}")),
            vec!["definition.steps[4].config.instructions"],
        ),
        (
            "a condition that is not CEL",
            set("/steps/2/config/condition", json!("tier ==")),
            vec!["definition.steps[2].config.condition"],
        ),
        (
            "a loop bound over 1000",
            set("/steps/5/config/max_iterations", json!(1001)),
            vec!["definition.steps[5].config.max_iterations"],
        ),
        (
            "a prompt max_iterations of the wrong type",
            set("/steps/0/config/max_iterations", json!("five")),
            vec!["definition.steps[0].config.max_iterations"],
        ),
        (
            "a webhook without a url",
            set("/steps/6/config", json!({"body": {}})),
            vec!["definition.steps[6].config.url"],
        ),
        (
            "more than 200 steps",
            json!({"steps": (0..201).map(|i| json!({"id": format!("s{i}"), "type": "human", "config": {"instructions": "x"}})).collect::<Vec<_>>()}),
            vec!["definition.steps"],
        ),
        (
            "several problems at once",
            {
                let mut d = set("/steps/0/id", json!("Draft"));
                *d.pointer_mut("/steps/5/config/max_iterations").unwrap() = json!(0);
                d
            },
            vec![
                "definition.steps[0].id",
                "definition.steps[5].config.max_iterations",
                "definition.steps[1].depends_on[0]",
                "definition.steps[1].config.input.q",
            ],
        ),
    ];
    for (name, definition, expected) in cases {
        // WHEN it is saved, THEN each problem is named at its exact path
        let reply = create(&app, &owner, &project, definition).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name}: {}",
            reply.text
        );
        assert_eq!(reply.error_fields(), expected, "{name}");
    }
    // Other fields' errors come together with the definition's.
    let reply = app
        .post(
            "/api/v1/workflows",
            Some(&owner),
            json!({"project_id": project, "name": " ", "tags": [""], "definition": {"steps": {}}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.error_fields(),
        vec!["name", "tags[0]", "definition.steps"]
    );
    // AND nothing was stored
    let list = app
        .get(&format!("/api/v1/workflows?project_id={project}"), &owner)
        .await;
    assert_eq!(list.body["items"], json!([]));
}

#[tokio::test]
async fn a_tool_of_another_project_is_refused_exactly_like_a_missing_one() {
    // GIVEN a tool in another project of the same owner
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Flows").await;
    let elsewhere = app.project(&owner, "Elsewhere").await;
    let foreign = tool(&app, &owner, &elsewhere, "crm").await;
    let mine = tool(&app, &owner, &project, "crm").await;
    let uses = |tool: &str| {
        json!({"steps": [
            {"id": "call", "type": "tool", "config": {"tool_id": tool}},
            {"id": "think", "type": "prompt", "depends_on": ["call"], "config": {"prompt": "{{ steps.call.output }}", "tools": [tool]}}
        ]})
    };

    // WHEN a workflow uses it, or a tool that does not exist
    let foreign_reply = create(&app, &owner, &project, uses(&foreign)).await;
    let missing_id = uuid::Uuid::now_v7().to_string();
    let missing_reply = create(&app, &owner, &project, uses(&missing_id)).await;

    // THEN both are refused at the same paths with the same kind of message
    for reply in [&foreign_reply, &missing_reply] {
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.text
        );
        assert_eq!(
            reply.error_fields(),
            vec![
                "definition.steps[0].config.tool_id",
                "definition.steps[1].config.tools[0]"
            ]
        );
    }
    assert_eq!(
        foreign_reply.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .replace(&foreign, "ID"),
        missing_reply.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .replace(&missing_id, "ID"),
    );
    // AND its own project's tool is fine, also in a version and a PATCH
    let id = workflow(&app, &owner, &project, uses(&mine)).await;
    let version = new_version(&app, &owner, &id, json!({"definition": uses(&foreign)})).await;
    assert_eq!(version.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        version.error_fields()[0],
        "definition.steps[0].config.tool_id"
    );
    let patch = app
        .patch(
            &format!("/api/v1/workflows/{id}"),
            &owner,
            json!({"definition": uses(&foreign)}),
        )
        .await;
    assert_eq!(patch.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn concurrent_version_creation_yields_unique_gap_free_numbers() {
    // GIVEN a workflow
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Flows").await;
    let id = workflow(&app, &owner, &project, simple("Approve")).await;

    // WHEN eight versions are created at once
    let replies = futures::future::join_all(
        (0..8).map(|i| new_version(&app, &owner, &id, json!({"note": format!("writer {i}")}))),
    )
    .await;

    // THEN they are numbered exactly 1..=8
    let mut numbers: Vec<u64> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            assert_eq!(r.body["status"], "draft");
            r.body["version"].as_u64().unwrap()
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
    let listed = app
        .get(&format!("/api/v1/workflows/{id}/versions"), &owner)
        .await;
    let listed: Vec<u64> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, (1..=8).collect::<Vec<_>>());
    let read = app.get(&format!("/api/v1/workflows/{id}"), &owner).await;
    assert_eq!(read.body["latest_version"], 8);
    assert_eq!(read.body["current_version"], Value::Null);
}

#[tokio::test]
async fn versions_move_from_draft_to_released_to_deprecated_and_current_version_follows() {
    // GIVEN a workflow with three versions; the second has its own definition
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let me = app.get("/api/v1/auth/me", &owner).await.body["id"].clone();
    let project = app.project(&owner, "Flows").await;
    let id = workflow(&app, &owner, &project, simple("One")).await;
    let v1 = new_version(&app, &owner, &id, json!({"note": "first"})).await;
    assert_eq!(v1.status, StatusCode::CREATED, "{}", v1.text);
    assert_eq!(v1.body["version"], 1);
    assert_eq!(v1.body["definition"], simple("One"));
    assert_eq!(v1.body["author_user_id"], me);
    assert_eq!(v1.body["note"], "first");
    assert_eq!(
        v1.header("location"),
        Some(format!("/api/v1/workflows/{id}/versions/1").as_str())
    );
    let v2 = new_version(&app, &owner, &id, json!({"definition": simple("Two")})).await;
    assert_eq!(v2.body["definition"], simple("Two"));
    let v3 = new_version(&app, &owner, &id, json!({})).await;
    assert_eq!(v3.body["version"], 3);
    assert_eq!(
        v3.body["definition"],
        simple("One"),
        "the workflow itself was left alone"
    );

    // A version's definition is frozen: changing the workflow leaves it as it was.
    let changed = app
        .patch(
            &format!("/api/v1/workflows/{id}"),
            &owner,
            json!({"definition": simple("Changed")}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    let frozen = app
        .get(&format!("/api/v1/workflows/{id}/versions/1"), &owner)
        .await;
    assert_eq!(frozen.body["definition"], simple("One"));
    assert_eq!(frozen.body["status"], "draft");
    assert_eq!(current_version(&app, &owner, &id).await, Value::Null);

    // Releasing moves current_version to the newest released version, never back.
    let released = set_status(&app, &owner, &id, 1, "released").await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.text);
    assert_eq!(released.body["status"], "released");
    assert!(released.body["released_at"].is_string());
    assert_eq!(current_version(&app, &owner, &id).await, 1);
    assert_eq!(
        set_status(&app, &owner, &id, 3, "released").await.status,
        StatusCode::OK
    );
    assert_eq!(current_version(&app, &owner, &id).await, 3);
    assert_eq!(
        set_status(&app, &owner, &id, 2, "released").await.status,
        StatusCode::OK
    );
    assert_eq!(current_version(&app, &owner, &id).await, 3);

    // Deprecating the current version falls back to the newest still released.
    let deprecated = set_status(&app, &owner, &id, 3, "deprecated").await;
    assert_eq!(deprecated.status, StatusCode::OK, "{}", deprecated.text);
    assert!(deprecated.body["deprecated_at"].is_string());
    assert_eq!(current_version(&app, &owner, &id).await, 2);
    assert_eq!(
        set_status(&app, &owner, &id, 1, "deprecated").await.status,
        StatusCode::OK
    );
    assert_eq!(current_version(&app, &owner, &id).await, 2);
    assert_eq!(
        set_status(&app, &owner, &id, 2, "deprecated").await.status,
        StatusCode::OK
    );
    assert_eq!(current_version(&app, &owner, &id).await, Value::Null);

    // Nothing else moves: no skipping, no going back, no repeating.
    let v4 = new_version(&app, &owner, &id, json!({})).await;
    assert_eq!(v4.body["version"], 4);
    for (n, status) in [
        (4, "deprecated"),
        (4, "draft"),
        (3, "released"),
        (3, "draft"),
        (3, "deprecated"),
    ] {
        let reply = set_status(&app, &owner, &id, n, status).await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "version {n} → {status}: {}",
            reply.text
        );
    }
    assert_eq!(
        set_status(&app, &owner, &id, 4, "released").await.status,
        StatusCode::OK
    );
    let again = set_status(&app, &owner, &id, 4, "released").await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(current_version(&app, &owner, &id).await, 4);
    let unknown = set_status(&app, &owner, &id, 4, "archived").await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.error_fields(), vec!["status"]);
    let rewrite = app
        .patch(
            &format!("/api/v1/workflows/{id}/versions/4"),
            &owner,
            json!({"status": "deprecated", "definition": simple("Sneaky")}),
        )
        .await;
    assert_eq!(rewrite.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.get(&format!("/api/v1/workflows/{id}/versions/4"), &owner)
            .await
            .body["status"],
        "released"
    );
    for missing in ["5", "0", "x"] {
        let reply = app
            .patch(
                &format!("/api/v1/workflows/{id}/versions/{missing}"),
                &owner,
                json!({"status": "released"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{missing}");
        let reply = app
            .get(
                &format!("/api/v1/workflows/{id}/versions/{missing}"),
                &owner,
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{missing}");
    }
}

#[tokio::test]
async fn outsiders_get_404_and_viewers_403_on_every_workflow_route_and_nothing_changes() {
    // GIVEN a workflow with a draft version, a viewer of its project and an outsider
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let viewer = app.user("Viewer").await;
    let outsider = app.user("Outsider").await;
    let project = app.project(&owner, "Flows").await;
    app.project(&outsider, "Theirs").await;
    app.add_member(&owner, &project, &viewer, "viewer").await;
    let id = workflow(&app, &owner, &project, simple("Approve")).await;
    assert_eq!(
        new_version(&app, &owner, &id, json!({})).await.status,
        StatusCode::CREATED
    );
    let before = app
        .get(&format!("/api/v1/workflows/{id}"), &owner)
        .await
        .body;

    let base = format!("/api/v1/workflows/{id}");
    let create_body = json!({"project_id": project, "name": "X", "definition": simple("X")});
    let routes: Vec<(Method, String, Option<Value>, bool)> = vec![
        (
            Method::GET,
            format!("/api/v1/workflows?project_id={project}"),
            None,
            false,
        ),
        (
            Method::POST,
            "/api/v1/workflows".to_owned(),
            Some(create_body),
            true,
        ),
        (Method::GET, base.clone(), None, false),
        (
            Method::PATCH,
            base.clone(),
            Some(json!({"name": "Hijacked"})),
            true,
        ),
        (Method::DELETE, base.clone(), None, true),
        (Method::GET, format!("{base}/versions"), None, false),
        (
            Method::POST,
            format!("{base}/versions"),
            Some(json!({"note": "x"})),
            true,
        ),
        (Method::GET, format!("{base}/versions/1"), None, false),
        (
            Method::PATCH,
            format!("{base}/versions/1"),
            Some(json!({"status": "released"})),
            true,
        ),
    ];
    for (method, path, body, mutation) in routes {
        // WHEN an outsider calls it, THEN the workflow (or project) does not exist for them
        let reply = app
            .call(method.clone(), &path, Some(&outsider), body.clone())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "outsider {method} {path}: {}",
            reply.text
        );
        // WHEN a viewer calls it, THEN reads work and mutations are forbidden
        let reply = app.call(method.clone(), &path, Some(&viewer), body).await;
        let expected = if mutation {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        };
        assert_eq!(
            reply.status, expected,
            "viewer {method} {path}: {}",
            reply.text
        );
    }

    // AND nothing changed
    let after = app
        .get(&format!("/api/v1/workflows/{id}"), &owner)
        .await
        .body;
    assert_eq!(after, before);
    let version = app.get(&format!("{base}/versions/1"), &owner).await;
    assert_eq!(version.body["status"], "draft");
    let list = app
        .get(&format!("/api/v1/workflows?project_id={project}"), &owner)
        .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn openapi_documents_every_workflow_route_and_the_definition_schema() {
    let app = spawn_app().await;
    let doc = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    let paths = &doc.body["paths"];
    for (path, methods) in [
        ("/api/v1/workflows", &["get", "post"][..]),
        ("/api/v1/workflows/{id}", &["get", "patch", "delete"][..]),
        ("/api/v1/workflows/{id}/versions", &["get", "post"][..]),
        ("/api/v1/workflows/{id}/versions/{n}", &["get", "patch"][..]),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
    }
    let schemas = &doc.body["components"]["schemas"];
    for schema in [
        "WorkflowDefinition",
        "WorkflowStep",
        "WorkflowStepKind",
        "ToolStepConfig",
        "LoopStepConfig",
        "WorkflowView",
        "WorkflowVersionView",
    ] {
        assert!(schemas[schema].is_object(), "{schema}");
    }
}

#[tokio::test]
async fn concurrent_status_changes_leave_current_version_on_the_newest_released() {
    // GIVEN a workflow with five draft versions
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Flows").await;
    let id = workflow(&app, &owner, &project, simple("Approve")).await;
    for _ in 0..5 {
        assert_eq!(
            new_version(&app, &owner, &id, json!({})).await.status,
            StatusCode::CREATED
        );
    }

    // WHEN all five are released at once
    let released =
        futures::future::join_all((1..=5).map(|n| set_status(&app, &owner, &id, n, "released")))
            .await;

    // THEN each succeeded and the newest is current
    for reply in &released {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    assert_eq!(current_version(&app, &owner, &id).await, 5);

    // WHEN the two newest are deprecated at once, THEN the third becomes current
    let deprecated =
        futures::future::join_all([5, 4].map(|n| set_status(&app, &owner, &id, n, "deprecated")))
            .await;
    for reply in &deprecated {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    assert_eq!(current_version(&app, &owner, &id).await, 3);
}
