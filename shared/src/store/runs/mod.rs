//! Runs, their step records and log lines, and `Idempotency-Key`s, in the runs table; one
//! submodule per item kind ([`run`], [`step`], [`log`]), the keys and shared reads here.
//!
//! A run is `RUN#<id>` / `RUN`; its steps (`STEP#<idx>`, loop iterations
//! `STEP#<idx>#<iteration>`) and log lines (`LOG#<uuidv7>`) share its partition, so one
//! `Query` reads them in execution order. The run item is listed through five indexes, each
//! keyed by project and sorted by `<created_at>#<id>` (see [`crate::store::schema`]).
//!
//! Every change of a run's `status` is one `UpdateItem` conditioned on the statuses it may
//! leave ([`RunStatus::can_become`]), so two writers can never both move a run. Step records
//! are claimed with `attribute_not_exists` in the same transaction that checks the run is
//! still `running`; a step is finished in one transaction that checks the claim (`attempts`)
//! and adds its tokens and cost to the run, so a duplicate worker can neither run a step twice
//! nor count it twice.
//!
//! Money is exact: `usd_cost` is a DynamoDB number (a decimal of up to 38 digits), added with
//! `ADD`, and read back as a [`Decimal`](rust_decimal::Decimal) without passing through a float.
//!
//! The records themselves are the run domain's ([`crate::run`]).

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{cursor, item, key, s, Item, Page, Store, StoreResult};
use crate::payload::Payload;
use crate::run::{RunStatus, StepRecord, StepStatus, Trigger, Usage};

mod log;
mod run;
mod step;
mod sweep;

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
    /// Only runs started by this schedule.
    pub schedule_id: Option<Uuid>,
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
    /// What it sent, as the record keeps it.
    pub request: Option<Payload>,
    /// What it produced, as the record keeps it.
    pub response: Option<Payload>,
    /// What the attempt spent.
    pub usage: Usage,
}

/// Partition key of a run.
pub fn run_pk(id: Uuid) -> String {
    format!("RUN#{id}")
}

const RUN_SK: &str = "RUN";

fn project_runs(project_id: Uuid) -> String {
    format!("{}#RUNS", crate::store::projects::project_pk(project_id))
}

/// The gsi7 partition of the runs a schedule started.
fn schedule_runs(project_id: Uuid, schedule_id: Uuid) -> String {
    format!("{}#SCHEDULE#{schedule_id}", project_runs(project_id))
}

fn status_gsi(project_id: Uuid, status: RunStatus) -> String {
    format!("{}#STATUS#{}", project_runs(project_id), status.as_str())
}

/// Partitions of the index of runs in motion (gsi6), so no partition runs hot.
pub const ACTIVE_SHARDS: u32 = 4;

/// The gsi6 partition of a run in motion.
fn active_pk(run_id: Uuid) -> String {
    format!("ACTIVE#{}", run_id.as_u128() % u128::from(ACTIVE_SHARDS))
}

/// The gsi6 sort key of a run in motion that last changed `at`.
fn active_sk(run_id: Uuid, at: &DateTime<Utc>) -> String {
    format!("{}#{run_id}", crate::domain::ts::format(at))
}

/// Whether a run moving to `status` is listed as in motion: every status but the two that
/// end a run for good. A waiting run leaves the list once its task token is parked.
fn in_motion(status: RunStatus) -> bool {
    !matches!(status, RunStatus::Succeeded | RunStatus::Cancelled)
}

fn idempotency_pk(project_id: Uuid, key_digest: &str) -> String {
    format!("IDEMPOTENCY#{project_id}#{key_digest}")
}

/// Reads an item whose `usd_cost` is a DynamoDB number, exactly.
fn exact_record<T: serde::de::DeserializeOwned>(mut item: Item) -> anyhow::Result<T> {
    if let Some(AttributeValue::N(number)) = item.remove("usd_cost") {
        item.insert("usd_cost".into(), AttributeValue::S(number));
    }
    crate::store::record(item)
}

/// A page of a `Query` of run items, each read with [`exact_record`].
fn exact_page<T: serde::de::DeserializeOwned>(
    items: Option<Vec<Item>>,
    next: Option<cursor::Key>,
) -> anyhow::Result<Page<T>> {
    Ok(Page {
        items: items
            .unwrap_or_default()
            .into_iter()
            .map(exact_record)
            .collect::<anyhow::Result<_>>()?,
        next,
    })
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
