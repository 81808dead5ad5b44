//! How runs, their steps and their log lines read in the API.

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{ts, Env};
use crate::error::{ApiError, ApiResult};
use crate::payload::PayloadRef;
use crate::run::{
    Approval, LogLevel, LogLine, Run, RunStatus, StepRecord, StepStatus, StepsSummary, Trigger,
};
use crate::state::AppState;

/// A run as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    /// Run id; also its Step Functions execution's name.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// The workflow.
    pub workflow_id: Uuid,
    /// The workflow version it runs.
    pub workflow_version: u64,
    /// The agent whose model runs prompt steps.
    pub agent_id: Uuid,
    /// Environment.
    pub env: Env,
    /// What started it.
    pub trigger: Trigger,
    /// Which schedule, webhook or event started it; absent for a manual run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The schedule that started it, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    /// The slot of the schedule fire that started it (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub nominal_time: Option<String>,
    /// How deep in a chain of event-started runs it is: 0 unless an event schedule started
    /// it, then one more than the run (or tenant event, 0) whose event did.
    pub chain_depth: u32,
    /// `queued`, `awaiting_approval`, `running`, `awaiting_input`, `succeeded`, `failed` or
    /// `cancelled`.
    pub status: RunStatus,
    /// The run input.
    pub input: Value,
    /// Free-form metadata.
    pub metadata: Value,
    /// Whether it waited for an approval.
    pub require_approval: bool,
    /// The approval decision, once made.
    pub approval: Option<Approval>,
    /// When a worker first started it.
    pub started_at: Option<String>,
    /// When it ended.
    pub ended_at: Option<String>,
    /// How long it ran, in ms.
    pub duration_ms: Option<u64>,
    /// Input tokens of every prompt step.
    pub tokens_prompt: u64,
    /// Output tokens of every prompt step.
    pub tokens_completion: u64,
    /// Exact cost in USD, a decimal string: the sum of its steps' costs.
    #[schema(value_type = String, example = "0.0000375")]
    pub usd_cost: String,
    /// Times it was retried.
    pub retries: u32,
    /// Whether the workflow has a `human` step.
    pub has_human_in_loop: bool,
    /// AWS region.
    pub region: String,
    /// Why it failed or was rejected.
    pub error_message: Option<String>,
    /// Who started it (a user or an API key id).
    pub created_by: Uuid,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: String,
    /// Bumped by every change.
    pub version: u64,
    /// Step records by status (on `GET /runs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_summary: Option<StepsSummary>,
}

impl From<Run> for RunView {
    fn from(run: Run) -> Self {
        Self {
            id: run.id,
            project_id: run.project_id,
            workflow_id: run.workflow_id,
            workflow_version: run.workflow_version,
            agent_id: run.agent_id,
            env: run.env,
            trigger: run.trigger,
            origin: run.origin,
            schedule_id: run.schedule_id,
            nominal_time: run.nominal_time.as_ref().map(ts::format),
            chain_depth: run.chain_depth,
            status: run.status,
            input: run.input,
            metadata: run.metadata,
            require_approval: run.require_approval,
            approval: run.approval,
            started_at: run.started_at.as_ref().map(ts::format),
            ended_at: run.ended_at.as_ref().map(ts::format),
            duration_ms: run.duration_ms,
            tokens_prompt: run.usage.tokens_prompt,
            tokens_completion: run.usage.tokens_completion,
            usd_cost: decimal_text(run.usage.usd_cost),
            retries: run.retries,
            has_human_in_loop: run.has_human_in_loop,
            region: run.region,
            error_message: run.error_message,
            created_by: run.created_by,
            created_at: ts::format(&run.created_at),
            updated_at: ts::format(&run.updated_at),
            version: run.version,
            steps_summary: None,
        }
    }
}

/// A step record as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    /// The run.
    pub run_id: Uuid,
    /// Place in the run's execution order.
    pub idx: u32,
    /// The step's id in the workflow.
    pub step_id: String,
    /// The loop iteration, from 0, for an iteration's record.
    pub iteration: Option<u32>,
    /// `prompt`, `tool`, `decision`, `loop`, `webhook` or `human`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The step id, or `<id>[n]` for an iteration.
    pub name: String,
    /// `running`, `waiting`, `succeeded`, `failed` or `skipped`.
    pub status: StepStatus,
    /// Whether it succeeded.
    pub success: bool,
    /// When its last attempt started.
    #[schema(value_type = String, format = DateTime)]
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Duration of its last attempt, in ms.
    pub duration_ms: Option<u64>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// What it sent (secrets redacted); `null` when it is too large to show inline (see
    /// `request_ref`).
    pub request: Option<Value>,
    /// What it produced; `null` when it is too large to show inline (see `response_ref`).
    pub response: Option<Value>,
    /// Set when the request is larger than 32 KiB of JSON: a link to the whole of it.
    pub request_ref: Option<PayloadLinkView>,
    /// Set when the response is larger than 32 KiB of JSON: a link to the whole of it.
    pub response_ref: Option<PayloadLinkView>,
    /// Input tokens over every attempt.
    pub tokens_prompt: u64,
    /// Output tokens over every attempt.
    pub tokens_completion: u64,
    /// Cost over every attempt, in USD, a decimal string.
    #[schema(value_type = String)]
    pub usd_cost: String,
    /// Attempts made.
    pub attempts: u32,
}

/// A step payload kept outside its record, and a link to read it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PayloadLinkView {
    /// Bytes of JSON.
    pub size: u64,
    /// Hex SHA-256 of those bytes.
    pub sha256: String,
    /// A presigned URL: a plain `GET`, without credentials, answers the JSON.
    pub url: String,
    /// When `url` stops working (15 minutes after the listing); list again for a new one.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
}

impl StepView {
    /// The view of `step`, with links to its payloads kept in S3.
    pub(super) async fn of(state: &AppState, step: StepRecord) -> ApiResult<Self> {
        let link = |stored: Option<PayloadRef>| async move {
            let Some(stored) = stored else {
                return Ok::<_, ApiError>(None);
            };
            let link = state
                .payloads
                .link(&stored)
                .await
                .map_err(ApiError::Internal)?;
            Ok(Some(PayloadLinkView {
                size: stored.size,
                sha256: stored.sha256,
                url: link.url,
                expires_at: ts::format(&link.expires_at),
            }))
        };
        Ok(Self {
            run_id: step.run_id,
            idx: step.idx,
            step_id: step.step_id,
            iteration: step.iteration,
            kind: step.kind,
            name: step.name,
            success: step.status == StepStatus::Succeeded,
            status: step.status,
            started_at: ts::format(&step.started_at),
            ended_at: step.ended_at.as_ref().map(ts::format),
            duration_ms: step.duration_ms,
            error_message: step.error_message,
            request: step.request,
            response: step.response,
            request_ref: link(step.request_ref).await?,
            response_ref: link(step.response_ref).await?,
            tokens_prompt: step.usage.tokens_prompt,
            tokens_completion: step.usage.tokens_completion,
            usd_cost: decimal_text(step.usage.usd_cost),
            attempts: step.attempts,
        })
    }
}

/// A log line as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogView {
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: String,
    /// `info`, `warn` or `error`.
    pub level: LogLevel,
    /// The step it is about.
    pub step_id: Option<String>,
    /// The message.
    pub message: String,
}

impl From<LogLine> for LogView {
    fn from(line: LogLine) -> Self {
        Self {
            at: ts::format(&line.at),
            level: line.level,
            step_id: line.step_id,
            message: line.message,
        }
    }
}

/// A decimal as exact text without trailing zeros.
pub(super) fn decimal_text(value: Decimal) -> String {
    value.normalize().to_string()
}
