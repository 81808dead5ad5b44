//! The records of a run: the run itself, its step records, its log lines and the
//! `Idempotency-Key` that created it, as the store keeps them.
//!
//! Inputs, outputs and metadata are stored as JSON text: their nesting is the client's and
//! could exceed DynamoDB's 32 levels. A step's request or response too large for its record
//! is kept in S3 and the record points to it ([`crate::payload`]). Money is exact: see
//! [`Usage`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::status::{RunStatus, StepStatus, Trigger};
use super::steps::StepCounts;
use super::usage::Usage;
use crate::domain::{json_text, ts, Env};
use crate::payload::PayloadRef;

/// An approval decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    /// `approved` or `rejected`.
    pub decision: String,
    /// Who decided (a user or an API key id).
    pub decided_by: Uuid,
    /// When.
    #[serde(with = "ts")]
    pub decided_at: DateTime<Utc>,
    /// The approver's comment or the rejection reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A run of a workflow version by an agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    /// Run id; also the name of its Step Functions execution.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// The workflow.
    pub workflow_id: Uuid,
    /// The workflow version it runs.
    pub workflow_version: u64,
    /// The agent whose model runs the prompt steps.
    pub agent_id: Uuid,
    /// Environment.
    pub env: Env,
    /// What started it.
    pub trigger: Trigger,
    /// Which schedule, webhook or event started it; absent for a manual run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The schedule that started it: by one of its fires, or by
    /// `POST /schedules/{id}/trigger`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    /// The slot of the schedule fire that started it (absent for a manual trigger).
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub nominal_time: Option<DateTime<Utc>>,
    /// Status.
    pub status: RunStatus,
    /// The run input.
    #[serde(with = "json_text")]
    pub input: Value,
    /// Free-form metadata.
    #[serde(with = "json_text")]
    pub metadata: Value,
    /// Whether it waited for an approval before starting.
    pub require_approval: bool,
    /// When a worker first started it.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// `ended_at − started_at` (or `− created_at` if it never started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Tokens of every prompt step, and the exact sum of its steps' costs.
    #[serde(flatten)]
    pub usage: Usage,
    /// Times it was retried.
    #[serde(default)]
    pub retries: u32,
    /// Times it waited for input; with `retries`, bounded by [`MAX_TURNS`](super::MAX_TURNS).
    #[serde(default)]
    pub waits: u32,
    /// Whether it has a `human` step.
    pub has_human_in_loop: bool,
    /// Steps in its workflow version (loop iterations not counted), for summaries.
    #[serde(default)]
    pub steps_total: u32,
    /// Its top-level step records by status.
    #[serde(flatten)]
    pub step_counts: StepCounts,
    /// AWS region it ran in.
    pub region: String,
    /// Why it failed or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The approval decision, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// The task token the lifecycle waits on while the run is parked (approval, human input,
    /// retry). Never leaves the store through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_token: Option<String>,
    /// The step record (`STEP#…` sort key) of the `human` step waiting for input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_step: Option<String>,
    /// How many event-started runs led to it: 0 unless an event started it, then one more
    /// than the run (or tenant event, 0) that published the event; see
    /// [`crate::events::chain`].
    #[serde(default)]
    pub chain_depth: u32,
    /// Who created it (a user or an API key id).
    pub created_by: Uuid,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Bumped by every change.
    pub version: u64,
}

/// The record of one step (or one loop iteration) of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    /// The run.
    pub run_id: Uuid,
    /// The step's place in the run's execution order.
    pub idx: u32,
    /// The step's id in the workflow.
    pub step_id: String,
    /// The loop iteration, from 0, for an iteration's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u32>,
    /// The step type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Display name: the step id, `<id>[n]` for an iteration.
    pub name: String,
    /// Status.
    pub status: StepStatus,
    /// When its current attempt started.
    #[serde(with = "ts")]
    pub started_at: DateTime<Utc>,
    /// When it ended.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Duration of its last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// What it sent: the rendered input, prompt, URL…
    #[serde(
        default,
        with = "json_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub request: Option<Value>,
    /// What it produced: its output.
    #[serde(
        default,
        with = "json_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub response: Option<Value>,
    /// Where `request` is kept when too large for the record (`request` is absent then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ref: Option<PayloadRef>,
    /// Where `response` is kept when too large for the record (`response` is absent then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_ref: Option<PayloadRef>,
    /// Tokens and cost over every attempt.
    #[serde(flatten)]
    pub usage: Usage,
    /// Attempts made; a claim is `attempts` = 1, every retake adds one.
    pub attempts: u32,
    /// Until when the worker that holds it is presumed alive.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime<Utc>>,
    /// The run's `retries` when the current attempt started: a retried run executes again
    /// the steps that failed in an earlier round.
    #[serde(default)]
    pub round: u32,
    /// The attempt was given back before anything was sent (a rate limit it could not wait
    /// out): the next slice takes it over, whether or not the step is safe to repeat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub yielded: bool,
}

impl StepRecord {
    /// A claim of step `step_id` (iteration `iteration` of it, in a loop): attempt 1,
    /// `running` from `at`, held until `lease_until`, in the run's retry round `round`.
    #[allow(clippy::too_many_arguments)]
    pub fn claim(
        run_id: Uuid,
        idx: u32,
        iteration: Option<u32>,
        step_id: &str,
        kind: &str,
        at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        round: u32,
    ) -> Self {
        Self {
            run_id,
            idx,
            step_id: step_id.to_owned(),
            iteration,
            kind: kind.to_owned(),
            name: match iteration {
                Some(i) => format!("{step_id}[{i}]"),
                None => step_id.to_owned(),
            },
            status: StepStatus::Running,
            started_at: at,
            ended_at: None,
            duration_ms: None,
            error_message: None,
            request: None,
            response: None,
            request_ref: None,
            response_ref: None,
            usage: Usage::default(),
            attempts: 1,
            yielded: false,
            lease_until: Some(lease_until),
            round,
        }
    }
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Progress.
    Info,
    /// Something worth a look.
    Warn,
    /// A failure.
    Error,
}

/// One structured log line of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// When.
    #[serde(with = "ts")]
    pub at: DateTime<Utc>,
    /// Severity.
    pub level: LogLevel,
    /// The step it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// The message.
    pub message: String,
}

/// Longest message a stored log line keeps, in bytes: one line as large as a DynamoDB item
/// would make its whole batch fail. A longer one is cut and says so, with its length.
pub const MAX_LOG_MESSAGE_BYTES: usize = 8 * 1024;

impl LogLine {
    /// The line with its message cut to [`MAX_LOG_MESSAGE_BYTES`] (on a character
    /// boundary), ending with a note of the original length, if it was longer.
    pub fn bounded(mut self) -> Self {
        let length = self.message.len();
        if length > MAX_LOG_MESSAGE_BYTES {
            let note = format!(" … [cut: the message had {length} bytes]");
            let mut end = MAX_LOG_MESSAGE_BYTES - note.len();
            while !self.message.is_char_boundary(end) {
                end -= 1;
            }
            self.message.truncate(end);
            self.message.push_str(&note);
        }
        self
    }
}

/// An `Idempotency-Key` and the run it created.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The project the key is scoped to.
    pub project_id: Uuid,
    /// SHA-256 (hex) of the key.
    pub key_digest: String,
    /// SHA-256 (hex) of the request it came with.
    pub request_digest: String,
    /// The run created.
    pub run_id: Uuid,
    /// When.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Expiry, epoch seconds.
    pub ttl: i64,
}

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL: chrono::Duration = chrono::Duration::hours(24);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_message_is_cut_to_the_bound_and_says_how_long_it_was() {
        let line = |message: String| LogLine {
            at: Utc::now(),
            level: LogLevel::Info,
            step_id: None,
            message,
        };
        assert_eq!(line("short".into()).bounded().message, "short");
        let cut = line("é".repeat(300_000)).bounded().message;
        assert!(cut.len() <= MAX_LOG_MESSAGE_BYTES, "{}", cut.len());
        assert!(
            cut.ends_with("[cut: the message had 600000 bytes]"),
            "{cut}"
        );
        assert!(cut.starts_with("éé"));
    }
}
