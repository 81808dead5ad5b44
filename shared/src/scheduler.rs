//! The scheduler: turns the EventBridge tick into fires and fires into runs. It sits above
//! the use cases (it starts runs through them), beside the HTTP layer.
//!
//! - **Tick.** An EventBridge rule (`rate(1 minute)`) puts a tick on the scheduler queue.
//!   [`tick`] reads every shard of the due index (one `Query` per page, never a scan), reads
//!   the last runs' statuses of the schedules that care about overlap (one `BatchGetItem` per
//!   100), decides each schedule's [`plan`], claims it with one conditional transaction, and
//!   sends the fires to start to the fire queue in batches of 10. A schedule another tick
//!   claimed first (a duplicate tick, a second scheduler) is left alone: one slot, one claim.
//! - **Fire.** [`handle_fire`] starts the fire's run as the schedule's owner through
//!   [`crate::usecase::schedules::start_fire`], whose idempotency key is the fire's, so a
//!   redelivered message starts no second run; then records the outcome (`started` or
//!   `denied`) and the schedule's last run. A fire of a deleted project is denied and pauses
//!   its schedule.
//! - **Trigger.** A message of the trigger queue (an event schedule's rule matched an event)
//!   is handled by [`crate::triggers::handle_trigger`].
//!
//! `buffer_one` is served by the tick too: a schedule holding a buffered fire stays due, and
//! the first tick that finds the previous run ended starts it.

use std::collections::HashMap;

use anyhow::Context;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::{DateTime, Utc};
use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::ts;
use crate::engine::worker::QueueMessage;
use crate::events::rules::TriggerMessage;
use crate::run::RunStatus;
use crate::schedule::plan::plan;
use crate::schedule::{FireOutcome, OverlapPolicy, Schedule, ScheduleStatus};
use crate::state::AppState;
use crate::store::schedules::DUE_SHARDS;
use crate::store::StoreError;
use crate::triggers::handle_trigger;
use crate::usecase::schedules::{fire_record, start_fire};

/// Claims one tick sends to DynamoDB at once, per shard.
const CLAIM_CONCURRENCY: usize = 16;
/// Batches of fires one tick sends to SQS at once.
const SEND_CONCURRENCY: usize = 8;

/// What one tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TickReport {
    /// Schedules found due.
    pub due: usize,
    /// Schedules this tick claimed (moved on).
    pub claimed: usize,
    /// Schedules another tick claimed first.
    pub lost: usize,
    /// Schedules looked at that needed no write (a buffered fire still waiting).
    pub idle: usize,
    /// Fires sent to the fire queue.
    pub enqueued: usize,
}

impl std::ops::AddAssign for TickReport {
    fn add_assign(&mut self, other: Self) {
        self.due += other.due;
        self.claimed += other.claimed;
        self.lost += other.lost;
        self.idle += other.idle;
        self.enqueued += other.enqueued;
    }
}

/// A fire to start, as the fire queue carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireMessage {
    /// The schedule.
    pub schedule_id: Uuid,
    /// The slot.
    #[serde(with = "ts")]
    pub nominal_time: DateTime<Utc>,
}

/// A message of the scheduler's queues.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// An EventBridge scheduled event: tick.
    Tick,
    /// A fire to start.
    Fire(FireMessage),
    /// An event an event schedule's rule matched (the trigger queue).
    Trigger(TriggerMessage),
}

impl Message {
    /// Reads a message body: an EventBridge event (`detail-type`) is a tick, one holding
    /// an `event` a [`TriggerMessage`], anything else must be a [`FireMessage`].
    pub fn parse(body: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(body).map_err(|err| format!("not JSON: {err}"))?;
        if value.get("detail-type").is_some() {
            return Ok(Self::Tick);
        }
        if value.get("event").is_some() {
            return serde_json::from_value(value)
                .map(Self::Trigger)
                .map_err(|err| format!("not a trigger message: {err}"));
        }
        serde_json::from_value(value)
            .map(Self::Fire)
            .map_err(|err| format!("neither a tick nor a fire: {err}"))
    }
}

/// Runs one tick at the state's clock.
#[tracing::instrument(name = "scheduler_tick", skip_all)]
pub async fn tick(state: &AppState) -> anyhow::Result<TickReport> {
    let now = state.clock.now();
    let queue = fire_queue_url(state).await?;
    let shards = (0..DUE_SHARDS).map(|shard| tick_shard(state, shard, now, &queue));
    let mut report = TickReport::default();
    for shard in futures_util::future::try_join_all(shards).await? {
        report += shard;
    }
    tracing::info!(
        due = report.due,
        claimed = report.claimed,
        lost = report.lost,
        enqueued = report.enqueued,
        "scheduler tick"
    );
    Ok(report)
}

async fn tick_shard(
    state: &AppState,
    shard: u32,
    now: DateTime<Utc>,
    queue: &str,
) -> anyhow::Result<TickReport> {
    let mut report = TickReport::default();
    let mut start = None;
    loop {
        let page = state.store.due_schedules(shard, now, start).await?;
        report += tick_page(state, page.items, now, queue).await?;
        start = page.next;
        if start.is_none() {
            return Ok(report);
        }
    }
}

/// Claims a page of due schedules and enqueues their fires.
async fn tick_page(
    state: &AppState,
    schedules: Vec<Schedule>,
    now: DateTime<Utc>,
    queue: &str,
) -> anyhow::Result<TickReport> {
    let mut report = TickReport {
        due: schedules.len(),
        ..TickReport::default()
    };
    let watched: Vec<Uuid> = schedules
        .iter()
        .filter(|s| s.overlap_policy != OverlapPolicy::Allow || s.buffered.is_some())
        .filter_map(|s| s.last_run_id)
        .collect();
    let statuses = if watched.is_empty() {
        HashMap::new()
    } else {
        state.store.run_statuses(&watched).await?
    };
    let statuses = &statuses;
    // Futures collected first: a stream mapping to borrowing futures would not be `Send`.
    let claims: Vec<_> = schedules
        .into_iter()
        .map(|schedule| claim(state, schedule, now, statuses))
        .collect();
    let claims: Vec<Claim> = stream::iter(claims)
        .buffer_unordered(CLAIM_CONCURRENCY)
        .collect()
        .await;
    let mut fires = Vec::new();
    for claim in claims {
        match claim {
            Claim::Claimed(dispatch) => {
                report.claimed += 1;
                fires.extend(dispatch);
            }
            Claim::Lost => report.lost += 1,
            Claim::Idle => report.idle += 1,
            Claim::Failed(error) => {
                tracing::error!(error = ?error, "a due schedule could not be claimed");
            }
        }
    }
    report.enqueued = enqueue(state, queue, &fires).await?;
    Ok(report)
}

enum Claim {
    Claimed(Vec<FireMessage>),
    Lost,
    Idle,
    Failed(anyhow::Error),
}

async fn claim(
    state: &AppState,
    schedule: Schedule,
    now: DateTime<Utc>,
    statuses: &HashMap<Uuid, RunStatus>,
) -> Claim {
    let Some(spec) = schedule.cron() else {
        return Claim::Failed(anyhow::anyhow!(
            "schedule {} is due but has no valid cron expression",
            schedule.id
        ));
    };
    let last_run_unfinished = schedule
        .last_run_id
        .and_then(|id| statuses.get(&id))
        .is_some_and(|status| !status.is_terminal());
    let unfinished = last_run_unfinished || schedule.fire_in_flight(now);
    let plan = plan(&schedule, &spec, now, unfinished);
    if plan.is_idle(&schedule) {
        return Claim::Idle;
    }
    match state.store.claim_fires(&schedule, &plan, now).await {
        Ok(()) => Claim::Claimed(
            plan.dispatch
                .iter()
                .map(|nominal_time| FireMessage {
                    schedule_id: schedule.id,
                    nominal_time: *nominal_time,
                })
                .collect(),
        ),
        Err(StoreError::ConditionFailed) => Claim::Lost,
        Err(error) => Claim::Failed(error.into()),
    }
}

/// Sends `fires` to the fire queue in batches of 10; how many were sent. A fire that cannot
/// be sent stays `pending` in its schedule's history and fails the tick, so it is seen.
async fn enqueue(state: &AppState, queue: &str, fires: &[FireMessage]) -> anyhow::Result<usize> {
    let batches: Vec<_> = fires
        .chunks(10)
        .map(|batch| send_batch(state, queue, batch))
        .collect();
    let sent: Vec<anyhow::Result<usize>> = stream::iter(batches)
        .buffer_unordered(SEND_CONCURRENCY)
        .collect()
        .await;
    sent.into_iter().sum()
}

async fn send_batch(state: &AppState, queue: &str, batch: &[FireMessage]) -> anyhow::Result<usize> {
    let entries = batch
        .iter()
        .enumerate()
        .map(|(i, fire)| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(serde_json::to_string(fire)?)
                .build()
                .context("Failed to build a fire message")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = state
        .clients
        .sqs
        .send_message_batch()
        .queue_url(queue)
        .set_entries(Some(entries))
        .send()
        .await
        .context("Failed to send fires to the fire queue")?;
    if let Some(failed) = out.failed().first() {
        anyhow::bail!(
            "{} fire(s) could not be sent to the fire queue: {}",
            out.failed().len(),
            failed.message().unwrap_or("no reason given")
        );
    }
    Ok(batch.len())
}

/// Starts the run of a fire and records the outcome. Errors are worth a retry (the store or
/// the run lifecycle failed); a fire the owner may not start is recorded `denied`, not
/// retried.
#[tracing::instrument(name = "schedule_fire", skip_all, fields(schedule_id = %fire.schedule_id))]
pub async fn handle_fire(state: &AppState, fire: &FireMessage) -> anyhow::Result<FireOutcome> {
    let nominal = fire.nominal_time;
    let schedule = match state.store.get_schedule(fire.schedule_id).await? {
        Some(schedule) if schedule.status == ScheduleStatus::Active => schedule,
        _ => {
            // Paused or deleted since the claim: a paused schedule records nothing.
            state.store.forget_fire(fire.schedule_id, &nominal).await?;
            return Ok(FireOutcome::Pending);
        }
    };
    let started = start_fire(state, &schedule, nominal).await;
    let record = fire_record(state, &schedule, nominal, started).await?;
    let clear_in_flight = schedule.in_flight == Some(nominal);
    state.store.record_fire(&record, clear_in_flight).await?;
    tracing::info!(outcome = ?record.outcome, run_id = ?record.run_id, "schedule fired");
    Ok(record.outcome)
}

/// Handles a batch of the scheduler's messages (ticks, fires and triggers); the ids of those that
/// failed and should be delivered again.
pub async fn handle_batch(state: &AppState, messages: Vec<QueueMessage>) -> Vec<String> {
    let handled = messages
        .into_iter()
        .map(|message| handle_message(state, message));
    futures_util::future::join_all(handled)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Handles one message; its id if it failed.
async fn handle_message(state: &AppState, message: QueueMessage) -> Option<String> {
    let outcome = match Message::parse(&message.body) {
        Ok(Message::Tick) => tick(state).await.map(|_| ()),
        Ok(Message::Fire(fire)) => handle_fire(state, &fire).await.map(|_| ()),
        Ok(Message::Trigger(trigger)) => handle_trigger(state, &trigger).await.map(|_| ()),
        Err(why) => Err(anyhow::anyhow!(why)),
    };
    let error = outcome.err()?;
    tracing::error!(message_id = %message.message_id, error = ?error, "a scheduler message failed");
    Some(message.message_id)
}

/// [`handle_batch`] for the Lambda function's SQS event, with partial batch failures.
pub async fn handle_event(state: &AppState, event: SqsEvent) -> SqsBatchResponse {
    let messages = event.records.into_iter().map(QueueMessage::from).collect();
    SqsBatchResponse {
        batch_item_failures: handle_batch(state, messages)
            .await
            .into_iter()
            .map(|item_identifier| BatchItemFailure { item_identifier })
            .collect(),
    }
}

/// Polls `queue_url` and handles its messages until `shutdown`, deleting those handled: the
/// dev server's stand-in for the Lambda event source.
pub async fn consume(
    state: &AppState,
    queue_url: &str,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let received = tokio::select! {
            () = &mut shutdown => return,
            received = state
                .clients
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(10)
                .send() => received,
        };
        let messages: Vec<QueueMessage> = match received {
            Ok(out) => out
                .messages
                .unwrap_or_default()
                .into_iter()
                .map(QueueMessage::from)
                .collect(),
            Err(error) => {
                tracing::warn!(error = ?error, "could not receive scheduler messages");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let failed = handle_batch(state, messages.clone()).await;
        for message in messages.iter().filter(|m| !failed.contains(&m.message_id)) {
            let Some(receipt) = &message.receipt_handle else {
                continue;
            };
            if let Err(error) = state
                .clients
                .sqs
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(receipt)
                .send()
                .await
            {
                tracing::warn!(error = ?error, "could not delete a handled scheduler message");
            }
        }
    }
}

/// The scheduler queue's URL: configured, or looked up by name.
pub async fn scheduler_queue_url(state: &AppState) -> anyhow::Result<String> {
    let name = state.config.scheduler_queue_name();
    queue_url(state, state.config.scheduler_queue_url.as_deref(), &name).await
}

/// The fire queue's URL: configured, or looked up by name.
pub async fn fire_queue_url(state: &AppState) -> anyhow::Result<String> {
    let name = state.config.fire_queue_name();
    queue_url(state, state.config.fire_queue_url.as_deref(), &name).await
}

/// The trigger queue's URL (event schedules' rules deliver to it), looked up by name.
pub async fn trigger_queue_url(state: &AppState) -> anyhow::Result<String> {
    queue_url(state, None, &state.config.trigger_queue_name()).await
}

async fn queue_url(
    state: &AppState,
    configured: Option<&str>,
    name: &str,
) -> anyhow::Result<String> {
    if let Some(url) = configured {
        return Ok(url.to_owned());
    }
    state
        .clients
        .sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .with_context(|| format!("Failed to find the queue {name}"))?
        .queue_url
        .with_context(|| format!("the queue {name} has no URL"))
}
