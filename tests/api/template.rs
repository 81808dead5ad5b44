//! `template.yaml` must declare what the code provisions: same tables, keys, indexes, TTL,
//! queue settings, and one function per crate under `functions/`.

use std::collections::BTreeSet;

use serde_yaml::Value;
use spark_ops::store::provision::{RUN_QUEUE_MAX_RECEIVES, RUN_QUEUE_VISIBILITY_SECONDS};
use spark_ops::store::schema::TABLES;
use spark_ops_tests::spawn_app;

fn template() -> Value {
    let path = format!("{}/../template.yaml", env!("CARGO_MANIFEST_DIR"));
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
    let crates: BTreeSet<String> =
        std::fs::read_dir(format!("{}/../functions", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(declared, crates);
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Tracing"], "Active");
    assert_eq!(globals["LoggingConfig"]["LogFormat"], "JSON");
    assert_eq!(
        globals["Environment"]["Variables"]["AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH"],
        "true"
    );
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
    ];
    let events = function_events(&template());
    let openapi = serde_json::to_value(spark_ops::api::openapi()).unwrap();
    let mut checked = 0;
    for (path, methods) in openapi["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{user_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{key_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{n}", "1");
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
            .unwrap()
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
    assert!(checked >= 40, "only {checked} operations were checked");
}
