//! One executor per step type, each turning a step (or a loop iteration) and its scope into a
//! [`StepResult`]. Claiming, recording and ordering steps is the slice loop's
//! ([`super::run`]); these only execute.

use serde_json::Value;

use crate::run::{LogLevel, StepRecord, StepStatus, Usage};

pub(in crate::engine) mod decision;
pub(in crate::engine) mod human;
mod loop_step;
mod prompt;
mod tool;
mod webhook;

/// Longest error message stored on a run or step.
pub(in crate::engine) const MAX_ERROR_CHARS: usize = 2000;

/// What one step attempt produced.
pub(in crate::engine) struct StepResult {
    pub(in crate::engine) status: StepStatus,
    pub(in crate::engine) request: Option<Value>,
    pub(in crate::engine) response: Option<Value>,
    pub(in crate::engine) error: Option<String>,
    pub(in crate::engine) usage: Usage,
    pub(in crate::engine) logs: Vec<(LogLevel, String)>,
}

impl StepResult {
    pub(in crate::engine) fn succeeded(request: Value, response: Value) -> Self {
        Self {
            status: StepStatus::Succeeded,
            request: Some(request),
            response: Some(response),
            error: None,
            usage: Usage::default(),
            logs: Vec::new(),
        }
    }

    /// An attempt given back before anything was sent, to be taken over by the next slice
    /// ([`crate::engine::run::Engine::give_back`]); it stays `running`.
    pub(in crate::engine) fn yielded(request: Value, why: String) -> Self {
        Self {
            status: StepStatus::Running,
            request: Some(request),
            response: None,
            error: None,
            usage: Usage::default(),
            logs: vec![(LogLevel::Info, why)],
        }
    }

    pub(in crate::engine) fn failed(request: Option<Value>, error: impl Into<String>) -> Self {
        Self {
            status: StepStatus::Failed,
            request,
            response: None,
            error: Some(clip(error.into())),
            usage: Usage::default(),
            logs: Vec::new(),
        }
    }
}

/// The key sent with a step's calls: stable across workers re-running the same attempt
/// round, new for each `retry` of the run.
pub(in crate::engine) fn idempotency_key(record: &StepRecord) -> String {
    format!("{}:{}:{}", record.run_id, record.name, record.round)
}

/// `text`, cut to [`MAX_ERROR_CHARS`] characters.
pub(in crate::engine) fn clip(mut text: String) -> String {
    if text.chars().count() > MAX_ERROR_CHARS {
        text = text.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…";
    }
    text
}
