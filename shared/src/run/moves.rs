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
    /// Add one to `waits`.
    pub waited: bool,
}

/// Most lifecycle turns (waits for input plus retries) one run may take. Each turn adds 14
/// events to the run's Step Functions execution (an `execute` task and its route, 8; the
/// wait, 6), whose history holds at most 25,000: 1,000 turns leave room for some 1,300
/// one-minute execution slices (8 events each). The README shows the arithmetic.
pub const MAX_TURNS: u32 = 1000;

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
    /// step's own log line tells it. A run that has taken its [`MAX_TURNS`] fails instead,
    /// before its execution's history overflows.
    pub fn await_input(run: &Run, step_sk: String, at: DateTime<Utc>) -> Self {
        if run.waits.saturating_add(run.retries) >= MAX_TURNS {
            let error = format!(
                "the run has waited for input or been retried {MAX_TURNS} times, the most one \
                 run may (its lifecycle's history would overflow); start a new run"
            );
            return Self::finish(run, RunStatus::Failed, Some(error), at);
        }
        Self {
            to: RunStatus::AwaitingInput,
            change: RunChange {
                from: vec![RunStatus::Running],
                waiting_step: Some(Some(step_sk)),
                waited: true,
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

    /// The sweeper ends a run that nothing will move any more (its lifecycle is gone or
    /// over), saying why: it fails, or is cancelled if it was waiting for input (which
    /// cannot fail). `None` if it already ended.
    pub fn abandoned(run: &Run, reason: &str, at: DateTime<Utc>) -> Option<Self> {
        let to = match run.status {
            RunStatus::Queued | RunStatus::AwaitingApproval | RunStatus::Running => {
                RunStatus::Failed
            }
            RunStatus::AwaitingInput => RunStatus::Cancelled,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled => return None,
        };
        Some(Self {
            to,
            change: RunChange {
                from: vec![run.status],
                ended: Some((at, elapsed_ms(run.started_at.unwrap_or(run.created_at), at))),
                error_message: Some(Some(reason.to_owned())),
                ..RunChange::default()
            },
            line: Some((LogLevel::Error, format!("run {}: {reason}", to.as_str()))),
        })
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
