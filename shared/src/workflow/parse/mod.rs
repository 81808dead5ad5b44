//! The parser behind [`parse`]: it walks the JSON once, records every problem at its path,
//! and checks the graph (dependencies, cycles, decision targets, what each step may read) once
//! every step is known. The per-type step configs are parsed in [`steps`].

mod steps;

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};
use uuid::Uuid;

use super::condition::Expression;
use super::definition::*;
use super::template::{Root, Template};
use crate::error::FieldError;

/// Parses a definition. `project_tools` are the ids of the tools of the workflow's project
/// (at least those [`referenced_tool_ids`] names); any other tool id is an error.
/// On failure, every problem is reported, with paths relative to the definition.
pub fn parse(raw: &Value, project_tools: &HashSet<Uuid>) -> Result<Definition, Vec<FieldError>> {
    parse_with(raw, project_tools, &HashMap::new())
}

/// [`parse`], where webhook steps may also name `project_credentials` (id → the origin each is
/// bound to; at least those [`referenced_credential_ids`] names).
pub fn parse_with(
    raw: &Value,
    project_tools: &HashSet<Uuid>,
    project_credentials: &HashMap<Uuid, String>,
) -> Result<Definition, Vec<FieldError>> {
    let mut p = Parser {
        errors: Vec::new(),
        tools: project_tools,
        credentials: project_credentials,
        tools_used: HashSet::new(),
        reads: Vec::new(),
        targets: Vec::new(),
    };
    let size = serde_json::to_vec(raw)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DEFINITION_BYTES {
        p.error(
            "",
            format!("must be at most {MAX_DEFINITION_BYTES} bytes of JSON"),
        );
        return Err(p.errors);
    }
    let Some(root) = p.object(raw, "") else {
        return Err(p.errors);
    };
    p.known_fields(root, "", &["steps"]);
    let Some(raw_steps) = p.required(root, "", "steps") else {
        return Err(p.errors);
    };
    let Some(raw_steps) = p.array(raw_steps, "steps") else {
        return Err(p.errors);
    };
    if raw_steps.len() > MAX_STEPS {
        p.error("steps", format!("must have at most {MAX_STEPS} steps"));
        return Err(p.errors);
    }
    let parsed: Vec<Option<Parsed>> = raw_steps
        .iter()
        .enumerate()
        .map(|(i, raw)| p.step(i, raw))
        .collect();
    if p.tools_used.len() > MAX_DISTINCT_TOOLS {
        p.error(
            "steps",
            format!("may use at most {MAX_DISTINCT_TOOLS} distinct tools"),
        );
    }
    p.check_graph(&parsed);
    if !p.errors.is_empty() {
        return Err(p.errors);
    }
    let steps = parsed
        .into_iter()
        .map(|step| {
            step.and_then(|s| {
                Some(Step {
                    id: s.id?,
                    depends_on: s.depends_on.into_iter().map(|(_, id)| id).collect(),
                    kind: s.kind?,
                })
            })
        })
        .collect::<Option<Vec<Step>>>();
    // Every piece parsed when no error was recorded; this is a guard, not a path.
    steps
        .map(|steps| Definition { steps })
        .ok_or_else(|| vec![FieldError::new("steps", "could not be read")])
}

/// A step as far as it parsed.
struct Parsed {
    id: Option<StepId>,
    /// `(index in depends_on, id)`; entries that are not valid ids are already reported.
    depends_on: Vec<(usize, StepId)>,
    kind: Option<StepKind>,
}

/// Where a string is allowed to read from.
#[derive(Clone, Copy)]
struct Scope {
    step: usize,
    /// Inside a loop's step, where `{{ item }}` exists.
    in_loop: bool,
}

struct Parser<'a> {
    errors: Vec<FieldError>,
    tools: &'a HashSet<Uuid>,
    /// The project's credentials a definition may name, with the origin each is bound to.
    credentials: &'a HashMap<Uuid, String>,
    tools_used: HashSet<Uuid>,
    /// `(path, reading step, step read)`, checked once every step is known.
    reads: Vec<(String, usize, StepId)>,
    /// `(path, decision step, target)` of `then`/`else`.
    targets: Vec<(String, usize, StepId)>,
}

fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::from(key)),
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

const STEP_TYPES: &str = "prompt, tool, decision, loop, webhook or human";

impl Parser<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn object<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        let object = value.as_object();
        if object.is_none() {
            self.error(path, "must be an object");
        }
        object
    }

    fn array<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Vec<Value>> {
        let array = value.as_array();
        if array.is_none() {
            self.error(path, "must be an array");
        }
        array
    }

    fn known_fields(&mut self, object: &Map<String, Value>, path: &str, known: &[&str]) {
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                let expected = known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    &join(path, key),
                    format!("is not a known field here; expected {expected}"),
                );
            }
        }
    }

    fn required<'v>(
        &mut self,
        object: &'v Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<&'v Value> {
        let value = object.get(key);
        if value.is_none() {
            self.error(&join(path, key), "is required");
        }
        value
    }

    fn string<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        let string = value.as_str();
        if string.is_none() {
            self.error(path, "must be a string");
        }
        string
    }

    fn bounded(&mut self, value: &Value, path: &str, max: u32) -> Option<u32> {
        let n = value
            .as_u64()
            .filter(|n| (1..=u64::from(max)).contains(n))
            .and_then(|n| u32::try_from(n).ok());
        if n.is_none() {
            self.error(path, format!("must be a whole number from 1 to {max}"));
        }
        n
    }

    fn step(&mut self, i: usize, raw: &Value) -> Option<Parsed> {
        let path = index("steps", i);
        let object = self.object(raw, &path)?;
        self.known_fields(object, &path, &["id", "type", "depends_on", "config"]);
        let id = self.required(object, &path, "id").and_then(|v| {
            let at = join(&path, "id");
            let raw = self.string(v, &at)?;
            StepId::parse(raw).map_err(|m| self.error(&at, m)).ok()
        });
        let mut depends_on = Vec::new();
        if let Some(raw) = object.get("depends_on") {
            let at = join(&path, "depends_on");
            for (k, dep) in self.array(raw, &at).into_iter().flatten().enumerate() {
                let at = index(&at, k);
                let Some(dep) = self.string(dep, &at) else {
                    continue;
                };
                match StepId::parse(dep) {
                    Ok(dep) => depends_on.push((k, dep)),
                    Err(_) => self.error(&at, format!("there is no step `{dep}`")),
                }
            }
        }
        let type_name = self.required(object, &path, "type").and_then(|v| {
            let at = join(&path, "type");
            let name = self.string(v, &at)?;
            let known = ["prompt", "tool", "decision", "loop", "webhook", "human"].contains(&name);
            if !known {
                self.error(
                    &at,
                    format!("`{name}` is not a step type; expected {STEP_TYPES}"),
                );
            }
            known.then_some(name)
        });
        let config = self.required(object, &path, "config");
        let kind = match (type_name, config) {
            (Some(type_name), Some(config)) => {
                let at = join(&path, "config");
                let scope = Scope {
                    step: i,
                    in_loop: false,
                };
                self.kind(type_name, config, &at, scope)
            }
            _ => None,
        };
        Some(Parsed {
            id,
            depends_on,
            kind,
        })
    }

    fn kind(&mut self, type_name: &str, raw: &Value, path: &str, scope: Scope) -> Option<StepKind> {
        let config = self.object(raw, path)?;
        match type_name {
            "prompt" => self.prompt(config, path, scope).map(StepKind::Prompt),
            "tool" => self.tool(config, path, scope).map(StepKind::Tool),
            "decision" => self.decision(config, path, scope).map(StepKind::Decision),
            "loop" => self.loop_config(config, path, scope).map(StepKind::Loop),
            "webhook" => self.webhook(config, path, scope).map(StepKind::Webhook),
            _ => self.human(config, path, scope).map(StepKind::Human),
        }
    }

    fn nonempty_template(&mut self, value: &Value, path: &str, scope: Scope) -> Option<Template> {
        if value.as_str().is_some_and(|s| s.trim().is_empty()) {
            self.error(path, "must not be empty");
            return None;
        }
        self.template(value, path, scope)
    }

    fn template(&mut self, value: &Value, path: &str, scope: Scope) -> Option<Template> {
        let raw = self.string(value, path)?;
        let template = Template::parse(raw).map_err(|m| self.error(path, m)).ok()?;
        let mut ok = true;
        for reference in template.references() {
            match &reference.root {
                Root::Input => {}
                Root::Item if scope.in_loop => {}
                Root::Item => {
                    self.error(
                        path,
                        "uses `{{ item }}`, which exists only in a loop's step",
                    );
                    ok = false;
                }
                Root::Step(id) => self.reads.push((path.to_owned(), scope.step, id.clone())),
            }
        }
        ok.then_some(template)
    }

    fn template_object(&mut self, raw: &Value, path: &str, scope: Scope) -> Option<TemplateObject> {
        let map = self.object(raw, path)?;
        let before = self.errors.len();
        for (key, value) in map {
            self.template_value(value, &join(path, key), scope);
        }
        (self.errors.len() == before).then(|| TemplateObject(map.clone()))
    }

    fn template_value(&mut self, value: &Value, path: &str, scope: Scope) {
        match value {
            Value::String(_) => {
                self.template(value, path, scope);
            }
            Value::Array(items) => {
                for (k, item) in items.iter().enumerate() {
                    self.template_value(item, &index(path, k), scope);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    self.template_value(item, &join(path, key), scope);
                }
            }
            _ => {}
        }
    }

    /// Parses a CEL expression that may read `input`, upstream steps and `extra` variables.
    fn expression(
        &mut self,
        value: &Value,
        path: &str,
        scope: Scope,
        extra: &[&str],
    ) -> Option<Expression> {
        let raw = self.string(value, path)?;
        let expression = Expression::parse(raw)
            .map_err(|m| self.error(path, m))
            .ok()?;
        let mut ok = true;
        for variable in expression.variables() {
            if variable != "input" && !extra.contains(&variable.as_str()) {
                let allowed: Vec<String> = ["input", "steps.<id>"]
                    .iter()
                    .chain(extra)
                    .map(|name| format!("`{name}`"))
                    .collect();
                self.error(
                    path,
                    format!(
                        "reads `{variable}`, which does not exist here; use {}",
                        allowed.join(", ")
                    ),
                );
                ok = false;
            }
        }
        for id in expression.steps() {
            self.reads.push((path.to_owned(), scope.step, id.clone()));
        }
        ok.then_some(expression)
    }

    /// Cross-step rules: unique ids, dependencies that exist, no cycles, reads of upstream
    /// steps only, branch targets that depend on their decision.
    fn check_graph(&mut self, steps: &[Option<Parsed>]) {
        let mut by_id: HashMap<&StepId, usize> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            let Some(id) = step.as_ref().and_then(|s| s.id.as_ref()) else {
                continue;
            };
            match by_id.get(id) {
                Some(first) => self.error(
                    &join(&index("steps", i), "id"),
                    format!("`{id}` is already the id of steps[{first}]"),
                ),
                None => {
                    by_id.insert(id, i);
                }
            }
        }
        // edges[i]: (index in depends_on, step depended on)
        let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); steps.len()];
        for (i, step) in steps.iter().enumerate() {
            let Some(step) = step else { continue };
            let mut seen = HashSet::new();
            for (k, dep) in &step.depends_on {
                let at = index(&join(&index("steps", i), "depends_on"), *k);
                if step.id.as_ref() == Some(dep) {
                    self.error(&at, "a step cannot depend on itself");
                } else if !seen.insert(dep) {
                    self.error(&at, format!("lists `{dep}` twice"));
                } else {
                    match by_id.get(dep) {
                        Some(&j) => edges[i].push((*k, j)),
                        None => self.error(&at, format!("there is no step `{dep}`")),
                    }
                }
            }
        }
        self.find_cycles(steps, &edges);
        let upstream: Vec<HashSet<usize>> =
            (0..steps.len()).map(|i| reachable(i, &edges)).collect();
        let own_id = |i: usize| {
            steps[i]
                .as_ref()
                .and_then(|s| s.id.as_ref())
                .map_or_else(|| format!("steps[{i}]"), |id| format!("`{id}`"))
        };
        for (path, i, id) in std::mem::take(&mut self.reads) {
            match by_id.get(&id) {
                None => self.error(
                    &path,
                    format!("reads `steps.{id}`, but there is no step `{id}`"),
                ),
                Some(&j) if j == i => {
                    self.error(&path, format!("reads `steps.{id}`, the step's own output"))
                }
                Some(j) if !upstream[i].contains(j) => self.error(
                    &path,
                    format!(
                        "reads `steps.{id}`, which is not upstream of {}; add `{id}` to its \
                         depends_on (directly or through another step)",
                        own_id(i)
                    ),
                ),
                Some(_) => {}
            }
        }
        for (path, i, target) in std::mem::take(&mut self.targets) {
            let decision = steps[i].as_ref().and_then(|s| s.id.as_ref());
            match by_id.get(&target) {
                None => self.error(&path, format!("there is no step `{target}`")),
                Some(&j) if j == i => self.error(&path, "a decision cannot branch to itself"),
                Some(&j) => {
                    let depends = steps[j]
                        .as_ref()
                        .zip(decision)
                        .is_some_and(|(t, d)| t.depends_on.iter().any(|(_, dep)| dep == d));
                    if !depends {
                        self.error(
                            &path,
                            format!(
                                "`{target}` must depend on the decision {} (list it in `{target}`'s depends_on)",
                                own_id(i)
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Depth-first search in step order; each edge that closes a cycle is reported at its
    /// `depends_on` entry.
    fn find_cycles(&mut self, steps: &[Option<Parsed>], edges: &[Vec<(usize, usize)>]) {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let name = |i: usize| {
            steps[i]
                .as_ref()
                .and_then(|s| s.id.as_ref())
                .map_or_else(|| format!("steps[{i}]"), ToString::to_string)
        };
        let mut marks = vec![Mark::New; steps.len()];
        for start in 0..steps.len() {
            if marks[start] != Mark::New {
                continue;
            }
            // (step, next edge to follow); `path` mirrors the open steps.
            let mut stack = vec![(start, 0usize)];
            marks[start] = Mark::Open;
            while let Some(&mut (u, ref mut next)) = stack.last_mut() {
                let Some(&(k, v)) = edges[u].get(*next) else {
                    marks[u] = Mark::Done;
                    stack.pop();
                    continue;
                };
                *next += 1;
                match marks[v] {
                    Mark::New => {
                        marks[v] = Mark::Open;
                        stack.push((v, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|&(s, _)| s == v).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[from..].iter().map(|&(s, _)| name(s)).collect();
                        cycle.push(name(v));
                        self.error(
                            &index(&join(&index("steps", u), "depends_on"), k),
                            format!("closes a dependency cycle: {}", cycle.join(" → ")),
                        );
                    }
                    Mark::Done => {}
                }
            }
        }
    }
}

/// The steps `start` depends on, directly or transitively.
fn reachable(start: usize, edges: &[Vec<(usize, usize)>]) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut todo = vec![start];
    while let Some(u) = todo.pop() {
        for &(_, v) in &edges[u] {
            if seen.insert(v) {
                todo.push(v);
            }
        }
    }
    seen
}
