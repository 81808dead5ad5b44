//! Expressions in CEL (the Common Expression Language): a decision's `condition`, a loop's
//! `over` and `while`.
//!
//! An expression reads the run through variables: `input`, `steps.<id>` (a step's record,
//! e.g. `steps.lookup.output.tier`), and inside a `while` loop `iteration` (iterations done
//! so far). Which of them a given expression may use is checked by the definition.
//!
//! While a run executes, [`Expression::evaluate`] binds those variables from a [`Scope`]:
//! `input`, `steps` (step id → `{output, status}`), `run`, and `item` and `iteration` when
//! the scope has them. JSON numbers become CEL `int` when they fit, else `uint`, else `double`.
//!
//! Before it runs, an evaluation's cost is estimated from the expression and the sizes of the
//! values it reads ([`super::cel_cost`]); one over the limit is refused ("expression too
//! costly: about N operations, the limit is M"). The engine evaluates decisions off the async
//! executor ([`Expression::evaluate_bool_blocking`]), under a wall-clock limit as a backstop.

use std::collections::HashMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, Program, Value as Cel};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::cel_cost::{Sizes, MAX_COST};
use super::{cel_syntax, Scope, StepId};

/// Largest accepted expression, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;

/// The longest an evaluation off the executor may take, whatever its estimated cost.
pub const EVALUATION_TIMEOUT: Duration = Duration::from_secs(5);

/// CEL's type names, which parse as identifiers but are no variables.
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// A CEL expression that parses, with the variables it reads.
///
/// It keeps the compiled program (shared: `Program` is `Send + Sync` but not `Clone`), so
/// evaluating does not parse again.
#[derive(Clone)]
pub struct Expression {
    source: String,
    program: Arc<Program>,
    steps: Vec<StepId>,
    variables: Vec<String>,
}

/// Two expressions are equal when written the same; the rest derives from the source.
impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Expression {}

// Definitions holding expressions are shared across tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Expression>();
};

impl Expression {
    /// Parses an expression and collects the steps and other variables it reads.
    pub fn parse(source: &str) -> Result<Self, String> {
        if source.trim().is_empty() {
            return Err("must not be empty".to_owned());
        }
        if source.len() > MAX_EXPRESSION_BYTES {
            return Err(format!("must be at most {MAX_EXPRESSION_BYTES} bytes"));
        }
        cel_syntax::check_nesting(source)?;
        let (program, found) = cel_syntax::on_parser_stack(|| {
            let program = Program::compile(source).map_err(|errors| {
                let first = errors.errors.first();
                match first {
                    Some(e) => format!(
                        "is not a valid CEL expression: {} (line {}, column {})",
                        e.msg,
                        e.pos.0,
                        e.pos.1 + 1
                    ),
                    None => "is not a valid CEL expression".to_owned(),
                }
            })?;
            let mut found = Found::default();
            visit(program.expression(), &mut Vec::new(), &mut found)?;
            Ok((program, found))
        })?;
        Ok(Self {
            source: source.to_owned(),
            program: Arc::new(program),
            steps: found.steps,
            variables: found.variables,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The steps it reads (`steps.<id>`), each once, in order of appearance.
    pub fn steps(&self) -> &[StepId] {
        &self.steps
    }

    /// The other variables it reads (`input`, `iteration`, …), each once.
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// Evaluates the expression over `scope` and gives its result as JSON. Errors (no such key,
    /// no matching overload, a variable the scope lacks, a result JSON cannot hold) carry
    /// CEL's message.
    pub fn evaluate(&self, scope: &Scope) -> Result<Value, String> {
        to_json(&self.execute(scope)?)
    }

    /// Evaluates a condition; a result that is not a bool is an error naming its type.
    pub fn evaluate_bool(&self, scope: &Scope) -> Result<bool, String> {
        as_bool(self.execute(scope)?)
    }

    /// Evaluates a list (a loop's `over`); any other result is an error naming its type.
    pub fn evaluate_list(&self, scope: &Scope) -> Result<Vec<Value>, String> {
        as_list(self.execute(scope)?)
    }

    /// Evaluates a condition on a blocking thread, within [`EVALUATION_TIMEOUT`], so a costly
    /// one never holds up the async executor.
    pub async fn evaluate_bool_blocking(&self, scope: &Scope<'_>) -> Result<bool, String> {
        self.evaluate_blocking(scope, as_bool).await
    }

    /// Evaluates a list (a loop's `over`) like [`Self::evaluate_bool_blocking`].
    pub async fn evaluate_list_blocking(&self, scope: &Scope<'_>) -> Result<Vec<Value>, String> {
        self.evaluate_blocking(scope, as_list).await
    }

    /// Runs the program on a blocking thread, within [`EVALUATION_TIMEOUT`], and reads its
    /// result with `read` there too (converting a large list is work as well).
    async fn evaluate_blocking<T: Send + 'static>(
        &self,
        scope: &Scope<'_>,
        read: fn(Cel) -> Result<T, String>,
    ) -> Result<T, String> {
        let bound = self.bind(scope)?;
        let program = Arc::clone(&self.program);
        let task = tokio::task::spawn_blocking(move || run(&program, bound).and_then(read));
        match tokio::time::timeout(EVALUATION_TIMEOUT, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("could not be evaluated (the CEL interpreter failed)".to_owned()),
            Err(_) => Err(format!(
                "took longer than {} s to evaluate",
                EVALUATION_TIMEOUT.as_secs()
            )),
        }
    }

    /// Runs the program with the variables it reads bound from `scope`.
    fn execute(&self, scope: &Scope) -> Result<Cel, String> {
        run(&self.program, self.bind(scope)?)
    }

    /// The variables the program reads, bound from `scope`, once its estimated cost is within
    /// [`MAX_COST`]; only the steps it names are converted, not every step output of the run.
    fn bind(&self, scope: &Scope) -> Result<Vec<(String, Cel)>, String> {
        let cost = Sizes::measure(
            scope,
            self.variables.iter().map(String::as_str),
            self.steps.iter().map(StepId::as_str),
        )
        .cost(self.program.expression());
        if cost > MAX_COST {
            return Err(format!(
                "expression too costly: about {cost} operations, the limit is {MAX_COST}"
            ));
        }
        let mut bound = Vec::with_capacity(self.variables.len() + 1);
        for name in &self.variables {
            let value = match name.as_str() {
                "input" => to_cel(scope.input),
                "run" => to_cel(scope.run),
                "item" => match scope.item {
                    Some(item) => to_cel(item),
                    None => continue,
                },
                "iteration" => match scope.iteration {
                    Some(rounds) => Cel::Int(i64::try_from(rounds).unwrap_or(i64::MAX)),
                    None => continue,
                },
                _ => continue,
            };
            bound.push((name.clone(), value));
        }
        if !self.steps.is_empty() {
            let steps = self
                .steps
                .iter()
                .filter_map(|id| {
                    let record = scope.steps.get(id.as_str())?;
                    Some((Key::from(id.as_str()), to_cel(record)))
                })
                .collect::<HashMap<_, _>>();
            bound.push(("steps".to_owned(), cel_map(steps)));
        }
        Ok(bound)
    }
}

/// Runs `program` with `bound` variables. The interpreter is a third-party crate and the
/// expression comes from a user: a bug there must fail this evaluation, not the worker
/// running the run.
fn run(program: &Program, bound: Vec<(String, Cel)>) -> Result<Cel, String> {
    let mut context = Context::with_env(Arc::clone(stdlib()));
    for (name, value) in bound {
        context.add_variable_from_value(name, value);
    }
    panic::catch_unwind(AssertUnwindSafe(|| program.execute(&context)))
        .map_err(|_| "could not be evaluated (the CEL interpreter failed)".to_owned())?
        .map_err(|e| e.to_string())
}

fn as_list(value: Cel) -> Result<Vec<Value>, String> {
    match value {
        Cel::List(items) => items.iter().map(to_json).collect(),
        other => Err(format!("gives {}, not a list", cel_type(&other))),
    }
}

fn as_bool(value: Cel) -> Result<bool, String> {
    match value {
        Cel::Bool(result) => Ok(result),
        other => Err(format!("gives {}, not a bool", cel_type(&other))),
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

impl Serialize for Expression {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Expression {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Default)]
struct Found {
    steps: Vec<StepId>,
    variables: Vec<String>,
}

impl Found {
    fn step(&mut self, id: &str) -> Result<(), String> {
        let id = StepId::parse(id)
            .map_err(|_| format!("reads `steps.{id}`, which is not a valid step id"))?;
        if !self.steps.contains(&id) {
            self.steps.push(id);
        }
        Ok(())
    }

    fn variable(&mut self, name: &str) {
        if !self.variables.iter().any(|v| v == name) {
            self.variables.push(name.to_owned());
        }
    }
}

/// Walks the syntax tree; `bound` holds the variables of enclosing comprehensions
/// (`x` in `list.all(x, …)`).
fn visit(expr: &IdedExpr, bound: &mut Vec<String>, found: &mut Found) -> Result<(), String> {
    let is_steps = |e: &IdedExpr, bound: &[String]| matches!(&e.expr, Expr::Ident(name) if name == "steps" && !bound.iter().any(|b| b == name));
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) => Ok(()),
        Expr::Ident(name) => {
            if name.starts_with('@') || bound.iter().any(|b| b == name) {
                return Ok(());
            }
            if name == "steps" {
                return Err("reads `steps` as a whole; name a step: `steps.<id>`".to_owned());
            }
            if !TYPE_NAMES.contains(&name.as_str()) {
                found.variable(name);
            }
            Ok(())
        }
        Expr::Select(select) => {
            if is_steps(&select.operand, bound) {
                return found.step(&select.field);
            }
            visit(&select.operand, bound, found)
        }
        Expr::Call(call) => {
            if call.func_name == "_[_]" {
                if let [operand, key] = call.args.as_slice() {
                    if is_steps(operand, bound) {
                        return match &key.expr {
                            Expr::Literal(LiteralValue::String(id)) => found.step(id.inner()),
                            _ => Err("must index `steps` with a step id in quotes".to_owned()),
                        };
                    }
                }
            }
            if let Some(target) = &call.target {
                visit(target, bound, found)?;
            }
            call.args.iter().try_for_each(|a| visit(a, bound, found))
        }
        Expr::Comprehension(comp) => {
            visit(&comp.iter_range, bound, found)?;
            visit(&comp.accu_init, bound, found)?;
            let depth = bound.len();
            bound.push(comp.iter_var.clone());
            if let Some(second) = &comp.iter_var2 {
                bound.push(second.clone());
            }
            bound.push(comp.accu_var.clone());
            let inner = [&comp.loop_cond, &comp.loop_step, &comp.result]
                .into_iter()
                .try_for_each(|e| visit(e, bound, found));
            bound.truncate(depth);
            inner
        }
        Expr::List(list) => list
            .elements
            .iter()
            .try_for_each(|e| visit(e, bound, found)),
        Expr::Map(map) => map
            .entries
            .iter()
            .try_for_each(|entry| visit_entry(&entry.expr, bound, found)),
        Expr::Struct(object) => object
            .entries
            .iter()
            .try_for_each(|entry| visit_entry(&entry.expr, bound, found)),
    }
}

fn visit_entry(
    entry: &EntryExpr,
    bound: &mut Vec<String>,
    found: &mut Found,
) -> Result<(), String> {
    match entry {
        EntryExpr::StructField(field) => visit(&field.value, bound, found),
        EntryExpr::MapEntry(pair) => {
            visit(&pair.key, bound, found)?;
            visit(&pair.value, bound, found)
        }
    }
}

/// The standard CEL environment, built once.
fn stdlib() -> &'static Arc<Env> {
    static STDLIB: OnceLock<Arc<Env>> = OnceLock::new();
    STDLIB.get_or_init(|| Arc::new(Env::stdlib()))
}

fn cel_map(map: HashMap<Key, Cel>) -> Cel {
    Cel::Map(CelMap { map: Arc::new(map) })
}

/// JSON → CEL: integers as `int` when they fit, else `uint`; other numbers as `double`.
fn to_cel(value: &Value) -> Cel {
    match value {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cel::Int(i),
            (None, Some(u)) => Cel::UInt(u),
            _ => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => cel_map(
            map.iter()
                .map(|(key, value)| (Key::from(key.as_str()), to_cel(value)))
                .collect(),
        ),
    }
}

/// CEL → JSON; map keys become strings. Values JSON cannot hold (bytes, non-finite
/// doubles, types, functions) are errors.
fn to_json(value: &Cel) -> Result<Value, String> {
    Ok(match value {
        Cel::Null => Value::Null,
        Cel::Bool(b) => Value::Bool(*b),
        Cel::Int(i) => Value::from(*i),
        Cel::UInt(u) => Value::from(*u),
        Cel::Float(f) => Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("gives the double {f}, which JSON cannot hold"))?,
        Cel::String(s) => Value::String(s.as_str().to_owned()),
        Cel::List(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Cel::Map(map) => Value::Object(
            map.map
                .iter()
                .map(|(key, value)| Ok((key_text(key), to_json(value)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        other => return Err(format!("gives {}, which JSON cannot hold", cel_type(other))),
    })
}

fn key_text(key: &Key) -> String {
    match key {
        Key::String(s) => s.as_str().to_owned(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}

/// "a string", "an int", "null", … for error messages, in CEL's type names.
fn cel_type(value: &Cel) -> String {
    match value {
        Cel::Null => "null".to_owned(),
        Cel::Bytes(_) => "bytes".to_owned(),
        Cel::Float(_) => "a double".to_owned(),
        other => {
            let name = other.type_of().to_string();
            let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            format!("{article} {name}")
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ids(expr: &Expression) -> Vec<&str> {
        expr.steps().iter().map(StepId::as_str).collect()
    }

    #[test]
    fn a_condition_lists_the_steps_and_variables_it_reads() {
        let expr = Expression::parse(
            "steps.lookup.output.tier == 'gold' && steps['draft'].output.ok && input.vip",
        )
        .unwrap();
        assert_eq!(ids(&expr), vec!["lookup", "draft"]);
        assert_eq!(expr.variables(), &["input".to_owned()]);
    }

    #[test]
    fn comprehension_variables_are_not_free() {
        let expr =
            Expression::parse("steps.fetch.output.items.exists(x, x.score > 3 && has(x.id))")
                .unwrap();
        assert_eq!(ids(&expr), vec!["fetch"]);
        assert!(expr.variables().is_empty());
        let typed = Expression::parse("type(input.n) == int").unwrap();
        assert_eq!(typed.variables(), &["input".to_owned()]);
    }

    #[test]
    fn syntax_errors_and_bad_step_reads_are_refused() {
        for bad in [
            "",
            "steps.lookup.output.tier ==",
            "(((",
            "size(steps) > 0",
            "steps[input.name].output",
            "steps.Lookup.output",
        ] {
            assert!(Expression::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Expression::parse(&"1 + ".repeat(2000)).is_err());
    }

    /// Owns what a [`Scope`] borrows.
    struct Run {
        input: Value,
        steps: Map<String, Value>,
        run: Value,
    }

    impl Run {
        fn new(input: Value, steps: Value) -> Self {
            let Value::Object(steps) = steps else {
                panic!("steps must be an object")
            };
            Self {
                input,
                steps,
                run: json!({"id": "r1", "env": "prod", "retries": 0}),
            }
        }

        fn scope(&self) -> Scope<'_> {
            Scope {
                input: &self.input,
                steps: &self.steps,
                run: &self.run,
                item: None,
                iteration: None,
            }
        }
    }

    fn expr(source: &str) -> Expression {
        Expression::parse(source).unwrap()
    }

    fn run() -> Run {
        Run::new(
            json!({"list": [1, 2, 3], "vip": true, "name": "Ada", "limit": 2.5}),
            json!({
                "lookup": {"status": "succeeded", "output": {"tier": "gold", "total": 42, "items": [{"id": "a"}, {"id": "b"}]}},
                "draft": {"status": "failed", "output": null},
            }),
        )
    }

    #[test]
    fn conditions_compare_step_outputs_and_input() {
        let run = run();
        let scope = run.scope();
        for (source, expected) in [
            ("steps.lookup.output.tier == 'gold'", true),
            ("steps.lookup.output.total > 40 && input.vip", true),
            ("steps['lookup'].output.total >= 100", false),
            ("steps.draft.status == 'failed'", true),
            ("input.list.size() > 2", true),
            ("size(input.list) > 3", false),
            ("input.limit > 2.0", true),
            ("has(input.name) && !has(input.missing)", true),
            ("has(steps.lookup.output.tier)", true),
            ("steps.lookup.output.items.exists(x, x.id == 'b')", true),
            ("run.env == 'prod' && run.retries == 0", true),
        ] {
            assert_eq!(expr(source).evaluate_bool(&scope), Ok(expected), "{source}");
        }
    }

    #[test]
    fn an_expression_gives_json_of_any_type() {
        let run = run();
        let scope = run.scope();
        assert_eq!(
            expr("steps.lookup.output.items.map(x, x.id)").evaluate(&scope),
            Ok(json!(["a", "b"]))
        );
        assert_eq!(
            expr("{'n': steps.lookup.output.total + 1, 'half': 0.5, 'none': null}")
                .evaluate(&scope),
            Ok(json!({"n": 43, "half": 0.5, "none": null}))
        );
        assert_eq!(expr("input.name + '!'").evaluate(&scope), Ok(json!("Ada!")));
    }

    #[test]
    fn a_list_expression_gives_its_elements() {
        let run = run();
        let scope = run.scope();
        assert_eq!(
            expr("input.list.filter(n, n > 1)").evaluate_list(&scope),
            Ok(vec![json!(2), json!(3)])
        );
        assert_eq!(
            expr("steps.lookup.output.items").evaluate_list(&scope),
            Ok(vec![json!({"id": "a"}), json!({"id": "b"})])
        );
        let err = expr("input.name").evaluate_list(&scope).unwrap_err();
        assert_eq!(err, "gives a string, not a list");
    }

    #[test]
    fn a_condition_that_is_no_bool_is_an_error_naming_its_type() {
        let run = run();
        let scope = run.scope();
        assert_eq!(
            expr("steps.lookup.output.total").evaluate_bool(&scope),
            Err("gives an int, not a bool".to_owned())
        );
        assert_eq!(
            expr("steps.draft.output").evaluate_bool(&scope),
            Err("gives null, not a bool".to_owned())
        );
    }

    #[test]
    fn runtime_errors_are_errors_with_cel_messages() {
        let run = run();
        let scope = run.scope();
        let missing = expr("steps.lookup.output.nope == 1")
            .evaluate_bool(&scope)
            .unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
        let not_run = expr("steps.later.output.x").evaluate(&scope).unwrap_err();
        assert!(not_run.contains("later"), "{not_run}");
        let mistyped = expr("input.name > 3").evaluate_bool(&scope).unwrap_err();
        assert!(!mistyped.is_empty());
        let division = expr("steps.lookup.output.total / 0").evaluate(&scope);
        assert!(division.is_err());
        let no_item = expr("item > 1").evaluate(&scope).unwrap_err();
        assert!(no_item.contains("item"), "{no_item}");
        assert_eq!(
            expr("b'abc'").evaluate(&scope),
            Err("gives bytes, which JSON cannot hold".to_owned())
        );
        assert!(expr("1.0 / 0.0").evaluate(&scope).is_err());
    }

    #[test]
    fn loop_variables_are_bound_when_the_scope_has_them() {
        let run = run();
        let item = json!({"score": 5});
        let scope = Scope {
            item: Some(&item),
            iteration: Some(3),
            ..run.scope()
        };
        assert_eq!(
            expr("iteration < 3 || item.score > 4").evaluate_bool(&scope),
            Ok(true)
        );
        assert_eq!(expr("iteration").evaluate(&scope), Ok(json!(3)));
    }

    #[test]
    fn large_numbers_keep_their_kind() {
        let run = Run::new(json!({"big": u64::MAX, "neg": -7, "x": 1.5}), json!({}));
        let scope = run.scope();
        assert_eq!(expr("input.big").evaluate(&scope), Ok(json!(u64::MAX)));
        assert_eq!(expr("input.neg * 2").evaluate(&scope), Ok(json!(-14)));
        assert_eq!(expr("input.x * 2.0").evaluate(&scope), Ok(json!(3.0)));
    }

    fn items(n: u32) -> Run {
        let items: Vec<u32> = (0..n).collect();
        Run::new(
            json!({"items": items, "big": "x".repeat(100_000), "nested": {"rows": [1, 2, 3]}}),
            json!({"fetch": {"status": "succeeded", "output": {"rows": items}}}),
        )
    }

    #[test]
    fn nested_comprehensions_over_a_large_input_are_refused_before_they_run() {
        let run = items(1000);
        let bomb = expr("input.items.all(a, input.items.all(b, input.items.all(x, true)))");
        let started = std::time::Instant::now();
        let error = bomb.evaluate_bool(&run.scope()).unwrap_err();
        assert!(
            error.starts_with("expression too costly: about ")
                && error.ends_with(&format!("operations, the limit is {MAX_COST}")),
            "{error}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // A computed range counts as the largest list in reach.
        let computed = expr("input.items.map(a, a).all(a, input.items.all(b, b >= 0))");
        assert!(computed.evaluate_bool(&run.scope()).is_err());
    }

    #[test]
    fn ordinary_expressions_over_a_large_input_still_run() {
        let run = items(1000);
        let scope = run.scope();
        for (source, expected) in [
            ("input.items.exists(x, x == 999)", true),
            ("input.items.map(x, x * 2).size() == 1000", true),
            ("input.items.filter(x, x % 2 == 0).size() == 500", true),
            ("steps.fetch.output.rows.all(r, r < 1000)", true),
            (
                "input.nested.rows.all(r, input.items.exists(i, i == r))",
                true,
            ),
            ("size(input.big + input.big) == 200000", true),
        ] {
            assert_eq!(expr(source).evaluate_bool(&scope), Ok(expected), "{source}");
        }
    }

    #[test]
    fn building_large_strings_in_a_loop_is_refused() {
        let run = items(1000);
        let error = expr("input.items.map(x, input.big + input.big).size() > 0")
            .evaluate_bool(&run.scope())
            .unwrap_err();
        assert!(error.starts_with("expression too costly"), "{error}");
    }

    #[tokio::test]
    async fn a_condition_evaluates_off_the_executor_under_the_same_limit() {
        let run = items(1000);
        assert_eq!(
            expr("input.items.exists(x, x == 5)")
                .evaluate_bool_blocking(&run.scope())
                .await,
            Ok(true)
        );
        let error = expr("input.items.all(a, input.items.all(b, input.items.all(x, true)))")
            .evaluate_bool_blocking(&run.scope())
            .await
            .unwrap_err();
        assert!(error.starts_with("expression too costly"), "{error}");
        assert_eq!(
            expr("input.nested")
                .evaluate_bool_blocking(&run.scope())
                .await,
            Err("gives a map, not a bool".to_owned())
        );
    }

    #[tokio::test]
    async fn a_list_evaluates_off_the_executor_under_the_same_limit() {
        let run = items(1000);
        let list = expr("input.items.filter(x, x < 3)")
            .evaluate_list_blocking(&run.scope())
            .await;
        assert_eq!(list, Ok(vec![json!(0), json!(1), json!(2)]));
        let error = expr("input.items.map(a, input.items.map(b, input.items.map(x, x)))")
            .evaluate_list_blocking(&run.scope())
            .await
            .unwrap_err();
        assert!(error.starts_with("expression too costly"), "{error}");
        assert_eq!(
            expr("input.nested")
                .evaluate_list_blocking(&run.scope())
                .await,
            Err("gives a map, not a list".to_owned())
        );
    }

    #[test]
    fn equal_sources_make_equal_expressions() {
        assert_eq!(expr("input.a == 1"), expr("input.a == 1"));
        assert_ne!(expr("input.a == 1"), expr("input.a == 2"));
        let copy = expr("input.vip").clone();
        assert_eq!(copy.evaluate_bool(&run().scope()), Ok(true));
    }
}
