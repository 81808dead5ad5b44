//! The `human` step: renders its instructions and waits for `resume`.

use serde_json::json;

use super::StepResult;
use crate::run::{LogLevel, StepStatus, Usage};
use crate::workflow::{HumanConfig, Scope};

/// A `human` step's attempt: `waiting`, with its rendered instructions.
pub(in crate::engine) fn human_step(config: &HumanConfig, scope: &Scope<'_>) -> StepResult {
    match config.instructions.render_text(scope) {
        Ok(instructions) => StepResult {
            status: StepStatus::Waiting,
            request: Some(json!({"instructions": instructions})),
            response: None,
            error: None,
            usage: Usage::default(),
            logs: vec![(LogLevel::Info, format!("waiting for input: {instructions}"))],
        },
        Err(error) => StepResult::failed(
            None,
            format!("the instructions could not be rendered: {error}"),
        ),
    }
}
