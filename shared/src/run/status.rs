//! Where a run and its steps are in their lives, which moves are legal, and what started a run.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a worker.
    Queued,
    /// Waiting for someone to approve or reject it.
    AwaitingApproval,
    /// A worker is executing its steps.
    Running,
    /// A `human` step waits for `resume`.
    AwaitingInput,
    /// Every step succeeded or was skipped.
    Succeeded,
    /// A step failed, or the lifecycle broke; `error_message` says why.
    Failed,
    /// Cancelled or rejected.
    Cancelled,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [RunStatus; 7] = [
        Self::Queued,
        Self::AwaitingApproval,
        Self::Running,
        Self::AwaitingInput,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The status as the API and the store spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Running => "running",
            Self::AwaitingInput => "awaiting_input",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the API spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether the run has ended. A failed run may still be retried.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The statuses a run may move to from this one:
    ///
    /// - `queued` → `running` | `cancelled` | `failed` (its lifecycle could not start)
    /// - `awaiting_approval` → `queued` (approved) | `cancelled` (rejected or cancelled) |
    ///   `failed` (its lifecycle could not start)
    /// - `running` → `running` (next slice) | `awaiting_input` | `succeeded` | `failed` | `cancelled`
    /// - `awaiting_input` → `running` (resumed) | `cancelled`
    /// - `failed` → `queued` (retried)
    pub fn can_become(self, next: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, next),
            (Queued, Running | Cancelled | Failed)
                | (AwaitingApproval, Queued | Cancelled | Failed)
                | (
                    Running,
                    Running | AwaitingInput | Succeeded | Failed | Cancelled
                )
                | (AwaitingInput, Running | Cancelled)
                | (Failed, Queued)
        )
    }

    /// The statuses from which a run may move to `next`.
    pub fn sources_of(next: RunStatus) -> Vec<RunStatus> {
        Self::ALL
            .into_iter()
            .filter(|from| from.can_become(next))
            .collect()
    }
}

/// What started a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `POST /runs`.
    Manual,
    /// A schedule.
    Schedule,
    /// An inbound webhook.
    Webhook,
    /// An event.
    Event,
}

impl Trigger {
    /// The trigger as the API and the store spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Schedule => "schedule",
            Self::Webhook => "webhook",
            Self::Event => "event",
        }
    }
}

/// Where a step record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// A worker claimed it and is executing it.
    Running,
    /// A `human` step waiting for input.
    Waiting,
    /// Done.
    Succeeded,
    /// Failed; a retry of the run executes it again.
    Failed,
    /// Not executed: on a branch not taken, or after a skipped step.
    Skipped,
}

impl StepStatus {
    /// The status as the API and the store spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_transitions_are_legal() {
        use RunStatus::*;
        let legal: Vec<(RunStatus, RunStatus)> = RunStatus::ALL
            .into_iter()
            .flat_map(|from| RunStatus::ALL.into_iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.can_become(*to))
            .collect();
        assert_eq!(
            legal,
            vec![
                (Queued, Running),
                (Queued, Failed),
                (Queued, Cancelled),
                (AwaitingApproval, Queued),
                (AwaitingApproval, Failed),
                (AwaitingApproval, Cancelled),
                (Running, Running),
                (Running, AwaitingInput),
                (Running, Succeeded),
                (Running, Failed),
                (Running, Cancelled),
                (AwaitingInput, Running),
                (AwaitingInput, Cancelled),
                (Failed, Queued),
            ]
        );
        assert!(!Succeeded.can_become(Cancelled) && !Cancelled.can_become(Queued));
    }
}
