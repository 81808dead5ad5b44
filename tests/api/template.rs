//! `template.yaml` must declare what the code provisions: same tables, keys, indexes, TTL,
//! queue settings, state machine definition, event bus, and one function per crate under
//! `functions/`.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde_yaml::Value;
use spark_ops::payload::PAYLOAD_RETENTION_DAYS;
use spark_ops::store::provision::{
    RUN_LIFECYCLE_ASL, RUN_QUEUE_MAX_RECEIVES, RUN_QUEUE_VISIBILITY_SECONDS,
    SCHEDULER_QUEUE_MAX_RECEIVES, SCHEDULER_QUEUE_VISIBILITY_SECONDS, TICK_SCHEDULE,
    TRIGGER_QUEUE_MAX_RECEIVES, TRIGGER_QUEUE_VISIBILITY_SECONDS,
};
use spark_ops::store::schema::TABLES;
use spark_ops::Config;
use spark_ops_tests::spawn_app;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn template() -> Value {
    let path = root().join("template.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The text of a plain or `!Sub`-tagged string.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Tagged(tagged) => text(&tagged.value),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a string, got {other:?}"),
    }
}

/// The logical id named by a `!Ref`, or by a `!GetAtt` of `attribute`.
fn reference(value: &Value, attribute: Option<&str>) -> Option<String> {
    let Value::Tagged(tagged) = value else {
        return None;
    };
    let target = tagged.value.as_str()?;
    match attribute {
        None if tagged.tag == "Ref" => Some(target.to_owned()),
        Some(attribute) if tagged.tag == "GetAtt" => target
            .strip_suffix(&format!(".{attribute}"))
            .map(str::to_owned),
        _ => None,
    }
}

fn resources_of(template: &Value, kind: &str) -> Vec<(String, Value)> {
    template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(name, r)| (text(name), r["Properties"].clone()))
        .collect()
}

fn keys(schema: &Value) -> (String, String) {
    let elements = schema.as_sequence().unwrap();
    let find = |kind: &str| {
        elements
            .iter()
            .find(|e| e["KeyType"] == kind)
            .map(|e| text(&e["AttributeName"]))
            .unwrap()
    };
    (find("HASH"), find("RANGE"))
}

#[test]
fn the_templates_tables_match_the_schema_in_code() {
    let template = template();
    let tables = resources_of(&template, "AWS::DynamoDB::Table");
    assert_eq!(
        tables.len(),
        TABLES.len(),
        "one template table per schema table"
    );
    for def in TABLES {
        let expected_name = format!("${{AWS::StackName}}-{}", def.suffix);
        let (logical, props) = tables
            .iter()
            .find(|(_, p)| text(&p["TableName"]) == expected_name)
            .unwrap_or_else(|| panic!("template.yaml declares no table named {expected_name}"));
        assert_eq!(
            keys(&props["KeySchema"]),
            (def.pk.to_owned(), def.sk.to_owned()),
            "{logical} keys"
        );
        let mut expected_attributes: BTreeSet<String> = [def.pk, def.sk].map(str::to_owned).into();
        let mut declared_indexes = BTreeSet::new();
        for index in def.indexes {
            expected_attributes.extend([index.pk.to_owned(), index.sk.to_owned()]);
            let gsi = props["GlobalSecondaryIndexes"]
                .as_sequence()
                .and_then(|all| all.iter().find(|g| text(&g["IndexName"]) == index.name))
                .unwrap_or_else(|| panic!("{logical} lacks index {}", index.name));
            assert_eq!(
                keys(&gsi["KeySchema"]),
                (index.pk.to_owned(), index.sk.to_owned())
            );
            assert_eq!(gsi["Projection"]["ProjectionType"], "ALL");
            declared_indexes.insert(index.name.to_owned());
        }
        let template_indexes: BTreeSet<String> = props["GlobalSecondaryIndexes"]
            .as_sequence()
            .map(|all| all.iter().map(|g| text(&g["IndexName"])).collect())
            .unwrap_or_default();
        assert_eq!(
            template_indexes, declared_indexes,
            "{logical} has exactly the schema's indexes"
        );
        let attributes: BTreeSet<String> = props["AttributeDefinitions"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| {
                assert_eq!(a["AttributeType"], "S");
                text(&a["AttributeName"])
            })
            .collect();
        assert_eq!(
            attributes, expected_attributes,
            "{logical} attribute definitions"
        );
        assert_eq!(
            text(&props["TimeToLiveSpecification"]["AttributeName"]),
            def.ttl_attribute
        );
        assert_eq!(props["BillingMode"], "PAY_PER_REQUEST");
    }
}

#[test]
fn the_run_queue_matches_provisioning() {
    let template = template();
    let queues = resources_of(&template, "AWS::SQS::Queue");
    let (_, run_queue) = queues
        .iter()
        .find(|(_, p)| text(&p["QueueName"]) == "${AWS::StackName}-runs")
        .expect("the run queue is declared");
    assert_eq!(
        text(&run_queue["VisibilityTimeout"]),
        RUN_QUEUE_VISIBILITY_SECONDS.to_string()
    );
    assert_eq!(
        text(&run_queue["RedrivePolicy"]["maxReceiveCount"]),
        RUN_QUEUE_MAX_RECEIVES.to_string()
    );
    assert!(queues
        .iter()
        .any(|(_, p)| text(&p["QueueName"]) == "${AWS::StackName}-runs-dlq"));
}

#[test]
fn every_function_crate_is_a_cargolambda_function_in_the_template() {
    let template = template();
    let resources = template["Resources"].as_mapping().unwrap();
    let declared: BTreeSet<String> = resources
        .values()
        .filter(|r| r["Type"] == "AWS::Serverless::Function")
        .map(|r| {
            assert_eq!(r["Metadata"]["BuildMethod"], "rust-cargolambda");
            text(&r["Metadata"]["BuildProperties"]["Binary"])
        })
        .collect();
    let crates: BTreeSet<String> = std::fs::read_dir(root().join("functions"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        declared, crates,
        "the template's functions (left) and the crates under functions/ (right)"
    );
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Tracing"], "Active");
    assert_eq!(globals["LoggingConfig"]["LogFormat"], "JSON");
    assert_eq!(
        globals["Environment"]["Variables"]["AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH"],
        "true"
    );
}

/// The function built from `binary`: its logical id and properties.
fn function(template: &Value, binary: &str) -> (String, Value) {
    let resources = template["Resources"].as_mapping().unwrap();
    let (logical, resource) = resources
        .iter()
        .find(|(_, r)| {
            r["Type"] == "AWS::Serverless::Function"
                && r["Metadata"]["BuildProperties"]["Binary"] == binary
        })
        .unwrap_or_else(|| panic!("template.yaml declares no function built from {binary}"));
    (text(logical), resource["Properties"].clone())
}

/// The statements of a function's inline policies.
fn statements(function: &Value) -> Vec<&Value> {
    function["Policies"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|policy| policy["Statement"].as_sequence())
        .flatten()
        .collect()
}

/// The template's API events of each function: `(binary, path)` pairs.
fn function_events(template: &Value) -> Vec<(String, String)> {
    let mut events = Vec::new();
    for resource in template["Resources"].as_mapping().unwrap().values() {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let binary = text(&resource["Metadata"]["BuildProperties"]["Binary"]);
        for event in resource["Properties"]["Events"]
            .as_mapping()
            .unwrap()
            .values()
            .filter(|event| event["Type"] == "Api")
        {
            events.push((binary.clone(), text(&event["Properties"]["Path"])));
        }
    }
    events
}

fn routes_to(event_path: &str, path: &str) -> bool {
    match event_path.strip_suffix("/{proxy+}") {
        Some(prefix) => path.starts_with(&format!("{prefix}/")),
        None => event_path == path,
    }
}

#[tokio::test]
async fn every_documented_route_is_served_by_the_function_the_template_sends_it_to() {
    use axum::http::{Method, StatusCode};
    let app = spawn_app().await;
    let routers = [
        ("auth", spark_ops::api::auth_router(app.state.clone())),
        (
            "projects",
            spark_ops::api::projects_router(app.state.clone()),
        ),
        ("agents", spark_ops::api::agents_router(app.state.clone())),
        ("tools", spark_ops::api::tools_router(app.state.clone())),
        (
            "workflows",
            spark_ops::api::workflows_router(app.state.clone()),
        ),
        ("runs", spark_ops::api::runs_router(app.state.clone())),
    ];
    let events = function_events(&template());
    let openapi = serde_json::to_value(spark_ops::api::openapi()).unwrap();
    let mut checked = 0;
    for (path, methods) in openapi["paths"].as_object().unwrap() {
        let concrete = crate::conventions::concrete(path);
        let targets: Vec<&str> = events
            .iter()
            .filter(|(_, event)| routes_to(event, &concrete))
            .map(|(binary, _)| binary.as_str())
            .collect();
        assert_eq!(
            targets.len(),
            1,
            "{path} must be routed to exactly one function: {targets:?}"
        );
        let router = &routers
            .iter()
            .find(|(binary, _)| *binary == targets[0])
            .unwrap_or_else(|| panic!("this test has no router for the {} function", targets[0]))
            .1;
        for method in methods.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let request = axum::http::Request::builder()
                .method(method.clone())
                .uri(&concrete)
                .body(axum::body::Body::empty())
                .unwrap();
            let response = tower::ServiceExt::oneshot(router.clone(), request)
                .await
                .unwrap();
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains("no such route"),
                "{method} {path} is not served by the {} function",
                targets[0]
            );
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} in the {} function",
                targets[0]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, crate::conventions::OPERATIONS.len());

    // And the other way: every API event of the template reaches at least one documented
    // operation, or the docs the projects function serves beside them.
    let documented: Vec<String> = openapi["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|path| crate::conventions::concrete(path))
        .collect();
    for (binary, event) in &events {
        let docs = binary == "projects"
            && (event == "/api/v1/openapi.json" || event == "/docs" || event == "/docs/{proxy+}");
        assert!(
            docs || documented.iter().any(|path| routes_to(event, path)),
            "the template sends {event} to {binary}, which documents no operation there"
        );
    }
}

/// The file that `RUN_LIFECYCLE_ASL` includes, relative to the workspace root (the form of a
/// SAM `DefinitionUri`).
fn included_asl_path() -> PathBuf {
    let source = std::fs::read_to_string(root().join("shared/src/store/provision.rs")).unwrap();
    let after = &source[source
        .find("pub const RUN_LIFECYCLE_ASL")
        .expect("provision.rs defines RUN_LIFECYCLE_ASL")..];
    let start = after
        .find("include_str!(\"")
        .expect("RUN_LIFECYCLE_ASL is an include_str!")
        + "include_str!(\"".len();
    let relative = &after[start..start + after[start..].find('"').unwrap()];
    let mut path = PathBuf::from("shared/src/store");
    for component in Path::new(relative).components() {
        match component {
            Component::ParentDir => assert!(path.pop(), "{relative} leaves the workspace"),
            Component::Normal(part) => path.push(part),
            other => panic!("unexpected component {other:?} in {relative}"),
        }
    }
    path
}

/// The `${Name}` placeholders of a definition.
fn placeholders(definition: &str) -> BTreeSet<String> {
    definition
        .split("${")
        .skip(1)
        .map(|rest| rest[..rest.find('}').expect("an unterminated ${")].to_owned())
        .collect()
}

/// Every `Resource` of a `Task` state, in nested states too.
fn task_resources(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(fields) => {
            if fields.get("Type").and_then(|t| t.as_str()) == Some("Task") {
                found.push(fields["Resource"].as_str().unwrap().to_owned());
            }
            fields.values().for_each(|v| task_resources(v, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| task_resources(v, found)),
        _ => {}
    }
}

#[test]
fn the_state_machine_deploys_the_definition_local_provisioning_uses() {
    // GIVEN the template's one state machine
    let template = template();
    let machines = resources_of(&template, "AWS::Serverless::StateMachine");
    assert_eq!(machines.len(), 1, "one state machine: the run lifecycle");
    let (logical, machine) = &machines[0];

    // THEN it deploys the very file provisioning includes, as a standard workflow
    let included = included_asl_path();
    assert_eq!(
        Path::new(&text(&machine["DefinitionUri"])),
        included,
        "{logical} DefinitionUri"
    );
    assert_eq!(
        std::fs::read_to_string(root().join(&included)).unwrap(),
        RUN_LIFECYCLE_ASL
    );
    assert_eq!(machine["Type"], "STANDARD");

    // AND it bears the name the code derives from the prefix
    let config =
        Config::from_lookup(|key| (key == "SPARK_OPS_PREFIX").then(|| "stack".into())).unwrap();
    assert_eq!(
        text(&machine["Name"]).replace("${AWS::StackName}", "stack"),
        config.state_machine_name()
    );

    // AND every placeholder of the definition is substituted, with nothing left over
    let substituted: BTreeSet<String> = machine["DefinitionSubstitutions"]
        .as_mapping()
        .map(|all| all.keys().map(text).collect())
        .unwrap_or_default();
    assert_eq!(placeholders(RUN_LIFECYCLE_ASL), substituted);
    assert_eq!(
        reference(&machine["DefinitionSubstitutions"]["RunQueueUrl"], None).as_deref(),
        Some("RunQueue")
    );
}

#[test]
fn the_state_machine_may_only_send_to_the_run_queue_which_is_all_its_tasks_do() {
    // GIVEN the lifecycle's task states
    let definition: serde_json::Value = serde_json::from_str(RUN_LIFECYCLE_ASL).unwrap();
    let mut resources = Vec::new();
    task_resources(&definition, &mut resources);
    assert!(!resources.is_empty());

    // THEN each sends a message, optionally waiting for its task token
    for resource in &resources {
        assert!(
            [
                "arn:aws:states:::sqs:sendMessage",
                "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
            ]
            .contains(&resource.as_str()),
            "a task calls {resource}: grant it in the state machine's Policies"
        );
    }

    // AND the machine's role allows exactly sqs:SendMessage on the run queue
    let template = template();
    let (_, machine) = &resources_of(&template, "AWS::Serverless::StateMachine")[0];
    let statements: Vec<&Value> = machine["Policies"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|policy| policy["Statement"].as_sequence().unwrap())
        .collect();
    assert_eq!(statements.len(), 1, "{statements:?}");
    assert_eq!(statements[0]["Effect"], "Allow");
    assert_eq!(
        statements[0]["Action"],
        Value::Sequence(vec!["sqs:SendMessage".into()])
    );
    let targets: Vec<Option<String>> = statements[0]["Resource"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| reference(r, Some("Arn")))
        .collect();
    assert_eq!(targets, [Some("RunQueue".to_owned())]);
}

#[test]
fn the_run_worker_consumes_the_run_queue_reporting_partial_batch_failures() {
    // GIVEN the worker's events
    let template = template();
    let (logical, worker) = function(&template, "run-worker");
    let events: Vec<&Value> = worker["Events"].as_mapping().unwrap().values().collect();

    // THEN its only trigger is the run queue, and a failed message fails alone
    assert_eq!(events.len(), 1, "{logical} has one event");
    let event = events[0];
    assert_eq!(event["Type"], "SQS");
    assert_eq!(
        reference(&event["Properties"]["Queue"], Some("Arn")).as_deref(),
        Some("RunQueue")
    );
    assert!(
        event["Properties"]["FunctionResponseTypes"]
            .as_sequence()
            .is_some_and(|types| types.contains(&"ReportBatchItemFailures".into())),
        "{logical} must report partial batch failures"
    );
    assert!(event["Properties"]["BatchSize"].as_u64().unwrap() <= 10);
}

#[test]
fn a_burst_of_runs_cannot_take_every_lambda_slot_from_the_api() {
    // GIVEN the worker and the API functions
    let template = template();
    let (logical, worker) = function(&template, "run-worker");
    let event = worker["Events"]
        .as_mapping()
        .unwrap()
        .values()
        .next()
        .unwrap();

    // THEN the run queue's event source keeps at most `WorkerMaxConcurrency` workers busy
    assert_eq!(
        reference(
            &event["Properties"]["ScalingConfig"]["MaximumConcurrency"],
            None
        )
        .as_deref(),
        Some("WorkerMaxConcurrency"),
        "{logical}"
    );
    let default = &template["Parameters"]["WorkerMaxConcurrency"]["Default"];
    assert!(default.as_u64().is_some_and(|n| (2..=1000).contains(&n)));
    // AND every API function can reserve concurrency of its own
    for binary in ["auth", "projects", "agents", "tools", "workflows", "runs"] {
        let (logical, api) = function(&template, binary);
        assert!(
            matches!(&api["ReservedConcurrentExecutions"], Value::Tagged(t) if t.tag == "If"),
            "{logical} reserves no concurrency"
        );
    }
    // AND the worker has memory for a full batch at the payload caps: 10 runs, each holding a
    // few copies of a 4 MiB answer and of a 4 MiB rendered template
    let memory = worker["MemorySize"].as_u64().unwrap();
    assert!(memory >= 10 * 4 * 8, "{logical} has {memory} MB");
}

#[test]
fn the_run_queue_hides_a_message_for_at_least_six_worker_timeouts() {
    // GIVEN the worker's timeout (its own, or the global one)
    let template = template();
    let (_, worker) = function(&template, "run-worker");
    let timeout = worker["Timeout"]
        .as_u64()
        .or_else(|| template["Globals"]["Function"]["Timeout"].as_u64())
        .unwrap();

    // THEN the run queue's visibility timeout, in the template and in provisioning, is at
    // least six times it (the SQS event source's rule for Lambda consumers)
    let queues = resources_of(&template, "AWS::SQS::Queue");
    let (_, run_queue) = queues
        .iter()
        .find(|(_, p)| text(&p["QueueName"]) == "${AWS::StackName}-runs")
        .unwrap();
    let visibility = run_queue["VisibilityTimeout"].as_u64().unwrap();
    assert!(
        visibility >= 6 * timeout,
        "VisibilityTimeout {visibility} < 6 x worker Timeout {timeout}"
    );
    assert!(u64::from(RUN_QUEUE_VISIBILITY_SECONDS) >= 6 * timeout);
}

#[test]
fn the_run_functions_are_told_the_state_machine_and_the_run_queue() {
    let template = template();
    for binary in ["runs", "run-worker", "sweeper"] {
        // GIVEN the function's environment
        let (logical, function) = function(&template, binary);
        let variables = &function["Environment"]["Variables"];

        // THEN it names the resources the code would otherwise have to look up
        assert_eq!(
            reference(&variables["RUN_STATE_MACHINE_ARN"], None).as_deref(),
            Some("RunLifecycleStateMachine"),
            "{logical} RUN_STATE_MACHINE_ARN"
        );
        assert_eq!(
            reference(&variables["RUN_QUEUE_URL"], None).as_deref(),
            Some("RunQueue"),
            "{logical} RUN_QUEUE_URL"
        );
    }
}

#[test]
fn the_sweeper_runs_on_a_rate_schedule_and_nothing_else() {
    let template = template();
    let (logical, sweeper) = function(&template, "sweeper");
    let events: Vec<&Value> = sweeper["Events"].as_mapping().unwrap().values().collect();
    assert_eq!(events.len(), 1, "{logical} has one event");
    assert_eq!(events[0]["Type"], "Schedule");
    assert!(
        text(&events[0]["Properties"]["Schedule"]).starts_with("rate("),
        "{logical} runs on a rate"
    );
}

#[test]
fn an_alarm_watches_the_run_dead_letter_queue() {
    let template = template();
    let alarms = resources_of(&template, "AWS::CloudWatch::Alarm");
    let watched = alarms.iter().any(|(_, alarm)| {
        alarm["Namespace"] == "AWS/SQS"
            && alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
            && alarm["Dimensions"].as_sequence().is_some_and(|dimensions| {
                dimensions.iter().any(|d| {
                    d["Name"] == "QueueName"
                        && reference(&d["Value"], Some("QueueName")).as_deref()
                            == Some("RunDeadLetterQueue")
                })
            })
    });
    assert!(
        watched,
        "no alarm on the visible messages of RunDeadLetterQueue"
    );
}

#[test]
fn the_payload_bucket_is_private_tls_only_and_expires_run_payloads_as_the_code_says() {
    // GIVEN the payload bucket
    let template = template();
    let buckets = resources_of(&template, "AWS::S3::Bucket");
    let (_, bucket) = buckets
        .iter()
        .find(|(name, _)| name == "PayloadBucket")
        .expect("a PayloadBucket");

    // THEN it expires `runs/` after the retention the code documents
    let rule = &bucket["LifecycleConfiguration"]["Rules"][0];
    assert_eq!(rule["Status"], "Enabled");
    assert_eq!(text(&rule["Prefix"]), "runs/");
    assert_eq!(
        rule["ExpirationInDays"].as_i64(),
        Some(i64::from(PAYLOAD_RETENTION_DAYS))
    );
    // AND it is encrypted and never public
    assert!(!bucket["BucketEncryption"].is_null());
    let block = &bucket["PublicAccessBlockConfiguration"];
    for setting in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(block[setting], Value::Bool(true), "{setting}");
    }
    // AND its policy refuses every request without TLS
    let policies = resources_of(&template, "AWS::S3::BucketPolicy");
    let (_, policy) = policies
        .iter()
        .find(|(_, p)| reference(&p["Bucket"], None).as_deref() == Some("PayloadBucket"))
        .expect("a policy on the payload bucket");
    let statements = policy["PolicyDocument"]["Statement"].as_sequence().unwrap();
    assert!(statements.iter().any(|s| s["Effect"] == "Deny"
        && text(&s["Condition"]["Bool"]["aws:SecureTransport"]) == "false"));

    // AND the run functions are told its name
    for binary in ["runs", "run-worker"] {
        let (logical, function) = function(&template, binary);
        assert_eq!(
            reference(
                &function["Environment"]["Variables"]["PAYLOAD_BUCKET"],
                None
            )
            .as_deref(),
            Some("PayloadBucket"),
            "{logical} PAYLOAD_BUCKET"
        );
    }
}

#[test]
fn the_bus_and_the_trigger_queue_match_provisioning() {
    // GIVEN the names the code derives for a deployment named like the stack
    let template = template();
    let config =
        Config::from_lookup(|key| (key == "SPARK_OPS_PREFIX").then(|| "STACK".to_owned())).unwrap();
    let named = |value: &Value| text(value).replace("${AWS::StackName}", "STACK");

    // THEN the template's one bus has the bus's name
    let buses = resources_of(&template, "AWS::Events::EventBus");
    assert_eq!(buses.len(), 1);
    assert_eq!(named(&buses[0].1["Name"]), config.event_bus_name);
    // AND the trigger queue hides, retries and dead-letters as provisioning does
    let queues = resources_of(&template, "AWS::SQS::Queue");
    let queue = |name: String| {
        queues
            .iter()
            .find(|(_, p)| named(&p["QueueName"]) == name)
            .unwrap_or_else(|| panic!("template.yaml declares no queue {name}"))
            .clone()
    };
    let (_, trigger) = queue(config.trigger_queue_name());
    let (dlq, _) = queue(config.trigger_dlq_name());
    assert_eq!(
        text(&trigger["VisibilityTimeout"]),
        TRIGGER_QUEUE_VISIBILITY_SECONDS.to_string()
    );
    let redrive = &trigger["RedrivePolicy"];
    assert_eq!(
        text(&redrive["maxReceiveCount"]),
        TRIGGER_QUEUE_MAX_RECEIVES.to_string()
    );
    assert_eq!(
        reference(&redrive["deadLetterTargetArn"], Some("Arn")),
        Some(dlq)
    );
}

#[test]
fn every_function_that_moves_runs_publishes_to_the_bus_and_nowhere_else() {
    let template = template();
    for binary in ["projects", "runs", "run-worker", "sweeper", "scheduler"] {
        // GIVEN a function that moves runs (the projects function cancels a deleted
        // project's; the scheduler starts them)
        let (logical, function) = function(&template, binary);

        // THEN it is told the bus
        assert_eq!(
            reference(
                &function["Environment"]["Variables"]["EVENT_BUS_NAME"],
                None
            )
            .as_deref(),
            Some("EventBus"),
            "{logical} EVENT_BUS_NAME"
        );
        // AND may put events on that bus alone
        let publishing: Vec<&Value> = statements(&function)
            .into_iter()
            .filter(|s| {
                s["Action"]
                    .as_sequence()
                    .is_some_and(|a| a.iter().any(|a| a == "events:PutEvents"))
            })
            .collect();
        assert_eq!(publishing.len(), 1, "{logical}: {publishing:?}");
        let targets: Vec<Option<String>> = publishing[0]["Resource"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| reference(r, Some("Arn")))
            .collect();
        assert_eq!(targets, [Some("EventBus".to_owned())], "{logical}");
    }
}

#[test]
fn the_tick_rule_feeds_the_scheduler_which_consumes_its_three_queues_as_provisioned() {
    // GIVEN the template's queues, rules and scheduler function
    let template = template();
    let queues = resources_of(&template, "AWS::SQS::Queue");
    let (logical, scheduler) = function(&template, "scheduler");
    let timeout = scheduler["Timeout"].as_u64().unwrap();
    // THEN the scheduler and fire queues have the provisioned settings, hide a message for
    // at least six scheduler timeouts, and redrive to a dead-letter queue
    for name in ["${AWS::StackName}-scheduler", "${AWS::StackName}-fires"] {
        let (_, queue) = queues
            .iter()
            .find(|(_, q)| text(&q["QueueName"]) == name)
            .unwrap_or_else(|| panic!("{name} is declared"));
        let visibility = queue["VisibilityTimeout"].as_u64().unwrap();
        assert_eq!(visibility, u64::from(SCHEDULER_QUEUE_VISIBILITY_SECONDS));
        assert!(visibility >= 6 * timeout, "{name}");
        assert_eq!(
            text(&queue["RedrivePolicy"]["maxReceiveCount"]),
            SCHEDULER_QUEUE_MAX_RECEIVES.to_string()
        );
        assert!(reference(&queue["RedrivePolicy"]["deadLetterTargetArn"], Some("Arn")).is_some());
    }
    // AND one rule ticks on the code's schedule into the scheduler queue
    let rules = resources_of(&template, "AWS::Events::Rule");
    let (_, tick) = rules
        .iter()
        .find(|(_, r)| r["ScheduleExpression"] == TICK_SCHEDULE)
        .expect("the tick rule is declared");
    assert_eq!(
        reference(&tick["Targets"][0]["Arn"], Some("Arn")).as_deref(),
        Some("SchedulerQueue")
    );
    // AND the scheduler consumes them and the trigger queue, a failed message failing alone
    let mut consumed: Vec<String> = scheduler["Events"]
        .as_mapping()
        .unwrap()
        .values()
        .map(|event| {
            assert_eq!(event["Type"], "SQS", "{logical}");
            assert!(event["Properties"]["FunctionResponseTypes"]
                .as_sequence()
                .is_some_and(|t| t.contains(&"ReportBatchItemFailures".into())));
            reference(&event["Properties"]["Queue"], Some("Arn")).unwrap()
        })
        .collect();
    consumed.sort();
    assert_eq!(consumed, ["FireQueue", "SchedulerQueue", "TriggerQueue"]);
    // AND a trigger is hidden at least as long as the scheduler may take on it
    let (_, triggers) = queues
        .iter()
        .find(|(_, q)| text(&q["QueueName"]) == "${AWS::StackName}-triggers")
        .expect("the trigger queue is declared");
    assert!(triggers["VisibilityTimeout"].as_u64().unwrap() >= timeout);
}

#[test]
fn the_function_serving_schedules_manages_their_rules_and_knows_the_trigger_queue() {
    // GIVEN the function serving /api/v1/schedules
    let template = template();
    let (logical, runs) = function(&template, "runs");
    assert!(
        runs["Events"]
            .as_mapping()
            .unwrap()
            .values()
            .any(|e| e["Properties"]["Path"] == "/api/v1/schedules"),
        "{logical} serves /api/v1/schedules"
    );
    // THEN it may manage the event schedules' rules
    assert!(
        runs["Policies"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| reference(p, None).as_deref() == Some("EventScheduleRulesPolicy")),
        "{logical} has EventScheduleRulesPolicy"
    );
    // AND points them at the trigger queue
    assert_eq!(
        reference(
            &runs["Environment"]["Variables"]["TRIGGER_QUEUE_ARN"],
            Some("Arn")
        )
        .as_deref(),
        Some("TriggerQueue")
    );
}

#[test]
fn only_the_runs_function_reaches_webhook_schedules_secrets_where_the_code_keeps_them() {
    let template = template();
    // The code's path for a schedule's secret, as the template's resource pattern says it.
    let id = uuid::Uuid::now_v7();
    let path = spark_ops::store::secrets::path::schedule_webhook_secret(id);
    assert!(path.starts_with("schedules/"), "{path}");
    let pattern = "secret:${AWS::StackName}/schedules/*";
    for resource in template["Resources"].as_mapping().unwrap().values() {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let binary = text(&resource["Metadata"]["BuildProperties"]["Binary"]);
        let granted: Vec<&Value> = statements(&resource["Properties"])
            .into_iter()
            .filter(|s| {
                s["Resource"]
                    .as_sequence()
                    .is_some_and(|r| r.iter().any(|r| text(r).contains(pattern)))
            })
            .collect();
        if binary == "runs" {
            // It creates, rotates, reads and retires them, and its API event takes the hooks.
            assert_eq!(granted.len(), 1, "{granted:?}");
            let actions: BTreeSet<String> = granted[0]["Action"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(text)
                .collect();
            let expected: BTreeSet<String> = [
                "secretsmanager:CreateSecret",
                "secretsmanager:PutSecretValue",
                "secretsmanager:GetSecretValue",
                "secretsmanager:DeleteSecret",
                "secretsmanager:RestoreSecret",
            ]
            .map(str::to_owned)
            .into();
            assert_eq!(actions, expected);
            assert!(function_events(&template)
                .iter()
                .any(|(b, p)| b == "runs" && routes_to(p, "/api/v1/hooks/x")));
        } else {
            assert!(granted.is_empty(), "{binary} reaches webhook secrets");
        }
    }
}
