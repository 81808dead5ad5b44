//! What evaluating a CEL expression may cost, estimated before it runs: cel 0.15 has no cost
//! limit of its own, and a few nested comprehensions over a large input would otherwise run
//! for minutes and fill memory.
//!
//! The estimate is an upper bound, from the syntax tree and the sizes of the values the
//! expression reads:
//!
//! 1. every node evaluated counts one operation;
//! 2. a comprehension (`all`, `exists`, `map`, `filter`, …) evaluates its body once per
//!    element of its range: the length of the list or map its range names (`input.items`,
//!    `steps.fetch.output.rows`, a list literal), or, for a range that is computed, of the
//!    largest list or map the expression can see;
//! 3. `+` on strings or lists copies: one operation per [`COPY_CHUNK`] bytes or elements of the
//!    largest string or list the expression can see (appends to a comprehension's own result
//!    are built in place and count one).
//!
//! An expression over [`MAX_COST`] is refused unevaluated.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use serde_json::{Map, Value};

use super::Scope;

/// The most operations one evaluation may cost.
pub const MAX_COST: u64 = 1_000_000;

/// Bytes (or elements) one copying operation counts for.
const COPY_CHUNK: u64 = 64;

/// The values an expression reads, and the sizes the estimate falls back on.
pub(super) struct Sizes<'a> {
    scope: &'a Scope<'a>,
    /// The length of the largest list or map in reach.
    largest_collection: u64,
    /// The length of the largest string (bytes) or list (elements) in reach.
    largest_copy: u64,
}

impl<'a> Sizes<'a> {
    /// Measures what `variables` and `steps` (the ones an expression reads) hold in `scope`.
    pub(super) fn measure<'s>(
        scope: &'a Scope<'a>,
        variables: impl IntoIterator<Item = &'s str>,
        steps: impl IntoIterator<Item = &'s str>,
    ) -> Self {
        let mut sizes = Self {
            scope,
            largest_collection: 0,
            largest_copy: 0,
        };
        for name in variables {
            let value = match name {
                "input" => Some(scope.input),
                "run" => Some(scope.run),
                "item" => scope.item,
                _ => None,
            };
            if let Some(value) = value {
                sizes.take_in(value);
            }
        }
        for id in steps {
            if let Some(record) = scope.steps.get(id) {
                sizes.take_in(record);
            }
        }
        sizes
    }

    fn take_in(&mut self, value: &Value) {
        let mut pending = vec![value];
        while let Some(value) = pending.pop() {
            match value {
                Value::String(text) => self.copy(text.len()),
                Value::Array(items) => {
                    self.collection(items.len());
                    self.copy(items.len());
                    pending.extend(items);
                }
                Value::Object(map) => {
                    self.collection(map.len());
                    pending.extend(map.values());
                }
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
    }

    fn collection(&mut self, length: usize) {
        self.largest_collection = self.largest_collection.max(length as u64);
    }

    fn copy(&mut self, length: usize) {
        self.largest_copy = self.largest_copy.max(length as u64);
    }

    /// The estimated operations of evaluating `expr` once.
    pub(super) fn cost(&mut self, expr: &IdedExpr) -> u64 {
        self.literals(expr);
        self.node(expr, &mut Vec::new())
    }

    /// Counts list literals among the collections in reach.
    fn literals(&mut self, expr: &IdedExpr) {
        match &expr.expr {
            Expr::List(list) => {
                self.collection(list.elements.len());
                list.elements.iter().for_each(|e| self.literals(e));
            }
            Expr::Literal(LiteralValue::String(text)) => self.copy(text.inner().len()),
            Expr::Select(select) => self.literals(&select.operand),
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.literals(target);
                }
                call.args.iter().for_each(|a| self.literals(a));
            }
            Expr::Comprehension(comp) => {
                for part in [
                    &comp.iter_range,
                    &comp.accu_init,
                    &comp.loop_cond,
                    &comp.loop_step,
                    &comp.result,
                ] {
                    self.literals(part);
                }
            }
            Expr::Map(map) => map
                .entries
                .iter()
                .for_each(|e| self.entry_literals(&e.expr)),
            Expr::Struct(object) => object
                .entries
                .iter()
                .for_each(|e| self.entry_literals(&e.expr)),
            Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
        }
    }

    fn entry_literals(&mut self, entry: &EntryExpr) {
        match entry {
            EntryExpr::StructField(field) => self.literals(&field.value),
            EntryExpr::MapEntry(pair) => {
                self.literals(&pair.key);
                self.literals(&pair.value);
            }
        }
    }

    /// `bound` holds the variables of enclosing comprehensions, which shadow the scope's.
    fn node(&self, expr: &IdedExpr, bound: &mut Vec<String>) -> u64 {
        let inner = match &expr.expr {
            Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => 0,
            Expr::Select(select) => self.node(&select.operand, bound),
            Expr::Call(call) => {
                let mut total = call
                    .target
                    .as_ref()
                    .map_or(0, |target| self.node(target, bound));
                for arg in &call.args {
                    total = total.saturating_add(self.node(arg, bound));
                }
                let appends_to_result = call
                    .args
                    .iter()
                    .any(|a| matches!(&a.expr, Expr::Ident(name) if name.starts_with('@')));
                if call.func_name == "_+_" && !appends_to_result {
                    total = total.saturating_add(self.largest_copy / COPY_CHUNK);
                }
                total
            }
            Expr::List(list) => list
                .elements
                .iter()
                .fold(0u64, |sum, e| sum.saturating_add(self.node(e, bound))),
            Expr::Map(map) => map.entries.iter().fold(0u64, |sum, e| {
                sum.saturating_add(self.entry_node(&e.expr, bound))
            }),
            Expr::Struct(object) => object.entries.iter().fold(0u64, |sum, e| {
                sum.saturating_add(self.entry_node(&e.expr, bound))
            }),
            Expr::Comprehension(comp) => {
                let iterations = self.range_length(&comp.iter_range, bound);
                let setup = self
                    .node(&comp.iter_range, bound)
                    .saturating_add(self.node(&comp.accu_init, bound));
                let depth = bound.len();
                bound.push(comp.iter_var.clone());
                if let Some(second) = &comp.iter_var2 {
                    bound.push(second.clone());
                }
                bound.push(comp.accu_var.clone());
                let body = self
                    .node(&comp.loop_cond, bound)
                    .saturating_add(self.node(&comp.loop_step, bound));
                let result = self.node(&comp.result, bound);
                bound.truncate(depth);
                setup
                    .saturating_add(iterations.saturating_mul(body))
                    .saturating_add(result)
            }
        };
        inner.saturating_add(1)
    }

    fn entry_node(&self, entry: &EntryExpr, bound: &mut Vec<String>) -> u64 {
        match entry {
            EntryExpr::StructField(field) => self.node(&field.value, bound),
            EntryExpr::MapEntry(pair) => self
                .node(&pair.key, bound)
                .saturating_add(self.node(&pair.value, bound)),
        }
    }

    /// How many elements a comprehension's range has: its exact length when it names a value
    /// of the scope or is a list literal, else the largest collection in reach.
    fn range_length(&self, range: &IdedExpr, bound: &[String]) -> u64 {
        if let Expr::List(list) = &range.expr {
            return list.elements.len() as u64;
        }
        match self.resolve(range, bound) {
            Some(Value::Array(items)) => items.len() as u64,
            Some(Value::Object(map)) => map.len() as u64,
            _ => self.largest_collection,
        }
    }

    /// The scope's value a path (`input.a.b`, `steps.x.output`, `input['k']`) names.
    fn resolve(&self, expr: &IdedExpr, bound: &[String]) -> Option<&'a Value> {
        match &expr.expr {
            Expr::Ident(name) if !bound.contains(name) => match name.as_str() {
                "input" => Some(self.scope.input),
                "run" => Some(self.scope.run),
                "item" => self.scope.item,
                _ => None,
            },
            Expr::Select(select) => {
                if matches!(&select.operand.expr, Expr::Ident(name) if name == "steps" && !bound.contains(name))
                {
                    return self.scope.steps.get(&select.field);
                }
                field(self.resolve(&select.operand, bound)?, &select.field)
            }
            Expr::Call(call) if call.func_name == "_[_]" => match call.args.as_slice() {
                [operand, key] => match &key.expr {
                    Expr::Literal(LiteralValue::String(key)) => {
                        if matches!(&operand.expr, Expr::Ident(name) if name == "steps" && !bound.contains(name))
                        {
                            return self.scope.steps.get(key.inner());
                        }
                        field(self.resolve(operand, bound)?, key.inner())
                    }
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        }
    }
}

fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    value
        .as_object()
        .and_then(|map: &Map<String, Value>| map.get(name))
}
