//! The definition rules, one invalid DAG at a time, each with its exact error paths.

use std::collections::HashSet;

use serde_json::{json, Value};
use uuid::Uuid;

use super::*;

fn tool() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
}

fn tools() -> HashSet<Uuid> {
    HashSet::from([tool()])
}

/// The example of the issue: every step type, branches, a loop.
fn example() -> Value {
    let tool = tool().to_string();
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

fn errors_of(definition: &Value) -> Vec<String> {
    match parse(definition, &tools()) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.into_iter().map(|e| e.field).collect(),
    }
}

fn set(definition: &mut Value, pointer: &str, value: Value) {
    *definition
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer} exists in the example")) = value;
}

fn remove(definition: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    definition
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(key)
        .unwrap_or_else(|| panic!("{pointer} exists in the example"));
}

#[test]
fn the_issue_example_parses_and_round_trips() {
    let parsed = parse(&example(), &tools()).unwrap();
    assert_eq!(parsed.steps.len(), 7);
    assert_eq!(parsed.tool_ids(), vec![tool()]);
    let json = serde_json::to_value(&parsed).unwrap();
    assert_eq!(json["steps"][2]["type"], "decision");
    assert_eq!(json["steps"][2]["config"]["else"], json!(["done"]));
    assert_eq!(
        json["steps"][5]["config"]["over"],
        "steps.lookup.output.items"
    );
    assert_eq!(json["steps"][5]["config"]["step"]["type"], "tool");
    let back: Definition = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, parsed);
    // The canonical form parses again to the same value.
    assert_eq!(parse(&json, &tools()).unwrap(), parsed);
}

#[test]
fn an_empty_workflow_and_a_while_loop_are_fine() {
    assert!(parse(&json!({"steps": []}), &tools())
        .unwrap()
        .steps
        .is_empty());
    let looping = json!({"steps": [
        {"id": "poll", "type": "loop", "config": {
            "while": "iteration < 3 && input.keep_going", "max_iterations": 1000,
            "step": {"type": "webhook", "config": {"url": "http://hooks.local:8080/p", "body": {"round": "{{ item }}"}, "headers": {"X-Trace": "{{ input.trace }}"}}}}}
    ]});
    assert!(
        parse(&looping, &tools()).is_ok(),
        "{:?}",
        parse(&looping, &tools())
    );
}

type Mutation = Box<dyn Fn(&mut Value)>;

/// Each case breaks one rule of the example and expects exactly these error paths.
fn invalid_dags() -> Vec<(&'static str, Mutation, Vec<&'static str>)> {
    let other_tool = Uuid::now_v7().to_string();
    vec![
        (
            "the definition is not an object",
            Box::new(|d| *d = json!([])),
            vec![""],
        ),
        (
            "steps is missing",
            Box::new(|d| *d = json!({})),
            vec!["steps"],
        ),
        (
            "steps is not an array",
            Box::new(|d| *d = json!({"steps": {}})),
            vec!["steps"],
        ),
        (
            "an unknown top-level field",
            Box::new(|d| add(d, "/name", json!("x"))),
            vec!["name"],
        ),
        (
            "more than 200 steps",
            Box::new(|d| {
                let steps: Vec<Value> = (0..201)
                .map(|i| json!({"id": format!("s{i}"), "type": "human", "config": {"instructions": "x"}}))
                .collect();
                *d = json!({"steps": steps});
            }),
            vec!["steps"],
        ),
        (
            "an id with capitals",
            Box::new(|d| set(d, "/steps/4/id", json!("Review"))),
            vec!["steps[4].id"],
        ),
        (
            "an id of 65 characters",
            Box::new(|d| set(d, "/steps/4/id", json!("r".repeat(65)))),
            vec!["steps[4].id"],
        ),
        (
            "an id that is a number",
            Box::new(|d| set(d, "/steps/4/id", json!(4))),
            vec!["steps[4].id"],
        ),
        (
            "a duplicate id",
            Box::new(|d| set(d, "/steps/6/id", json!("vip"))),
            vec!["steps[6].id", "steps[2].config.else[0]"],
        ),
        (
            "an unknown type",
            Box::new(|d| set(d, "/steps/4/type", json!("email"))),
            vec!["steps[4].type"],
        ),
        (
            "a missing type",
            Box::new(|d| remove(d, "/steps/4/type")),
            vec!["steps[4].type"],
        ),
        (
            "a missing config",
            Box::new(|d| remove(d, "/steps/4/config")),
            vec!["steps[4].config"],
        ),
        (
            "a config that is not an object",
            Box::new(|d| set(d, "/steps/4/config", json!("x"))),
            vec!["steps[4].config"],
        ),
        (
            "an unknown step field",
            Box::new(|d| add(d, "/steps/4/retries", json!(3))),
            vec!["steps[4].retries"],
        ),
        (
            "an unknown config field",
            Box::new(|d| add(d, "/steps/4/config/timeout", json!(3))),
            vec!["steps[4].config.timeout"],
        ),
        (
            "a prompt without its prompt",
            Box::new(|d| remove(d, "/steps/0/config/prompt")),
            vec!["steps[0].config.prompt"],
        ),
        (
            "a blank prompt",
            Box::new(|d| set(d, "/steps/0/config/prompt", json!("  "))),
            vec!["steps[0].config.prompt"],
        ),
        (
            "max_iterations as a string",
            Box::new(|d| set(d, "/steps/0/config/max_iterations", json!("5"))),
            vec!["steps[0].config.max_iterations"],
        ),
        (
            "max_iterations over 50",
            Box::new(|d| set(d, "/steps/0/config/max_iterations", json!(51))),
            vec!["steps[0].config.max_iterations"],
        ),
        (
            "max_iterations of 0",
            Box::new(|d| set(d, "/steps/0/config/max_iterations", json!(0))),
            vec!["steps[0].config.max_iterations"],
        ),
        (
            "a prompt tool of another project",
            Box::new(move |d| set(d, "/steps/0/config/tools/0", json!(other_tool))),
            vec!["steps[0].config.tools[0]"],
        ),
        (
            "a tools list that is not a list",
            Box::new(|d| set(d, "/steps/0/config/tools", json!("all"))),
            vec!["steps[0].config.tools"],
        ),
        (
            "a tool listed twice",
            Box::new(|d| set(d, "/steps/0/config/tools", json!([tool(), tool()]))),
            vec!["steps[0].config.tools[1]"],
        ),
        (
            "a tool step without tool_id",
            Box::new(|d| remove(d, "/steps/1/config/tool_id")),
            vec!["steps[1].config.tool_id"],
        ),
        (
            "a tool_id that is not a UUID",
            Box::new(|d| set(d, "/steps/1/config/tool_id", json!("crm"))),
            vec!["steps[1].config.tool_id"],
        ),
        (
            "a tool input that is not an object",
            Box::new(|d| set(d, "/steps/1/config/input", json!("q"))),
            vec!["steps[1].config.input"],
        ),
        (
            "a depends_on naming no step",
            Box::new(|d| set(d, "/steps/1/depends_on/0", json!("drafts"))),
            vec!["steps[1].depends_on[0]", "steps[1].config.input.q"],
        ),
        (
            "a depends_on that is not a list",
            Box::new(|d| set(d, "/steps/4/depends_on", json!("vip"))),
            vec!["steps[4].depends_on"],
        ),
        (
            "a step depending on itself",
            Box::new(|d| set(d, "/steps/4/depends_on", json!(["vip", "review"]))),
            vec!["steps[4].depends_on[1]"],
        ),
        (
            "a dependency listed twice",
            Box::new(|d| set(d, "/steps/4/depends_on", json!(["vip", "vip"]))),
            vec!["steps[4].depends_on[1]"],
        ),
        (
            "a cycle through three steps",
            Box::new(|d| set(d, "/steps/0/depends_on", json!(["route"]))),
            vec!["steps[1].depends_on[0]"],
        ),
        (
            "a two-step cycle",
            Box::new(|d| set(d, "/steps/3/depends_on", json!(["route", "review"]))),
            vec!["steps[4].depends_on[0]"],
        ),
        (
            "a then target that does not exist",
            Box::new(|d| set(d, "/steps/2/config/then/0", json!("vips"))),
            vec!["steps[2].config.then[0]"],
        ),
        (
            "a then target not depending on the decision",
            Box::new(|d| set(d, "/steps/2/config/then/0", json!("review"))),
            vec!["steps[2].config.then[0]"],
        ),
        (
            "an else target depending on it only transitively",
            Box::new(|d| {
                set(d, "/steps/6/depends_on", json!(["vip"]));
            }),
            vec!["steps[2].config.else[0]"],
        ),
        (
            "a target in both branches",
            Box::new(|d| set(d, "/steps/2/config/else/0", json!("vip"))),
            vec!["steps[2].config.else[0]"],
        ),
        (
            "a decision branching to itself",
            Box::new(|d| set(d, "/steps/2/config/then/0", json!("route"))),
            vec!["steps[2].config.then[0]"],
        ),
        (
            "a decision without then",
            Box::new(|d| remove(d, "/steps/2/config/then")),
            vec!["steps[2].config.then"],
        ),
        (
            "a condition that does not parse",
            Box::new(|d| {
                set(
                    d,
                    "/steps/2/config/condition",
                    json!("steps.lookup.output.tier =="),
                )
            }),
            vec!["steps[2].config.condition"],
        ),
        (
            "a condition reading a step that is not upstream",
            Box::new(|d| {
                set(
                    d,
                    "/steps/2/config/condition",
                    json!("steps.each.output.ok"),
                )
            }),
            vec!["steps[2].config.condition"],
        ),
        (
            "a condition reading an unknown variable",
            Box::new(|d| set(d, "/steps/2/config/condition", json!("env == 'prod'"))),
            vec!["steps[2].config.condition"],
        ),
        (
            "a template reading a downstream step",
            Box::new(|d| {
                set(
                    d,
                    "/steps/1/config/input/q",
                    json!("{{ steps.route.output }}"),
                )
            }),
            vec!["steps[1].config.input.q"],
        ),
        (
            "a template reading a missing step",
            Box::new(|d| {
                set(
                    d,
                    "/steps/3/config/body/who",
                    json!({"list": ["{{ steps.nobody.output }}"]}),
                )
            }),
            vec!["steps[3].config.body.who.list[0]"],
        ),
        (
            "a template reading a sibling branch",
            Box::new(|d| {
                set(
                    d,
                    "/steps/6/config/body",
                    json!({"v": "{{ steps.vip.output.status }}"}),
                )
            }),
            vec!["steps[6].config.body.v"],
        ),
        (
            "a template with an unclosed placeholder",
            Box::new(|d| set(d, "/steps/4/config/instructions", json!("Check {{ input.x"))),
            vec!["steps[4].config.instructions"],
        ),
        (
            "item outside a loop",
            Box::new(|d| set(d, "/steps/4/config/instructions", json!("Check {{ item }}"))),
            vec!["steps[4].config.instructions"],
        ),
        (
            "a loop without over or while",
            Box::new(|d| remove(d, "/steps/5/config/over")),
            vec!["steps[5].config.over"],
        ),
        (
            "a loop with over and while",
            Box::new(|d| add(d, "/steps/5/config/while", json!("true"))),
            vec!["steps[5].config.while"],
        ),
        (
            "a loop bound over 1000",
            Box::new(|d| set(d, "/steps/5/config/max_iterations", json!(1001))),
            vec!["steps[5].config.max_iterations"],
        ),
        (
            "a loop without a bound",
            Box::new(|d| remove(d, "/steps/5/config/max_iterations")),
            vec!["steps[5].config.max_iterations"],
        ),
        (
            "an over expression that does not parse",
            Box::new(|d| {
                set(
                    d,
                    "/steps/5/config/over",
                    json!("steps.lookup.output.items["),
                )
            }),
            vec!["steps[5].config.over"],
        ),
        (
            "a loop over a step that is not upstream",
            Box::new(|d| set(d, "/steps/5/config/over", json!("steps.vip.output.items"))),
            vec!["steps[5].config.over"],
        ),
        (
            "a loop whose step is a decision",
            Box::new(|d| set(d, "/steps/5/config/step/type", json!("decision"))),
            vec!["steps[5].config.step.type"],
        ),
        (
            "a loop whose step is a loop",
            Box::new(|d| set(d, "/steps/5/config/step/type", json!("loop"))),
            vec!["steps[5].config.step.type"],
        ),
        (
            "a loop step with an unknown tool",
            Box::new(|d| set(d, "/steps/5/config/step/config/tool_id", json!(Uuid::nil()))),
            vec!["steps[5].config.step.config.tool_id"],
        ),
        (
            "a loop step with an id",
            Box::new(|d| add(d, "/steps/5/config/step/id", json!("inner"))),
            vec!["steps[5].config.step.id"],
        ),
        (
            "a webhook with an ftp url",
            Box::new(|d| set(d, "/steps/3/config/url", json!("ftp://example.com/x"))),
            vec!["steps[3].config.url"],
        ),
        (
            "a webhook with a relative url",
            Box::new(|d| set(d, "/steps/3/config/url", json!("/hook"))),
            vec!["steps[3].config.url"],
        ),
        (
            "a webhook header with a bad name",
            Box::new(|d| add(d, "/steps/3/config/headers", json!({"bad name": "x"}))),
            vec!["steps[3].config.headers[\"bad name\"]"],
        ),
        (
            "a human step without instructions",
            Box::new(|d| set(d, "/steps/4/config", json!({}))),
            vec!["steps[4].config.instructions"],
        ),
        (
            "many problems at once",
            Box::new(|d| {
                set(d, "/steps/0/id", json!("Draft"));
                set(d, "/steps/2/config/then/0", json!("nope"));
                set(d, "/steps/5/config/max_iterations", json!(5000));
            }),
            vec![
                "steps[0].id",
                "steps[5].config.max_iterations",
                "steps[1].depends_on[0]",
                "steps[1].config.input.q",
                "steps[2].config.then[0]",
            ],
        ),
    ]
}

fn add(definition: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    definition
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .insert(key.to_owned(), value);
}

#[test]
fn every_invalid_dag_is_reported_at_its_exact_paths() {
    for (name, mutate, expected) in invalid_dags() {
        let mut definition = example();
        mutate(&mut definition);
        assert_eq!(errors_of(&definition), expected, "{name}");
    }
}

#[test]
fn messages_say_what_is_wrong() {
    let mut definition = example();
    set(&mut definition, "/steps/0/depends_on", json!(["route"]));
    let errors = parse(&definition, &tools()).unwrap_err();
    assert_eq!(
        errors[0].message,
        "closes a dependency cycle: draft → route → lookup → draft"
    );
    let mut definition = example();
    set(&mut definition, "/steps/2/config/then/0", json!("review"));
    let errors = parse(&definition, &tools()).unwrap_err();
    assert!(
        errors[0]
            .message
            .contains("must depend on the decision `route`"),
        "{errors:?}"
    );
}

#[test]
fn the_tool_ids_to_load_are_found_before_parsing() {
    let other = Uuid::now_v7();
    let mut definition = example();
    set(
        &mut definition,
        "/steps/5/config/step/config/tool_id",
        json!(other),
    );
    set(&mut definition, "/steps/3/config/url", json!(5));
    assert_eq!(referenced_tool_ids(&definition), vec![tool(), other]);
    assert!(referenced_tool_ids(&json!("nonsense")).is_empty());
}

#[test]
fn errors_move_under_the_field_holding_the_definition() {
    let errors = vec![
        FieldError::new("", "must be an object"),
        FieldError::new("steps[2].config.then[0]", "x"),
    ];
    let fields: Vec<String> = under("definition", errors)
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(
        fields,
        vec!["definition", "definition.steps[2].config.then[0]"]
    );
}

#[test]
fn a_definition_over_the_size_limit_is_refused_whole() {
    let big = "x".repeat(definition::MAX_DEFINITION_BYTES);
    let definition =
        json!({"steps": [{"id": "a", "type": "human", "config": {"instructions": big}}]});
    assert_eq!(errors_of(&definition), vec![""]);
}
