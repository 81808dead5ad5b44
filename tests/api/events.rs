//! The event bus on the local services: the `run.*` events runs publish, tenants' events,
//! and the rules behind event schedules (EventBridge's own matching, scoped to a project).

use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_sdk_eventbridge::types::Target;
use aws_sdk_sqs::types::QueueAttributeName;
use axum::http::StatusCode;
use serde_json::{json, Value};
use spark_ops::engine::run::Outcome;
use spark_ops::events::chain;
use spark_ops::events::rules::{self, EventPattern, RuleError, TriggerMessage};
use spark_ops_tests::{
    capture_logs, local_sdk_config, spawn_app, spawn_app_with, spawn_app_with_default_llm, TestApp,
};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A queue of this test's own; returns its URL and ARN.
async fn queue(app: &TestApp, name: &str) -> (String, String) {
    let sqs = &app.state.clients.sqs;
    let url = sqs
        .create_queue()
        .queue_name(format!("{}-{name}", app.prefix))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
    (url, arn)
}

pub(crate) async fn trigger_queue(app: &TestApp) -> String {
    app.queue_url(&app.state.config.trigger_queue_name()).await
}

/// Reads `queue` until `want` messages arrived (20 s at most), then once more to catch any
/// extra one; returns every body.
pub(crate) async fn drain(app: &TestApp, queue: &str, want: usize) -> Vec<Value> {
    let sqs = &app.state.clients.sqs;
    let mut bodies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut extra_look = false;
    loop {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in out.messages.unwrap_or_default() {
            bodies.push(serde_json::from_str(message.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        if extra_look || Instant::now() > deadline {
            return bodies;
        }
        extra_look = bodies.len() >= want;
    }
}

/// Puts an enabled rule of a new event schedule of `project` matching `pattern`; returns
/// the schedule's id.
async fn schedule_rule(app: &TestApp, project: &str, pattern: &str) -> Uuid {
    let schedule = Uuid::now_v7();
    let pattern = EventPattern::parse(pattern).unwrap();
    rules::put_rule(
        &app.state,
        schedule,
        project.parse().unwrap(),
        &pattern,
        true,
    )
    .await
    .unwrap();
    schedule
}

/// A project of a fresh owner; returns `(owner token, project id)`.
async fn owned_project(app: &TestApp, name: &str) -> (String, String) {
    let owner = app.user("Owner").await;
    let project = app.project(&owner, name).await;
    (owner, project)
}

async fn publish(app: &TestApp, token: &str, body: Value) -> spark_ops_tests::Reply {
    app.post("/api/v1/events", Some(token), body).await
}

fn shop_event(project: &str, detail: Value) -> Value {
    json!({"project_id": project, "source": "com.example.shop", "detail_type": "order.placed", "detail": detail})
}

#[tokio::test]
async fn a_run_publishes_its_start_and_success_and_chains_to_a_rule_of_its_project() {
    // GIVEN a deployment whose default model costs 2 and 8 USD per million tokens
    let answer = json!({"choices": [{"message": {"content": "Hi"}}],
                        "usage": {"prompt_tokens": 1000, "completion_tokens": 500}});
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(&llm)
        .await;
    let app = spawn_app_with_default_llm(&llm.uri()).await;
    let (owner, project) = owned_project(&app, "Chains").await;
    let prices = json!({"settings": {"model_prices": {"m": {"input_per_million": "2", "output_per_million": "8"}}}});
    let patched = app
        .patch(&format!("/api/v1/projects/{project}"), &owner, prices)
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let agent = app.agent(&owner, &project, "m").await;
    let definition =
        json!({"steps": [{"id": "greet", "type": "prompt", "config": {"prompt": "Hi"}}]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    // AND a rule sending every Spark-Ops event to a probe queue
    let (probe, probe_arn) = queue(&app, "probe").await;
    let events = &app.state.clients.events;
    let bus = &app.state.config.event_bus_name;
    events
        .put_rule()
        .event_bus_name(bus)
        .name("probe")
        .event_pattern(json!({"source": ["spark-ops"]}).to_string())
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .event_bus_name(bus)
        .rule("probe")
        .targets(
            Target::builder()
                .id("probe")
                .arn(probe_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // AND an event schedule of the project chained on this workflow's success
    let chained = json!({"source": ["spark-ops"], "detail-type": ["run.succeeded"],
                         "detail": {"workflow_id": [workflow]}});
    let schedule = schedule_rule(&app, &project, &chained.to_string()).await;

    // WHEN a run of the workflow executes to success
    let id = app.start_plain_run(&owner, &workflow, &agent).await;
    let outcome = app.execute_run(app.state.clone(), id).await;
    assert_eq!(outcome, Outcome::Succeeded);

    // THEN the bus carried run.started then run.succeeded, with the run's detail and its
    // exact cost: 1000 × 2 / 1e6 + 500 × 8 / 1e6 = 0.006
    let published = drain(&app, &probe, 2).await;
    let kinds: Vec<&str> = published
        .iter()
        .map(|e| e["detail-type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["run.started", "run.succeeded"], "{published:#?}");
    let succeeded = &published[1];
    assert_eq!(succeeded["source"], "spark-ops");
    assert_eq!(
        succeeded["detail"],
        json!({
            "project_id": project, "run_id": id, "workflow_id": workflow,
            "workflow_version": 1, "agent_id": agent, "trigger": "manual",
            "status": "succeeded", "usd_cost": "0.006", "chain_depth": 0,
        })
    );
    assert_eq!(published[0]["detail"]["usd_cost"], "0");
    assert_eq!(published[0]["detail"]["status"], "running");
    // AND the schedule's rule delivered the success to the trigger queue, transformed,
    // for a run one deeper in the chain
    let triggered = drain(&app, &trigger_queue(&app).await, 1).await;
    assert_eq!(triggered.len(), 1, "{triggered:#?}");
    let message: TriggerMessage = serde_json::from_value(triggered[0].clone()).unwrap();
    assert_eq!(message.schedule_id, schedule);
    assert_eq!(message.event["detail"]["run_id"], json!(id));
    assert_eq!(message.event["detail-type"], "run.succeeded");
    assert_eq!(chain::next_depth(&message.event), Ok(1));
}

#[tokio::test(flavor = "current_thread")]
async fn a_run_finishes_when_the_bus_cannot_be_reached_and_the_loss_is_logged() {
    // GIVEN a queued run
    let app = spawn_app().await;
    let (owner, project) = owned_project(&app, "Lonely").await;
    let agent = app.agent(&owner, &project, "m").await;
    let definition = json!({"steps": [{"id": "pick", "type": "decision",
                                       "config": {"condition": "true", "then": [], "else": []}}]});
    let workflow = app.released_workflow(&owner, &project, definition).await;
    let id = app.start_plain_run(&owner, &workflow, &agent).await;
    // AND a worker whose EventBridge endpoint refuses connections
    let sdk = local_sdk_config().await;
    let unreachable = aws_sdk_eventbridge::config::Builder::from(&sdk)
        .endpoint_url("http://127.0.0.1:9")
        .retry_config(RetryConfig::disabled())
        .build();
    let mut state = app.state.clone();
    state.clients.events = aws_sdk_eventbridge::Client::from_conf(unreachable);
    let logs = capture_logs();

    // WHEN the worker executes the run
    let outcome = app.execute_run(state, id).await;

    // THEN it succeeds all the same, and each lost event (started, succeeded) is one warning
    assert_eq!(outcome, Outcome::Succeeded);
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("could not publish a run event; it is dropped"))
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings.iter().all(|w| w.contains(r#""level":"WARN""#)));
}

#[tokio::test]
async fn a_tenant_event_reaches_its_projects_rule_only_with_the_project_stamped_by_the_server() {
    // GIVEN two projects with the same kind of orders, and an event schedule in the first
    let app = spawn_app().await;
    let (owner_a, project_a) = owned_project(&app, "Shop A").await;
    let (owner_b, project_b) = owned_project(&app, "Shop B").await;
    let schedule = schedule_rule(
        &app,
        &project_a,
        r#"{"source": ["com.example.shop"], "detail-type": ["order.placed"]}"#,
    )
    .await;
    let triggers = trigger_queue(&app).await;

    // WHEN the second project publishes the same shape, claiming to be the first
    let other = publish(
        &app,
        &owner_b,
        shop_event(&project_b, json!({"n": 1, "project_id": project_a})),
    )
    .await;
    // AND the first publishes a kind its rule does not match, then one it does, claiming
    // to be the second and deep in a chain
    let mut unmatched = shop_event(&project_a, json!({"n": 2}));
    unmatched["detail_type"] = json!("order.cancelled");
    let unmatched = publish(&app, &owner_a, unmatched).await;
    let matched = publish(
        &app,
        &owner_a,
        shop_event(
            &project_a,
            json!({"n": 3, "project_id": project_b, "chain_depth": 9}),
        ),
    )
    .await;

    // THEN all were accepted with their event ids
    for reply in [&other, &unmatched, &matched] {
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        assert!(reply.body["event_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()));
    }
    // AND only the matching event of the rule's own project arrived, transformed, with the
    // server's project and depth
    let arrived = drain(&app, &triggers, 1).await;
    assert_eq!(arrived.len(), 1, "{arrived:#?}");
    assert_eq!(arrived[0]["schedule_id"], json!(schedule));
    let event = &arrived[0]["event"];
    assert_eq!(event["source"], "com.example.shop");
    assert_eq!(event["detail-type"], "order.placed");
    assert_eq!(
        event["detail"],
        json!({"n": 3, "project_id": project_a, "chain_depth": 0})
    );
}

#[tokio::test]
async fn event_patterns_keep_eventbridges_prefix_anything_but_numeric_and_exists() {
    // GIVEN one event schedule per matching operator
    let app = spawn_app().await;
    let (owner, project) = owned_project(&app, "Operators").await;
    let operators = [
        ("prefix", json!({"sku": [{"prefix": "AB-"}]})),
        (
            "anything-but",
            json!({"region": [{"anything-but": ["eu"]}]}),
        ),
        ("numeric", json!({"amount": [{"numeric": [">", 100]}]})),
        ("exists", json!({"coupon": [{"exists": true}]})),
    ];
    let mut schedules = Vec::new();
    for (name, detail) in &operators {
        let pattern = json!({"source": ["com.example.shop"], "detail": detail}).to_string();
        let schedule = schedule_rule(&app, &project, &pattern).await;
        schedules.push((schedule, *name));
    }

    // WHEN two orders are published: one only `prefix` matches, one the other three match
    let first = json!({"n": 1, "sku": "AB-1", "region": "eu", "amount": 50});
    let second = json!({"n": 2, "sku": "XY-2", "region": "us", "amount": 150, "coupon": "FREE"});
    for detail in [first, second] {
        let reply = publish(&app, &owner, shop_event(&project, detail)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    }

    // THEN each rule delivered exactly the orders its operator matches
    let arrived = drain(&app, &trigger_queue(&app).await, 4).await;
    let mut matches: Vec<(&str, u64)> = arrived
        .iter()
        .map(|m| {
            let schedule: Uuid = serde_json::from_value(m["schedule_id"].clone()).unwrap();
            let name = schedules.iter().find(|(s, _)| *s == schedule).unwrap().1;
            (name, m["event"]["detail"]["n"].as_u64().unwrap())
        })
        .collect();
    matches.sort_unstable();
    assert_eq!(
        matches,
        [
            ("anything-but", 2),
            ("exists", 2),
            ("numeric", 2),
            ("prefix", 1)
        ]
    );
}

#[tokio::test]
async fn a_rule_is_switched_off_and_on_and_once_deleted_delivers_nothing() {
    // GIVEN an event schedule's rule
    let app = spawn_app().await;
    let (owner, project) = owned_project(&app, "Switch").await;
    let schedule = schedule_rule(&app, &project, r#"{"source": ["com.example.shop"]}"#).await;
    let state_of = || async {
        let rule = app
            .state
            .clients
            .events
            .describe_rule()
            .event_bus_name(&app.state.config.event_bus_name)
            .name(rules::rule_name(schedule))
            .send()
            .await
            .unwrap();
        rule.state().unwrap().as_str().to_owned()
    };

    // WHEN it is switched off, then on (LocalStack 4.7 delivers to disabled rules too, so
    // the state is what is checked here; the trigger consumer checks the schedule's own)
    rules::set_enabled(&app.state, schedule, false)
        .await
        .unwrap();
    assert_eq!(state_of().await, "DISABLED");
    rules::set_enabled(&app.state, schedule, true)
        .await
        .unwrap();
    assert_eq!(state_of().await, "ENABLED");

    // THEN an event arrives; once the rule is deleted (twice), nothing does
    let triggers = trigger_queue(&app).await;
    let on = publish(&app, &owner, shop_event(&project, json!({"n": 1}))).await;
    assert_eq!(on.status, StatusCode::ACCEPTED);
    assert_eq!(drain(&app, &triggers, 1).await.len(), 1);
    rules::delete_rule(&app.state, schedule).await.unwrap();
    rules::delete_rule(&app.state, schedule).await.unwrap();
    let gone = publish(&app, &owner, shop_event(&project, json!({"n": 2}))).await;
    assert_eq!(gone.status, StatusCode::ACCEPTED);
    assert_eq!(drain(&app, &triggers, 0).await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_pattern_eventbridge_refuses_names_the_expression_and_the_rule_cap_is_kept() {
    // GIVEN a deployment allowing one event schedule
    let app = spawn_app_with(|config| config.event_rules_max = 1).await;
    let project = Uuid::now_v7();
    let good = EventPattern::parse(r#"{"source": ["com.example.shop"]}"#).unwrap();

    // WHEN a pattern EventBridge refuses is put
    let bad = EventPattern::parse(r#"{"detail": {"sku": [{"prefix": 5}]}}"#).unwrap();
    let refused = rules::put_rule(&app.state, Uuid::now_v7(), project, &bad, true).await;

    // THEN it is a 422 on `expression`
    let Err(err @ RuleError::InvalidPattern(_)) = refused else {
        panic!("expected an invalid pattern, got {refused:?}");
    };
    let problem = spark_ops::ApiError::from(err).problem();
    assert_eq!(problem.status, 422);
    assert_eq!(problem.errors[0].field, "expression");

    // WHEN one schedule is put, updated, and a second one is tried
    let first = Uuid::now_v7();
    rules::put_rule(&app.state, first, project, &good, true)
        .await
        .unwrap();
    rules::put_rule(&app.state, first, project, &good, false)
        .await
        .unwrap();
    let second = rules::put_rule(&app.state, Uuid::now_v7(), project, &good, true).await;

    // THEN the update passes and the second is refused with a 409 naming the limit
    let Err(err @ RuleError::Full { max: 1 }) = second else {
        panic!("expected the cap, got {second:?}");
    };
    let problem = spark_ops::ApiError::from(err).problem();
    assert_eq!(problem.status, 409);
    assert!(
        problem.detail.contains("EVENT_RULES_MAX"),
        "{}",
        problem.detail
    );
}

#[tokio::test]
async fn publishing_takes_a_developer_of_the_project_and_a_source_of_the_tenants_own() {
    // GIVEN a project with a viewer, and an outsider
    let app = spawn_app().await;
    let (owner, project) = owned_project(&app, "Guarded").await;
    let viewer = app.user("Viewer").await;
    app.add_member(&owner, &project, &viewer, "viewer").await;
    let outsider = app.user("Outsider").await;
    let event = shop_event(&project, json!({"n": 1}));

    // THEN a viewer is refused, an outsider does not see the project
    assert_eq!(
        publish(&app, &viewer, event.clone()).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        publish(&app, &outsider, event.clone()).await.status,
        StatusCode::NOT_FOUND
    );
    // AND Spark-Ops' own source, a detail that is no object and an empty type are 422s
    // naming their fields, all at once
    let mut bad = event.clone();
    bad["source"] = json!("spark-ops");
    bad["detail"] = json!([1]);
    bad["detail_type"] = json!("  ");
    let refused = publish(&app, &owner, bad).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert_eq!(refused.error_fields(), ["source", "detail_type", "detail"]);
    // AND a detail over 64 KiB is refused by name
    let mut big = event;
    big["detail"] = json!({"blob": "x".repeat(64 * 1024)});
    let refused = publish(&app, &owner, big).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_fields(), ["detail"]);
}
