//! Router tests of `/api/v1/runs` and of the runs store, on the real local services:
//! validation at exact fields, `Idempotency-Key`, RBAC and tenancy, filtered newest-first
//! lists and their cursors, status transitions, `steps_summary` and its DynamoDB cost,
//! exactly-once step claims with exact cost sums, the worker's partial batch failures, and
//! runs executed in-process against fake LLM and tool APIs.
//!
//! The app has no worker: a run stays `queued` unless a test drives the engine or the worker.

use std::collections::HashSet;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::{json, Value};
use spark_ops::engine::run::{Engine, Outcome};
use spark_ops::engine::worker::{QueueMessage, Worker};
use spark_ops::payload::Payload;
use spark_ops::run::{step_sk, Run, StepRecord, StepStatus, Usage};
use spark_ops::store::runs::{Claim, StepEnd};
use spark_ops_tests::{spawn_app, NoHeartbeat, Reply, TestApp};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A workflow a run can wait in: one `human` step.
fn one_human_step() -> Value {
    json!({"steps": [
        {"id": "ask", "type": "human", "depends_on": [], "config": {"instructions": "Check ticket {{ input.ticket }}"}}
    ]})
}

/// Three `human` steps in a chain.
fn three_steps() -> Value {
    json!({"steps": [
        {"id": "first",  "type": "human", "depends_on": [],         "config": {"instructions": "one"}},
        {"id": "second", "type": "human", "depends_on": ["first"],  "config": {"instructions": "two"}},
        {"id": "third",  "type": "human", "depends_on": ["second"], "config": {"instructions": "three"}}
    ]})
}

/// A project with an agent and a workflow whose version 1 is released.
struct World {
    app: TestApp,
    owner: String,
    project: String,
    agent: String,
    workflow: String,
}

async fn world() -> World {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Runs").await;
    let agent = agent(&app, &owner, &project, None).await;
    let workflow = released_workflow(&app, &owner, &project, one_human_step()).await;
    World {
        app,
        owner,
        project,
        agent,
        workflow,
    }
}

/// Adds an admin to the world's project; returns their token. Approvals need one: whoever
/// started a run (here the owner) may not decide it.
async fn approver(w: &World) -> String {
    let admin = w.app.user("Approver").await;
    w.app
        .add_member(&w.owner, &w.project, &admin, "admin")
        .await;
    admin
}

/// Registers an agent on `gpt-4o-mini`, calling `llm_base_url` when given; returns its id.
async fn agent(app: &TestApp, token: &str, project: &str, llm_base_url: Option<&str>) -> String {
    let mut body = json!({
        "project_id": project,
        "name": format!("runner-{}", &Uuid::now_v7().simple().to_string()[24..]),
        "runtime": "python",
        "model": "gpt-4o-mini",
        "env": "dev",
        "system_prompt": "You triage support tickets.",
    });
    if let Some(url) = llm_base_url {
        body["llm"] = json!({"base_url": url});
    }
    let reply = app.post("/api/v1/agents", Some(token), body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "agent: {}", reply.text);
    id_of(&reply.body)
}

/// Saves a workflow without any version; returns its id.
async fn workflow(app: &TestApp, token: &str, project: &str, definition: Value) -> String {
    let reply = app
        .post(
            "/api/v1/workflows",
            Some(token),
            json!({"project_id": project, "name": "Ticket flow", "definition": definition}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "workflow: {}",
        reply.text
    );
    id_of(&reply.body)
}

/// Adds a draft version of the workflow's definition; returns its number.
async fn add_version(app: &TestApp, token: &str, workflow: &str) -> u64 {
    let reply = app
        .post(
            &format!("/api/v1/workflows/{workflow}/versions"),
            Some(token),
            json!({}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "version: {}", reply.text);
    reply.body["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no version number in {}", reply.text))
}

async fn set_version_status(app: &TestApp, token: &str, workflow: &str, n: u64, status: &str) {
    let reply = app
        .patch(
            &format!("/api/v1/workflows/{workflow}/versions/{n}"),
            token,
            json!({"status": status}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{status}: {}", reply.text);
}

/// Saves a workflow and releases its version 1; returns its id.
async fn released_workflow(app: &TestApp, token: &str, project: &str, definition: Value) -> String {
    let id = workflow(app, token, project, definition).await;
    let n = add_version(app, token, &id).await;
    set_version_status(app, token, &id, n, "released").await;
    id
}

fn id_of(record: &Value) -> String {
    record["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {record}"))
        .to_owned()
}

/// A valid `POST /runs` body.
fn run_body(workflow: &str, agent: &str) -> Value {
    json!({"workflow_id": workflow, "agent_id": agent, "env": "dev", "input": {"ticket": 42}})
}

/// Starts a run; asserts it was created and returns it.
async fn start(app: &TestApp, token: &str, body: Value) -> Value {
    let reply = app.post("/api/v1/runs", Some(token), body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "start: {}", reply.text);
    reply.body
}

/// `POST /runs` with the raw `body` text and an `Idempotency-Key` of raw bytes.
async fn post_keyed(app: &TestApp, token: &str, key: &[u8], body: &str) -> Reply {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/runs")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            "idempotency-key",
            HeaderValue::from_bytes(key).expect("a header value"),
        )
        .body(Body::from(body.to_owned()))
        .expect("request builds");
    app.send(request).await
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {}", reply.text))
        .iter()
        .map(id_of)
        .collect()
}

/// The ids `GET /runs?project_id=…{filter}` lists on its first page.
async fn listed(app: &TestApp, token: &str, project: &str, filter: &str) -> Vec<String> {
    let reply = app
        .get(&format!("/api/v1/runs?project_id={project}{filter}"), token)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{filter}: {}", reply.text);
    ids(&reply)
}

/// Every id of a list, following `next_cursor` page by page.
async fn walk(app: &TestApp, token: &str, project: &str, filter: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _page in 0..100 {
        let after = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let reply = app
            .get(
                &format!("/api/v1/runs?project_id={project}{filter}{after}"),
                token,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{filter}: {}", reply.text);
        all.extend(ids(&reply));
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
    panic!("{filter}: the list did not end within 100 pages");
}

fn run_path(id: &str) -> String {
    format!("/api/v1/runs/{id}")
}

async fn get_run(app: &TestApp, token: &str, id: &str) -> Value {
    let reply = app.get(&run_path(id), token).await;
    assert_eq!(reply.status, StatusCode::OK, "get run: {}", reply.text);
    reply.body
}

async fn stored_run(app: &TestApp, id: &str) -> Run {
    let id = Uuid::parse_str(id).expect("a run id");
    app.state
        .store
        .get_run(id)
        .await
        .expect("the run reads")
        .expect("the run exists")
}

async fn cancel(app: &TestApp, token: &str, id: &str) -> Reply {
    app.call(
        Method::PATCH,
        &format!("{}/cancel", run_path(id)),
        Some(token),
        None,
    )
    .await
}

async fn act(app: &TestApp, token: &str, id: &str, action: &str, body: Value) -> Reply {
    app.post(&format!("{}/{action}", run_path(id)), Some(token), body)
        .await
}

/// The `items` of a run's `/steps` page.
async fn steps(app: &TestApp, token: &str, id: &str) -> Vec<Value> {
    let reply = app.get(&format!("{}/steps", run_path(id)), token).await;
    assert_eq!(reply.status, StatusCode::OK, "steps: {}", reply.text);
    reply.body["items"].as_array().cloned().unwrap_or_default()
}

/// Moves a queued run to `running`, as a worker starting it would.
async fn to_running(app: &TestApp, id: &str) -> Run {
    app.run_to_running(id.parse().expect("a run id")).await
}

/// A fresh record of top-level step `idx`, as a worker claiming it would write.
fn record(run: &Run, idx: u32, step_id: &str) -> StepRecord {
    let now: DateTime<Utc> = run.updated_at;
    StepRecord::claim(
        run.id,
        idx,
        None,
        step_id,
        "human",
        now,
        now + chrono::Duration::minutes(5),
        0,
    )
}

/// Claims a step and ends its attempt with `end`, both of which must succeed.
async fn claim_and_finish(store: &spark_ops::store::Store, step: &StepRecord, end: &StepEnd) {
    assert!(matches!(store.claim_step(step).await, Ok(Claim::Claimed)));
    assert!(store.finish_step(step, end).await.expect("finish"));
}

/// Every step record's `usd_cost`, in order.
async fn step_costs(app: &TestApp, token: &str, run: &str) -> Vec<String> {
    steps(app, token, run)
        .await
        .iter()
        .map(|s| s["usd_cost"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A successful end of an attempt that spent `tokens` and `cost` (decimal text).
fn spent(at: DateTime<Utc>, tokens: (u64, u64), cost: &str) -> StepEnd {
    StepEnd {
        status: StepStatus::Succeeded,
        at,
        duration_ms: 10,
        error_message: None,
        request: Some(Payload::Inline(json!({"prompt": "hi"}))),
        response: Some(Payload::Inline(json!({"text": "hello"}))),
        usage: Usage {
            tokens_prompt: tokens.0,
            tokens_completion: tokens.1,
            usd_cost: cost.parse().expect("a decimal"),
        },
    }
}

/// The exact decimal text of a stored run's cost.
fn cost_text(run: &Run) -> String {
    run.usage.usd_cost.normalize().to_string()
}

/// Runs one `execute` slice of a run in-process, reaching the local fakes at `fakes`.
async fn execute(app: &TestApp, id: &str, fakes: &[&str]) -> Outcome {
    app.engine_allowing(fakes)
        .execute(stored_run(app, id).await, &NoHeartbeat)
        .await
        .expect("the slice runs")
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_run_requests_name_each_field_and_store_nothing() {
    // GIVEN a project with an agent and a released workflow
    let w = world().await;
    let (app, owner) = (&w.app, w.owner.as_str());
    let big_metadata = json!({"blob": "x".repeat(33 * 1024)});

    // WHEN every field is wrong at once, THEN each is named
    let reply = app
        .post(
            "/api/v1/runs",
            Some(owner),
            json!({"workflow_id": "flow-1", "agent_id": "bot", "env": "qa", "input": [1, 2], "metadata": big_metadata}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    let fields: HashSet<String> = reply.error_fields().into_iter().collect();
    let expected: HashSet<String> = ["workflow_id", "agent_id", "env", "input", "metadata"]
        .map(str::to_owned)
        .into();
    assert_eq!(fields, expected, "{}", reply.text);

    // WHEN one field at a time is wrong, THEN exactly that field is named
    let valid = run_body(&w.workflow, &w.agent);
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let cases = [
        (
            "a malformed agent id",
            with("agent_id", json!("bot")),
            "agent_id",
        ),
        ("an unknown env", with("env", json!("production")), "env"),
        (
            "an input that is a string",
            with("input", json!("hello")),
            "input",
        ),
        (
            "an input that is a list",
            with("input", json!([1])),
            "input",
        ),
        (
            "an input over 128 KiB",
            with("input", json!({"blob": "y".repeat(129 * 1024)})),
            "input",
        ),
        (
            "metadata that is not an object",
            with("metadata", json!(7)),
            "metadata",
        ),
        (
            "metadata over 32 KiB",
            with("metadata", big_metadata.clone()),
            "metadata",
        ),
        (
            "an unknown workflow",
            with("workflow_id", json!(Uuid::now_v7().to_string())),
            "workflow_id",
        ),
        (
            "a version that does not exist",
            with("version", json!(9)),
            "version",
        ),
        (
            "an agent that does not exist",
            with("agent_id", json!(Uuid::now_v7().to_string())),
            "agent_id",
        ),
    ];
    for (case, body, field) in cases {
        let reply = app.post("/api/v1/runs", Some(owner), body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {}",
            reply.text
        );
        assert_eq!(reply.error_fields(), vec![field], "{case}: {}", reply.text);
    }

    // GIVEN a workflow with only a draft version, and one whose only version is deprecated
    let draft = workflow(app, owner, &w.project, one_human_step()).await;
    add_version(app, owner, &draft).await;
    let never_versioned = workflow(app, owner, &w.project, one_human_step()).await;
    let retired = released_workflow(app, owner, &w.project, one_human_step()).await;
    set_version_status(app, owner, &retired, 1, "deprecated").await;
    let cases = [
        (
            "a draft-only workflow and no version",
            run_body(&draft, &w.agent),
        ),
        (
            "a workflow without versions",
            run_body(&never_versioned, &w.agent),
        ),
        ("a deprecated current version", run_body(&retired, &w.agent)),
        ("a deprecated version named explicitly", {
            let mut body = run_body(&retired, &w.agent);
            body["version"] = json!(1);
            body
        }),
    ];
    for (case, body) in cases {
        // THEN `version` is named
        let reply = app.post("/api/v1/runs", Some(owner), body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {}",
            reply.text
        );
        assert_eq!(
            reply.error_fields(),
            vec!["version"],
            "{case}: {}",
            reply.text
        );
    }

    // GIVEN an agent of another project of the same owner
    let elsewhere = app.project(owner, "Elsewhere").await;
    let foreign_agent = agent(app, owner, &elsewhere, None).await;
    // WHEN it is asked to run this project's workflow, THEN `agent_id` is named
    let reply = app
        .post(
            "/api/v1/runs",
            Some(owner),
            run_body(&w.workflow, &foreign_agent),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.error_fields(), vec!["agent_id"], "{}", reply.text);

    // THEN no run was stored anywhere
    assert!(listed(app, owner, &w.project, "").await.is_empty());
    assert!(listed(app, owner, &elsewhere, "").await.is_empty());
}

#[tokio::test]
async fn a_valid_run_is_created_queued_with_every_field() {
    // GIVEN a project with an agent and a released workflow
    let w = world().await;
    let app = &w.app;

    // WHEN a run is started without a version
    let mut body = run_body(&w.workflow, &w.agent);
    body["metadata"] = json!({"source": "test"});
    let reply = app.post("/api/v1/runs", Some(&w.owner), body).await;

    // THEN it runs the current version, is queued, and shows the contract's fields
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let run = &reply.body;
    let id = id_of(run);
    assert_eq!(reply.header("location"), Some(run_path(&id).as_str()));
    assert_eq!(reply.header("idempotent-replayed"), None);
    assert_eq!(run["project_id"], w.project.as_str());
    assert_eq!(run["workflow_id"], w.workflow.as_str());
    assert_eq!(run["workflow_version"], 1);
    assert_eq!(run["agent_id"], w.agent.as_str());
    assert_eq!(run["env"], "dev");
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["status"], "queued");
    assert_eq!(run["input"], json!({"ticket": 42}));
    assert_eq!(run["metadata"], json!({"source": "test"}));
    assert_eq!(run["require_approval"], false);
    assert_eq!(run["has_human_in_loop"], true);
    assert_eq!(run["usd_cost"], "0");
    assert_eq!(run["tokens_prompt"], 0);
    assert_eq!(run["tokens_completion"], 0);
    assert_eq!(run["retries"], 0);
    assert_eq!(run["version"], 1);
    for field in ["started_at", "ended_at", "duration_ms", "error_message"] {
        assert_eq!(run[field], Value::Null, "{field}: {run:#}");
    }
    assert!(
        run.get("steps_summary").is_none(),
        "only GET /runs/{{id}} summarises steps: {run:#}"
    );
    assert!(
        run.get("task_token").is_none(),
        "the task token never leaves the store: {run:#}"
    );
    assert_eq!(
        listed(app, &w.owner, &w.project, "").await,
        vec![id.clone()]
    );
}

// ---------------------------------------------------------------------------------------
// Idempotency-Key
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_replayed_idempotency_key_returns_the_first_run_and_starts_nothing() {
    // GIVEN a run started with an Idempotency-Key
    let w = world().await;
    let (app, owner) = (&w.app, w.owner.as_str());
    let body = format!(
        r#"{{"workflow_id": "{}", "agent_id": "{}", "env": "dev", "input": {{"a": 1, "b": 2}}}}"#,
        w.workflow, w.agent
    );
    let first = post_keyed(app, owner, b"order-7f3a", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = id_of(&first.body);

    // WHEN the same request is sent again, even with its keys in another order
    let reordered = format!(
        r#"{{"input": {{"b": 2, "a": 1}}, "env": "dev", "agent_id": "{}", "workflow_id": "{}"}}"#,
        w.agent, w.workflow
    );
    for replay_body in [&body, &reordered] {
        let replay = post_keyed(app, owner, b"order-7f3a", replay_body).await;

        // THEN it gets the first run, marked as a replay
        assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.text);
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(id_of(&replay.body), id);
        assert_eq!(replay.header("location"), Some(run_path(&id).as_str()));
    }
    // AND only one run exists
    assert_eq!(listed(app, owner, &w.project, "").await, vec![id.clone()]);

    // WHEN the key comes with another body, THEN it is refused, naming the header
    let other = format!(
        r#"{{"workflow_id": "{}", "agent_id": "{}", "env": "dev", "input": {{"a": 2}}}}"#,
        w.workflow, w.agent
    );
    let reply = post_keyed(app, owner, b"order-7f3a", &other).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.error_fields(),
        vec!["Idempotency-Key"],
        "{}",
        reply.text
    );
    assert_eq!(listed(app, owner, &w.project, "").await, vec![id.clone()]);

    // WHEN the run has moved on, THEN a replay shows its current state
    let cancelled = cancel(app, owner, &id).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    let replay = post_keyed(app, owner, b"order-7f3a", &body).await;
    assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body["status"], "cancelled");
    assert_eq!(id_of(&replay.body), id);
    assert_eq!(listed(app, owner, &w.project, "").await, vec![id]);
}

/// An expired key is free again, although DynamoDB deletes expired items only eventually
/// (DynamoDB Local never does).
#[tokio::test]
async fn an_idempotency_key_is_forgotten_after_a_day() {
    // GIVEN a run started with a key, by a project API key (user tokens expire in a day)
    let w = world().await;
    let app = &w.app;
    let key = app
        .post(
            &format!("/api/v1/projects/{}/api-keys", w.project),
            Some(&w.owner),
            json!({"name": "scheduler", "role": "developer"}),
        )
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let owner = key.body["key"].as_str().expect("the key");
    let body = run_body(&w.workflow, &w.agent).to_string();
    let first = post_keyed(app, owner, b"daily-report", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    // WHEN the same request comes 23 hours later, THEN it is a replay
    app.clock.advance(chrono::Duration::hours(23));
    let replay = post_keyed(app, owner, b"daily-report", &body).await;
    assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(id_of(&replay.body), id_of(&first.body));

    // WHEN it comes again after the key's 24 hours
    app.clock.advance(chrono::Duration::hours(2));
    let later = post_keyed(app, owner, b"daily-report", &body).await;

    // THEN it starts a new run
    assert_eq!(later.status, StatusCode::CREATED, "{}", later.text);
    assert_eq!(later.header("idempotent-replayed"), None);
    assert_ne!(id_of(&later.body), id_of(&first.body));
    assert_eq!(listed(app, owner, &w.project, "").await.len(), 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_start_one_run() {
    // GIVEN a project with a released workflow
    let w = world().await;
    let (app, owner) = (&w.app, w.owner.as_str());
    let body = run_body(&w.workflow, &w.agent).to_string();

    // WHEN six identical requests with the same key arrive at once
    let replies = join_all((0..6).map(|_| post_keyed(app, owner, b"burst-1", &body))).await;

    // THEN every one answers with the same run, and only one exists
    let mut runs = HashSet::new();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        runs.insert(id_of(&reply.body));
    }
    assert_eq!(runs.len(), 1, "{runs:?}");
    let replayed = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 5, "all but the first are replays");
    assert_eq!(listed(app, owner, &w.project, "").await.len(), 1);
}

/// Approve and reject race on one run: exactly one of them decides, and the other gets `409`.
#[tokio::test]
async fn concurrent_approve_and_reject_let_exactly_one_decide() {
    // GIVEN runs waiting for approval
    let w = world().await;
    let app = &w.app;
    let admin = approver(&w).await;
    let mut gated = run_body(&w.workflow, &w.agent);
    gated["require_approval"] = json!(true);
    let mut both_won = Vec::new();
    for _round in 0..10 {
        let id = id_of(&start(app, &w.owner, gated.clone()).await);

        // WHEN an admin approves and rejects it at once
        let (approve, reject) = tokio::join!(
            act(app, &admin, &id, "approve", json!({})),
            act(app, &admin, &id, "reject", json!({"reason": "race"})),
        );

        // THEN exactly one decides, and the run shows that decision
        let run = get_run(app, &w.owner, &id).await;
        match (approve.status, reject.status) {
            (StatusCode::OK, StatusCode::CONFLICT) => {
                assert_eq!(run["status"], "queued", "{run:#}");
                assert_eq!(run["approval"]["decision"], "approved", "{run:#}");
            }
            (StatusCode::CONFLICT, StatusCode::OK) => {
                assert_eq!(run["status"], "cancelled", "{run:#}");
                assert_eq!(run["approval"]["decision"], "rejected", "{run:#}");
            }
            (StatusCode::OK, StatusCode::OK) => both_won.push(format!(
                "run {id}: approve answered {} but the run is {} with {}",
                approve.body["status"], run["status"], run["error_message"]
            )),
            other => panic!(
                "unexpected answers {other:?}: {} / {}",
                approve.text, reject.text
            ),
        }
    }
    assert!(
        both_won.is_empty(),
        "approve and reject both answered 200:\n{}",
        both_won.join("\n")
    );
}

#[tokio::test]
async fn malformed_idempotency_keys_are_refused_and_store_nothing() {
    // GIVEN a project with a released workflow
    let w = world().await;
    let (app, owner) = (&w.app, w.owner.as_str());
    let body = run_body(&w.workflow, &w.agent).to_string();

    // WHEN the key is too long, not ASCII, empty or holds a space, THEN 400 names the header
    let too_long = "k".repeat(256);
    let cases: [(&str, &[u8]); 4] = [
        ("256 characters", too_long.as_bytes()),
        ("non-ASCII", "clé-ключ".as_bytes()),
        ("empty", b""),
        ("a space", b"two words"),
    ];
    for (case, key) in cases {
        let reply = post_keyed(app, owner, key, &body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{case}: {}",
            reply.text
        );
        assert_eq!(
            reply.error_fields(),
            vec!["Idempotency-Key"],
            "{case}: {}",
            reply.text
        );
    }
    assert!(listed(app, owner, &w.project, "").await.is_empty());

    // WHEN the key is exactly 255 printable characters, THEN it is accepted
    let longest = "~".repeat(255);
    let reply = post_keyed(app, owner, longest.as_bytes(), &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(listed(app, owner, &w.project, "").await.len(), 1);
}

#[tokio::test]
async fn the_same_idempotency_key_in_two_projects_starts_two_runs() {
    // GIVEN two projects, each with an agent and a released workflow
    let w = world().await;
    let app = &w.app;
    let other_owner = app.user("Other").await;
    let other_project = app.project(&other_owner, "Other").await;
    let other_agent = agent(app, &other_owner, &other_project, None).await;
    let other_workflow =
        released_workflow(app, &other_owner, &other_project, one_human_step()).await;

    // WHEN each starts a run with the same key
    let mine = post_keyed(
        app,
        &w.owner,
        b"nightly-2024-06-01",
        &run_body(&w.workflow, &w.agent).to_string(),
    )
    .await;
    let theirs = post_keyed(
        app,
        &other_owner,
        b"nightly-2024-06-01",
        &run_body(&other_workflow, &other_agent).to_string(),
    )
    .await;

    // THEN both are new runs, each in its own project
    assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.text);
    assert_eq!(theirs.status, StatusCode::CREATED, "{}", theirs.text);
    assert_eq!(theirs.header("idempotent-replayed"), None);
    assert_ne!(id_of(&mine.body), id_of(&theirs.body));
    assert_eq!(
        listed(app, &w.owner, &w.project, "").await,
        vec![id_of(&mine.body)]
    );
    assert_eq!(
        listed(app, &other_owner, &other_project, "").await,
        vec![id_of(&theirs.body)]
    );
}

// ---------------------------------------------------------------------------------------
// Auth, RBAC, tenancy
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn runs_need_credentials_and_each_operation_its_role() {
    // GIVEN a project with a viewer, a developer and an admin, and a run waiting for approval
    let w = world().await;
    let app = &w.app;
    let viewer = app.user("Viewer").await;
    let developer = app.user("Developer").await;
    let admin = app.user("Admin").await;
    app.add_member(&w.owner, &w.project, &viewer, "viewer")
        .await;
    app.add_member(&w.owner, &w.project, &developer, "developer")
        .await;
    app.add_member(&w.owner, &w.project, &admin, "admin").await;
    let mut gated = run_body(&w.workflow, &w.agent);
    gated["require_approval"] = json!(true);
    let run = start(app, &w.owner, gated.clone()).await;
    let id = id_of(&run);

    // WHEN nobody is signed in, THEN every route answers 401
    let list_path = format!("/api/v1/runs?project_id={}", w.project);
    let anonymous = [
        (Method::GET, list_path.clone(), None),
        (
            Method::POST,
            "/api/v1/runs".to_owned(),
            Some(run_body(&w.workflow, &w.agent)),
        ),
        (Method::GET, run_path(&id), None),
        (Method::GET, format!("{}/steps", run_path(&id)), None),
        (Method::GET, format!("{}/logs", run_path(&id)), None),
        (Method::PATCH, format!("{}/cancel", run_path(&id)), None),
        (
            Method::POST,
            format!("{}/approve", run_path(&id)),
            Some(json!({})),
        ),
    ];
    for (verb, path, body) in anonymous {
        let reply = app.call(verb.clone(), &path, None, body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{verb} {path}: {}",
            reply.text
        );
    }

    // WHEN a viewer reads, THEN it may; WHEN it starts or cancels a run, THEN 403
    assert_eq!(
        get_run(app, &viewer, &id).await["status"],
        "awaiting_approval"
    );
    assert_eq!(listed(app, &viewer, &w.project, "").await, vec![id.clone()]);
    assert!(steps(app, &viewer, &id).await.is_empty());
    let logs = app.get(&format!("{}/logs", run_path(&id)), &viewer).await;
    assert_eq!(logs.status, StatusCode::OK, "{}", logs.text);
    let reply = app
        .post(
            "/api/v1/runs",
            Some(&viewer),
            run_body(&w.workflow, &w.agent),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    assert_eq!(
        cancel(app, &viewer, &id).await.status,
        StatusCode::FORBIDDEN
    );

    // WHEN a developer answers the approval, THEN 403: only admins decide
    let started = start(app, &developer, run_body(&w.workflow, &w.agent)).await;
    assert_eq!(started["status"], "queued");
    let reply = act(app, &developer, &id, "approve", json!({})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let reply = act(app, &developer, &id, "reject", json!({"reason": "no"})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    assert_eq!(
        get_run(app, &viewer, &id).await["status"],
        "awaiting_approval"
    );
    assert_eq!(listed(app, &viewer, &w.project, "").await.len(), 2);

    // WHEN an admin approves, THEN the run is queued
    let reply = act(
        app,
        &admin,
        &id,
        "approve",
        json!({"comment": "looks fine"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "queued");
    assert_eq!(reply.body["approval"]["decision"], "approved");
    assert_eq!(reply.body["approval"]["comment"], "looks fine");

    // AND a developer may cancel it
    let reply = cancel(app, &developer, &id).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "cancelled");
}

#[tokio::test]
async fn other_projects_cannot_see_or_touch_a_run() {
    // GIVEN a run waiting for approval, and a stranger who owns another project
    let w = world().await;
    let app = &w.app;
    let mut gated = run_body(&w.workflow, &w.agent);
    gated["require_approval"] = json!(true);
    let id = id_of(&start(app, &w.owner, gated).await);
    let stranger = app.user("Stranger").await;
    let theirs = app.project(&stranger, "Theirs").await;

    // WHEN the stranger addresses the run in any way, THEN it does not exist for them
    let base = run_path(&id);
    let attempts = [
        (Method::GET, base.clone(), None),
        (Method::GET, format!("{base}/steps"), None),
        (Method::GET, format!("{base}/logs"), None),
        (Method::PATCH, format!("{base}/cancel"), None),
        (Method::POST, format!("{base}/retry"), Some(json!({}))),
        (
            Method::POST,
            format!("{base}/resume"),
            Some(json!({"input": {}})),
        ),
        (Method::POST, format!("{base}/approve"), Some(json!({}))),
        (
            Method::POST,
            format!("{base}/reject"),
            Some(json!({"reason": "mine now"})),
        ),
        (
            Method::GET,
            format!("/api/v1/runs?project_id={}", w.project),
            None,
        ),
    ];
    for (verb, path, body) in attempts {
        let reply = app.call(verb.clone(), &path, Some(&stranger), body).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{verb} {path}: {}",
            reply.text
        );
    }
    // AND starting a run of the workflow is refused as if it did not exist
    let reply = app
        .post(
            "/api/v1/runs",
            Some(&stranger),
            run_body(&w.workflow, &w.agent),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.error_fields(), vec!["workflow_id"], "{}", reply.text);
    // AND their own project's list does not show it
    assert!(listed(app, &stranger, &theirs, "").await.is_empty());

    // WHEN a run id is malformed or unknown, THEN 404
    for missing in ["not-a-run", &Uuid::now_v7().to_string()] {
        for path in [
            run_path(missing),
            format!("{}/steps", run_path(missing)),
            format!("{}/logs", run_path(missing)),
        ] {
            let reply = app.get(&path, &w.owner).await;
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{path}: {}",
                reply.text
            );
        }
        assert_eq!(
            cancel(app, &w.owner, missing).await.status,
            StatusCode::NOT_FOUND
        );
    }

    // THEN the run is untouched
    let run = get_run(app, &w.owner, &id).await;
    assert_eq!(run["status"], "awaiting_approval");
    assert_eq!(run["version"], 1);
}

// ---------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------

/// Four runs a minute apart over two workflows and two agents; the first is cancelled and
/// the last waits for approval.
struct Listing {
    w: World,
    workflow2: String,
    agent2: String,
    /// Oldest first.
    runs: Vec<Value>,
}

async fn listing() -> Listing {
    let w = world().await;
    let app = &w.app;
    let workflow2 = released_workflow(app, &w.owner, &w.project, three_steps()).await;
    let agent2 = agent(app, &w.owner, &w.project, None).await;
    let mut runs = Vec::new();
    for (workflow, agent, approval) in [
        (&w.workflow, &w.agent, false),
        (&workflow2, &w.agent, false),
        (&w.workflow, &agent2, false),
        (&workflow2, &agent2, true),
    ] {
        app.clock.advance(chrono::Duration::minutes(1));
        let mut body = run_body(workflow, agent);
        body["require_approval"] = json!(approval);
        runs.push(start(app, &w.owner, body).await);
    }
    let cancelled = cancel(app, &w.owner, &id_of(&runs[0])).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    Listing {
        w,
        workflow2,
        agent2,
        runs,
    }
}

#[tokio::test]
async fn lists_filter_by_status_workflow_agent_trigger_and_time_newest_first() {
    // GIVEN four runs (r1 cancelled, r2 and r3 queued, r4 awaiting approval)
    let l = listing().await;
    let (app, owner, project) = (&l.w.app, l.w.owner.as_str(), l.w.project.as_str());
    let r: Vec<String> = l.runs.iter().map(id_of).collect();
    let at = |i: usize| l.runs[i]["created_at"].as_str().unwrap().to_owned();
    let (w1, w2, a1, a2) = (&l.w.workflow, &l.workflow2, &l.w.agent, &l.agent2);
    let cases: Vec<(String, Vec<&String>)> = vec![
        (String::new(), vec![&r[3], &r[2], &r[1], &r[0]]),
        ("&status=queued".into(), vec![&r[2], &r[1]]),
        ("&status=cancelled".into(), vec![&r[0]]),
        ("&status=awaiting_approval".into(), vec![&r[3]]),
        ("&status=failed".into(), vec![]),
        (format!("&workflow_id={w1}"), vec![&r[2], &r[0]]),
        (format!("&workflow_id={w2}"), vec![&r[3], &r[1]]),
        (format!("&agent_id={a1}"), vec![&r[1], &r[0]]),
        (format!("&agent_id={a2}"), vec![&r[3], &r[2]]),
        ("&trigger=manual".into(), vec![&r[3], &r[2], &r[1], &r[0]]),
        ("&trigger=schedule".into(), vec![]),
        // The lower bound is inclusive, the upper one exclusive.
        (
            format!("&created_after={}", at(1)),
            vec![&r[3], &r[2], &r[1]],
        ),
        (format!("&created_before={}", at(2)), vec![&r[1], &r[0]]),
        (
            format!("&created_after={}&created_before={}", at(1), at(3)),
            vec![&r[2], &r[1]],
        ),
        // Filters combine.
        (format!("&workflow_id={w1}&status=queued"), vec![&r[2]]),
        (format!("&status=queued&agent_id={a1}"), vec![&r[1]]),
        (
            format!("&agent_id={a2}&created_before={}", at(3)),
            vec![&r[2]],
        ),
        (
            format!("&workflow_id={w2}&agent_id={a2}&trigger=manual"),
            vec![&r[3]],
        ),
        (
            format!("&status=queued&workflow_id={w2}&agent_id={a2}"),
            vec![],
        ),
    ];
    for (filter, expected) in cases {
        // WHEN the list is filtered (walking every page: filters may thin a page)
        let got = walk(app, owner, project, &filter).await;
        // THEN exactly the matching runs come back, newest first
        let expected: Vec<String> = expected.into_iter().cloned().collect();
        assert_eq!(got, expected, "filter `{filter}`");
    }
}

#[tokio::test]
async fn pages_of_one_walk_every_run_exactly_once_and_foreign_cursors_are_refused() {
    // GIVEN four runs
    let l = listing().await;
    let (app, owner, project) = (&l.w.app, l.w.owner.as_str(), l.w.project.as_str());
    let newest_first: Vec<String> = l.runs.iter().rev().map(id_of).collect();

    // WHEN the list is read one run per page
    let walked = walk(app, owner, project, "&limit=1").await;

    // THEN every run comes exactly once, newest first
    assert_eq!(walked, newest_first);
    let walked = walk(
        app,
        owner,
        project,
        &format!("&limit=1&workflow_id={}&status=queued", l.workflow2),
    )
    .await;
    assert_eq!(walked, vec![id_of(&l.runs[1])]);

    // WHEN a cursor of one list is used on another, THEN 400 names the cursor
    let first = app
        .get(
            &format!("/api/v1/runs?project_id={project}&limit=1&status=queued"),
            owner,
        )
        .await;
    let cursor = first.body["next_cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("two queued runs make two pages: {}", first.text))
        .to_owned();
    for other_list in [
        format!("/api/v1/runs?project_id={project}&limit=1&cursor={cursor}"),
        format!("/api/v1/runs?project_id={project}&limit=1&status=cancelled&cursor={cursor}"),
        format!("{}/steps?cursor={cursor}", run_path(&id_of(&l.runs[1]))),
    ] {
        let reply = app.get(&other_list, owner).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{other_list}: {}",
            reply.text
        );
        assert_eq!(reply.error_fields(), vec!["cursor"], "{}", reply.text);
    }
    let same_list = app
        .get(
            &format!("/api/v1/runs?project_id={project}&limit=1&status=queued&cursor={cursor}"),
            owner,
        )
        .await;
    assert_eq!(same_list.status, StatusCode::OK, "{}", same_list.text);
    assert_eq!(ids(&same_list), vec![id_of(&l.runs[1])]);

    // WHEN a query parameter is malformed, THEN 400 names it
    let cases = [
        ("&status=done", "status"),
        ("&status=QUEUED", "status"),
        ("&workflow_id=flow", "workflow_id"),
        ("&agent_id=bot", "agent_id"),
        ("&trigger=cron", "trigger"),
        ("&created_after=yesterday", "created_after"),
        ("&created_before=2024-13-01T00:00:00Z", "created_before"),
        (
            "&created_after=2024-06-02T00:00:00Z&created_before=2024-06-01T00:00:00Z",
            "created_before",
        ),
        ("&limit=0", "limit"),
        ("&limit=201", "limit"),
        ("&cursor=bm90LWEtY3Vyc29y", "cursor"),
    ];
    for (query, field) in cases {
        let reply = app
            .get(&format!("/api/v1/runs?project_id={project}{query}"), owner)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            reply.text
        );
        assert_eq!(reply.error_fields(), vec![field], "{query}: {}", reply.text);
    }
    let reply = app.get("/api/v1/runs", owner).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert_eq!(reply.error_fields(), vec!["project_id"]);
}

// ---------------------------------------------------------------------------------------
// Transitions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cancelling_a_queued_run_ends_it_once() {
    // GIVEN a queued run, five seconds old
    let w = world().await;
    let app = &w.app;
    let id = id_of(&start(app, &w.owner, run_body(&w.workflow, &w.agent)).await);
    app.clock.advance(chrono::Duration::seconds(5));

    // WHEN it is cancelled
    let reply = cancel(app, &w.owner, &id).await;

    // THEN it ended now, cancelled, after 5 s
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let run = &reply.body;
    assert_eq!(run["status"], "cancelled");
    let ended = DateTime::parse_from_rfc3339(run["ended_at"].as_str().expect("ended_at"))
        .expect("RFC 3339");
    let now = app.state.clock.now();
    assert!(
        (now - ended.with_timezone(&Utc)).num_milliseconds().abs() < 1,
        "ended_at {ended} is the clock's now {now}"
    );
    assert_eq!(run["duration_ms"], 5000);
    assert_eq!(run["error_message"], Value::Null);
    assert_eq!(run["version"], 2);
    assert_eq!(get_run(app, &w.owner, &id).await["status"], "cancelled");
    assert_eq!(
        listed(app, &w.owner, &w.project, "&status=cancelled").await,
        vec![id.clone()]
    );
    assert!(listed(app, &w.owner, &w.project, "&status=queued")
        .await
        .is_empty());
    let logs = app.get(&format!("{}/logs", run_path(&id)), &w.owner).await;
    assert!(
        logs.body["items"]
            .as_array()
            .is_some_and(|l| l.iter().any(|line| line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cancelled by")))),
        "the cancel is logged: {}",
        logs.text
    );

    // WHEN it is cancelled again, or retried, THEN 409 and nothing changes
    let again = cancel(app, &w.owner, &id).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let retried = act(app, &w.owner, &id, "retry", json!({})).await;
    assert_eq!(retried.status, StatusCode::CONFLICT, "{}", retried.text);
    let after = get_run(app, &w.owner, &id).await;
    assert_eq!(after["version"], 2);
    assert_eq!(after["retries"], 0);
}

#[tokio::test]
async fn operations_on_a_run_in_the_wrong_status_conflict_and_change_nothing() {
    // GIVEN a queued run
    let w = world().await;
    let app = &w.app;
    let id = id_of(&start(app, &w.owner, run_body(&w.workflow, &w.agent)).await);

    // WHEN it is retried, resumed, approved or rejected, THEN 409 each time
    for (action, body) in [
        ("retry", json!({})),
        ("resume", json!({"input": {"ok": true}})),
        ("approve", json!({})),
        ("reject", json!({"reason": "not needed"})),
    ] {
        let reply = act(app, &w.owner, &id, action, body).await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{action}: {}",
            reply.text
        );
    }

    // THEN the run is as it was
    let run = get_run(app, &w.owner, &id).await;
    assert_eq!(run["status"], "queued");
    assert_eq!(run["version"], 1);
    assert_eq!(run["approval"], Value::Null);
}

/// A `409` names the status the operation needs.
#[tokio::test]
async fn conflicts_name_the_status_the_operation_needs() {
    // GIVEN a queued run and a run waiting for approval
    let w = world().await;
    let app = &w.app;
    let queued = id_of(&start(app, &w.owner, run_body(&w.workflow, &w.agent)).await);
    let mut gated = run_body(&w.workflow, &w.agent);
    gated["require_approval"] = json!(true);
    let gated_body = gated;
    let gated = id_of(&start(app, &w.owner, gated_body.clone()).await);
    let approved = id_of(&start(app, &w.owner, gated_body).await);
    let reply = act(app, &approver(&w).await, &approved, "approve", json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    // WHEN each operation meets the wrong status, THEN its 409 names the status it needs
    let mut wrong = Vec::new();
    for (id, action, body, needed) in [
        (&queued, "approve", json!({}), "awaiting_approval"),
        (&approved, "approve", json!({}), "awaiting_approval"),
        (
            &queued,
            "reject",
            json!({"reason": "x"}),
            "awaiting_approval",
        ),
        (&queued, "resume", json!({"input": {}}), "awaiting_input"),
        (&queued, "retry", json!({}), "failed"),
        (&gated, "retry", json!({}), "failed"),
        (&gated, "resume", json!({"input": {}}), "awaiting_input"),
    ] {
        let reply = act(app, &w.owner, id, action, body).await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{action}: {}",
            reply.text
        );
        let detail = reply.body["detail"].as_str().unwrap_or_default().to_owned();
        if !detail.contains(needed) {
            let status = get_run(app, &w.owner, id).await["status"].clone();
            wrong.push(format!(
                "{action} on a {status} run: expected `{needed}` in {detail:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "409 details name the wrong status:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn a_run_that_requires_approval_is_rejected_with_its_reason() {
    // GIVEN a run that asked for approval
    let w = world().await;
    let app = &w.app;
    let mut gated = run_body(&w.workflow, &w.agent);
    gated["require_approval"] = json!(true);
    let created = start(app, &w.owner, gated).await;
    let id = id_of(&created);
    assert_eq!(created["status"], "awaiting_approval");
    assert_eq!(created["require_approval"], true);
    assert_eq!(created["approval"], Value::Null);
    let admin = approver(&w).await;

    // WHEN an admin rejects it without a reason, THEN 422 names `reason`
    for reason in ["", "   "] {
        let reply = act(app, &admin, &id, "reject", json!({"reason": reason})).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{reason:?}: {}",
            reply.text
        );
        assert_eq!(reply.error_fields(), vec!["reason"], "{}", reply.text);
    }
    assert_eq!(
        get_run(app, &w.owner, &id).await["status"],
        "awaiting_approval"
    );

    // WHEN it is rejected with a reason
    let me = app.get("/api/v1/auth/me", &admin).await.body["id"].clone();
    let reply = act(
        app,
        &admin,
        &id,
        "reject",
        json!({"reason": "budget frozen"}),
    )
    .await;

    // THEN it ends cancelled, the reason kept as its error and in the decision
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let run = &reply.body;
    assert_eq!(run["status"], "cancelled");
    assert!(
        run["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("budget frozen")),
        "{run:#}"
    );
    assert_eq!(run["error_message"], "rejected: budget frozen");
    assert_eq!(run["approval"]["decision"], "rejected");
    assert_eq!(run["approval"]["decided_by"], me);
    assert_eq!(run["approval"]["comment"], "budget frozen");
    assert!(run["ended_at"].is_string(), "{run:#}");
    assert!(run["duration_ms"].is_u64(), "{run:#}");

    // AND it cannot be decided again
    let again = act(app, &admin, &id, "reject", json!({"reason": "twice"})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let approve = act(app, &admin, &id, "approve", json!({})).await;
    assert_eq!(approve.status, StatusCode::CONFLICT, "{}", approve.text);
    assert_eq!(
        get_run(app, &w.owner, &id).await["error_message"],
        "rejected: budget frozen"
    );
}

#[tokio::test]
async fn an_approved_run_is_queued_once_with_the_decision() {
    // GIVEN a run that asked for approval
    let w = world().await;
    let app = &w.app;
    let mut gated = run_body(&w.workflow, &w.agent);
    gated["require_approval"] = json!(true);
    let id = id_of(&start(app, &w.owner, gated).await);
    let admin = approver(&w).await;

    // WHEN an admin approves it with no body at all
    let reply = app
        .call(
            Method::POST,
            &format!("{}/approve", run_path(&id)),
            Some(&admin),
            None,
        )
        .await;

    // THEN it is queued, with the decision recorded
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "queued");
    assert_eq!(reply.body["approval"]["decision"], "approved");
    assert!(reply.body["approval"]["decided_at"].is_string());
    assert_eq!(reply.body["ended_at"], Value::Null);

    // AND a second decision conflicts
    let again = act(app, &admin, &id, "approve", json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let reject = act(app, &admin, &id, "reject", json!({"reason": "late"})).await;
    assert_eq!(reject.status, StatusCode::CONFLICT, "{}", reject.text);
    assert_eq!(get_run(app, &w.owner, &id).await["status"], "queued");
}

// ---------------------------------------------------------------------------------------
// GET /runs/{id}: steps_summary and its cost in DynamoDB requests
// ---------------------------------------------------------------------------------------

/// The DynamoDB requests `GET /runs/{id}` makes, whatever the run's size: authenticating
/// the token's user (`GetItem`) and authorizing on the project and membership
/// (`BatchGetItem`) cost 2, as on every project route; the run adds exactly 1 (`GetItem`),
/// since its step counts are kept on the run item.
const GET_RUN_DDB_OPERATIONS: [&str; 3] = ["GetItem", "GetItem", "BatchGetItem"];

#[tokio::test]
async fn a_run_summarises_its_steps_in_a_fixed_number_of_dynamodb_requests() {
    // GIVEN a queued run of a three-step workflow
    let w = world().await;
    let app = &w.app;
    let flow = released_workflow(app, &w.owner, &w.project, three_steps()).await;
    let id = id_of(&start(app, &w.owner, run_body(&flow, &w.agent)).await);

    // THEN nothing has started: every step is pending
    let run = get_run(app, &w.owner, &id).await;
    assert_eq!(
        run["steps_summary"],
        json!({"total": 3, "pending": 3, "running": 0, "waiting": 0, "succeeded": 0, "failed": 0, "skipped": 0})
    );

    // WHEN a worker finishes the first step and starts the second
    let running = to_running(app, &id).await;
    let store = &app.state.store;
    let first = record(&running, 0, "first");
    assert!(matches!(store.claim_step(&first).await, Ok(Claim::Claimed)));
    assert!(store
        .finish_step(&first, &spent(running.updated_at, (0, 0), "0"))
        .await
        .expect("finish"));
    let second = record(&running, 1, "second");
    assert!(matches!(
        store.claim_step(&second).await,
        Ok(Claim::Claimed)
    ));

    // THEN the summary counts them, and total is the number of steps
    app.ddb_requests.reset();
    let reply = app.get(&run_path(&id), &w.owner).await;
    let requests = app.ddb_requests.count();
    let operations = app.ddb_requests.operations();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.body["steps_summary"],
        json!({"total": 3, "pending": 1, "running": 1, "waiting": 0, "succeeded": 1, "failed": 0, "skipped": 0})
    );
    assert_eq!(reply.body["status"], "running");
    assert!(reply.body["started_at"].is_string());
    assert_eq!(
        reply.header("etag"),
        Some(format!("\"{}\"", reply.body["version"]).as_str())
    );
    // AND reading it costs a fixed number of DynamoDB requests
    assert_eq!(
        operations, GET_RUN_DDB_OPERATIONS,
        "GET /runs/{{id}} made {requests} DynamoDB requests"
    );

    // AND the steps list shows the records in order
    let listed = steps(app, &w.owner, &id).await;
    let names: Vec<&str> = listed.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, vec!["first", "second"]);
    assert_eq!(listed[0]["status"], "succeeded");
    assert_eq!(listed[0]["success"], true);
    assert_eq!(listed[0]["idx"], 0);
    assert_eq!(listed[0]["type"], "human");
    assert_eq!(listed[0]["iteration"], Value::Null);
    assert_eq!(listed[0]["response"], json!({"text": "hello"}));
    assert_eq!(listed[1]["status"], "running");
    assert_eq!(listed[1]["success"], false);
    assert_eq!(listed[1]["ended_at"], Value::Null);

    // AND pages of one step walk them in order
    let mut walked = Vec::new();
    let mut next = Some(format!("{}/steps?limit=1", run_path(&id)));
    while let Some(path) = next.take() {
        let page = app.get(&path, &w.owner).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for step in page.body["items"].as_array().cloned().unwrap_or_default() {
            walked.push(step["name"].as_str().unwrap_or_default().to_owned());
        }
        next = page.body["next_cursor"]
            .as_str()
            .map(|c| format!("{}/steps?limit=1&cursor={c}", run_path(&id)));
        assert!(walked.len() <= 2, "{walked:?}");
    }
    assert_eq!(walked, vec!["first", "second"]);
}

// ---------------------------------------------------------------------------------------
// Exactly once, at the store
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_claims_of_a_step_let_exactly_one_worker_hold_it() {
    // GIVEN a queued run: no step can be claimed until it runs
    let w = world().await;
    let app = &w.app;
    let id = id_of(&start(app, &w.owner, run_body(&w.workflow, &w.agent)).await);
    let store = &app.state.store;
    let queued = stored_run(app, &id).await;
    assert!(matches!(
        store.claim_step(&record(&queued, 0, "ask")).await,
        Ok(Claim::RunNotRunning)
    ));

    // WHEN eight workers claim the same step of the running run at once
    let running = to_running(app, &id).await;
    let step = record(&running, 0, "ask");
    let claims = join_all((0..8).map(|_| store.claim_step(&step))).await;

    // THEN exactly one holds it, and every other one sees the record
    let claimed = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Claimed)))
        .count();
    assert_eq!(claimed, 1, "{claims:#?}");
    for claim in &claims {
        match claim {
            Ok(Claim::Claimed) => {}
            Ok(Claim::Exists(existing)) => {
                assert_eq!(existing.attempts, 1);
                assert_eq!(existing.status, StepStatus::Running);
            }
            other => panic!("a losing claim must see the record, got {other:?}"),
        }
    }
    let records = store.all_steps(running.id).await.expect("steps read");
    assert_eq!(records.len(), 1);

    // WHEN the run is cancelled, THEN the next step cannot be claimed
    let reply = cancel(app, &w.owner, &id).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(matches!(
        store.claim_step(&record(&running, 1, "next")).await,
        Ok(Claim::RunNotRunning)
    ));
}

#[tokio::test]
async fn a_stale_attempt_cannot_finish_a_step_nor_count_its_cost() {
    // GIVEN a step claimed by worker A, then taken over by worker B (attempt 2)
    let w = world().await;
    let app = &w.app;
    let id = id_of(&start(app, &w.owner, run_body(&w.workflow, &w.agent)).await);
    let running = to_running(app, &id).await;
    let store = &app.state.store;
    let by_a = record(&running, 0, "ask");
    assert!(matches!(store.claim_step(&by_a).await, Ok(Claim::Claimed)));
    let later = running.updated_at + chrono::Duration::minutes(6);
    assert!(store
        .retake_step(&by_a, later, later + chrono::Duration::minutes(5), 0)
        .await
        .expect("retake"));
    let by_b = StepRecord {
        attempts: 2,
        started_at: later,
        ..by_a.clone()
    };

    // WHEN worker A finishes its stale attempt
    let finished = store
        .finish_step(&by_a, &spent(later, (100, 50), "0.5"))
        .await
        .expect("finish");

    // THEN nothing is written: the step still runs under B, the run spent nothing
    assert!(!finished, "a stale attempt must not finish the step");
    let step = store
        .get_step(running.id, &step_sk(0, None))
        .await
        .expect("read")
        .expect("the step exists");
    assert_eq!(step.status, StepStatus::Running);
    assert_eq!(step.attempts, 2);
    assert_eq!(step.usage.tokens_prompt, 0);
    let run = stored_run(app, &id).await;
    assert_eq!(
        (run.usage.tokens_prompt, run.usage.tokens_completion),
        (0, 0)
    );
    assert_eq!(cost_text(&run), "0");

    // WHEN worker B finishes, THEN its tokens and cost count, once
    let end = spent(later, (10, 5), "0.0000405");
    assert!(store.finish_step(&by_b, &end).await.expect("finish"));
    // A duplicate delivery finishing the same attempt again changes nothing.
    assert!(!store.finish_step(&by_b, &end).await.expect("finish"));
    let run = stored_run(app, &id).await;
    assert_eq!(
        (run.usage.tokens_prompt, run.usage.tokens_completion),
        (10, 5)
    );
    assert_eq!(cost_text(&run), "0.0000405");
    let step = store
        .get_step(running.id, &step_sk(0, None))
        .await
        .expect("read")
        .expect("the step exists");
    assert_eq!(step.status, StepStatus::Succeeded);
    assert_eq!(step.usage.usd_cost.normalize().to_string(), "0.0000405");
    let view = get_run(app, &w.owner, &id).await;
    assert_eq!(view["usd_cost"], "0.0000405");
    assert_eq!(view["tokens_prompt"], 10);
    assert_eq!(view["tokens_completion"], 5);
}

#[tokio::test]
async fn a_run_cost_is_the_exact_sum_of_its_step_costs() {
    // GIVEN a running run of three steps
    let w = world().await;
    let app = &w.app;
    let flow = released_workflow(app, &w.owner, &w.project, three_steps()).await;
    let id = id_of(&start(app, &w.owner, run_body(&flow, &w.agent)).await);
    let running = to_running(app, &id).await;
    let store = &app.state.store;
    let at = running.updated_at;

    // WHEN steps costing 0.1 and 0.2 finish
    for (idx, name, cost) in [(0, "first", "0.1"), (1, "second", "0.2")] {
        claim_and_finish(
            store,
            &record(&running, idx, name),
            &spent(at, (7, 3), cost),
        )
        .await;
    }

    // THEN the run cost 0.3 exactly, no float rounding
    let run = stored_run(app, &id).await;
    assert_eq!(cost_text(&run), "0.3");
    assert_eq!(get_run(app, &w.owner, &id).await["usd_cost"], "0.3");

    // WHEN a step costing a fraction of a cent finishes
    let step = record(&running, 2, "third");
    claim_and_finish(store, &step, &spent(at, (27, 0), "0.0000405")).await;

    // THEN every digit is kept, in the run and in each step
    let view = get_run(app, &w.owner, &id).await;
    assert_eq!(view["usd_cost"], "0.3000405");
    assert_eq!(view["tokens_prompt"], 41);
    assert_eq!(view["tokens_completion"], 6);
    assert_eq!(
        step_costs(app, &w.owner, &id).await,
        ["0.1", "0.2", "0.0000405"]
    );

    // GIVEN another run, WHEN its steps cost far less than a cent
    let tiny = id_of(&start(app, &w.owner, run_body(&flow, &w.agent)).await);
    let running = to_running(app, &tiny).await;
    for (idx, name, cost) in [(0, "first", "0.0000001"), (1, "second", "0.0000000405")] {
        claim_and_finish(
            store,
            &record(&running, idx, name),
            &spent(at, (1, 0), cost),
        )
        .await;
    }

    // THEN they still add up exactly, and read back as plain decimals
    let run = stored_run(app, &tiny).await;
    assert_eq!(cost_text(&run), "0.0000001405");
    let view = get_run(app, &w.owner, &tiny).await;
    assert_eq!(view["usd_cost"], "0.0000001405");
    assert_eq!(
        step_costs(app, &w.owner, &tiny).await,
        ["0.0000001", "0.0000000405"]
    );
}

// ---------------------------------------------------------------------------------------
// The worker and the engine, in-process
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_malformed_message_goes_to_the_dead_letter_queue_while_its_batch_mate_is_handled() {
    // GIVEN a run whose lifecycle has asked a worker to execute it
    let w = world().await;
    let app = &w.app;
    let id = id_of(&start(app, &w.owner, run_body(&w.workflow, &w.agent)).await);
    let execute = app.run_messages("execute", &[id.as_str()]).await.remove(0);

    // WHEN a worker handles it in one batch with messages it cannot read
    let worker = Worker::new(app.state.clone())
        .await
        .expect("the worker builds");
    let batch = vec![
        QueueMessage {
            message_id: "poison-1".into(),
            receipt_handle: None,
            body: "{not json".into(),
        },
        execute.clone(),
        QueueMessage {
            message_id: "poison-2".into(),
            receipt_handle: None,
            body: json!({"kind": "explode", "run_id": id}).to_string(),
        },
    ];
    let failed = worker.handle_batch(batch).await;

    // THEN the unreadable messages went to the dead-letter queue at once, and none is
    // reported failed (so none comes back)
    assert!(failed.is_empty(), "{failed:?}");
    let mut dead = app.dead_letters().await;
    dead.sort();
    let mut expected = vec![
        "{not json".to_owned(),
        json!({"kind": "explode", "run_id": id}).to_string(),
    ];
    expected.sort();
    assert_eq!(dead, expected);
    // AND the readable one ran the run to its human step
    let run = get_run(app, &w.owner, &id).await;
    assert_eq!(run["status"], "awaiting_input", "{run:#}");
    assert!(run["started_at"].is_string());
    let records = steps(app, &w.owner, &id).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], "waiting");
    assert_eq!(
        records[0]["request"],
        json!({"instructions": "Check ticket 42"})
    );

    // WHEN the same execute message is delivered again, THEN it is handled without effect
    let failed = worker.handle_batch(vec![execute]).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(steps(app, &w.owner, &id).await.len(), 1);
    assert_eq!(
        get_run(app, &w.owner, &id).await["status"],
        "awaiting_input"
    );
}

#[tokio::test]
async fn a_human_step_waits_for_resume_and_its_input_becomes_the_output() {
    // GIVEN a run executed up to its human step
    let w = world().await;
    let app = &w.app;
    let id = id_of(&start(app, &w.owner, run_body(&w.workflow, &w.agent)).await);
    assert_eq!(execute(app, &id, &[]).await, Outcome::AwaitingInput);
    assert_eq!(
        get_run(app, &w.owner, &id).await["steps_summary"]["waiting"],
        1
    );

    // WHEN it is resumed with input that is not an object, THEN 422 names `input`
    let reply = act(app, &w.owner, &id, "resume", json!({"input": "yes"})).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.error_fields(), vec!["input"], "{}", reply.text);

    // WHEN it is resumed with an object
    app.clock.advance(chrono::Duration::seconds(30));
    let reply = act(
        app,
        &w.owner,
        &id,
        "resume",
        json!({"input": {"approved": true}}),
    )
    .await;

    // THEN it runs again and the step's output is the input
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "running");
    let records = steps(app, &w.owner, &id).await;
    assert_eq!(records[0]["status"], "succeeded");
    assert_eq!(records[0]["response"], json!({"approved": true}));
    assert_eq!(records[0]["duration_ms"], 30_000);
    let again = act(app, &w.owner, &id, "resume", json!({"input": {}})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);

    // AND the next slice finishes the run
    assert_eq!(execute(app, &id, &[]).await, Outcome::Succeeded);
    let run = get_run(app, &w.owner, &id).await;
    assert_eq!(run["status"], "succeeded");
    assert!(run["ended_at"].is_string());
    assert_eq!(run["steps_summary"]["succeeded"], 1);
    assert_eq!(run["steps_summary"]["pending"], 0);
}

/// An OpenAI-compatible answer with `usage`.
fn llm_answer(text: &str, usage: (u64, u64)) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}
    }))
}

#[tokio::test]
async fn a_failed_tool_step_fails_the_run_and_retry_resumes_from_it() {
    // GIVEN a prompt step on a fake LLM, then a tool step on a fake API that answers 500
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Engine").await;
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(llm_answer("Ada wants a refund", (100, 20)))
        .expect(1)
        .named("the model")
        .mount(&llm)
        .await;
    let api = MockServer::start().await;
    let broken = api
        .register_as_scoped(
            Mock::given(method("POST"))
                .and(path("/lookup"))
                .respond_with(ResponseTemplate::new(500).set_body_string("database down")),
        )
        .await;
    let tool = app
        .post(
            "/api/v1/tools",
            Some(&owner),
            json!({
                "project_id": project, "name": "lookup", "kind": "http", "auth_type": "none", "env": "dev",
                "config": {"url": format!("{}/lookup", api.uri()), "method": "POST", "timeout_ms": 2000, "retry_attempts": 0}
            }),
        )
        .await;
    assert_eq!(tool.status, StatusCode::CREATED, "tool: {}", tool.text);
    let tool = id_of(&tool.body);
    let agent = agent(&app, &owner, &project, Some(&llm.uri())).await;
    let flow = released_workflow(
        &app,
        &owner,
        &project,
        json!({"steps": [
            {"id": "draft",  "type": "prompt", "depends_on": [],        "config": {"prompt": "Summarise ticket {{ input.ticket }}"}},
            {"id": "lookup", "type": "tool",   "depends_on": ["draft"], "config": {"tool_id": tool, "input": {"q": "{{ steps.draft.output.text }}"}}}
        ]}),
    )
    .await;
    let id = id_of(&start(&app, &owner, run_body(&flow, &agent)).await);

    // WHEN the run executes
    assert_eq!(
        execute(&app, &id, &[&llm.uri(), &api.uri()]).await,
        Outcome::Failed
    );

    // THEN it failed, naming the tool step; the prompt's cost is counted
    let run = get_run(&app, &owner, &id).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["error_message"].as_str().unwrap_or_default();
    assert!(error.contains("step `lookup` failed"), "{error}");
    assert!(run["ended_at"].is_string());
    // gpt-4o-mini: 100 × 0.15 / 1e6 + 20 × 0.60 / 1e6
    assert_eq!(run["usd_cost"], "0.000027");
    assert_eq!(run["tokens_prompt"], 100);
    assert_eq!(run["tokens_completion"], 20);
    assert_eq!(run["steps_summary"]["succeeded"], 1);
    assert_eq!(run["steps_summary"]["failed"], 1);
    assert_eq!(run["has_human_in_loop"], false);
    assert_eq!(
        broken.received_requests().await.len(),
        1,
        "retry_attempts 0: one call"
    );
    // AND the log says which step failed, at level error
    let logs = app.get(&format!("{}/logs", run_path(&id)), &owner).await;
    assert_eq!(logs.status, StatusCode::OK, "{}", logs.text);
    let lines = logs.body["items"].as_array().cloned().unwrap_or_default();
    assert!(
        lines.iter().any(|l| l["level"] == "error"
            && l["step_id"] == "lookup"
            && l["message"].as_str().is_some_and(|m| m.contains("failed"))),
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| l["at"].is_string()
            && ["info", "warn", "error"].contains(&l["level"].as_str().unwrap_or_default())),
        "{lines:#?}"
    );
    assert_eq!(
        lines[0]["message"], "run started",
        "oldest first: {lines:#?}"
    );

    // WHEN the API is fixed and the run retried
    drop(broken);
    Mock::given(method("POST"))
        .and(path("/lookup"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"found": true})))
        .expect(1)
        .named("the fixed API")
        .mount(&api)
        .await;
    let retried = act(&app, &owner, &id, "retry", json!({})).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!(retried.body["status"], "queued");
    assert_eq!(retried.body["retries"], 1);
    assert_eq!(retried.body["error_message"], Value::Null);
    assert_eq!(retried.body["ended_at"], Value::Null);
    assert_eq!(
        execute(&app, &id, &[&llm.uri(), &api.uri()]).await,
        Outcome::Succeeded
    );

    // THEN it succeeds from the failed step: the prompt did not run again
    let run = get_run(&app, &owner, &id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["retries"], 1);
    assert_eq!(run["error_message"], Value::Null);
    assert_eq!(run["usd_cost"], "0.000027");
    // AND the retaken step moved from failed to succeeded in the run's counts
    assert_eq!(
        run["steps_summary"],
        json!({"total": 2, "pending": 0, "running": 0, "waiting": 0, "succeeded": 2, "failed": 0, "skipped": 0})
    );
    assert_eq!(run["tokens_prompt"], 100);
    let llm_calls = llm.received_requests().await.unwrap_or_default();
    assert_eq!(llm_calls.len(), 1, "the prompt ran once");
    let records = steps(&app, &owner, &id).await;
    assert_eq!(records[0]["name"], "draft");
    assert_eq!(records[0]["attempts"], 1);
    assert_eq!(records[0]["response"]["text"], json!("Ada wants a refund"));
    assert_eq!(records[1]["name"], "lookup");
    assert_eq!(records[1]["status"], "succeeded");
    assert_eq!(records[1]["attempts"], 2);
    assert_eq!(records[1]["response"], json!({"found": true}));
    let calls = api.received_requests().await.unwrap_or_default();
    assert_eq!(calls.len(), 2, "one failed call, then one after the retry");
    let sent: Value = serde_json::from_slice(&calls[1].body).expect("a JSON body");
    assert_eq!(sent, json!({"q": "Ada wants a refund"}));
}

/// A run whose workflow was deleted meanwhile ends `failed`, saying why.
#[tokio::test]
async fn a_run_whose_workflow_was_deleted_fails_saying_why() {
    // GIVEN a queued run whose workflow is then deleted
    let w = world().await;
    let app = &w.app;
    let id = id_of(&start(app, &w.owner, run_body(&w.workflow, &w.agent)).await);
    let deleted = app
        .delete(&format!("/api/v1/workflows/{}", w.workflow), &w.owner)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);

    // WHEN a worker executes it
    let engine = Engine::new(app.state.clone()).expect("the engine builds");
    let outcome = engine
        .execute(stored_run(app, &id).await, &NoHeartbeat)
        .await;

    // THEN the run ends failed, naming the missing workflow version
    let run = get_run(app, &w.owner, &id).await;
    assert!(
        matches!(outcome, Ok(Outcome::Failed)),
        "execute answered {outcome:?}; the run is {} with error {}",
        run["status"],
        run["error_message"]
    );
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("no longer exists")),
        "{run:#}"
    );
}
