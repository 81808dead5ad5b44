//! Event schedules on the real local services: the rule's lifecycle with the schedule, and
//! the trigger queue's messages (read off the queue, handled as the scheduler function
//! does) turned into runs, chains and denials.

use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_eventbridge::types::RuleState;
use axum::http::StatusCode;
use serde_json::{json, Value};
use spark_ops::engine::run::Outcome;
use spark_ops::engine::worker::QueueMessage;
use spark_ops::events::rules::{rule_name, TriggerMessage};
use spark_ops::schedule::FireOutcome;
use spark_ops::scheduler;
use spark_ops::triggers::handle_trigger;
use spark_ops_tests::{spawn_app, TestApp};

use crate::events::{drain, trigger_queue};
use crate::schedules::{runs_of, world};
use uuid::Uuid;

const ORDERS: &str = r#"{"source": ["com.example.shop"], "detail-type": ["order.placed"]}"#;

async fn create(
    app: &TestApp,
    token: &str,
    (project, workflow, agent): (&str, &str, &str),
    expression: &str,
    extra: Value,
) -> spark_ops_tests::Reply {
    let mut body = json!({"project_id": project, "name": "on orders", "type": "event",
                          "expression": expression, "target_workflow_id": workflow,
                          "agent_id": agent, "input": {"region": "eu"}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.post("/api/v1/schedules", Some(token), body).await
}

/// The trigger messages that arrive (see [`drain`]), as the scheduler receives them.
async fn triggers(app: &TestApp, want: usize) -> Vec<QueueMessage> {
    let bodies = drain(app, &trigger_queue(app).await, want).await;
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| QueueMessage {
            message_id: format!("trigger-{i}"),
            receipt_handle: None,
            body: body.to_string(),
        })
        .collect()
}

/// An `allow` event schedule on orders placed; its id.
pub(crate) async fn orders_schedule(
    app: &TestApp,
    token: &str,
    targets: (&str, &str, &str),
) -> String {
    let created = create(
        app,
        token,
        targets,
        ORDERS,
        json!({"overlap_policy": "allow"}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["next_run_at"], Value::Null);
    created.body["id"].as_str().unwrap().to_owned()
}

async fn fires(app: &TestApp, token: &str, id: &str) -> Vec<Value> {
    let reply = app
        .get(&format!("/api/v1/schedules/{id}/fires"), token)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().unwrap().clone()
}

async fn rule_state(app: &TestApp, schedule: Uuid) -> Option<RuleState> {
    let described = app
        .state
        .clients
        .events
        .describe_rule()
        .event_bus_name(&app.state.config.event_bus_name)
        .name(rule_name(schedule))
        .send()
        .await;
    match described {
        Ok(rule) => rule.state,
        Err(err) if err.code() == Some("ResourceNotFoundException") => None,
        Err(err) => panic!("{err:?}"),
    }
}

/// A trigger of `schedule` for an event of `project` at chain depth `depth`, published
/// `depth` seconds into 10:00 (a fire is its event's second).
fn trigger(schedule: &str, project: &str, depth: u32) -> TriggerMessage {
    TriggerMessage {
        schedule_id: schedule.parse().unwrap(),
        event: json!({
            "version": "0", "id": Uuid::now_v7(), "source": "com.example.shop",
            "detail-type": "order.placed", "account": "000000000000",
            "time": format!("2027-01-01T10:00:{depth:02}Z"), "region": "us-east-1", "resources": [],
            "detail": {"order": 7, "project_id": project, "chain_depth": depth},
        }),
    }
}

#[tokio::test]
async fn event_schedules_are_validated_and_store_nothing_when_refused() {
    // GIVEN a project's workflow and agent
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    let targets = (project.as_str(), workflow.as_str(), agent.as_str());

    // WHEN event schedules with bad patterns or a buffering policy are created
    for (expression, extra, field) in [
        ("not json", json!({}), "expression"),
        (
            r#"{"detail": {"project_id": ["x"]}}"#,
            json!({}),
            "expression",
        ),
        // EventBridge itself refuses a condition that is not an array.
        (r#"{"source": "com.example.shop"}"#, json!({}), "expression"),
        (
            ORDERS,
            json!({"overlap_policy": "buffer_one"}),
            "overlap_policy",
        ),
    ] {
        let reply = create(&app, &owner, targets, expression, extra).await;
        // THEN each is a 422 naming the field
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{expression}: {}",
            reply.text
        );
        assert_eq!(reply.body["errors"][0]["field"], field, "{}", reply.text);
    }
    // AND nothing was stored
    let listed = app
        .get(&format!("/api/v1/schedules?project_id={project}"), &owner)
        .await;
    assert_eq!(listed.body["items"], json!([]), "{}", listed.text);
}

#[tokio::test]
async fn a_matching_tenant_event_starts_one_run_and_others_start_nothing() {
    // GIVEN an event schedule on orders placed in project A, and a project B
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    let (other, other_project, _, _) = world(&app).await;
    let id = orders_schedule(&app, &owner, (&project, &workflow, &agent)).await;
    assert_eq!(
        rule_state(&app, id.parse().unwrap()).await,
        Some(RuleState::Enabled)
    );

    // WHEN A publishes a matching and a non-matching event, and B the same matching one
    for (token, project, kind) in [
        (&owner, &project, "order.placed"),
        (&owner, &project, "order.cancelled"),
        (&other, &other_project, "order.placed"),
    ] {
        let body = json!({"project_id": project, "source": "com.example.shop",
                          "detail_type": kind, "detail": {"order": 7}});
        let reply = app.post("/api/v1/events", Some(token), body).await;
        assert!(reply.status.is_success(), "{}", reply.text);
    }
    // THEN one trigger arrives, for A's schedule
    let messages = triggers(&app, 1).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let failed = scheduler::handle_batch(&app.state, messages.clone()).await;
    assert!(failed.is_empty());
    // AND it started one event-triggered run whose input holds the event
    let runs = runs_of(&app, &owner, &project, &id).await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = app
        .get(
            &format!("/api/v1/runs/{}", runs[0]["id"].as_str().unwrap()),
            &owner,
        )
        .await;
    assert_eq!(run.body["trigger"], "event");
    assert_eq!(run.body["chain_depth"], 1);
    assert_eq!(run.body["input"]["region"], "eu");
    let event = &run.body["input"]["event"];
    assert_eq!(event["detail-type"], "order.placed");
    assert_eq!(
        event["detail"],
        json!({"order": 7, "project_id": project, "chain_depth": 0})
    );

    // WHEN the same message is delivered again
    let failed = scheduler::handle_batch(&app.state, messages).await;
    assert!(failed.is_empty());
    // THEN still one run, one fire
    assert_eq!(runs_of(&app, &owner, &project, &id).await.len(), 1);
    let fired = fires(&app, &owner, &id).await;
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert_eq!(fired[0]["outcome"], "started");
    assert_eq!(fired[0]["run_id"], runs[0]["id"]);
}

#[tokio::test]
async fn when_workflow_a_succeeds_its_run_succeeded_event_runs_workflow_b() {
    // GIVEN workflow A, which succeeds on its own, and an event schedule of workflow B
    // chained on A's success
    let app = spawn_app().await;
    let (owner, project, workflow_b, agent) = world(&app).await;
    let definition = json!({"steps": [{"id": "pick", "type": "decision",
                                       "config": {"condition": "true", "then": [], "else": []}}]});
    let workflow_a = app.released_workflow(&owner, &project, definition).await;
    let pattern = json!({"source": ["spark-ops"], "detail-type": ["run.succeeded"],
                         "detail": {"workflow_id": [workflow_a]}});
    let created = create(
        &app,
        &owner,
        (&project, &workflow_b, &agent),
        &pattern.to_string(),
        json!({}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();

    // WHEN a run of A executes to success and the trigger is handled
    let run_a = app.start_plain_run(&owner, &workflow_a, &agent).await;
    assert_eq!(
        app.execute_run(app.state.clone(), run_a).await,
        Outcome::Succeeded
    );
    let messages = triggers(&app, 1).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert!(scheduler::handle_batch(&app.state, messages)
        .await
        .is_empty());

    // THEN one run of B started, one deeper in the chain, its input the success of A
    let runs = runs_of(&app, &owner, &project, &id).await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["workflow_id"], json!(workflow_b));
    assert_eq!(runs[0]["trigger"], "event");
    assert_eq!(runs[0]["chain_depth"], 1);
    let run_b = app
        .get(
            &format!("/api/v1/runs/{}", runs[0]["id"].as_str().unwrap()),
            &owner,
        )
        .await;
    assert_eq!(
        run_b.body["input"]["event"]["detail"]["run_id"],
        json!(run_a)
    );
    assert_eq!(run_b.body["input"]["event"]["detail-type"], "run.succeeded");
}

#[tokio::test]
async fn a_chain_stops_past_depth_ten_and_a_paused_or_deleted_schedule_starts_nothing() {
    // GIVEN an event schedule
    let app = spawn_app().await;
    let (owner, project, workflow, agent) = world(&app).await;
    let id = orders_schedule(&app, &owner, (&project, &workflow, &agent)).await;
    let schedule: Uuid = id.parse().unwrap();

    // WHEN an event of a run at depth 10 triggers it
    let outcome = handle_trigger(&app.state, &trigger(&id, &project, 10)).await;
    // THEN the fire is denied with the reason, and no run starts
    assert_eq!(outcome.unwrap(), Some(FireOutcome::Denied));
    let fired = fires(&app, &owner, &id).await;
    assert_eq!(fired[0]["outcome"], "denied");
    assert!(
        fired[0]["reason"].as_str().unwrap().contains("depth 11"),
        "{fired:#?}"
    );
    assert!(runs_of(&app, &owner, &project, &id).await.is_empty());
    // AND an event at depth 9 starts a run at depth 10
    let outcome = handle_trigger(&app.state, &trigger(&id, &project, 9)).await;
    assert_eq!(outcome.unwrap(), Some(FireOutcome::Started));
    let runs = runs_of(&app, &owner, &project, &id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["chain_depth"], 10);
    // AND an event claiming another project starts nothing
    let stray = handle_trigger(&app.state, &trigger(&id, &Uuid::now_v7().to_string(), 0)).await;
    assert_eq!(stray.unwrap(), None);

    // WHEN it is paused
    let path = format!("/api/v1/schedules/{id}");
    let paused = app.patch(&path, &owner, json!({"status": "paused"})).await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    // THEN its rule is disabled, and a trigger delivered all the same records nothing
    assert_eq!(rule_state(&app, schedule).await, Some(RuleState::Disabled));
    let outcome = handle_trigger(&app.state, &trigger(&id, &project, 0)).await;
    assert_eq!(outcome.unwrap(), None);
    assert_eq!(fires(&app, &owner, &id).await.len(), 2);
    // AND resuming enables it again
    let resumed = app.patch(&path, &owner, json!({"status": "active"})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    assert_eq!(rule_state(&app, schedule).await, Some(RuleState::Enabled));

    // WHEN it is deleted
    let deleted = app.delete(&path, &owner).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    // THEN its rule is gone, and a late trigger is dropped
    assert_eq!(rule_state(&app, schedule).await, None);
    let outcome = handle_trigger(&app.state, &trigger(&id, &project, 0)).await;
    assert_eq!(outcome.unwrap(), None);
}
