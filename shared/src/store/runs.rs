//! Runs, their step records and log lines, and `Idempotency-Key`s, in the runs table.
//!
//! A run is `RUN#<id>` / `RUN`; its steps (`STEP#<idx>`, loop iterations
//! `STEP#<idx>#<iteration>`) and log lines (`LOG#<uuidv7>`) share its partition, so one
//! `Query` reads them in execution order. The run item is listed through five indexes, each
//! keyed by project and sorted by `<created_at>#<id>` (see [`super::schema`]).
//!
//! Every change of a run's `status` is one `UpdateItem` conditioned on the statuses it may
//! leave ([`RunStatus::can_become`]), so two writers can never both move a run. Step records
//! are claimed with `attribute_not_exists` in the same transaction that checks the run is
//! still `running`; a step is finished in one transaction that checks the claim (`attempts`)
//! and adds its tokens and cost to the run, so a duplicate worker can neither run a step twice
//! nor count it twice.
//!
//! Money is exact: `usd_cost` is a DynamoDB number (a decimal of up to 38 digits), added with
//! `ADD`, and read back as a [`Decimal`] without passing through a float.
//!
//! Inputs, outputs and metadata are stored as JSON text: their nesting is the client's and
//! could exceed DynamoDB's 32 levels.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Put, PutRequest, ReturnValue, TransactWriteItem, Update,
    WriteRequest,
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::schema::{GSI1, GSI2, GSI3, GSI4, GSI5};
use super::{cursor, item, json_text, key, n, s, Item, Page, Store, StoreError, StoreResult};
use crate::domain::{ts, Env};

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
    /// Input tokens of every prompt step.
    #[serde(default)]
    pub tokens_prompt: u64,
    /// Output tokens of every prompt step.
    #[serde(default)]
    pub tokens_completion: u64,
    /// The exact sum of its steps' costs, in USD.
    #[serde(default)]
    pub usd_cost: Decimal,
    /// Times it was retried.
    #[serde(default)]
    pub retries: u32,
    /// Whether it has a `human` step.
    pub has_human_in_loop: bool,
    /// Steps in its workflow version (loop iterations not counted), for summaries.
    #[serde(default)]
    pub steps_total: u32,
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
    /// Input tokens over every attempt.
    #[serde(default)]
    pub tokens_prompt: u64,
    /// Output tokens over every attempt.
    #[serde(default)]
    pub tokens_completion: u64,
    /// Cost over every attempt, in USD.
    #[serde(default)]
    pub usd_cost: Decimal,
    /// Attempts made; a claim is `attempts` = 1, every retake adds one.
    pub attempts: u32,
    /// Until when the worker that holds it is presumed alive.
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime<Utc>>,
    /// The run's `retries` when the current attempt started: a retried run executes again
    /// the steps that failed in an earlier round.
    #[serde(default)]
    pub round: u32,
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
            tokens_prompt: 0,
            tokens_completion: 0,
            usd_cost: Decimal::ZERO,
            attempts: 1,
            lease_until: Some(lease_until),
            round,
        }
    }

    /// The record's sort key.
    pub fn sk(&self) -> String {
        step_sk(self.idx, self.iteration)
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

/// Which runs a list returns; each filter narrows it. The most selective filter picks the
/// index, the others filter its pages.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only runs of this workflow.
    pub workflow_id: Option<Uuid>,
    /// Only runs by this agent.
    pub agent_id: Option<Uuid>,
    /// Only runs started this way.
    pub trigger: Option<Trigger>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created strictly before.
    pub created_before: Option<DateTime<Utc>>,
}

/// How a claim of a step record went.
#[derive(Debug)]
pub enum Claim {
    /// The caller holds the step now.
    Claimed,
    /// The record exists; here it is.
    Exists(Box<StepRecord>),
    /// The run is no longer `running` (cancelled, most likely).
    RunNotRunning,
}

/// The end of a step attempt.
#[derive(Clone, Debug)]
pub struct StepEnd {
    /// `succeeded`, `failed` or `waiting`.
    pub status: StepStatus,
    /// When.
    pub at: DateTime<Utc>,
    /// Duration of the attempt.
    pub duration_ms: u64,
    /// Why it failed.
    pub error_message: Option<String>,
    /// What it sent.
    pub request: Option<Value>,
    /// What it produced.
    pub response: Option<Value>,
    /// Input tokens spent by the attempt.
    pub tokens_prompt: u64,
    /// Output tokens spent by the attempt.
    pub tokens_completion: u64,
    /// Cost of the attempt.
    pub usd_cost: Decimal,
}

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

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL: chrono::Duration = chrono::Duration::hours(24);

/// Partition key of a run.
pub fn run_pk(id: Uuid) -> String {
    format!("RUN#{id}")
}

/// Sort key of a step record.
pub fn step_sk(idx: u32, iteration: Option<u32>) -> String {
    match iteration {
        None => format!("STEP#{idx:04}"),
        Some(i) => format!("STEP#{idx:04}#{i:05}"),
    }
}

const RUN_SK: &str = "RUN";

fn project_runs(project_id: Uuid) -> String {
    format!("{}#RUNS", super::projects::project_pk(project_id))
}

fn status_gsi(project_id: Uuid, status: RunStatus) -> String {
    format!("{}#STATUS#{}", project_runs(project_id), status.as_str())
}

fn idempotency_pk(project_id: Uuid, key_digest: &str) -> String {
    format!("IDEMPOTENCY#{project_id}#{key_digest}")
}

/// Reads an item whose `usd_cost` is a DynamoDB number, exactly.
fn exact_record<T: serde::de::DeserializeOwned>(mut item: Item) -> anyhow::Result<T> {
    if let Some(AttributeValue::N(number)) = item.remove("usd_cost") {
        item.insert("usd_cost".into(), AttributeValue::S(number));
    }
    super::record(item)
}

/// Writes an item's `usd_cost` as a DynamoDB number, so `ADD` can add to it.
fn exact_item<T: Serialize>(record: &T, keys: &[(&str, String)]) -> anyhow::Result<Item> {
    let mut item = item(record, keys)?;
    if let Some(AttributeValue::S(number)) = item.remove("usd_cost") {
        item.insert("usd_cost".into(), AttributeValue::N(number));
    }
    Ok(item)
}

fn status_list(statuses: &[RunStatus]) -> (String, Vec<(String, AttributeValue)>) {
    let names: Vec<String> = (0..statuses.len()).map(|i| format!(":from{i}")).collect();
    let values = names
        .iter()
        .zip(statuses)
        .map(|(name, status)| (name.clone(), s(status.as_str())))
        .collect();
    (format!("#status IN ({})", names.join(", ")), values)
}

impl Store {
    /// Stores a new run, and its idempotency record when given, in one transaction.
    /// `ConditionFailed` if the idempotency key is taken.
    pub async fn create_run(
        &self,
        run: &Run,
        idempotency: Option<&IdempotencyRecord>,
    ) -> StoreResult<()> {
        let created = format!("{}#{}", ts::format(&run.created_at), run.id);
        let project = project_runs(run.project_id);
        let record = exact_item(
            run,
            &[
                ("pk", run_pk(run.id)),
                ("sk", RUN_SK.into()),
                (GSI1.pk, project.clone()),
                (GSI1.sk, created.clone()),
                (GSI2.pk, status_gsi(run.project_id, run.status)),
                (GSI2.sk, created.clone()),
                (GSI3.pk, format!("{project}#WORKFLOW#{}", run.workflow_id)),
                (GSI3.sk, created.clone()),
                (GSI4.pk, format!("{project}#AGENT#{}", run.agent_id)),
                (GSI4.sk, created.clone()),
                (
                    GSI5.pk,
                    format!("{project}#TRIGGER#{}", run.trigger.as_str()),
                ),
                (GSI5.sk, created),
            ],
        )?;
        let mut items = vec![put(&self.runs_table, record, "attribute_not_exists(pk)")?];
        if let Some(idem) = idempotency {
            let record = item(
                idem,
                &[
                    ("pk", idempotency_pk(idem.project_id, &idem.key_digest)),
                    ("sk", "IDEMPOTENCY".into()),
                ],
            )?;
            // DynamoDB deletes expired items only eventually: an expired key is free again.
            let put = Put::builder()
                .table_name(&self.runs_table)
                .set_item(Some(record))
                .condition_expression("attribute_not_exists(pk) OR #ttl <= :now")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":now", n(idem.created_at.timestamp()))
                .build()
                .context("Failed to build a put")?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        match self.transact(items, "store a run").await {
            Err(err) if err.failed_at(1) => Err(StoreError::ConditionFailed),
            other => other,
        }
    }

    /// The idempotency record of `key_digest` in a project, if it has not expired.
    pub async fn get_idempotency(
        &self,
        project_id: Uuid,
        key_digest: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        let found: Option<IdempotencyRecord> = self
            .get_record(
                &self.runs_table,
                key(idempotency_pk(project_id, key_digest), "IDEMPOTENCY"),
                "an idempotency key",
            )
            .await?;
        // DynamoDB deletes expired items lazily; an expired key no longer counts.
        Ok(found.filter(|r| r.ttl > now.timestamp()))
    }

    /// The run with `id`, read consistently.
    pub async fn get_run(&self, id: Uuid) -> StoreResult<Option<Run>> {
        self.get_exact(id, RUN_SK, "a run").await
    }

    /// A project's runs, newest first, narrowed by `filter`.
    pub async fn list_runs(
        &self,
        project_id: Uuid,
        filter: &RunFilter,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Run>> {
        let project = project_runs(project_id);
        let mut filters: Vec<(&str, String)> = Vec::new();
        let (index, pk) = if let Some(status) = filter.status {
            (GSI2, status_gsi(project_id, status))
        } else if let Some(workflow) = filter.workflow_id {
            (GSI3, format!("{project}#WORKFLOW#{workflow}"))
        } else if let Some(agent) = filter.agent_id {
            (GSI4, format!("{project}#AGENT#{agent}"))
        } else if let Some(trigger) = filter.trigger {
            (GSI5, format!("{project}#TRIGGER#{}", trigger.as_str()))
        } else {
            (GSI1, project)
        };
        if index != GSI2 {
            if let Some(status) = filter.status {
                filters.push(("status", status.as_str().to_owned()));
            }
        }
        if index != GSI3 {
            if let Some(workflow) = filter.workflow_id {
                filters.push(("workflow_id", workflow.to_string()));
            }
        }
        if index != GSI4 {
            if let Some(agent) = filter.agent_id {
                filters.push(("agent_id", agent.to_string()));
            }
        }
        if index != GSI5 {
            if let Some(trigger) = filter.trigger {
                filters.push(("trigger", trigger.as_str().to_owned()));
            }
        }
        let mut condition = "#pk = :pk".to_owned();
        let mut query = self
            .ddb
            .query()
            .table_name(&self.runs_table)
            .index_name(index.name)
            .expression_attribute_names("#pk", index.pk)
            .expression_attribute_values(":pk", s(pk))
            .scan_index_forward(false)
            .limit(limit)
            .set_exclusive_start_key(start);
        if filter.created_after.is_some() || filter.created_before.is_some() {
            // `<at>#<id>` sorts after `<at>`: the lower bound is inclusive, the upper one not.
            let from = filter.created_after.map(|at| ts::format(&at));
            let to = filter.created_before.map(|at| ts::format(&at));
            query = query.expression_attribute_names("#sk", index.sk);
            match (from, to) {
                (Some(from), Some(to)) => {
                    condition.push_str(" AND #sk BETWEEN :from AND :to");
                    query = query
                        .expression_attribute_values(":from", s(from))
                        .expression_attribute_values(":to", s(to));
                }
                (Some(from), None) => {
                    condition.push_str(" AND #sk >= :from");
                    query = query.expression_attribute_values(":from", s(from));
                }
                (None, Some(to)) => {
                    condition.push_str(" AND #sk < :to");
                    query = query.expression_attribute_values(":to", s(to));
                }
                (None, None) => {}
            }
        }
        if !filters.is_empty() {
            let mut parts = Vec::new();
            for (i, (name, value)) in filters.into_iter().enumerate() {
                parts.push(format!("#f{i} = :f{i}"));
                query = query
                    .expression_attribute_names(format!("#f{i}"), name)
                    .expression_attribute_values(format!(":f{i}"), s(value));
            }
            query = query.filter_expression(parts.join(" AND "));
        }
        let out = query
            .key_condition_expression(condition)
            .send()
            .await
            .context("Failed to list runs")?;
        Ok(Page {
            items: out
                .items
                .unwrap_or_default()
                .into_iter()
                .map(exact_record)
                .collect::<anyhow::Result<_>>()?,
            next: out.last_evaluated_key,
        })
    }

    /// Moves run `id` to `to` if its status is one it may leave for `to`, applying
    /// `change` in the same write; returns the run as stored. `ConditionFailed` if the run
    /// was in another status (or is gone).
    pub async fn transition_run(
        &self,
        run: &Run,
        to: RunStatus,
        at: DateTime<Utc>,
        change: RunChange,
    ) -> StoreResult<Run> {
        let mut sources = RunStatus::sources_of(to);
        if !change.from.is_empty() {
            sources.retain(|status| change.from.contains(status));
        }
        if sources.is_empty() {
            return Err(StoreError::ConditionFailed);
        }
        let (condition, from_values) = status_list(&sources);
        let mut set = vec![
            "#status = :to".to_owned(),
            format!("{} = :status_gsi", GSI2.pk),
            "updated_at = :now".to_owned(),
        ];
        let mut remove = Vec::new();
        let mut add = vec!["version :one".to_owned()];
        let mut values: Vec<(String, AttributeValue)> = vec![
            (":to".into(), s(to.as_str())),
            (":status_gsi".into(), s(status_gsi(run.project_id, to))),
            (":now".into(), s(ts::format(&at))),
            (":one".into(), n(1)),
        ];
        if let Some(started) = change.started_at {
            set.push("started_at = if_not_exists(started_at, :started)".into());
            values.push((":started".into(), s(ts::format(&started))));
        }
        if let Some((ended, duration)) = change.ended {
            set.push("ended_at = :ended".into());
            set.push("duration_ms = :duration".into());
            values.push((":ended".into(), s(ts::format(&ended))));
            values.push((":duration".into(), n(duration)));
        }
        match change.error_message {
            Some(Some(message)) => {
                set.push("error_message = :error".into());
                values.push((":error".into(), s(message)));
            }
            Some(None) => remove.push("error_message"),
            None => {}
        }
        if let Some(approval) = &change.approval {
            set.push("#approval = :approval".into());
            let value = serde_dynamo::to_attribute_value(approval)
                .context("Failed to serialise an approval")?;
            values.push((":approval".into(), value));
        }
        if change.retried {
            add.push("#retries :one".into());
            remove.extend(["ended_at", "duration_ms", "error_message"]);
        }
        match change.waiting_step {
            Some(Some(step)) => {
                set.push("waiting_step = :waiting".into());
                values.push((":waiting".into(), s(step)));
            }
            Some(None) => remove.push("waiting_step"),
            None => {}
        }
        let mut names = vec![("#status", "status")];
        if change.approval.is_some() {
            names.push(("#approval", "approval"));
        }
        if change.retried {
            names.push(("#retries", "retries"));
        }
        let mut expression = format!("SET {} ADD {}", set.join(", "), add.join(", "));
        if !remove.is_empty() {
            remove.sort_unstable();
            remove.dedup();
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let out = self
            .ddb
            .update_item()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run.id), RUN_SK)))
            .update_expression(expression)
            .condition_expression(format!("attribute_exists(pk) AND {condition}"))
            .set_expression_attribute_names(Some(
                names
                    .into_iter()
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .collect(),
            ))
            .set_expression_attribute_values(Some(values.into_iter().chain(from_values).collect()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| super::write_error(e, "change a run's status"))?;
        let attributes = out
            .attributes
            .context("DynamoDB returned no attributes for an update")?;
        Ok(exact_record(attributes)?)
    }

    /// Parks the lifecycle's task token on a run that is still `status`. `ConditionFailed`
    /// if it moved on meanwhile.
    pub async fn park_task_token(
        &self,
        run_id: Uuid,
        status: RunStatus,
        token: &str,
    ) -> StoreResult<()> {
        self.ddb
            .update_item()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run_id), RUN_SK)))
            .update_expression("SET task_token = :token")
            .condition_expression("attribute_exists(pk) AND #status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":status", s(status.as_str()))
            .send()
            .await
            .map_err(|e| super::write_error(e, "park a task token"))?;
        Ok(())
    }

    /// Every step record of a run, in execution order.
    pub async fn all_steps(&self, run_id: Uuid) -> StoreResult<Vec<StepRecord>> {
        let mut steps = Vec::new();
        let mut start = None;
        loop {
            let page = self.list_steps(run_id, 1000, start).await?;
            steps.extend(page.items);
            match page.next {
                Some(next) => start = Some(next),
                None => return Ok(steps),
            }
        }
    }

    /// A page of a run's step records, in execution order.
    pub async fn list_steps(
        &self,
        run_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<StepRecord>> {
        let out = self
            .run_items(run_id, "STEP#", limit, start)
            .consistent_read(true)
            .send()
            .await
            .context("Failed to list run steps")?;
        Ok(Page {
            items: out
                .items
                .unwrap_or_default()
                .into_iter()
                .map(exact_record)
                .collect::<anyhow::Result<_>>()?,
            next: out.last_evaluated_key,
        })
    }

    /// Creates a step record while the run is `running`.
    pub async fn claim_step(&self, record: &StepRecord) -> StoreResult<Claim> {
        let item = exact_item(
            record,
            &[("pk", run_pk(record.run_id)), ("sk", record.sk())],
        )?;
        let items = vec![
            running_check(&self.runs_table, record.run_id)?,
            put(&self.runs_table, item, "attribute_not_exists(sk)")?,
        ];
        match self.transact(items, "claim a run step").await {
            Ok(()) => Ok(Claim::Claimed),
            Err(err) if err.failed_at(0) => Ok(Claim::RunNotRunning),
            Err(err) if err.failed_at(1) => match self.get_step(record.run_id, &record.sk()).await?
            {
                Some(existing) => Ok(Claim::Exists(Box::new(existing))),
                None => Err(anyhow::anyhow!("a step record vanished while being claimed").into()),
            },
            Err(err) => Err(err),
        }
    }

    /// Takes over an existing step record (a failed step of a retried run, or one whose
    /// worker died): if it still has `attempts` and `status`, starts attempt `attempts + 1`
    /// under a new lease. The run must be `running`. Returns `false` if someone else moved
    /// it first.
    pub async fn retake_step(
        &self,
        current: &StepRecord,
        at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        round: u32,
    ) -> StoreResult<bool> {
        let update = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(current.run_id), current.sk())))
            .update_expression(
                "SET #status = :running, started_at = :at, lease_until = :lease, #round = :round, \
                 #attempts = :next REMOVE ended_at, duration_ms, error_message",
            )
            .condition_expression("#attempts = :attempts AND #status = :current")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#round", "round")
            .expression_attribute_names("#attempts", "attempts")
            .expression_attribute_values(":running", s(StepStatus::Running.as_str()))
            .expression_attribute_values(":current", s(current.status.as_str()))
            .expression_attribute_values(":at", s(ts::format(&at)))
            .expression_attribute_values(":lease", s(ts::format(&lease_until)))
            .expression_attribute_values(":round", n(round))
            .expression_attribute_values(":attempts", n(current.attempts))
            .expression_attribute_values(":next", n(current.attempts + 1))
            .build()
            .context("Failed to build a step update")?;
        let items = vec![
            running_check(&self.runs_table, current.run_id)?,
            TransactWriteItem::builder().update(update).build(),
        ];
        match self.transact(items, "retake a run step").await {
            Ok(()) => Ok(true),
            Err(err) if err.failed_at(0) || err.failed_at(1) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Extends the lease of a step attempt still held.
    pub async fn renew_step_lease(
        &self,
        record: &StepRecord,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.ddb
            .update_item()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(record.run_id), record.sk())))
            .update_expression("SET lease_until = :lease")
            .condition_expression("#attempts = :attempts AND #status = :running")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#attempts", "attempts")
            .expression_attribute_values(":lease", s(ts::format(&lease_until)))
            .expression_attribute_values(":attempts", n(record.attempts))
            .expression_attribute_values(":running", s(StepStatus::Running.as_str()))
            .send()
            .await
            .map_err(|e| super::write_error(e, "renew a step lease"))?;
        Ok(())
    }

    /// Ends attempt `record.attempts` of a step and adds its tokens and cost to the step and
    /// the run, in one transaction. `false` if the attempt is no longer the step's current
    /// one (another worker took it over): nothing is written then.
    pub async fn finish_step(&self, record: &StepRecord, end: &StepEnd) -> StoreResult<bool> {
        let mut set = vec!["#status = :status"];
        let mut remove = vec!["lease_until"];
        let mut values: HashMap<String, AttributeValue> = [
            (":status", s(end.status.as_str())),
            (":attempts", n(record.attempts)),
            (":running", s(StepStatus::Running.as_str())),
            (":tp", n(end.tokens_prompt)),
            (":tc", n(end.tokens_completion)),
            (":cost", n(end.usd_cost)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        if end.status == StepStatus::Waiting {
            // A waiting step has not ended yet; its wait starts now.
            set.push("started_at = :at");
            values.insert(":at".into(), s(ts::format(&end.at)));
        } else {
            set.extend(["ended_at = :ended", "duration_ms = :duration"]);
            values.insert(":ended".into(), s(ts::format(&end.at)));
            values.insert(":duration".into(), n(end.duration_ms));
        }
        match &end.error_message {
            Some(message) => {
                set.push("error_message = :error");
                values.insert(":error".into(), s(message));
            }
            None => remove.push("error_message"),
        }
        if let Some(request) = &end.request {
            set.push("#request = :request");
            values.insert(":request".into(), s(request.to_string()));
        }
        if let Some(response) = &end.response {
            set.push("#response = :response");
            values.insert(":response".into(), s(response.to_string()));
        }
        let step = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(record.run_id), record.sk())))
            .condition_expression("#attempts = :attempts AND #status = :running")
            .set_expression_attribute_names(Some(
                [("#status", "status")]
                    .into_iter()
                    .chain(end.response.as_ref().map(|_| ("#response", "response")))
                    .chain(end.request.as_ref().map(|_| ("#request", "request")))
                    .chain([("#attempts", "attempts")])
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .collect(),
            ))
            .set_expression_attribute_values(Some(values))
            .update_expression(format!(
                "SET {} ADD tokens_prompt :tp, tokens_completion :tc, usd_cost :cost REMOVE {}",
                set.join(", "),
                remove.join(", ")
            ))
            .build()
            .context("Failed to build a step update")?;
        let mut items = vec![TransactWriteItem::builder().update(step).build()];
        let spent = end.tokens_prompt > 0 || end.tokens_completion > 0 || !end.usd_cost.is_zero();
        if spent {
            let run = Update::builder()
                .table_name(&self.runs_table)
                .set_key(Some(key(run_pk(record.run_id), RUN_SK)))
                .update_expression(
                    "ADD tokens_prompt :tp, tokens_completion :tc, usd_cost :cost, version :one",
                )
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":tp", n(end.tokens_prompt))
                .expression_attribute_values(":tc", n(end.tokens_completion))
                .expression_attribute_values(":cost", n(end.usd_cost))
                .expression_attribute_values(":one", n(1))
                .build()
                .context("Failed to build a run update")?;
            items.push(TransactWriteItem::builder().update(run).build());
        }
        match self.transact(items, "finish a run step").await {
            Ok(()) => Ok(true),
            Err(err) if err.failed_at(0) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Records a skipped step, unless it already has a record.
    pub async fn skip_step(&self, record: &StepRecord) -> StoreResult<()> {
        let item = exact_item(
            record,
            &[("pk", run_pk(record.run_id)), ("sk", record.sk())],
        )?;
        match self
            .ddb
            .put_item()
            .table_name(&self.runs_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(sk)")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => match super::write_error(err, "record a skipped step") {
                StoreError::ConditionFailed => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Completes the waiting `human` step `step_sk` with `input` and moves the run from
    /// `awaiting_input` to `running`, in one transaction. `ConditionFailed` if the run is not
    /// waiting on that step.
    pub async fn resume_human_step(
        &self,
        run: &Run,
        step_sk: &str,
        input: &Value,
        at: DateTime<Utc>,
        waited_ms: u64,
    ) -> StoreResult<()> {
        let step = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run.id), step_sk)))
            .update_expression(
                "SET #status = :succeeded, #response = :response, ended_at = :at, \
                 duration_ms = :duration",
            )
            .condition_expression("#status = :waiting")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#response", "response")
            .expression_attribute_values(":succeeded", s(StepStatus::Succeeded.as_str()))
            .expression_attribute_values(":waiting", s(StepStatus::Waiting.as_str()))
            .expression_attribute_values(":response", s(input.to_string()))
            .expression_attribute_values(":at", s(ts::format(&at)))
            .expression_attribute_values(":duration", n(waited_ms))
            .build()
            .context("Failed to build a step update")?;
        let update = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run.id), RUN_SK)))
            .update_expression(
                "SET #status = :running, updated_at = :now, #gsi = :status_gsi \
                 ADD version :one REMOVE waiting_step",
            )
            .condition_expression("#status = :awaiting AND waiting_step = :step")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#gsi", GSI2.pk)
            .expression_attribute_values(":running", s(RunStatus::Running.as_str()))
            .expression_attribute_values(":awaiting", s(RunStatus::AwaitingInput.as_str()))
            .expression_attribute_values(
                ":status_gsi",
                s(status_gsi(run.project_id, RunStatus::Running)),
            )
            .expression_attribute_values(":now", s(ts::format(&at)))
            .expression_attribute_values(":step", s(step_sk))
            .expression_attribute_values(":one", n(1))
            .build()
            .context("Failed to build a run update")?;
        let items = vec![
            TransactWriteItem::builder().update(update).build(),
            TransactWriteItem::builder().update(step).build(),
        ];
        match self.transact(items, "resume a run").await {
            Err(err) if err.failed_at(0) || err.failed_at(1) => Err(StoreError::ConditionFailed),
            other => other,
        }
    }

    /// One step record, read consistently.
    pub async fn get_step(&self, run_id: Uuid, sk: &str) -> StoreResult<Option<StepRecord>> {
        self.get_exact(run_id, sk, "a run step").await
    }

    /// An item of a run's partition, read consistently, its `usd_cost` exactly.
    async fn get_exact<T: serde::de::DeserializeOwned>(
        &self,
        run_id: Uuid,
        sk: &str,
        what: &str,
    ) -> StoreResult<Option<T>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run_id), sk)))
            .consistent_read(true)
            .send()
            .await
            .with_context(|| format!("Failed to read {what}"))?;
        Ok(out.item.map(exact_record).transpose()?)
    }

    /// Appends log lines to a run, 25 per request.
    pub async fn append_logs(&self, run_id: Uuid, lines: &[LogLine]) -> StoreResult<()> {
        for chunk in lines.chunks(25) {
            let mut requests = chunk
                .iter()
                .map(|line| {
                    let item = item(
                        line,
                        &[
                            ("pk", run_pk(run_id)),
                            ("sk", format!("LOG#{}", Uuid::now_v7())),
                        ],
                    )?;
                    let put = PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .context("Failed to build a log write")?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            for _attempt in 0..5 {
                let out = self
                    .ddb
                    .batch_write_item()
                    .request_items(&self.runs_table, requests)
                    .send()
                    .await
                    .context("Failed to write run logs")?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.runs_table))
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
            }
            if !requests.is_empty() {
                return Err(anyhow::anyhow!("DynamoDB kept leaving run logs unprocessed").into());
            }
        }
        Ok(())
    }

    /// A page of a run's log lines, oldest first.
    pub async fn list_logs(
        &self,
        run_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<LogLine>> {
        let query = self.run_items(run_id, "LOG#", limit, start);
        self.query_page(query, "run logs").await
    }

    /// A `Query` for the items of a run's partition whose sort key starts with `prefix`.
    fn run_items(
        &self,
        run_id: Uuid,
        prefix: &str,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.ddb
            .query()
            .table_name(&self.runs_table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(run_pk(run_id)))
            .expression_attribute_values(":prefix", s(prefix))
            .limit(limit)
            .set_exclusive_start_key(start)
    }
}

fn put(table: &str, item: Item, condition: &str) -> anyhow::Result<TransactWriteItem> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(condition)
        .build()
        .context("Failed to build a put")?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn running_check(table: &str, run_id: Uuid) -> anyhow::Result<TransactWriteItem> {
    let check = ConditionCheck::builder()
        .table_name(table)
        .set_key(Some(key(run_pk(run_id), RUN_SK)))
        .condition_expression("#status = :running")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":running", s(RunStatus::Running.as_str()))
        .build()
        .context("Failed to build a condition check")?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
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
}
