//! Step keys and the order steps execute in, the counts of a run's step records by status,
//! and the summary built from them.
//!
//! A step's place in [`execution_order`] is its `idx`; its record's sort key is
//! [`step_sk`], so one `Query` of the run's partition reads the records in execution order,
//! each loop's iterations right after it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
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

/// Whether `sk` is the sort key of a loop iteration's record (`STEP#<idx>#<iteration>`).
pub fn is_iteration_sk(sk: &str) -> bool {
    sk.strip_prefix("STEP#")
        .is_some_and(|rest| rest.contains('#'))
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

/// Counts of a run's top-level step records (iterations are not counted) by status, kept on
/// the run item and changed in the same transaction as the record they count, so a run's
/// summary is read from the run alone. Signed: a run created before the counters existed
/// counts from zero and may go below it; the summary shows such a count as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounts {
    /// Executing.
    #[serde(default, rename = "steps_running")]
    pub running: i64,
    /// Waiting for input.
    #[serde(default, rename = "steps_waiting")]
    pub waiting: i64,
    /// Done.
    #[serde(default, rename = "steps_succeeded")]
    pub succeeded: i64,
    /// Failed.
    #[serde(default, rename = "steps_failed")]
    pub failed: i64,
    /// Skipped.
    #[serde(default, rename = "steps_skipped")]
    pub skipped: i64,
}

impl StepCounts {
    /// The run item's attribute counting records in `status`.
    pub fn attribute(status: StepStatus) -> &'static str {
        match status {
            StepStatus::Running => "steps_running",
            StepStatus::Waiting => "steps_waiting",
            StepStatus::Succeeded => "steps_succeeded",
            StepStatus::Failed => "steps_failed",
            StepStatus::Skipped => "steps_skipped",
        }
    }
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
    /// The summary of a workflow with `total` steps whose records are counted in `counts`.
    pub fn of(total: u32, counts: StepCounts) -> Self {
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        let (running, waiting, succeeded, failed, skipped) = (
            count(counts.running),
            count(counts.waiting),
            count(counts.succeeded),
            count(counts.failed),
            count(counts.skipped),
        );
        let seen = [running, waiting, succeeded, failed, skipped]
            .into_iter()
            .fold(0u32, u32::saturating_add);
        Self {
            total,
            pending: total.saturating_sub(seen),
            running,
            waiting,
            succeeded,
            failed,
            skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::*;

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
    fn iteration_keys_are_told_from_top_level_ones() {
        assert!(is_iteration_sk(&step_sk(2, Some(0))));
        assert!(!is_iteration_sk(&step_sk(2, None)));
    }

    #[test]
    fn a_summary_counts_top_level_records_and_the_steps_not_reached() {
        let counts = StepCounts {
            running: 1,
            succeeded: 1,
            skipped: 1,
            ..StepCounts::default()
        };
        assert_eq!(
            StepsSummary::of(5, counts),
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
        // A run older than its counters may count below zero: never shown as such.
        let older = StepCounts {
            running: -1,
            succeeded: 1,
            ..StepCounts::default()
        };
        assert_eq!(StepsSummary::of(2, older).running, 0);
        assert_eq!(StepsSummary::of(2, older).pending, 1);
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
