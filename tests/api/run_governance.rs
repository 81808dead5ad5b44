//! The governance rules of runs, tried the way someone inside a project would get around
//! them: deciding the approval of a run they started (themselves or through an API key),
//! running a draft version nobody released, and resuming a `human` step with a key.

use axum::http::StatusCode;
use serde_json::{json, Value};
use spark_ops::engine::run::{Engine, Outcome};
use spark_ops_tests::{spawn_app, NoHeartbeat, Reply, TestApp};

/// A workflow a run can wait in: one `human` step.
fn one_human_step() -> Value {
    json!({"steps": [
        {"id": "ask", "type": "human", "depends_on": [], "config": {"instructions": "Check it"}}
    ]})
}

/// A project with an owner, an admin, an agent and a released workflow.
struct World {
    app: TestApp,
    owner: String,
    admin: String,
    project: String,
    agent: String,
    workflow: String,
}

async fn world() -> World {
    let app = spawn_app().await;
    let owner = app.user("Owner").await;
    let admin = app.user("Admin").await;
    let project = app.project(&owner, "Governed").await;
    app.add_member(&owner, &project, &admin, "admin").await;
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    let workflow = app
        .released_workflow(&owner, &project, one_human_step())
        .await;
    World {
        app,
        owner,
        admin,
        project,
        agent,
        workflow,
    }
}

impl World {
    fn body(&self) -> Value {
        json!({"workflow_id": self.workflow, "agent_id": self.agent, "env": "dev"})
    }

    fn gated(&self) -> Value {
        let mut body = self.body();
        body["require_approval"] = json!(true);
        body
    }

    /// Starts a run as `token`; returns its id.
    async fn start(&self, token: &str, body: Value) -> String {
        self.app.start_run(token, body).await.to_string()
    }

    async fn act(&self, token: &str, run: &str, action: &str, body: Value) -> Reply {
        self.app
            .post(&format!("/api/v1/runs/{run}/{action}"), Some(token), body)
            .await
    }

    async fn run(&self, run: &str) -> Value {
        self.app
            .get(&format!("/api/v1/runs/{run}"), &self.owner)
            .await
            .body
    }

    /// Creates an API key of `role` as `token`; returns the key.
    async fn key(&self, token: &str, role: &str) -> String {
        let reply = self
            .app
            .post(
                &format!("/api/v1/projects/{}/api-keys", self.project),
                Some(token),
                json!({"name": "automation", "role": role}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body["key"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn whoever_started_a_run_can_neither_approve_nor_reject_it() {
    // GIVEN a run the owner started that waits for approval
    let w = world().await;
    let id = w.start(&w.owner, w.gated()).await;

    // WHEN the owner approves or rejects it
    let approve = w.act(&w.owner, &id, "approve", json!({})).await;
    let reject = w
        .act(&w.owner, &id, "reject", json!({"reason": "mine"}))
        .await;

    // THEN both are refused, saying why, and the run still waits
    for reply in [&approve, &reject] {
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap()
                .contains("settings.approvals.allow_self_approval"),
            "{}",
            reply.text
        );
    }
    let run = w.run(&id).await;
    assert_eq!(run["status"], "awaiting_approval");
    assert_eq!(run["version"], 1);

    // WHEN another admin approves it, THEN it is queued
    let reply = w.act(&w.admin, &id, "approve", json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "queued");
}

#[tokio::test]
async fn an_api_key_cannot_launder_a_self_approval() {
    // GIVEN an admin's key (keys cannot create keys, so a person is behind every key)
    let w = world().await;
    let key = w.key(&w.admin, "admin").await;

    // WHEN the admin starts a run with the key and decides it with their token, or the
    // other way round, or the key decides a run it started
    let by_key = w.start(&key, w.gated()).await;
    let by_admin = w.start(&w.admin, w.gated()).await;
    let attempts = [
        (&w.admin, &by_key, "approve"),
        (&key, &by_admin, "approve"),
        (&key, &by_key, "reject"),
    ];

    // THEN each is refused, and every run still waits
    for (token, run, action) in attempts {
        let body = match action {
            "reject" => json!({"reason": "laundered"}),
            _ => json!({"comment": "laundered"}),
        };
        let reply = w.act(token, run, action, body).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{action} {run}: {}",
            reply.text
        );
    }
    for run in [&by_key, &by_admin] {
        assert_eq!(w.run(run).await["status"], "awaiting_approval");
    }

    // AND someone else decides them
    for run in [&by_key, &by_admin] {
        let reply = w.act(&w.owner, run, "approve", json!({})).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
}

#[tokio::test]
async fn a_project_may_let_whoever_started_a_run_decide_it() {
    // GIVEN a project that allows self-approval
    let w = world().await;
    let path = format!("/api/v1/projects/{}", w.project);
    let invalid = w
        .app
        .patch(
            &path,
            &w.owner,
            json!({"settings": {"approvals": {"allow_self_approval": "yes"}}}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        invalid.error_fields(),
        vec!["settings.approvals.allow_self_approval"]
    );
    let reply = w
        .app
        .patch(
            &path,
            &w.owner,
            json!({"settings": {"approvals": {"allow_self_approval": true}}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    // WHEN the owner approves a run they started, THEN it is queued
    let id = w.start(&w.owner, w.gated()).await;
    let reply = w.act(&w.owner, &id, "approve", json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "queued");
}

#[tokio::test]
async fn runs_use_released_versions_unless_the_request_allows_a_draft() {
    // GIVEN a workflow whose version 1 is released and version 2 is a draft
    let w = world().await;
    let versions = format!("/api/v1/workflows/{}/versions", w.workflow);
    let draft = w.app.post(&versions, Some(&w.owner), json!({})).await;
    assert_eq!(draft.status, StatusCode::CREATED, "{}", draft.text);
    assert_eq!(draft.body["version"], 2);
    let developer = w.app.user("Developer").await;
    w.app
        .add_member(&w.owner, &w.project, &developer, "developer")
        .await;
    let viewer = w.app.user("Viewer").await;
    w.app
        .add_member(&w.owner, &w.project, &viewer, "viewer")
        .await;
    let mut draft_run = w.body();
    draft_run["version"] = json!(2);

    // WHEN a developer starts the draft without saying so, THEN 422 names `version`
    let reply = w
        .app
        .post("/api/v1/runs", Some(&developer), draft_run.clone())
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    assert_eq!(reply.error_fields(), vec!["version"]);
    assert!(reply.text.contains("allow_draft"), "{}", reply.text);

    // WHEN `allow_draft` is not a boolean, THEN 422 names it
    let mut mistyped = draft_run.clone();
    mistyped["allow_draft"] = json!("yes");
    let reply = w.app.post("/api/v1/runs", Some(&developer), mistyped).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["allow_draft"]);

    // WHEN a viewer allows the draft, THEN 403
    draft_run["allow_draft"] = json!(true);
    let reply = w
        .app
        .post("/api/v1/runs", Some(&viewer), draft_run.clone())
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);

    // AND nothing ran
    let listed = w
        .app
        .get(&format!("/api/v1/runs?project_id={}", w.project), &w.owner)
        .await;
    assert_eq!(listed.body["items"], json!([]));

    // WHEN a developer allows the draft, THEN it runs
    let reply = w
        .app
        .post("/api/v1/runs", Some(&developer), draft_run)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["workflow_version"], 2);

    // AND without a version the released one runs, `allow_draft` or not
    let mut current = w.body();
    current["allow_draft"] = json!(true);
    let reply = w.app.post("/api/v1/runs", Some(&developer), current).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["workflow_version"], 1);
}

#[tokio::test]
async fn only_people_resume_human_steps() {
    // GIVEN a run waiting in its human step, and a developer key of the project
    let w = world().await;
    let id = w.start(&w.owner, w.body()).await;
    let run = w
        .app
        .state
        .store
        .get_run(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let engine = Engine::new(w.app.state.clone()).expect("the engine builds");
    let outcome = engine.execute(run, &NoHeartbeat).await.unwrap();
    assert_eq!(outcome, Outcome::AwaitingInput);
    let key = w.key(&w.owner, "developer").await;

    // WHEN the key resumes it, THEN 403, and the run still waits
    let reply = w
        .act(&key, &id, "resume", json!({"input": {"approved": true}}))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    assert_eq!(w.run(&id).await["status"], "awaiting_input");

    // WHEN a person resumes it, THEN it runs on
    let reply = w
        .act(
            &w.owner,
            &id,
            "resume",
            json!({"input": {"approved": true}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], "running");
}
