//! The moves of a run: each says which status it goes to, from which, what changes with it
//! and the log line that tells it. Building a move is pure; [`crate::store::Store::move_run`]
//! applies one (a conditional write, then its log line), for the API and the worker alike.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::record::{Approval, LogLevel, Run};
use super::status::RunStatus;

/// Fields set along with a status change.
#[derive(Clone, Debug, Default)]
pub struct RunChange {
    /// Move only from these statuses; empty: from any status that may become the target.
    pub from: Vec<RunStatus>,
    /// Set `started_at` unless already set.
    pub started_at: Option<DateTime<Utc>>,
    /// Set `ended_at` and `duration_ms`.
    pub ended: Option<(DateTime<Utc>, u64)>,
    /// Set (`Some(Some)`) or remove (`Some(None)`) `error_message`.
    pub error_message: Option<Option<String>>,
    /// Record an approval decision.
    pub approval: Option<Approval>,
    /// Add one to `retries`, clearing `ended_at`, `duration_ms` and `error_message`.
    pub retried: bool,
    /// Set (`Some(Some)`) or remove (`Some(None)`) `waiting_step`.
    pub waiting_step: Option<Option<String>>,
}

/// A move of a run to `to`, with the fields that change and the run-level log line that
/// tells it, if any.
#[derive(Clone, Debug)]
pub struct Move {
    /// The status it goes to.
    pub to: RunStatus,
    /// What changes with it, and the statuses it may leave.
    pub change: RunChange,
    /// The log line written once the move is stored.
    pub line: Option<(LogLevel, String)>,
}

impl Move {
    /// A worker starts a queued run.
    pub fn start(at: DateTime<Utc>) -> Self {
        Self {
            to: RunStatus::Running,
            change: RunChange {
                from: vec![RunStatus::Queued],
                started_at: Some(at),
                ..RunChange::default()
            },
            line: Some((LogLevel::Info, "run started".into())),
        }
    }

    /// A running run ends `status`, failed with `error` when given.
    pub fn finish(run: &Run, status: RunStatus, error: Option<String>, at: DateTime<Utc>) -> Self {
        let line = match &error {
            Some(error) => (LogLevel::Error, format!("run {}: {error}", status.as_str())),
            None => (LogLevel::Info, format!("run {}", status.as_str())),
        };
        Self {
            to: status,
            change: RunChange {
                from: vec![RunStatus::Running],
                ended: Some((at, elapsed_ms(run.started_at.unwrap_or(run.created_at), at))),
                error_message: Some(error),
                ..RunChange::default()
            },
            line: Some(line),
        }
    }

    /// A running run waits for input on the `human` step whose record is `step_sk`; the
    /// step's own log line tells it.
    pub fn await_input(step_sk: String) -> Self {
        Self {
            to: RunStatus::AwaitingInput,
            change: RunChange {
                from: vec![RunStatus::Running],
                waiting_step: Some(Some(step_sk)),
                ..RunChange::default()
            },
            line: None,
        }
    }

    /// The run's lifecycle broke (a wait or heartbeat timed out) with Step Functions'
    /// `error`: a running run fails, a waiting one is cancelled; `None` if it already ended.
    pub fn lifecycle_broke(run: &Run, error: &Value, at: DateTime<Utc>) -> Option<Self> {
        let to = match run.status {
            RunStatus::Running => RunStatus::Failed,
            RunStatus::Queued | RunStatus::AwaitingApproval | RunStatus::AwaitingInput => {
                RunStatus::Cancelled
            }
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled => return None,
        };
        let cause = [error.get("Error"), error.get("Cause")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(": ");
        let message = format!(
            "the run lifecycle stopped it: {}",
            if cause.is_empty() {
                "unknown error"
            } else {
                &cause
            }
        );
        Some(Self {
            to,
            change: RunChange {
                from: vec![run.status],
                ended: Some((at, elapsed_ms(run.started_at.unwrap_or(run.created_at), at))),
                error_message: Some(Some(message.clone())),
                ..RunChange::default()
            },
            line: Some((LogLevel::Error, message)),
        })
    }

    /// A stored run's lifecycle could not be started: it fails without having run.
    pub fn start_failed(run: &Run, at: DateTime<Utc>) -> Self {
        Self {
            to: RunStatus::Failed,
            change: RunChange {
                from: vec![run.status],
                ended: Some((at, 0)),
                error_message: Some(Some(
                    "the run's lifecycle could not be started; start a new run".into(),
                )),
                ..RunChange::default()
            },
            line: None,
        }
    }

    /// `by` cancels a run that has not ended.
    pub fn cancel(run: &Run, by: Uuid, at: DateTime<Utc>) -> Self {
        Self {
            to: RunStatus::Cancelled,
            change: RunChange {
                ended: Some((at, elapsed_ms(run.started_at.unwrap_or(run.created_at), at))),
                ..RunChange::default()
            },
            line: Some((LogLevel::Info, format!("cancelled by {by}"))),
        }
    }

    /// `by` retries a failed run: it is queued again, one retry more.
    pub fn retry(run: &Run, by: Uuid) -> Self {
        Self {
            to: RunStatus::Queued,
            change: RunChange {
                from: vec![RunStatus::Failed],
                retried: true,
                ..RunChange::default()
            },
            line: Some((LogLevel::Info, format!("retry {} by {by}", run.retries + 1))),
        }
    }

    /// `by` approves a run waiting for approval: it is queued to run.
    pub fn approve(by: Uuid, comment: Option<String>, at: DateTime<Utc>) -> Self {
        Self {
            to: RunStatus::Queued,
            change: RunChange {
                from: vec![RunStatus::AwaitingApproval],
                approval: Some(Approval {
                    decision: "approved".into(),
                    decided_by: by,
                    decided_at: at,
                    comment,
                }),
                ..RunChange::default()
            },
            line: Some((LogLevel::Info, format!("approved by {by}"))),
        }
    }

    /// `by` rejects a run waiting for approval: it ends `cancelled` with the reason.
    pub fn reject(run: &Run, by: Uuid, reason: String, at: DateTime<Utc>) -> Self {
        Self {
            to: RunStatus::Cancelled,
            change: RunChange {
                from: vec![RunStatus::AwaitingApproval],
                ended: Some((at, elapsed_ms(run.created_at, at))),
                error_message: Some(Some(format!("rejected: {reason}"))),
                approval: Some(Approval {
                    decision: "rejected".into(),
                    decided_by: by,
                    decided_at: at,
                    comment: Some(reason),
                }),
                ..RunChange::default()
            },
            line: Some((LogLevel::Info, format!("rejected by {by}"))),
        }
    }
}

/// Milliseconds from `from` to `to`; zero if the clock went backwards.
pub fn elapsed_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    u64::try_from((to - from).num_milliseconds()).unwrap_or(0)
}
