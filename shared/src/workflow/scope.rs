//! What a run exposes to its templates and expressions while it executes.

use serde_json::{Map, Value};

/// What templates and expressions read while a run executes.
///
/// Templates read `input`, `steps.<id>.output` and `item`; expressions also see `run`, each
/// step's `status`, and `iteration` in a `while` loop.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The run input.
    pub input: &'a Value,
    /// Step id → `{"output": …, "status": "succeeded"|…}` for the steps done so far.
    pub steps: &'a Map<String, Value>,
    /// `{id, project_id, workflow_id, agent_id, env, trigger, retries}`.
    pub run: &'a Value,
    /// The current loop element, or the round number in a `while` loop.
    pub item: Option<&'a Value>,
    /// Rounds done, in a `while` loop.
    pub iteration: Option<u64>,
}
