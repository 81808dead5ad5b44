//! Expressions in CEL (the Common Expression Language): a decision's `condition`, a loop's
//! `over` and `while`.
//!
//! An expression reads the run through variables: `input`, `steps.<id>` (a step's record,
//! e.g. `steps.lookup.output.tier`), and inside a `while` loop `iteration` (iterations done
//! so far). Which of them a given expression may use is checked by the definition.

use std::fmt;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use serde::{Deserialize, Serialize};

use super::StepId;

/// Largest accepted expression, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;

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
#[derive(Clone, PartialEq, Eq)]
pub struct Expression {
    source: String,
    steps: Vec<StepId>,
    variables: Vec<String>,
}

impl Expression {
    /// Parses an expression and collects the steps and other variables it reads.
    pub fn parse(source: &str) -> Result<Self, String> {
        if source.trim().is_empty() {
            return Err("must not be empty".to_owned());
        }
        if source.len() > MAX_EXPRESSION_BYTES {
            return Err(format!("must be at most {MAX_EXPRESSION_BYTES} bytes"));
        }
        let program = cel::Program::compile(source).map_err(|errors| {
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
        Ok(Self {
            source: source.to_owned(),
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

#[cfg(test)]
mod tests {
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
}
