//! Putting events on the bus, and the events Spark-Ops publishes when a run moves.
//!
//! A run's event is published after its move is stored, by the code that moved it, through
//! [`publish_run`]. Publishing never blocks or fails a run: it tries [`PUBLISH_ATTEMPTS`]
//! times, spaced by [`PUBLISH_BACKOFF`], then logs one warning and drops the event. The run's
//! record stays the truth; an event is a notification, published at most once per move in
//! the normal case (a retry after a lost answer can repeat one: consumers key on `run_id`
//! and `detail-type`) and never replayed later.

use std::time::Duration;

use anyhow::Context;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::run::{Run, RunStatus, Trigger};
use crate::state::AppState;

/// Tries to publish one run event before giving up on it.
pub const PUBLISH_ATTEMPTS: u32 = 3;
/// Spacing of those tries: a run waits at most some 300 ms more for a bus that is down.
pub const PUBLISH_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(1),
};

/// An event for the bus.
#[derive(Clone, Debug, PartialEq)]
pub struct BusEvent {
    /// `source`.
    pub source: String,
    /// `detail-type`.
    pub detail_type: String,
    /// `detail`, an object.
    pub detail: Value,
    /// `time`.
    pub time: DateTime<Utc>,
}

/// `detail` of a `run.*` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEventDetail {
    /// The run's project; every event on the bus has it.
    pub project_id: Uuid,
    /// The run.
    pub run_id: Uuid,
    /// Its workflow.
    pub workflow_id: Uuid,
    /// The workflow version it runs.
    pub workflow_version: u64,
    /// The agent whose model runs its prompt steps.
    pub agent_id: Uuid,
    /// What started it.
    pub trigger: Trigger,
    /// Its status after the move.
    pub status: RunStatus,
    /// What it has cost so far, exact decimal text in USD as the API shows it (`"0.0123"`).
    pub usd_cost: String,
    /// How many event-started runs led to it; 0 for a run not started by an event.
    pub chain_depth: u32,
}

/// The `detail-type` of the event a run moving to `status` publishes; `None` for `queued`,
/// which is published as nothing (the run was approved or retried, and its start follows).
pub fn detail_type_of(status: RunStatus) -> Option<&'static str> {
    match status {
        RunStatus::Queued => None,
        RunStatus::AwaitingApproval => Some("run.awaiting_approval"),
        RunStatus::Running => Some("run.started"),
        RunStatus::AwaitingInput => Some("run.awaiting_input"),
        RunStatus::Succeeded => Some("run.succeeded"),
        RunStatus::Failed => Some("run.failed"),
        RunStatus::Cancelled => Some("run.cancelled"),
    }
}

/// The event `run` publishes in its current status, if that status publishes one.
pub fn run_event(run: &Run) -> Option<BusEvent> {
    let detail_type = detail_type_of(run.status)?;
    let detail = RunEventDetail {
        project_id: run.project_id,
        run_id: run.id,
        workflow_id: run.workflow_id,
        workflow_version: run.workflow_version,
        agent_id: run.agent_id,
        trigger: run.trigger,
        status: run.status,
        usd_cost: run.usage.usd_cost.normalize().to_string(),
        chain_depth: run.chain_depth,
    };
    Some(BusEvent {
        source: super::SOURCE.to_owned(),
        detail_type: detail_type.to_owned(),
        detail: serde_json::to_value(detail).ok()?,
        time: run.updated_at,
    })
}

/// Publishes the event of the move `run` (as stored) has just made, if its status has one;
/// never fails (see the module docs).
#[tracing::instrument(name = "publish_run_event", skip_all, fields(run_id = %run.id, status = run.status.as_str()))]
pub async fn publish_run(state: &AppState, run: &Run) {
    let Some(event) = run_event(run) else {
        return;
    };
    let mut attempt = 0;
    loop {
        match put(state, &event).await {
            Ok(_) => return,
            Err(error) if attempt + 1 >= PUBLISH_ATTEMPTS => {
                tracing::warn!(
                    detail_type = event.detail_type,
                    error = ?error,
                    "could not publish a run event; it is dropped"
                );
                return;
            }
            Err(_) => {
                tokio::time::sleep(PUBLISH_BACKOFF.delay(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Puts one event on the bus; returns its event id. A failed entry is an error, like a
/// failed call.
pub async fn put(state: &AppState, event: &BusEvent) -> anyhow::Result<String> {
    let entry = PutEventsRequestEntry::builder()
        .event_bus_name(&state.config.event_bus_name)
        .source(&event.source)
        .detail_type(&event.detail_type)
        .detail(event.detail.to_string())
        .time(aws_smithy_types::DateTime::from_millis(
            event.time.timestamp_millis(),
        ))
        .build();
    let output = state
        .clients
        .events
        .put_events()
        .entries(entry)
        .send()
        .await
        .with_context(|| format!("Failed to put an event on {}", state.config.event_bus_name))?;
    let result = output
        .entries()
        .first()
        .context("PutEvents answered no entry")?;
    match (result.event_id(), result.error_code()) {
        (Some(id), None) => Ok(id.to_owned()),
        (_, code) => anyhow::bail!(
            "EventBridge refused the event: {} {}",
            code.unwrap_or("unknown error"),
            result.error_message().unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use serde_json::json;

    use super::*;
    use crate::domain::Env;
    use crate::run::{StepCounts, Usage};

    fn run(status: RunStatus) -> Run {
        let at = Utc::now();
        Run {
            id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            workflow_id: Uuid::now_v7(),
            workflow_version: 3,
            agent_id: Uuid::now_v7(),
            env: Env::Dev,
            trigger: Trigger::Event,
            origin: None,
            schedule_id: None,
            nominal_time: None,
            status,
            input: json!({}),
            metadata: json!({}),
            require_approval: false,
            started_at: None,
            ended_at: None,
            duration_ms: None,
            usage: Usage {
                usd_cost: Decimal::new(12_300, 6),
                ..Usage::default()
            },
            retries: 0,
            waits: 0,
            has_human_in_loop: false,
            steps_total: 1,
            step_counts: StepCounts::default(),
            region: "us-east-1".into(),
            error_message: None,
            approval: None,
            task_token: None,
            waiting_step: None,
            chain_depth: 2,
            created_by: Uuid::now_v7(),
            created_at: at,
            updated_at: at,
            version: 1,
        }
    }

    #[test]
    fn a_finished_run_publishes_its_status_with_the_exact_cost_and_chain_depth() {
        let run = run(RunStatus::Succeeded);
        let event = run_event(&run).unwrap();
        assert_eq!(event.source, "spark-ops");
        assert_eq!(event.detail_type, "run.succeeded");
        assert_eq!(
            event.detail,
            json!({
                "project_id": run.project_id,
                "run_id": run.id,
                "workflow_id": run.workflow_id,
                "workflow_version": 3,
                "agent_id": run.agent_id,
                "trigger": "event",
                "status": "succeeded",
                "usd_cost": "0.0123",
                "chain_depth": 2,
            })
        );
    }

    #[test]
    fn every_status_but_queued_publishes_an_event() {
        let published: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter_map(detail_type_of)
            .collect();
        assert_eq!(
            published,
            [
                "run.awaiting_approval",
                "run.started",
                "run.awaiting_input",
                "run.succeeded",
                "run.failed",
                "run.cancelled"
            ]
        );
        assert!(run_event(&run(RunStatus::Queued)).is_none());
    }
}
