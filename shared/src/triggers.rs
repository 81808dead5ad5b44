//! The trigger consumer: turns an event an event schedule's rule matched (a
//! [`TriggerMessage`] on the trigger queue, handled with the scheduler's messages) into the
//! schedule's run, through the fire path cron schedules use.
//!
//! A message starts nothing when its schedule is gone, is not an event schedule, is paused
//! (LocalStack delivers to disabled rules), or names another project than the schedule's
//! (the rule already requires that; this is defence in depth). A run that would be deeper
//! than [`crate::events::chain::MAX_CHAIN_DEPTH`] is recorded `denied`. Otherwise the fire
//! of the event's `time` is recorded `started`, `skipped_overlap` (policy `skip`, the last
//! run unfinished) or `denied`; the run's idempotency key is the event's id, so a
//! redelivered message starts one run.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::chain::next_depth;
use crate::events::rules::TriggerMessage;
use crate::schedule::{Fire, FireOutcome, OverlapPolicy, Schedule, ScheduleStatus, ScheduleType};
use crate::state::AppState;
use crate::usecase::schedules::{fire_record, start_event_fire};

/// Handles one trigger message; the fire's outcome, or `None` when it starts and records
/// nothing. Errors are worth a retry.
#[tracing::instrument(name = "schedule_trigger", skip_all, fields(schedule_id = %message.schedule_id))]
pub async fn handle_trigger(
    state: &AppState,
    message: &TriggerMessage,
) -> anyhow::Result<Option<FireOutcome>> {
    let event = &message.event;
    let Some(schedule) = state.store.get_schedule(message.schedule_id).await? else {
        tracing::info!("a trigger of a deleted schedule was dropped");
        return Ok(None);
    };
    if schedule.kind != ScheduleType::Event || schedule.status == ScheduleStatus::Paused {
        return Ok(None);
    }
    let project = event["detail"]["project_id"].as_str();
    if project != Some(schedule.project_id.to_string().as_str()) {
        tracing::warn!(event_project = ?project, "a trigger of another project's event was dropped");
        return Ok(None);
    }
    let Some(event_id) = event["id"].as_str().filter(|id| !id.is_empty()) else {
        tracing::warn!("a trigger whose event has no id was dropped");
        return Ok(None);
    };
    let now = state.clock.now();
    let nominal = event["time"]
        .as_str()
        .and_then(|time| time.parse::<DateTime<Utc>>().ok())
        .unwrap_or(now);
    let record = match next_depth(event) {
        Err(too_deep) => {
            Fire::new(schedule.id, nominal, FireOutcome::Denied, now).because(too_deep.to_string())
        }
        Ok(_) if overlaps(state, &schedule).await? => {
            Fire::new(schedule.id, nominal, FireOutcome::SkippedOverlap, now)
        }
        Ok(depth) => {
            let started = start_event_fire(state, &schedule, event, nominal, depth).await;
            fire_record(state, &schedule, nominal, started).await?
        }
    };
    state.store.record_fire(&record, false).await?;
    tracing::info!(%event_id, outcome = ?record.outcome, run_id = ?record.run_id, "event schedule fired");
    Ok(Some(record.outcome))
}

/// Whether a fire of `schedule` now is skipped: policy `skip` and its last run unfinished.
async fn overlaps(state: &AppState, schedule: &Schedule) -> anyhow::Result<bool> {
    let last: Option<Uuid> = schedule.last_run_id;
    let (OverlapPolicy::Skip, Some(last)) = (schedule.overlap_policy, last) else {
        return Ok(false);
    };
    let statuses = state.store.run_statuses(&[last]).await?;
    Ok(statuses
        .get(&last)
        .is_some_and(|status| !status.is_terminal()))
}
