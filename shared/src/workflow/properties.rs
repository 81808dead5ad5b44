//! Property tests of workflow definitions, templates and CEL conditions.
//!
//! - Any JSON, and any valid definition with one node replaced by any JSON, is parsed or
//!   refused with field errors: never a panic.
//! - A generated valid definition (every step type, branches, loops, templates and
//!   expressions reading upstream steps, in any order) parses, and the definition printed
//!   back to JSON parses to the same definition, through [`parse`] and through serde.
//! - Any text is a template or refused; a template built from pieces has exactly those
//!   pieces, each placeholder path prints back to itself, and a lone placeholder renders the
//!   very value it names.
//! - Any text up to the size cap is a CEL expression or refused, however deeply nested.
//!
//! There is no cron syntax in the product yet, so there is nothing of it to hold to account.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::condition::MAX_EXPRESSION_BYTES;
use super::definition::{MAX_LOOP_ITERATIONS, MAX_PROMPT_ITERATIONS};
use super::template::{parse_path, split, Part, Root, Segment};
use super::*;
use crate::properties::{config, json, object, text};

fn project_tools() -> Vec<Uuid> {
    (1..=3)
        .map(|n| Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n))
        .collect()
}

fn credential() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00c0)
}

fn credentials() -> HashMap<Uuid, String> {
    HashMap::from([(credential(), "https://hooks.example.com".to_owned())])
}

fn parse_project(raw: &Value) -> Result<Definition, Vec<crate::error::FieldError>> {
    parse_with(raw, &project_tools().into_iter().collect(), &credentials())
}

/// A placeholder path after its root: `.field` (1-8 name characters) or `[index]`.
fn segments() -> impl Strategy<Value = Vec<Segment>> {
    prop::collection::vec(
        prop_oneof![
            "[A-Za-z0-9_-]{1,8}".prop_map(Segment::Field),
            (0usize..1000).prop_map(Segment::Index),
        ],
        0..4,
    )
}

fn print_path(root: &str, path: &[Segment]) -> String {
    let mut printed = root.to_owned();
    for segment in path {
        match segment {
            Segment::Field(name) => printed.push_str(&format!(".{name}")),
            Segment::Index(index) => printed.push_str(&format!("[{index}]")),
        }
    }
    printed
}

/// A piece of a generated template; `Step` names an upstream step by a number taken modulo
/// the steps there are.
#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Input(Vec<Segment>, String),
    Step(usize, Vec<Segment>, String),
    Item(Vec<Segment>, String),
}

fn piece() -> impl Strategy<Value = Piece> {
    // Text without `{`, so pieces side by side never make a `{{`.
    let blank = "[ \t\n]{0,2}";
    prop_oneof![
        "[^{]{1,12}".prop_map(Piece::Text),
        (segments(), blank).prop_map(|(p, ws)| Piece::Input(p, ws)),
        (any::<usize>(), segments(), blank).prop_map(|(s, p, ws)| Piece::Step(s, p, ws)),
        (segments(), blank).prop_map(|(p, ws)| Piece::Item(p, ws)),
    ]
}

/// A generated step: raw choices that [`build`] turns into a valid step.
#[derive(Clone, Debug)]
struct Plan {
    id: String,
    kind: u8,
    deps: Vec<usize>,
    template: Vec<Piece>,
    expression: u8,
    number: u32,
    flags: [bool; 4],
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        "[a-z0-9_-]{0,8}",
        0u8..6,
        prop::collection::vec(any::<usize>(), 0..3),
        prop::collection::vec(piece(), 0..5),
        any::<u8>(),
        any::<u32>(),
        any::<[bool; 4]>(),
    )
        .prop_map(
            |(id, kind, deps, template, expression, number, flags)| Plan {
                id,
                kind,
                deps,
                template,
                expression,
                number,
                flags,
            },
        )
}

/// What a step may read while it is built.
struct Reads<'a> {
    upstream: &'a [String],
    in_loop: bool,
}

impl Reads<'_> {
    fn template(&self, pieces: &[Piece]) -> String {
        let mut source = String::new();
        for piece in pieces {
            let placeholder = |path: String, ws: &str| format!("{{{{{ws}{path}{ws}}}}}");
            match piece {
                Piece::Text(text) => source.push_str(text),
                Piece::Input(path, ws) => {
                    source.push_str(&placeholder(print_path("input", path), ws))
                }
                Piece::Step(n, path, ws) if !self.upstream.is_empty() => {
                    let id = &self.upstream[n % self.upstream.len()];
                    source.push_str(&placeholder(
                        print_path(&format!("steps.{id}.output"), path),
                        ws,
                    ));
                }
                Piece::Item(path, ws) if self.in_loop => {
                    source.push_str(&placeholder(print_path("item", path), ws));
                }
                Piece::Step(_, path, ws) | Piece::Item(path, ws) => {
                    source.push_str(&placeholder(print_path("input", path), ws));
                }
            }
        }
        source
    }

    /// A template that is not blank, as prompts and instructions must be.
    fn nonblank(&self, pieces: &[Piece]) -> String {
        let source = self.template(pieces);
        if source.trim().is_empty() {
            format!("Go{source}")
        } else {
            source
        }
    }

    fn condition(&self, plan: &Plan) -> String {
        let n = plan.number % 100;
        let step = |field: &str| match self.upstream.first() {
            Some(id) => format!("{}.output.{field}", cel_step(id)),
            None => format!("input.{field}"),
        };
        match plan.expression % 6 {
            0 => format!("input.count > {n}"),
            1 => format!("size(input.items) == {n} || input.force == true"),
            2 => format!("{} == 'gold'", step("tier")),
            3 => format!("has(input.flag) && {n} < 10"),
            4 => format!("[1, 2, {n}].exists(x, x > {n})"),
            _ => format!("{} in ['a', 'b'] && !(input.off == true)", step("kind")),
        }
    }

    fn template_object(&self, plan: &Plan) -> Value {
        json!({
            "text": self.template(&plan.template),
            "count": plan.number,
            "nested": {"list": [self.template(&plan.template), null, true]},
        })
    }

    /// The config of a step that is not a decision or a loop.
    fn leaf(&self, kind: u8, plan: &Plan) -> (&'static str, Value) {
        let tools = project_tools();
        match kind % 4 {
            0 => {
                let mut config = json!({"prompt": self.nonblank(&plan.template)});
                if plan.flags[0] {
                    let chosen: Vec<String> = tools
                        .iter()
                        .take(1 + plan.number as usize % tools.len())
                        .map(Uuid::to_string)
                        .collect();
                    config["tools"] = json!(chosen);
                }
                if plan.flags[1] {
                    config["max_iterations"] = json!(1 + plan.number % MAX_PROMPT_ITERATIONS);
                }
                ("prompt", config)
            }
            1 => (
                "tool",
                json!({"tool_id": tools[plan.number as usize % tools.len()],
                       "input": self.template_object(plan)}),
            ),
            2 => {
                let mut config = json!({
                    "url": format!("https://hooks.example.com/in/{}", plan.number),
                    "body": self.template_object(plan),
                });
                if plan.flags[0] {
                    config["headers"] = json!({"X-Trace": self.template(&plan.template)});
                }
                if plan.flags[1] {
                    config["credentials"] = json!({"id": credential(), "scheme": "Bearer"});
                }
                ("webhook", config)
            }
            _ => (
                "human",
                json!({"instructions": self.nonblank(&plan.template)}),
            ),
        }
    }
}

/// How CEL names step `id`: `steps.<id>` when the id is an identifier, else `steps['<id>']`.
fn cel_step(id: &str) -> String {
    let identifier = id.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if identifier {
        format!("steps.{id}")
    } else {
        format!("steps['{id}']")
    }
}

/// A valid definition from `plans`, its steps listed in `order`.
fn build(plans: &[Plan], order: &[usize]) -> Value {
    let ids: Vec<String> = plans
        .iter()
        .enumerate()
        .map(|(i, plan)| format!("{}-{i}", plan.id))
        .collect();
    // Each step depends only on earlier ones, so there is no cycle.
    let deps: Vec<Vec<usize>> = plans
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            let mut deps: Vec<usize> = plan.deps.iter().filter(|_| i > 0).map(|d| d % i).collect();
            deps.sort_unstable();
            deps.dedup();
            deps
        })
        .collect();
    let steps: Vec<Value> = plans
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            let upstream: Vec<String> = deps[i].iter().map(|&d| ids[d].clone()).collect();
            let reads = Reads {
                upstream: &upstream,
                in_loop: false,
            };
            let (kind, config) = match plan.kind {
                4 => {
                    // Branch to the steps that depend on this one, split between the branches.
                    let dependents: Vec<&String> = (i + 1..plans.len())
                        .filter(|&j| deps[j].contains(&i))
                        .map(|j| &ids[j])
                        .collect();
                    let (then, otherwise): (Vec<_>, Vec<_>) = dependents
                        .into_iter()
                        .enumerate()
                        .partition(|(k, _)| plan.flags[k % 4]);
                    let then: Vec<&String> = then.into_iter().map(|(_, id)| id).collect();
                    let mut config = json!({"condition": reads.condition(plan), "then": then});
                    if !otherwise.is_empty() || plan.flags[3] {
                        let otherwise: Vec<&String> =
                            otherwise.into_iter().map(|(_, id)| id).collect();
                        config["else"] = json!(otherwise);
                    }
                    ("decision", config)
                }
                5 => {
                    let inner = Reads {
                        upstream: &upstream,
                        in_loop: true,
                    };
                    let (step_kind, step_config) = inner.leaf(plan.expression, plan);
                    let mut config = json!({
                        "max_iterations": 1 + plan.number % MAX_LOOP_ITERATIONS,
                        "step": {"type": step_kind, "config": step_config},
                    });
                    if plan.flags[2] {
                        config["while"] = json!(format!("iteration < {}", plan.number % 7));
                    } else {
                        config["over"] = json!(match upstream.first() {
                            Some(id) if plan.flags[3] => format!("{}.output.items", cel_step(id)),
                            _ => "input.items".to_owned(),
                        });
                    }
                    ("loop", config)
                }
                kind => reads.leaf(kind, plan),
            };
            let depends_on: Vec<&String> = deps[i].iter().map(|&d| &ids[d]).collect();
            json!({"id": ids[i], "type": kind, "depends_on": depends_on, "config": config})
        })
        .collect();
    json!({"steps": order.iter().map(|&i| steps[i].clone()).collect::<Vec<_>>()})
}

/// Plans and an order to list their steps in.
fn definition() -> impl Strategy<Value = Value> {
    prop::collection::vec(plan(), 1..8)
        .prop_flat_map(|plans| {
            let order = Just((0..plans.len()).collect::<Vec<_>>()).prop_shuffle();
            (Just(plans), order)
        })
        .prop_map(|(plans, order)| build(&plans, &order))
}

/// Every JSON Pointer inside `value`, the root included.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                pointers(
                    item,
                    format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (k, item) in items.iter().enumerate() {
                pointers(item, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A path that exists in `value`, chosen by `picks`, with the value there.
fn existing_path<'a>(value: &'a Value, picks: &[Index]) -> (Vec<Segment>, &'a Value) {
    let is_name = |key: &str| {
        !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let mut path = Vec::new();
    let mut at = value;
    for pick in picks {
        match at {
            Value::Array(items) if !items.is_empty() => {
                let k = pick.index(items.len());
                path.push(Segment::Index(k));
                at = &items[k];
            }
            Value::Object(map) => {
                let names: Vec<&String> = map.keys().filter(|key| is_name(key)).collect();
                if names.is_empty() {
                    break;
                }
                let name = names[pick.index(names.len())];
                path.push(Segment::Field(name.clone()));
                at = &map[name];
            }
            _ => break,
        }
    }
    (path, at)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_json_is_a_definition_or_refused_with_field_errors(raw in json()) {
        if let Err(errors) = parse_project(&raw) {
            prop_assert!(!errors.is_empty());
        }
    }

    #[test]
    fn a_generated_definition_parses_and_round_trips(raw in definition()) {
        let parsed = match parse_project(&raw) {
            Ok(parsed) => parsed,
            Err(errors) => return Err(TestCaseError::fail(format!("{errors:?} in {raw:#}"))),
        };
        let printed = serde_json::to_value(&parsed).expect("a definition prints as JSON");
        let reparsed = parse_project(&printed);
        prop_assert_eq!(reparsed.as_ref(), Ok(&parsed));
        let read: Definition = serde_json::from_value(printed).expect("a printed definition reads back");
        prop_assert_eq!(read, parsed);
    }

    #[test]
    fn a_definition_with_any_node_replaced_is_parsed_or_refused(
        raw in definition(),
        at in any::<Index>(),
        replacement in json(),
    ) {
        let mut all = Vec::new();
        pointers(&raw, String::new(), &mut all);
        let pointer = &all[at.index(all.len())];
        let mut mutated = raw.clone();
        match mutated.pointer_mut(pointer) {
            Some(node) => *node = replacement,
            None => return Err(TestCaseError::fail(format!("no {pointer} in {raw}"))),
        }
        if let Err(errors) = parse_project(&mutated) {
            prop_assert!(!errors.is_empty());
        }
    }

    #[test]
    fn any_text_is_a_template_or_refused(source in text()) {
        let _ = split(&source);
        if let Ok(template) = Template::parse(&source) {
            let steps = Map::new();
            let scope = Scope { input: &Value::Null, steps: &steps, run: &Value::Null, item: None, iteration: None };
            let _ = template.render(&scope);
        }
    }

    #[test]
    fn a_template_has_the_pieces_it_was_built_from(
        pieces in prop::collection::vec(piece(), 0..8),
    ) {
        let upstream = vec!["fetch".to_owned(), "a-1".to_owned()];
        let reads = Reads { upstream: &upstream, in_loop: true };
        let source = reads.template(&pieces);
        let template = Template::parse(&source).map_err(|e| TestCaseError::fail(format!("{e}: {source:?}")))?;
        prop_assert_eq!(template.as_str(), source.as_str());
        let placeholders = pieces.iter().filter(|p| !matches!(p, Piece::Text(_))).count();
        prop_assert_eq!(template.references().count(), placeholders);
        // Each path prints back to what parses to the same reference.
        for reference in template.references() {
            let printed = Template::parse(&format!("{{{{ {reference} }}}}")).expect("a printed path parses");
            prop_assert_eq!(printed.references().collect::<Vec<_>>(), vec![reference]);
            if let Root::Step(id) = &reference.root {
                prop_assert!(upstream.iter().any(|u| u == id.as_str()));
            }
        }
        let text: String = template.parts().iter().filter_map(|p| match p {
            Part::Text(text) => Some(text.as_str()),
            Part::Placeholder(_) => None,
        }).collect();
        let expected: String = pieces.iter().filter_map(|p| match p {
            Piece::Text(text) => Some(text.as_str()),
            _ => None,
        }).collect();
        prop_assert_eq!(text, expected);
    }

    #[test]
    fn a_path_prints_back_to_itself(root in "[A-Za-z0-9_-]{1,8}", path in segments()) {
        let printed = print_path(&root, &path);
        let mut expected = vec![Segment::Field(root)];
        expected.extend(path);
        prop_assert_eq!(parse_path(&printed), Some(expected));
    }

    #[test]
    fn a_lone_placeholder_renders_the_value_it_names(
        input in object(),
        picks in prop::collection::vec(any::<Index>(), 0..5),
        ws in "[ \t]{0,3}",
    ) {
        let input = Value::Object(input);
        let (path, expected) = existing_path(&input, &picks);
        let source = format!("{ws}{{{{ {} }}}}{ws}", print_path("input", &path));
        let template = Template::parse(&source).map_err(|e| TestCaseError::fail(format!("{e}: {source:?}")))?;
        let steps = Map::new();
        let scope = Scope { input: &input, steps: &steps, run: &Value::Null, item: None, iteration: None };
        prop_assert_eq!(&template.render(&scope).expect("the path exists"), expected);
    }

    #[test]
    fn any_tool_url_or_header_template_is_checked_without_panic(source in text(), name in text()) {
        let _ = crate::tool::template::parse_template(&source);
        let _ = crate::tool::template::check_url(&source);
        let _ = crate::tool::template::check_url(&format!("https://api.example.com/{source}"));
        let _ = crate::tool::template::check_header(&name, &source);
    }

    #[test]
    fn any_text_is_a_cel_expression_or_refused(source in text()) {
        let _ = Expression::parse(&source);
    }

    #[test]
    fn any_cel_punctuation_is_an_expression_or_refused(
        pieces in prop::collection::vec(
            prop::sample::select(vec![
                "(", ")", "[", "]", "{", "}", "!", "-", ".", ",", "?", ":", "'", "\"", "\\",
                "&&", "||", "==", "+", "*", "/", "%", " in ", "a", "1", "1.5", "u", "b'",
                "r'", "steps", "input", ".all(x, ", ".map(y, ", "has(", "size(", "dyn(",
                "\"\"\"", "'''", "\\u", "\\x", "0x", "e9", "@it", "__result__",
            ]),
            0..300,
        )
    ) {
        let _ = Expression::parse(&pieces.concat());
    }

    #[test]
    fn cel_nested_to_the_size_cap_is_an_expression_or_refused(
        (open, close) in prop::sample::select(vec![
            ("(", ")"), ("[", "]"), ("{1: ", "}"), ("!", ""), ("-", ""), ("f(", ")"),
            ("a.all(x, ", ")"), ("true ? ", " : 1"), ("[", ""), ("(", ""),
        ]),
        depth in 1usize..MAX_EXPRESSION_BYTES,
    ) {
        let unit = open.len() + close.len();
        let depth = depth.min((MAX_EXPRESSION_BYTES - 1) / unit.max(1));
        let source = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        let _ = Expression::parse(&source);
    }
}

#[test]
fn a_definition_reads_back_the_steps_it_was_given_whatever_their_order() {
    let plans: Vec<Plan> = (0..6u8)
        .map(|kind| Plan {
            id: "s".to_owned(),
            kind,
            deps: vec![0, 1, 2],
            template: vec![
                Piece::Text("Hi ".to_owned()),
                Piece::Step(0, Vec::new(), " ".to_owned()),
            ],
            expression: kind,
            number: 3,
            flags: [true, false, kind % 2 == 0, true],
        })
        .collect();
    let forward = build(&plans, &[0, 1, 2, 3, 4, 5]);
    let backward = build(&plans, &[5, 4, 3, 2, 1, 0]);
    let (forward, backward) = (
        parse_project(&forward).unwrap(),
        parse_project(&backward).unwrap(),
    );
    let ids = |d: &Definition| {
        d.steps
            .iter()
            .map(|s| s.id.to_string())
            .collect::<HashSet<_>>()
    };
    assert_eq!(ids(&forward), ids(&backward));
    assert_eq!(forward.steps.len(), 6);
}
