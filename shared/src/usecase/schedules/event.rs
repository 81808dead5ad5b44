//! Event schedules' use cases: their EventBridge rule kept in step with the stored schedule
//! (put, switched, deleted; put back when a store write is refused), and starting a run for
//! a matched event.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{concurrent, owner, run_request};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::events::rules::{self, EventPattern};
use crate::run::Trigger;
use crate::schedule::{OverlapPolicy, Schedule, ScheduleStatus};
use crate::state::AppState;
use crate::usecase::runs::{self, Idempotency, Started};
use crate::validate::FieldErrors;

/// Starts the run of an event schedule for `event` (as EventBridge delivered it), as its
/// owner, at chain depth `chain_depth`: `trigger: event`, `input.event` the event. The
/// idempotency key is the event's id, so a redelivered trigger message starts one run.
pub async fn start_event_fire(
    state: &AppState,
    schedule: &Schedule,
    event: &Value,
    nominal_time: DateTime<Utc>,
    chain_depth: u32,
) -> ApiResult<Started> {
    let owner = owner(state, schedule).await?;
    let event_id = event["id"].as_str().unwrap_or_default();
    let key = format!("event:{}:{event_id}", schedule.id);
    let idempotency = Idempotency {
        request_digest: key.clone(),
        key,
    };
    let mut request = run_request(
        schedule,
        Trigger::Event,
        Some(nominal_time),
        Some(idempotency),
    );
    if let Value::Object(map) = &mut request.input {
        map.insert("event".to_owned(), event.clone());
    }
    request.chain_depth = chain_depth;
    runs::start(state, &owner, request).await
}

/// What only an event schedule requires: an EventBridge pattern as its expression, and an
/// overlap policy that needs no buffer (its fires come from the bus, not from slots a tick
/// can look at again).
pub(super) fn check_event_schedule(schedule: &Schedule, errors: &mut Vec<FieldError>) {
    errors.check("expression", EventPattern::parse(&schedule.expression));
    if schedule.overlap_policy == OverlapPolicy::BufferOne {
        errors.fail(
            "overlap_policy",
            "an event schedule's overlap policy is `skip` or `allow`: events are not buffered",
        );
    }
}

/// The pattern of a stored, validated event schedule.
fn pattern_of(schedule: &Schedule) -> ApiResult<EventPattern> {
    EventPattern::parse(&schedule.expression).map_err(|why| {
        ApiError::Internal(anyhow::anyhow!(
            "schedule {} holds an invalid event pattern: {why}",
            schedule.id
        ))
    })
}

/// Puts the schedule's rule, then stores the schedule. The rule comes first so that a
/// pattern EventBridge refuses (`422`) or a full bus (`409`) stores nothing; a store that
/// fails after it takes the rule back, and a rule left behind by a crash in between matches
/// for a schedule that does not exist, whose trigger messages are dropped.
pub(super) async fn create_event_schedule(state: &AppState, schedule: &Schedule) -> ApiResult<()> {
    let pattern = pattern_of(schedule)?;
    let enabled = schedule.status == ScheduleStatus::Active;
    rules::put_rule(state, schedule.id, schedule.project_id, &pattern, enabled).await?;
    if let Err(err) = state.store.create_schedule(schedule).await {
        if let Err(undo) = rules::delete_rule(state, schedule.id).await {
            tracing::error!(schedule_id = %schedule.id, error = ?undo, "the rule of a schedule that was not stored could not be deleted");
        }
        return Err(err.into());
    }
    Ok(())
}

/// Stores a changed event schedule, its rule first when the pattern or the status changed
/// (EventBridge judges the pattern before anything is stored); a store that fails after it
/// puts the stored schedule's rule back.
pub(super) async fn update_event_schedule(
    state: &AppState,
    current: &Schedule,
    updated: &Schedule,
) -> ApiResult<()> {
    let rule_changed = current.expression != updated.expression || current.status != updated.status;
    if rule_changed {
        let enabled = updated.status == ScheduleStatus::Active;
        let pattern = pattern_of(updated)?;
        rules::put_rule(state, updated.id, updated.project_id, &pattern, enabled).await?;
    }
    let stored = concurrent(
        state
            .store
            .update_schedule(updated, current.version, current.due_at.as_ref())
            .await,
    );
    if let (Err(_), true) = (&stored, rule_changed) {
        restore_rule(state, current).await?;
    }
    stored
}

/// Deletes an event schedule's rule, then the schedule, so a failure leaves a schedule
/// a retried `DELETE` finds (deleting a rule twice is harmless); a store that refuses the
/// deletion (a concurrent change) puts the rule back.
pub(super) async fn delete_event_schedule(state: &AppState, schedule: &Schedule) -> ApiResult<()> {
    rules::delete_rule(state, schedule.id)
        .await
        .map_err(ApiError::Internal)?;
    let deleted = concurrent(
        state
            .store
            .delete_schedule(schedule.id, schedule.version)
            .await,
    );
    if deleted.is_err() {
        restore_rule(state, schedule).await?;
    }
    deleted
}

/// Puts back the rule of `schedule` as stored, after a refused write changed or deleted it;
/// a failure is logged, as the write's own error is the one to answer.
async fn restore_rule(state: &AppState, schedule: &Schedule) -> ApiResult<()> {
    let enabled = schedule.status == ScheduleStatus::Active;
    let pattern = pattern_of(schedule)?;
    if let Err(undo) =
        rules::put_rule(state, schedule.id, schedule.project_id, &pattern, enabled).await
    {
        tracing::error!(schedule_id = %schedule.id, error = ?undo, "a schedule's rule could not be put back after a refused write");
    }
    Ok(())
}
