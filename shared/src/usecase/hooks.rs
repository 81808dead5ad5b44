//! Inbound webhooks: a signed delivery to a `webhook` schedule starts its run through the one
//! run-creation use case, and developers rotate the schedule's signing secret.
//!
//! A delivery is authenticated like outbound webhook calls ([`crate::engine::webhook`]): the
//! HMAC of `"<timestamp>.<raw body>"` under the schedule's secret, the timestamp within
//! [`DEFAULT_TOLERANCE`]. Whatever fails — no or a bad signature, a stale timestamp, an unknown
//! schedule or one of another type — answers the same `401`, so an unsigned caller learns
//! nothing about which schedules exist. Deliveries are de-duplicated by the run's
//! idempotency record (kept 24 h), keyed by the delivery id (or, absent, the signature), so
//! a redelivery, even a concurrent one, answers with the first run.

use serde_json::{json, Value};
use uuid::Uuid;

use super::runs::{self, Idempotency, Started};
use super::schedules::{fresh_hook_secret, owner, run_request, visible_schedule};
use crate::auth::rbac::Action;
use crate::auth::Principal;
use crate::engine::webhook::{verify, DEFAULT_TOLERANCE, DELIVERY_HEADER};
use crate::error::{ApiError, ApiResult};
use crate::run::Trigger;
use crate::schedule::{Fire, FireOutcome, Schedule, ScheduleStatus, ScheduleType};
use crate::state::AppState;
use secrecy::SecretString;

/// Largest delivery body accepted.
pub const MAX_HOOK_BODY_BYTES: usize = 256 * 1024;
/// Longest delivery id accepted (it is kept in the run's input).
const MAX_DELIVERY_ID_CHARS: usize = 255;

/// A delivery as received: the signature headers and the raw body.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// `X-Spark-Ops-Timestamp`.
    pub timestamp: Option<&'a str>,
    /// `X-Spark-Ops-Signature`.
    pub signature: Option<&'a str>,
    /// `X-Spark-Ops-Delivery`.
    pub delivery_id: Option<&'a str>,
    /// The raw body, at most [`MAX_HOOK_BODY_BYTES`].
    pub body: &'a [u8],
}

fn unsigned() -> ApiError {
    ApiError::Unauthorized(
        "a valid X-Spark-Ops-Signature of a fresh X-Spark-Ops-Timestamp is required".into(),
    )
}

/// Starts the run of the webhook schedule `raw_id` for a signed delivery, as the schedule's
/// owner (`trigger: webhook`); a redelivery answers with the first delivery's run.
#[tracing::instrument(name = "webhook_delivery", skip_all, fields(schedule_id = %raw_id))]
pub async fn receive(state: &AppState, raw_id: &str, delivery: Delivery<'_>) -> ApiResult<Started> {
    let now = state.clock.now();
    let (Some(timestamp), Some(signature)) = (
        delivery
            .timestamp
            .and_then(|t| t.trim().parse::<i64>().ok()),
        delivery.signature,
    ) else {
        return Err(unsigned());
    };
    // A stale or unsigned delivery costs no read.
    let tolerance = i64::try_from(DEFAULT_TOLERANCE.as_secs()).unwrap_or(i64::MAX);
    if now.timestamp().abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err(unsigned());
    }
    let schedule = signed_schedule(state, raw_id, timestamp, signature, delivery.body).await?;
    let body: Value = match serde_json::from_slice(delivery.body) {
        Ok(body @ Value::Object(_)) => body,
        _ => return Err(ApiError::bad_request("body", "must be a JSON object")),
    };
    if schedule.status == ScheduleStatus::Paused {
        return Err(ApiError::Conflict(
            "the schedule is paused; resume it to accept deliveries".into(),
        ));
    }
    let delivery_id = delivery.delivery_id.unwrap_or(signature).to_owned();
    if delivery_id.chars().count() > MAX_DELIVERY_ID_CHARS {
        return Err(ApiError::bad_request(
            DELIVERY_HEADER,
            format!("must be at most {MAX_DELIVERY_ID_CHARS} characters"),
        ));
    }
    let key = format!("webhook:{}:{delivery_id}", schedule.id);
    let idempotency = Idempotency {
        request_digest: key.clone(),
        key,
    };
    let mut request = run_request(&schedule, Trigger::Webhook, Some(now), Some(idempotency));
    if let Value::Object(map) = &mut request.input {
        map.insert(
            "event".to_owned(),
            json!({"body": body, "delivery_id": delivery_id}),
        );
    }
    let started = match owner(state, &schedule).await {
        Ok(owner) => runs::start(state, &owner, request).await,
        Err(err) => Err(err),
    };
    let fire = match &started {
        Ok(started) if started.replayed => None,
        Ok(started) => Some(Fire {
            run_id: Some(started.run.id),
            ..Fire::new(schedule.id, now, FireOutcome::Started, now)
        }),
        // Worth a retry by the sender; nothing to record.
        Err(ApiError::Internal(_) | ApiError::Unavailable(_) | ApiError::Conflict(_)) => None,
        Err(denied) => {
            Some(Fire::new(schedule.id, now, FireOutcome::Denied, now).because(denied.to_string()))
        }
    };
    if let Some(fire) = fire {
        state.store.record_fire(&fire, false).await?;
    }
    let started = started?;
    if !started.replayed {
        tracing::info!(schedule_id = %schedule.id, run_id = %started.run.id, "webhook delivery started a run");
    }
    Ok(started)
}

/// The webhook schedule `raw_id` if `signature` signs `timestamp` and `body` under one of its
/// valid secrets; otherwise the one `401`.
async fn signed_schedule(
    state: &AppState,
    raw_id: &str,
    timestamp: i64,
    signature: &str,
    body: &[u8],
) -> ApiResult<Schedule> {
    let Ok(id) = Uuid::try_parse(raw_id) else {
        return Err(unsigned());
    };
    let Some(schedule) = state
        .store
        .get_schedule(id)
        .await?
        .filter(|s| s.kind == ScheduleType::Webhook)
    else {
        return Err(unsigned());
    };
    let Some(keys) = state.secrets.hook_keys(id).await? else {
        tracing::error!(schedule_id = %id, "a webhook schedule has no signing secret");
        return Err(unsigned());
    };
    let now = state.clock.now();
    let signed = keys.valid_at(now).into_iter().any(|key| {
        verify(
            key,
            timestamp,
            body,
            signature,
            now.timestamp(),
            DEFAULT_TOLERANCE,
        )
    });
    if signed {
        Ok(schedule)
    } else {
        Err(unsigned())
    }
}

/// Gives the webhook schedule `id` a new signing secret, returned this once; the previous
/// one stays valid for [`crate::store::hook_secrets::ROTATION_GRACE`].
pub async fn rotate_secret(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> ApiResult<SecretString> {
    let schedule = visible_schedule(state, principal, id, Action::WriteRegistry).await?;
    if schedule.kind != ScheduleType::Webhook {
        return Err(ApiError::Conflict(format!(
            "a {} schedule has no signing secret; only webhook schedules do",
            schedule.kind.as_str()
        )));
    }
    let fresh = fresh_hook_secret();
    let now = state.clock.now();
    if !state
        .secrets
        .rotate_hook_secret(schedule.id, &fresh, now)
        .await?
    {
        // Lost (deleted by hand): the new secret is the only one.
        state
            .secrets
            .create_hook_secret(schedule.id, &fresh)
            .await?;
    }
    tracing::info!(schedule_id = %schedule.id, "webhook signing secret rotated");
    Ok(fresh)
}
