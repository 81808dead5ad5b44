//! Schedules on the real local services: the API, the DST preview, and firing driven by
//! ticks at the app's manual clock (never by waiting for EventBridge).

use axum::http::StatusCode;
use chrono::{DateTime, Duration, Timelike, Utc};
use serde_json::{json, Value};
use spark_ops::engine::worker::QueueMessage;
use spark_ops::schedule::{FireOutcome, ScheduleStatus};
use spark_ops::scheduler::{self, TickReport};
use spark_ops_tests::{spawn_app, TestApp};

/// A project with an agent and a released one-step workflow; `(owner token, project,
/// workflow, agent)`.
pub(crate) async fn world(app: &TestApp) -> (String, String, String, String) {
    let owner = app.user("Owner").await;
    let project = app.project(&owner, "Schedules").await;
    let agent = app.agent(&owner, &project, "gpt-4o-mini").await;
    let definition = json!({"steps": [
        {"id": "ask", "type": "human", "config": {"instructions": "Check it"}}
    ]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    (owner, project, workflow, agent)
}

/// Creates a schedule of `extra` fields over an every-minute cron; returns its body.
async fn schedule(
    app: &TestApp,
    token: &str,
    (project, workflow, agent): (&str, &str, &str),
    extra: Value,
) -> Value {
    let mut body = json!({"project_id": project, "name": "every minute", "type": "cron",
                          "expression": "* * * * *", "target_workflow_id": workflow,
                          "agent_id": agent, "input": {"region": "eu"}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let reply = app.post("/api/v1/schedules", Some(token), body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body
}

/// Moves the clock to `seconds` past the schedule's next slot.
fn past_next_slot(app: &TestApp, schedule: &Value, seconds: i64) {
    let next: DateTime<Utc> = schedule["next_run_at"].as_str().unwrap().parse().unwrap();
    let now = app.state.clock.now();
    app.clock.advance(next - now + Duration::seconds(seconds));
}

async fn tick(app: &TestApp) -> TickReport {
    scheduler::tick(&app.state).await.expect("the tick runs")
}

/// Takes every fire message off the fire queue.
async fn fire_messages(app: &TestApp) -> Vec<QueueMessage> {
    let queue = app.state.config.fire_queue_url.clone().unwrap();
    let mut messages = Vec::new();
    loop {
        let out = app
            .state
            .clients
            .sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let received = out.messages.unwrap_or_default();
        if received.is_empty() {
            return messages;
        }
        for m in received {
            app.state
                .clients
                .sqs
                .delete_message()
                .queue_url(&queue)
                .set_receipt_handle(m.receipt_handle.clone())
                .send()
                .await
                .unwrap();
            messages.push(QueueMessage {
                message_id: m.message_id.unwrap_or_default(),
                receipt_handle: None,
                body: m.body.unwrap_or_default(),
            });
        }
    }
}

/// Starts every queued fire; the number of fire messages handled.
async fn start_fires(app: &TestApp) -> usize {
    let messages = fire_messages(app).await;
    let count = messages.len();
    assert!(scheduler::handle_batch(&app.state, messages)
        .await
        .is_empty());
    count
}

async fn fires(app: &TestApp, token: &str, id: &str) -> Vec<(String, String)> {
    let reply = app
        .get(&format!("/api/v1/schedules/{id}/fires?limit=200"), token)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["nominal_time"].as_str().unwrap().to_owned(),
                f["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The runs of the schedule `id`.
pub(crate) async fn runs_of(app: &TestApp, token: &str, project: &str, id: &str) -> Vec<Value> {
    let reply = app
        .get(
            &format!("/api/v1/runs?project_id={project}&schedule_id={id}"),
            token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn schedules_are_validated_scoped_and_written_by_developers_only() {
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    // GIVEN another project's workflow, and a viewer of this one
    let other = app.project(&owner, "Other").await;
    let foreign = app
        .released_workflow(
            &owner,
            &other,
            json!({"steps": [
            {"id": "ask", "type": "human", "config": {"instructions": "x"}}]}),
        )
        .await;
    let viewer = app.user("Viewer").await;
    app.add_member(&owner, &project, &viewer, "viewer").await;
    // WHEN a schedule names an unknown zone, a bad expression and a foreign workflow
    let bad = app
        .post(
            "/api/v1/schedules",
            Some(&owner),
            json!({"project_id": project, "name": "bad", "type": "cron",
                   "expression": "61 * * * *", "timezone": "Mars/Olympus",
                   "target_workflow_id": foreign, "agent_id": agent,
                   "catchup_window_seconds": 604_801, "input": [1]}),
        )
        .await;
    // THEN each is named in one 422
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    let mut fields = bad.error_fields();
    fields.sort();
    assert_eq!(
        fields,
        [
            "catchup_window_seconds",
            "input",
            "target_workflow_id",
            "timezone"
        ]
    );
    let bad_cron = app
        .post(
            "/api/v1/schedules",
            Some(&owner),
            json!({"project_id": project, "name": "bad", "type": "cron",
                   "expression": "* * *", "target_workflow_id": workflow, "agent_id": agent}),
        )
        .await;
    assert_eq!(bad_cron.error_fields(), ["expression"]);
    let webhook = app
        .post(
            "/api/v1/schedules",
            Some(&owner),
            json!({"project_id": project, "name": "hook", "type": "webhook",
                   "expression": "* * * * *", "target_workflow_id": workflow, "agent_id": agent}),
        )
        .await;
    assert_eq!(webhook.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(webhook.error_fields(), ["expression"]);
    // AND a viewer reads but does not write
    let created = schedule(&app, &owner, (&project, &workflow, &agent), json!({})).await;
    assert_eq!(created["timezone"], "UTC");
    assert_eq!(created["overlap_policy"], "skip");
    assert_eq!(created["catchup_window_seconds"], 300);
    let id = created["id"].as_str().unwrap();
    let path = format!("/api/v1/schedules/{id}");
    assert_eq!(app.get(&path, &viewer).await.status, StatusCode::OK);
    let denied = app
        .post(
            "/api/v1/schedules",
            Some(&viewer),
            json!({"project_id": project,
            "name": "v", "type": "cron", "expression": "* * * * *",
            "target_workflow_id": workflow, "agent_id": agent}),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.patch(&path, &viewer, json!({"status": "paused"}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // AND lists filter by status; pausing clears the next slot, resuming finds one
    let paused = app
        .patch(&path, &owner, json!({"status": "paused", "version": 1}))
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    assert_eq!(paused.body["next_run_at"], Value::Null);
    let listed = app
        .get(
            &format!("/api/v1/schedules?project_id={project}&status=paused"),
            &viewer,
        )
        .await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    let active = app
        .get(
            &format!("/api/v1/schedules?project_id={project}&status=active"),
            &viewer,
        )
        .await;
    assert!(active.body["items"].as_array().unwrap().is_empty());
    let stale = app
        .patch(&path, &owner, json!({"status": "active", "version": 1}))
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    let resumed = app.patch(&path, &owner, json!({"status": "active"})).await;
    assert!(resumed.body["next_run_at"].is_string(), "{}", resumed.text);
    assert_eq!(
        app.delete(&path, &owner).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&path, &owner).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_preview_fires_a_skipped_local_time_once_after_the_gap_with_a_note() {
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    let created = schedule(
        &app,
        &owner,
        (&project, &workflow, &agent),
        json!({"expression": "30 2 * * *", "timezone": "America/New_York"}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let preview = app
        .get(
            &format!("/api/v1/schedules/{id}/preview?from=2027-03-13T00:00:00Z&count=3"),
            &owner,
        )
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.text);
    let fires = preview.body["fires"].as_array().unwrap();
    let at: Vec<&str> = fires.iter().map(|f| f["at"].as_str().unwrap()).collect();
    assert_eq!(
        at,
        [
            "2027-03-13T07:30:00.000Z",
            "2027-03-14T07:00:00.000Z",
            "2027-03-15T06:30:00.000Z"
        ]
    );
    assert_eq!(fires[1]["local"], "2027-03-14T03:00:00-04:00");
    assert!(fires[1]["note"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    assert_eq!(fires[0]["note"], Value::Null);
    let fall_back = app
        .get(
            &format!("/api/v1/schedules/{id}/preview?from=2027-11-06T12:00:00Z&count=2"),
            &owner,
        )
        .await;
    let at: Vec<&str> = fall_back.body["fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["at"].as_str().unwrap())
        .collect();
    assert_eq!(at, ["2027-11-07T07:30:00.000Z", "2027-11-08T07:30:00.000Z"]);
    let bad = app
        .get(&format!("/api/v1/schedules/{id}/preview?count=101"), &owner)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn duplicate_ticks_and_concurrent_schedulers_start_one_run_per_slot() {
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    let created = schedule(
        &app,
        &owner,
        (&project, &workflow, &agent),
        json!({"overlap_policy": "allow"}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    // GIVEN the slot is due
    past_next_slot(&app, &created, 5);
    // WHEN two schedulers tick at once, then a duplicate tick arrives
    let (a, b) = tokio::join!(tick(&app), tick(&app));
    let again = tick(&app).await;
    // THEN one claimed it and one fire was sent
    assert_eq!(
        a.claimed + b.claimed + again.claimed,
        1,
        "{a:?} {b:?} {again:?}"
    );
    assert_eq!(a.enqueued + b.enqueued + again.enqueued, 1);
    // AND the fire delivered twice starts one run
    let messages = fire_messages(&app).await;
    assert_eq!(messages.len(), 1);
    let twice = vec![messages[0].clone(), messages[0].clone()];
    assert!(scheduler::handle_batch(&app.state, twice.clone())
        .await
        .is_empty());
    assert!(scheduler::handle_batch(&app.state, twice).await.is_empty());
    let runs = runs_of(&app, &owner, &project, id).await;
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["trigger"], "schedule");
    assert_eq!(run["schedule_id"], id);
    let nominal = run["nominal_time"].as_str().unwrap();
    assert_eq!(run["input"]["region"], "eu");
    assert_eq!(
        run["input"]["event"],
        json!({"schedule_id": id, "nominal_time": nominal})
    );
    assert_eq!(
        fires(&app, &owner, id).await,
        [(nominal.to_owned(), "started".to_owned())]
    );
    let stored = app.get(&format!("/api/v1/schedules/{id}"), &owner).await;
    assert_eq!(stored.body["last_run_id"], run["id"]);
    // AND a manual trigger starts a run now, recorded as manual
    let manual = app
        .post(
            &format!("/api/v1/schedules/{id}/trigger"),
            Some(&owner),
            json!({}),
        )
        .await;
    assert_eq!(manual.status, StatusCode::CREATED, "{}", manual.text);
    assert_eq!(manual.body["trigger"], "manual");
    assert_eq!(runs_of(&app, &owner, &project, id).await.len(), 2);
}

#[tokio::test]
async fn after_an_outage_old_slots_are_missed_and_the_rest_collapse_into_one_run() {
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    let created = schedule(&app, &owner, (&project, &workflow, &agent), json!({})).await;
    let id = created["id"].as_str().unwrap();
    // GIVEN the scheduler was down for ten minutes past the first slot
    past_next_slot(&app, &created, 10 * 60 + 30);
    // WHEN it ticks again
    let report = tick(&app).await;
    // THEN one catch-up fire starts, of the latest slot
    assert_eq!((report.claimed, report.enqueued), (1, 1));
    assert_eq!(start_fires(&app).await, 1);
    let recorded = fires(&app, &owner, id).await;
    let count = |outcome: &str| recorded.iter().filter(|(_, o)| o == outcome).count();
    // 300 s window: slots 0–5 are older, 6–10 inside; 10 starts and 6–9 collapse.
    assert_eq!(count("skipped_missed"), 6, "{recorded:?}");
    assert_eq!(count("collapsed"), 4, "{recorded:?}");
    assert_eq!(count("started"), 1);
    assert_eq!(recorded[0].1, "started", "newest first");
    assert_eq!(runs_of(&app, &owner, &project, id).await.len(), 1);
    // AND the next tick within the minute finds nothing due
    assert_eq!(tick(&app).await.due, 0);
}

/// A schedule of `policy` whose first fire started a run that is still queued; the clock
/// is then past the second slot. Returns `(owner, project, schedule id, first run id)`.
async fn overlapping(app: &TestApp, policy: &str) -> (String, String, String, String) {
    let (owner, project, workflow, agent) = world(app).await;
    let created = schedule(
        app,
        &owner,
        (&project, &workflow, &agent),
        json!({"overlap_policy": policy}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    past_next_slot(app, &created, 1);
    assert_eq!(tick(app).await.enqueued, 1);
    assert_eq!(start_fires(app).await, 1);
    let first = runs_of(app, &owner, &project, &id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.clock.advance(Duration::seconds(60));
    (owner, project, id, first)
}

#[tokio::test]
async fn skip_records_a_fire_while_the_previous_run_is_unfinished() {
    let app = spawn_app().await;
    let (owner, project, id, _) = overlapping(&app, "skip").await;
    let report = tick(&app).await;
    assert_eq!((report.claimed, report.enqueued), (1, 0));
    let recorded = fires(&app, &owner, &id).await;
    assert_eq!(recorded[0].1, "skipped_overlap");
    assert_eq!(runs_of(&app, &owner, &project, &id).await.len(), 1);
}

#[tokio::test]
async fn allow_starts_a_fire_while_the_previous_run_is_unfinished() {
    let app = spawn_app().await;
    let (owner, project, id, _) = overlapping(&app, "allow").await;
    assert_eq!(tick(&app).await.enqueued, 1);
    assert_eq!(start_fires(&app).await, 1);
    assert_eq!(runs_of(&app, &owner, &project, &id).await.len(), 2);
}

#[tokio::test]
async fn buffer_one_keeps_one_fire_and_starts_it_when_the_previous_run_ends() {
    let app = spawn_app().await;
    let (owner, project, id, first) = overlapping(&app, "buffer_one").await;
    // WHEN the second slot comes while the first run is queued
    assert_eq!(tick(&app).await.enqueued, 0);
    assert_eq!(fires(&app, &owner, &id).await[0].1, "buffered");
    // AND a third, still queued: skipped, one buffered at most
    app.clock.advance(Duration::seconds(60));
    assert_eq!(tick(&app).await.enqueued, 0);
    let recorded = fires(&app, &owner, &id).await;
    assert_eq!(recorded[0].1, "skipped_overlap");
    assert_eq!(recorded[1].1, "buffered");
    // AND a look while nothing changed writes nothing
    app.ddb_requests.reset();
    let idle = tick(&app).await;
    assert_eq!((idle.idle, idle.claimed), (1, 0));
    assert!(
        !app.ddb_requests
            .operations()
            .iter()
            .any(|op| op == "TransactWriteItems"),
        "{:?}",
        app.ddb_requests.operations()
    );
    // WHEN the first run ends
    let cancelled = app
        .patch(&format!("/api/v1/runs/{first}/cancel"), &owner, json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    // THEN the next tick starts the buffered fire
    assert_eq!(tick(&app).await.enqueued, 1);
    assert_eq!(start_fires(&app).await, 1);
    let runs = runs_of(&app, &owner, &project, &id).await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["nominal_time"].as_str().unwrap(), recorded[1].0);
}

#[tokio::test]
async fn a_paused_schedule_records_nothing_and_resuming_does_not_replay_the_pause() {
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    let created = schedule(&app, &owner, (&project, &workflow, &agent), json!({})).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/api/v1/schedules/{id}");
    app.patch(&path, &owner, json!({"status": "paused"})).await;
    // WHEN ten slots pass while paused
    past_next_slot(&app, &created, 10 * 60);
    assert_eq!(tick(&app).await.due, 0);
    // THEN resuming starts from the next slot after now
    let resumed = app.patch(&path, &owner, json!({"status": "active"})).await;
    let next: DateTime<Utc> = resumed.body["next_run_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = app.state.clock.now();
    assert!(
        next > now && next - now <= Duration::seconds(60),
        "{next} {now}"
    );
    assert_eq!(next.second(), 0);
    assert_eq!(tick(&app).await.due, 0);
    assert!(fires(&app, &owner, id).await.is_empty());
    assert!(runs_of(&app, &owner, &project, id).await.is_empty());
}

#[tokio::test]
async fn a_fire_whose_owner_may_no_longer_start_runs_is_denied_and_recorded() {
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    // GIVEN a schedule created by a developer, who is then made a viewer
    let developer = app.user("Developer").await;
    let developer_id = app
        .add_member(&owner, &project, &developer, "developer")
        .await;
    let created = schedule(&app, &developer, (&project, &workflow, &agent), json!({})).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["owner_user_id"], developer_id.as_str());
    let demoted = app
        .patch(
            &format!("/api/v1/projects/{project}/members/{developer_id}"),
            &owner,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(demoted.status, StatusCode::OK, "{}", demoted.text);
    // WHEN the schedule fires
    past_next_slot(&app, &created, 1);
    assert_eq!(tick(&app).await.enqueued, 1);
    assert_eq!(start_fires(&app).await, 1);
    // THEN nothing starts and the fire says why
    assert!(runs_of(&app, &owner, &project, id).await.is_empty());
    let reply = app
        .get(&format!("/api/v1/schedules/{id}/fires"), &owner)
        .await;
    let fire = &reply.body["items"][0];
    assert_eq!(fire["outcome"], "denied");
    assert!(
        fire["reason"].as_str().unwrap().contains("viewer"),
        "{fire}"
    );
}

#[tokio::test]
async fn a_fire_of_a_deleted_project_is_denied_and_pauses_its_schedule() {
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    let created = schedule(&app, &owner, (&project, &workflow, &agent), json!({})).await;
    let id = uuid::Uuid::parse_str(created["id"].as_str().unwrap()).unwrap();
    // GIVEN a fire claimed just before its project was deleted
    past_next_slot(&app, &created, 1);
    assert_eq!(tick(&app).await.enqueued, 1);
    let deleted = app
        .delete(&format!("/api/v1/projects/{project}"), &owner)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    // WHEN it is started
    assert_eq!(start_fires(&app).await, 1);
    // THEN it is denied, and the schedule stops instead of being denied every slot
    let fires = app.state.store.list_fires(id, 10, None).await.unwrap();
    assert_eq!(fires.items[0].outcome, FireOutcome::Denied);
    let stored = app.state.store.get_schedule(id).await.unwrap().unwrap();
    assert_eq!(stored.status, ScheduleStatus::Paused);
    assert_eq!(stored.due_at, None);
    app.clock.advance(Duration::minutes(5));
    assert_eq!(tick(&app).await.due, 0);
}
