//! Deleting a project winds it down: its unfinished runs are cancelled and their executions
//! stopped, its API keys stop working and its secrets are scheduled for deletion; what one
//! request leaves, the sweeper finishes; and a worker ends a run whose project is gone.

use axum::http::StatusCode;
use serde_json::json;
use spark_ops::engine::run::Outcome;
use spark_ops::engine::sweeper;
use spark_ops::engine::teardown::RUNS_PER_PASS;
use spark_ops::run::{Run, RunStatus};
use spark_ops::store::secrets::path;
use spark_ops_tests::{spawn_app, NoHeartbeat, TestApp};
use uuid::Uuid;

/// A project with an agent, an apikey tool holding credentials and a released one-`human`-step
/// workflow; returns `(owner, project, tool id, run request body)`.
async fn world(app: &TestApp) -> (String, String, String, serde_json::Value) {
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Doomed").await;
    let tool = app
        .post(
            "/api/v1/tools",
            Some(&owner),
            json!({"project_id": project, "name": "crm", "kind": "http", "auth_type": "apikey",
                   "env": "dev", "config": {"url": "https://crm.example.com/x", "method": "GET",
                   "headers": {"Authorization": "Bearer {{ credentials.api_key }}"}},
                   "credentials": {"api_key": format!("key-{}", Uuid::now_v7().simple())}}),
        )
        .await;
    assert_eq!(tool.status, StatusCode::CREATED, "{}", tool.text);
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    let definition = json!({"steps": [
        {"id": "ask", "type": "human", "config": {"instructions": "Check it"}}
    ]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let body = json!({"workflow_id": workflow, "agent_id": agent, "env": "dev"});
    let tool = tool.body["id"].as_str().unwrap().to_owned();
    (owner, project, tool, body)
}

async fn stored(app: &TestApp, id: Uuid) -> Run {
    app.state.store.get_run(id).await.unwrap().unwrap()
}

/// How many deleted projects wait for the rest of their teardown.
async fn teardowns_pending(app: &TestApp) -> usize {
    app.state
        .store
        .projects_to_tear_down(10)
        .await
        .unwrap()
        .len()
}

/// Whether the secret at `path` is scheduled for deletion.
async fn scheduled_for_deletion(app: &TestApp, path: &str) -> bool {
    app.state
        .clients
        .secrets
        .describe_secret()
        .secret_id(app.state.secrets.name(path))
        .send()
        .await
        .map(|d| d.deleted_date().is_some())
        .unwrap_or(false)
}

#[tokio::test]
async fn deleting_a_project_cancels_its_runs_stops_their_lifecycles_keys_and_secrets() {
    // GIVEN a project with a run waiting for approval, a running run, an API key and a tool
    // holding credentials
    let app = spawn_app().await;
    let (owner, project, tool, body) = world(&app).await;
    let mut gated = body.clone();
    gated["require_approval"] = json!(true);
    let waiting = app.start_run(&owner, gated).await;
    let running = app.start_run(&owner, body).await;
    app.run_to_running(running).await;
    let key = app
        .post(
            &format!("/api/v1/projects/{project}/api-keys"),
            Some(&owner),
            json!({"name": "ci", "role": "viewer"}),
        )
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let key_id = key.body["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    let tool_id = tool.parse::<Uuid>().unwrap();
    assert!(!scheduled_for_deletion(&app, &path::tool_credentials(tool_id)).await);

    // WHEN the owner deletes the project
    let deleted = app
        .delete(&format!("/api/v1/projects/{project}"), &owner)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);

    // THEN both runs are cancelled in the owner's name (their executions are stopped too,
    // which LocalStack acknowledges but does not carry out for a task waiting on a token)
    for id in [waiting, running] {
        let run = stored(&app, id).await;
        assert_eq!(run.status, RunStatus::Cancelled, "run {id}");
    }
    // AND the key is revoked, the tool's credentials are scheduled for deletion
    let project_id = project.parse::<Uuid>().unwrap();
    let keys = app
        .state
        .store
        .list_api_keys(project_id, 10, None)
        .await
        .unwrap();
    assert!(keys
        .items
        .iter()
        .all(|k| k.id != key_id || k.revoked_at.is_some()));
    assert!(scheduled_for_deletion(&app, &path::tool_credentials(tool_id)).await);
    // AND the teardown is finished: the sweeper has nothing left to do for it
    assert_eq!(teardowns_pending(&app).await, 0);
}

#[tokio::test]
async fn runs_one_deletion_cannot_cancel_are_cancelled_by_the_sweeper() {
    // GIVEN a project with more unfinished runs than one teardown pass cancels
    let app = spawn_app().await;
    let (owner, project, _, body) = world(&app).await;
    let first = stored(&app, app.start_run(&owner, body).await).await;
    let mut ids = vec![first.id];
    for _ in 0..RUNS_PER_PASS + 2 {
        let copy = Run {
            id: Uuid::now_v7(),
            ..first.clone()
        };
        app.state.store.create_run(&copy, None).await.unwrap();
        ids.push(copy.id);
    }

    // WHEN the project is deleted
    let deleted = app
        .delete(&format!("/api/v1/projects/{project}"), &owner)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);

    // THEN one pass cancelled as many as it may, and the project waits for the sweeper
    let mut cancelled = 0;
    for id in &ids {
        if stored(&app, *id).await.status == RunStatus::Cancelled {
            cancelled += 1;
        }
    }
    assert_eq!(cancelled, RUNS_PER_PASS);
    assert_eq!(teardowns_pending(&app).await, 1);

    // WHEN the sweeper runs
    let report = sweeper::sweep(&app.state).await.unwrap();

    // THEN every run is cancelled and the teardown is over
    assert_eq!(report.torn_down, 1, "{report:?}");
    for id in &ids {
        assert_eq!(stored(&app, *id).await.status, RunStatus::Cancelled);
    }
    assert_eq!(teardowns_pending(&app).await, 0);
}

#[tokio::test]
async fn a_worker_ends_a_run_whose_project_was_deleted() {
    // GIVEN a running run whose project was deleted before its teardown reached the run
    let app = spawn_app().await;
    let (owner, project, _, body) = world(&app).await;
    let id = app.start_run(&owner, body).await;
    let run = app.run_to_running(id).await;
    let project = app
        .state
        .store
        .get_project(project.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    app.state
        .store
        .delete_project(&project, project.owner_user_id, app.state.clock.now())
        .await
        .unwrap();

    // WHEN a worker starts a slice of the run
    let outcome = app
        .engine_allowing(&[])
        .execute(run, &NoHeartbeat)
        .await
        .unwrap();

    // THEN it ends the run as cancelled, saying why, and runs no step
    assert_eq!(outcome, Outcome::Cancelled);
    let run = stored(&app, id).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(
        run.error_message.as_deref(),
        Some("the run's project was deleted")
    );
    assert!(app.state.store.all_steps(id).await.unwrap().is_empty());
}
