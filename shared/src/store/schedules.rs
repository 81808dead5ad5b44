//! Schedules and their fires, in the registry table (see [`super::schema`] for the keys).
//!
//! A fire is claimed with one transaction that moves the schedule on (conditioned on the
//! `due_at` the tick read, so two ticks or two schedulers cannot both claim it) and writes
//! the fire records of that tick, the started slot's only if absent.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::{KeysAndAttributes, Put, TransactWriteItem, Update};
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::expr::{Apply, Changes};
use super::schema::{GSI1, GSI4};
use super::{cursor, item, key, n, record, s, Item, Page, Store, StoreError, StoreResult};
use crate::domain::ts;
use crate::run::RunStatus;
use crate::schedule::plan::Plan;
use crate::schedule::{Fire, FireOutcome, Schedule, ScheduleStatus, ScheduleType};

/// Partitions of the due index, so one tick reads them in parallel and no partition is hot.
pub const DUE_SHARDS: u32 = 8;
/// How long fire records are kept.
pub const FIRE_RETENTION: Duration = Duration::days(90);

const SCHEDULE_SK: &str = "SCHEDULE";

/// Which schedules a list returns.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScheduleFilter {
    /// Only this type.
    pub kind: Option<ScheduleType>,
    /// Only this status.
    pub status: Option<ScheduleStatus>,
    /// Only schedules of this workflow.
    pub workflow_id: Option<Uuid>,
}

/// Partition key of a schedule and its fires.
pub fn schedule_pk(id: Uuid) -> String {
    format!("SCHEDULE#{id}")
}

fn project_schedules(project_id: Uuid) -> String {
    format!("{}#SCHEDULES", super::projects::project_pk(project_id))
}

fn due_pk(id: Uuid) -> String {
    format!("DUE#{}", id.as_u128() % u128::from(DUE_SHARDS))
}

fn due_sk(at: &DateTime<Utc>, id: Uuid) -> String {
    format!("{}#{id}", ts::format(at))
}

fn fire_sk(at: &DateTime<Utc>) -> String {
    format!("FIRE#{}", ts::format(at))
}

/// The schedule as an item with its keys; in the due index only while active and due.
fn schedule_item(schedule: &Schedule) -> anyhow::Result<Item> {
    let mut keys = vec![
        ("pk", schedule_pk(schedule.id)),
        ("sk", SCHEDULE_SK.to_owned()),
        (GSI1.pk, project_schedules(schedule.project_id)),
        (GSI1.sk, schedule_pk(schedule.id)),
    ];
    if let (ScheduleStatus::Active, Some(due)) = (schedule.status, &schedule.due_at) {
        keys.push((GSI4.pk, due_pk(schedule.id)));
        keys.push((GSI4.sk, due_sk(due, schedule.id)));
    }
    item(schedule, &keys)
}

fn fire_item(fire: &Fire) -> anyhow::Result<Item> {
    let mut item = item(
        fire,
        &[
            ("pk", schedule_pk(fire.schedule_id)),
            ("sk", fire_sk(&fire.nominal_time)),
        ],
    )?;
    item.insert(
        "ttl".into(),
        n((fire.recorded_at + FIRE_RETENTION).timestamp()),
    );
    Ok(item)
}

/// Attributes a change through the API never writes: identity, and what the scheduler
/// maintains.
const FIXED_ATTRIBUTES: [&str; 8] = [
    "id",
    "project_id",
    "created_at",
    "owner_user_id",
    "in_flight",
    "claimed_at",
    "last_run_at",
    "last_run_id",
];

/// Attributes a change may remove.
const OPTIONAL_ATTRIBUTES: [&str; 6] = [
    "workflow_version",
    "next_run_at",
    "due_at",
    "buffered",
    "gsi4pk",
    "gsi4sk",
];

/// `changes` conditioned on `due_at` still being `read` (the tick's claim, a change through
/// the API), besides `also`; `due_at` must be among the attributes `changes` names.
fn only_if_due_at(changes: Changes, read: Option<&DateTime<Utc>>, also: &str) -> Changes {
    match read {
        Some(at) => changes
            .only_if(&format!("#due_at = :read_due AND {also}"))
            .value(":read_due", s(ts::format(at))),
        None => changes.only_if(&format!("attribute_not_exists(#due_at) AND {also}")),
    }
}

impl Store {
    /// Stores a new schedule.
    pub async fn create_schedule(&self, schedule: &Schedule) -> StoreResult<()> {
        self.put_new(
            &self.registry_table,
            schedule_item(schedule)?,
            "store a schedule",
        )
        .await
    }

    /// The schedule with `id`.
    pub async fn get_schedule(&self, id: Uuid) -> StoreResult<Option<Schedule>> {
        self.get_record(
            &self.registry_table,
            key(schedule_pk(id), SCHEDULE_SK),
            "a schedule",
        )
        .await
    }

    /// A page of a project's schedules, oldest first. The filters apply after the read (a
    /// page may be short while `next` continues): schedules per project are few.
    pub async fn list_schedules(
        &self,
        project_id: Uuid,
        filter: ScheduleFilter,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Schedule>> {
        let mut query = self
            .index_query(&self.registry_table, &GSI1, project_schedules(project_id))
            .limit(limit)
            .set_exclusive_start_key(start);
        let mut conditions = Vec::new();
        let filters = [
            ("type", filter.kind.map(|k| k.as_str().to_owned())),
            ("status", filter.status.map(|s| s.as_str().to_owned())),
            (
                "target_workflow_id",
                filter.workflow_id.map(|w| w.to_string()),
            ),
        ];
        for (i, (name, value)) in filters.into_iter().enumerate() {
            if let Some(value) = value {
                conditions.push(format!("#f{i} = :f{i}"));
                query = query
                    .expression_attribute_names(format!("#f{i}"), name)
                    .expression_attribute_values(format!(":f{i}"), s(value));
            }
        }
        if !conditions.is_empty() {
            query = query.filter_expression(conditions.join(" AND "));
        }
        self.query_page(query, "schedules").await
    }

    /// Writes a schedule changed through the API if its version is still
    /// `expected_version` and no tick moved it since it was read (`read_due_at`);
    /// `ConditionFailed` otherwise. What the scheduler maintains is left as stored.
    pub async fn update_schedule(
        &self,
        updated: &Schedule,
        expected_version: u64,
        read_due_at: Option<&DateTime<Utc>>,
    ) -> StoreResult<()> {
        let mut attributes = schedule_item(updated)?;
        for fixed in FIXED_ATTRIBUTES.into_iter().chain(["pk", "sk"]) {
            attributes.remove(fixed);
        }
        let mut changes = Changes::new();
        for name in OPTIONAL_ATTRIBUTES {
            if !attributes.contains_key(name) {
                changes = changes.remove(name);
            }
        }
        for (name, value) in attributes {
            changes = changes.set(&name, value);
        }
        let changes = only_if_due_at(changes, read_due_at, "#version = :expected")
            .value(":expected", n(expected_version));
        self.ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(schedule_pk(updated.id), SCHEDULE_SK)))
            .apply(changes)
            .send()
            .await
            .map_err(|e| super::write_error(e, "update a schedule"))?;
        Ok(())
    }

    /// Deletes a schedule if its version is still `expected_version`. Its fire records
    /// expire on their own.
    pub async fn delete_schedule(&self, id: Uuid, expected_version: u64) -> StoreResult<()> {
        self.ddb
            .delete_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(schedule_pk(id), SCHEDULE_SK)))
            .condition_expression("#version = :expected")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":expected", n(expected_version))
            .send()
            .await
            .map_err(|e| super::write_error(e, "delete a schedule"))?;
        Ok(())
    }

    /// A page of the schedules of due-index shard `shard` due at or before `now`, the
    /// longest due first.
    pub async fn due_schedules(
        &self,
        shard: u32,
        now: DateTime<Utc>,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Schedule>> {
        // `~` sorts after every character of an id, so every schedule due at `now` is in.
        let query = self
            .index_query(&self.registry_table, &GSI4, format!("DUE#{shard}"))
            .key_condition_expression("#pk = :pk AND #sk <= :now")
            .expression_attribute_names("#sk", GSI4.sk)
            .expression_attribute_values(":now", s(format!("{}#~", ts::format(&now))))
            .set_exclusive_start_key(start);
        self.query_page(query, "due schedules").await
    }

    /// Claims what `plan` decided for `schedule` (as the tick read it): moves the schedule
    /// on and writes the fire records, in one transaction. `ConditionFailed` if another
    /// tick claimed it first, or it was paused, changed or deleted since the read.
    pub async fn claim_fires(
        &self,
        schedule: &Schedule,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let pk = schedule_pk(schedule.id);
        let at = |at: &DateTime<Utc>| s(ts::format(at));
        let mut changes = Changes::new();
        changes = match &plan.next_run_at {
            Some(next) => changes.set("next_run_at", at(next)),
            None => changes.remove("next_run_at"),
        };
        changes = match &plan.due_at {
            Some(due) => changes
                .set("due_at", at(due))
                .set(GSI4.sk, s(due_sk(due, schedule.id))),
            None => changes.remove("due_at").remove(GSI4.pk).remove(GSI4.sk),
        };
        changes = match &plan.buffered {
            Some(buffered) => changes.set("buffered", at(buffered)),
            None => changes.remove("buffered"),
        };
        if let Some(last) = plan.dispatch.last() {
            changes = changes
                .set("in_flight", at(last))
                .set("claimed_at", at(&now));
        }
        let changes = only_if_due_at(changes, schedule.due_at.as_ref(), "#status = :active")
            .name("status")
            .value(":active", s(ScheduleStatus::Active.as_str()));
        let update = Update::builder()
            .table_name(&self.registry_table)
            .set_key(Some(key(pk.clone(), SCHEDULE_SK)))
            .apply(changes)
            .build()
            .context("Failed to build the claim of a schedule")?;
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        for fire in &plan.records {
            let mut put = Put::builder()
                .table_name(&self.registry_table)
                .set_item(Some(fire_item(fire)?));
            // The started slot is claimed once; the other records only say what happened.
            if fire.outcome == FireOutcome::Pending {
                put = put.condition_expression("attribute_not_exists(pk)");
            }
            let put = put.build().context("Failed to build a fire record")?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        if let Some(released) = &plan.released {
            let update = Update::builder()
                .table_name(&self.registry_table)
                .set_key(Some(key(pk, fire_sk(released))))
                .update_expression("SET #outcome = :pending, recorded_at = :now")
                .condition_expression("#outcome = :buffered")
                .expression_attribute_names("#outcome", "outcome")
                .expression_attribute_values(":pending", s("pending"))
                .expression_attribute_values(":buffered", s("buffered"))
                .expression_attribute_values(":now", s(ts::format(&now)))
                .build()
                .context("Failed to build the release of a buffered fire")?;
            items.push(TransactWriteItem::builder().update(update).build());
        }
        match self.transact(items, "claim a schedule's fires").await {
            Err(err @ StoreError::Cancelled(_)) if err.failed_at(0) => {
                Err(StoreError::ConditionFailed)
            }
            Err(err @ StoreError::Cancelled(_)) => {
                // The schedule was still due but a record was taken: a duplicate claim.
                tracing::warn!(schedule_id = %schedule.id, error = %err, "a fire was claimed twice");
                Err(StoreError::ConditionFailed)
            }
            other => other,
        }
    }

    /// Records what became of a fire sent to be started; a fire whose outcome is already
    /// recorded keeps it (a redelivered message). `started`: the run and when, which become
    /// the schedule's last run; `clear_in_flight`: the schedule still waits on this fire.
    pub async fn record_fire(&self, fire: &Fire, clear_in_flight: bool) -> StoreResult<()> {
        let put = Put::builder()
            .table_name(&self.registry_table)
            .set_item(Some(fire_item(fire)?))
            .condition_expression("attribute_not_exists(pk) OR #outcome = :pending")
            .expression_attribute_names("#outcome", "outcome")
            .expression_attribute_values(":pending", s("pending"))
            .build()
            .context("Failed to build a fire record")?;
        let mut changes = Changes::new();
        if let (FireOutcome::Started, Some(run_id)) = (fire.outcome, fire.run_id) {
            changes = changes
                .set("last_run_id", s(run_id.to_string()))
                .set("last_run_at", s(ts::format(&fire.recorded_at)));
        }
        if clear_in_flight {
            changes = changes.remove("in_flight");
        }
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        if !changes.is_empty() {
            let update = Update::builder()
                .table_name(&self.registry_table)
                .set_key(Some(key(schedule_pk(fire.schedule_id), SCHEDULE_SK)))
                .apply(changes.name("pk").only_if("attribute_exists(#pk)"))
                .build()
                .context("Failed to build the schedule's last run")?;
            items.push(TransactWriteItem::builder().update(update).build());
        }
        match self.transact(items, "record a fire").await {
            // Already recorded, or the schedule was deleted meanwhile: nothing to add.
            Err(err) if err.failed_at(0) || err.failed_at(1) => Ok(()),
            other => other,
        }
    }

    /// Pauses a schedule out of band (its project was deleted): it leaves the due index and
    /// its version moves on. A schedule deleted meanwhile is fine.
    pub async fn pause_schedule(&self, id: Uuid) -> StoreResult<()> {
        let changes = Changes::new()
            .set("status", s(ScheduleStatus::Paused.as_str()))
            .add("version", n(1))
            .remove("next_run_at")
            .remove("due_at")
            .remove("buffered")
            .remove(GSI4.pk)
            .remove(GSI4.sk)
            .name("pk")
            .only_if("attribute_exists(#pk)");
        match self
            .ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(schedule_pk(id), SCHEDULE_SK)))
            .apply(changes)
            .send()
            .await
            .map_err(|e| super::write_error(e, "pause a schedule"))
        {
            Ok(_) | Err(StoreError::ConditionFailed) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Removes a fire that was claimed but will not start (its schedule was paused or
    /// deleted meanwhile): a paused schedule records nothing.
    pub async fn forget_fire(&self, schedule_id: Uuid, nominal: &DateTime<Utc>) -> StoreResult<()> {
        self.ddb
            .delete_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(schedule_pk(schedule_id), fire_sk(nominal))))
            .condition_expression("#outcome = :pending")
            .expression_attribute_names("#outcome", "outcome")
            .expression_attribute_values(":pending", s("pending"))
            .send()
            .await
            .map(|_| ())
            .or_else(|e| match super::write_error(e, "forget a fire") {
                StoreError::ConditionFailed => Ok(()),
                other => Err(other),
            })
    }

    /// A page of a schedule's fires, the latest slot first.
    pub async fn list_fires(
        &self,
        schedule_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Fire>> {
        let query = self
            .ddb
            .query()
            .table_name(&self.registry_table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :fire)")
            .expression_attribute_values(":pk", s(schedule_pk(schedule_id)))
            .expression_attribute_values(":fire", s("FIRE#"))
            .scan_index_forward(false)
            .limit(limit)
            .set_exclusive_start_key(start);
        self.query_page(query, "fires").await
    }

    /// The statuses of the runs among `ids` that exist, read with `BatchGetItem`s of
    /// [`run id, status`] only.
    pub async fn run_statuses(&self, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, RunStatus>> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let mut pending: Vec<Item> = chunk
                .iter()
                .map(|id| key(super::runs::run_pk(*id), "RUN"))
                .collect();
            for _attempt in 0..5 {
                if pending.is_empty() {
                    break;
                }
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .projection_expression("id, #status")
                    .expression_attribute_names("#status", "status")
                    .build()
                    .context("Failed to build the read of run statuses")?;
                let mut out = self
                    .ddb
                    .batch_get_item()
                    .request_items(&self.runs_table, request)
                    .send()
                    .await
                    .context("Failed to read run statuses")?;
                for item in out
                    .responses
                    .take()
                    .unwrap_or_default()
                    .remove(&self.runs_table)
                    .unwrap_or_default()
                {
                    #[derive(serde::Deserialize)]
                    struct Status {
                        id: Uuid,
                        status: RunStatus,
                    }
                    let status: Status = record(item)?;
                    found.insert(status.id, status.status);
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut k| k.remove(&self.runs_table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
        }
        Ok(found)
    }
}
