//! Step keys and the order steps execute in, and the summary of a run's step records.
//!
//! A step's place in [`execution_order`] is its `idx`; its record's sort key is
//! [`step_sk`], so one `Query` of the run's partition reads the records in execution order,
//! each loop's iterations right after it.

use std::collections::HashMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::record::StepRecord;
use super::status::StepStatus;
use crate::workflow::Definition;

impl StepRecord {
    /// The record's sort key.
    pub fn sk(&self) -> String {
        step_sk(self.idx, self.iteration)
    }
}

/// Sort key of a step record.
pub fn step_sk(idx: u32, iteration: Option<u32>) -> String {
    match iteration {
        None => format!("STEP#{idx:04}"),
        Some(i) => format!("STEP#{idx:04}#{i:05}"),
    }
}

/// The order steps execute in: dependencies first, otherwise the definition's order.
pub fn execution_order(definition: &Definition) -> Vec<usize> {
    let index: HashMap<&str, usize> = definition
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut done = vec![false; definition.steps.len()];
    let mut order = Vec::with_capacity(definition.steps.len());
    while order.len() < definition.steps.len() {
        let next = definition.steps.iter().enumerate().find(|(i, step)| {
            !done[*i]
                && step
                    .depends_on
                    .iter()
                    .all(|d| index.get(d.as_str()).is_none_or(|&j| done[j]))
        });
        // A saved definition has no cycles; should one slip through, run the rest as listed.
        let i = next.map_or_else(|| done.iter().position(|d| !d).unwrap_or(0), |(i, _)| i);
        done[i] = true;
        order.push(i);
    }
    order
}

/// Counts of a run's top-level step records by status, and the steps not reached yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct StepsSummary {
    /// Steps in the workflow version.
    pub total: u32,
    /// Not started yet.
    pub pending: u32,
    /// Executing.
    pub running: u32,
    /// Waiting for input.
    pub waiting: u32,
    /// Done.
    pub succeeded: u32,
    /// Failed.
    pub failed: u32,
    /// Skipped.
    pub skipped: u32,
}

impl StepsSummary {
    /// Summarises `records` (iterations are not counted) of a workflow with `total` steps.
    pub fn of(total: u32, records: &[StepRecord]) -> Self {
        let mut summary = Self {
            total,
            ..Self::default()
        };
        let mut seen = 0;
        for record in records.iter().filter(|r| r.iteration.is_none()) {
            seen += 1;
            match record.status {
                StepStatus::Running => summary.running += 1,
                StepStatus::Waiting => summary.waiting += 1,
                StepStatus::Succeeded => summary.succeeded += 1,
                StepStatus::Failed => summary.failed += 1,
                StepStatus::Skipped => summary.skipped += 1,
            }
        }
        summary.pending = total.saturating_sub(seen);
        summary
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::run::StepRecord;

    #[test]
    fn step_keys_sort_in_execution_order_with_iterations_after_their_loop() {
        let mut keys = vec![
            step_sk(10, None),
            step_sk(2, Some(1)),
            step_sk(2, None),
            step_sk(2, Some(0)),
            step_sk(3, None),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                "STEP#0002",
                "STEP#0002#00000",
                "STEP#0002#00001",
                "STEP#0003",
                "STEP#0010"
            ]
        );
    }

    #[test]
    fn a_summary_counts_top_level_records_and_the_steps_not_reached() {
        let record = |idx, iteration, status| StepRecord {
            status,
            ..StepRecord::claim(
                Uuid::nil(),
                idx,
                iteration,
                "s",
                "tool",
                Utc::now(),
                Utc::now(),
                0,
            )
        };
        let records = [
            record(0, None, StepStatus::Succeeded),
            record(1, None, StepStatus::Skipped),
            record(2, None, StepStatus::Running),
            record(2, Some(0), StepStatus::Succeeded),
        ];
        assert_eq!(
            StepsSummary::of(5, &records),
            StepsSummary {
                total: 5,
                pending: 2,
                running: 1,
                waiting: 0,
                succeeded: 1,
                failed: 0,
                skipped: 1,
            }
        );
    }

    fn definition(steps: serde_json::Value) -> Definition {
        crate::workflow::parse(&json!({ "steps": steps }), &HashSet::new()).unwrap()
    }

    fn human(id: &str, depends_on: &[&str]) -> serde_json::Value {
        json!({"id": id, "type": "human", "depends_on": depends_on, "config": {"instructions": "ok"}})
    }

    #[test]
    fn dependencies_run_first_and_independent_steps_keep_the_authors_order() {
        let d = definition(json!([
            human("c", &["b"]),
            human("a", &[]),
            human("b", &["a"]),
            human("z", &[]),
        ]));
        let ids: Vec<&str> = execution_order(&d)
            .into_iter()
            .map(|i| d.steps[i].id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c", "z"]);
    }
}
