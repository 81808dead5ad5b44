//! The run's Step Functions execution: started, answered and stopped from here.
//!
//! Each run has exactly one execution, named by the run id, of the state machine in
//! `infra/statemachine/run-lifecycle.asl.json`. Starting it again with the same name and
//! input returns the same execution, so a retried request starts nothing twice. The sweeper
//! reads an execution's state and the task it waits on (from the end of its history) here,
//! and sends a lost task's message again.

use anyhow::Context;
use aws_sdk_sfn::error::ProvideErrorMetadata;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::run::{Run, RunStatus};
use crate::state::AppState;

/// The state machine's ARN, from the configuration.
fn state_machine_arn(state: &AppState) -> anyhow::Result<&str> {
    state
        .config
        .run_state_machine_arn
        .as_deref()
        .context("RUN_STATE_MACHINE_ARN is not set: runs cannot be started")
}

/// The ARN of run `run_id`'s execution.
pub fn execution_arn(state_machine_arn: &str, run_id: Uuid) -> String {
    format!(
        "{}:{run_id}",
        state_machine_arn.replacen(":stateMachine:", ":execution:", 1)
    )
}

/// Starts a run's execution; starting it again is harmless.
pub async fn start(state: &AppState, run: &Run) -> anyhow::Result<()> {
    let input = json!({
        "run_id": run.id,
        "project_id": run.project_id,
        "needs_approval": run.status == RunStatus::AwaitingApproval,
    });
    let result = state
        .clients
        .sfn
        .start_execution()
        .state_machine_arn(state_machine_arn(state)?)
        .name(run.id.to_string())
        .input(input.to_string())
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        // Only this code names executions after runs: the execution is this run's.
        Err(err) if err.code() == Some("ExecutionAlreadyExists") => Ok(()),
        Err(err) => Err(anyhow::Error::new(err).context("Failed to start the run's execution")),
    }
}

/// Stops a run's execution, if it is still going.
pub async fn stop(state: &AppState, run_id: Uuid, cause: &str) -> anyhow::Result<()> {
    let arn = execution_arn(state_machine_arn(state)?, run_id);
    let result = state
        .clients
        .sfn
        .stop_execution()
        .execution_arn(arn)
        .error("RunCancelled")
        .cause(cause)
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(err) if err.code() == Some("ExecutionDoesNotExist") => Ok(()),
        Err(err) => Err(anyhow::Error::new(err).context("Failed to stop the run's execution")),
    }
}

/// Where a run's execution is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Execution {
    /// It was never started (or has expired from Step Functions' records).
    Missing,
    /// It is still going.
    Running,
    /// It ended, with this Step Functions status (`SUCCEEDED`, `FAILED`, `TIMED_OUT`, …).
    Ended(String),
}

/// Where run `run_id`'s execution is.
pub async fn execution(state: &AppState, run_id: Uuid) -> anyhow::Result<Execution> {
    let arn = execution_arn(state_machine_arn(state)?, run_id);
    match state
        .clients
        .sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
    {
        Ok(execution) => Ok(match execution.status() {
            ExecutionStatus::Running => Execution::Running,
            other => Execution::Ended(other.as_str().to_owned()),
        }),
        Err(err) if err.code() == Some("ExecutionDoesNotExist") => Ok(Execution::Missing),
        Err(err) => Err(anyhow::Error::new(err).context("Failed to read the run's execution")),
    }
}

/// Whether a run's execution is still going (and so can still be answered).
pub async fn is_running(state: &AppState, run_id: Uuid) -> anyhow::Result<bool> {
    Ok(execution(state, run_id).await? == Execution::Running)
}

/// The task a running execution waits on: the message its current state sent to the run
/// queue, which carries the task token.
#[derive(Clone, Debug)]
pub struct PendingTask {
    /// The message as the state machine sent it (`{kind, run_id, task_token}`).
    pub message: Value,
    /// The task's token.
    pub token: String,
    /// When the state machine sent it.
    pub sent_at: DateTime<Utc>,
}

/// Events read back from the end of an execution's history to find its current task:
/// scheduling a task adds three events (scheduled, started, submitted), and a waiting
/// execution adds none until the task is answered.
const HISTORY_TAIL: i32 = 10;

/// The task run `run_id`'s execution waits on, read from the end of its history: the
/// latest `TaskScheduled` event not yet followed by the task's end. `None` between tasks,
/// or if the execution does not exist.
pub async fn pending_task(state: &AppState, run_id: Uuid) -> anyhow::Result<Option<PendingTask>> {
    let arn = execution_arn(state_machine_arn(state)?, run_id);
    let history = match state
        .clients
        .sfn
        .get_execution_history()
        .execution_arn(arn)
        .reverse_order(true)
        .max_results(HISTORY_TAIL)
        .send()
        .await
    {
        Ok(history) => history,
        Err(err) if err.code() == Some("ExecutionDoesNotExist") => return Ok(None),
        Err(err) => {
            return Err(
                anyhow::Error::new(err).context("Failed to read the run's execution history")
            )
        }
    };
    for event in history.events() {
        match event.r#type() {
            HistoryEventType::TaskScheduled => {
                let Some(details) = event.task_scheduled_event_details() else {
                    return Ok(None);
                };
                let parameters: Value = serde_json::from_str(details.parameters())
                    .context("A task's parameters are not JSON")?;
                // The body is an object in the definition; Step Functions may hand it back
                // as JSON text.
                let message = match &parameters["MessageBody"] {
                    Value::String(text) => {
                        serde_json::from_str(text).context("A task's message body is not JSON")?
                    }
                    other => other.clone(),
                };
                let Some(token) = message["task_token"].as_str().map(str::to_owned) else {
                    return Ok(None);
                };
                let at = event.timestamp();
                let sent_at = DateTime::from_timestamp(at.secs(), at.subsec_nanos())
                    .context("A history event's time is out of range")?;
                return Ok(Some(PendingTask {
                    message,
                    token,
                    sent_at,
                }));
            }
            HistoryEventType::TaskSucceeded
            | HistoryEventType::TaskFailed
            | HistoryEventType::TaskTimedOut
            | HistoryEventType::TaskStartFailed
            | HistoryEventType::TaskSubmitFailed => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}

/// Sends `message` to the run queue again, as the state machine sent it: the worker
/// handles a duplicate as it handles every redelivery.
pub async fn redeliver(state: &AppState, message: &Value) -> anyhow::Result<()> {
    let queue_url = run_queue_url(state).await?;
    state
        .clients
        .sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(message.to_string())
        .send()
        .await
        .context("Failed to send a lifecycle task to the run queue again")?;
    Ok(())
}

/// The run queue's URL: configured, or looked up by its name.
pub async fn run_queue_url(state: &AppState) -> anyhow::Result<String> {
    super::redrive::run_queue_url(&state.clients.sqs, &state.config).await
}

/// Ends the lifecycle of a run that was just cancelled or rejected: fails the task parked
/// on the run, if any (the state machine routes that to its `Cancelled` end; a worker that
/// parks a token later finds the run cancelled and fails it itself), and stops the
/// execution. The run's status already says it ended, so a failure here is logged, not
/// returned.
pub async fn end(state: &AppState, run: &Run, cause: &str) {
    if let Some(token) = &run.task_token {
        if let Err(error) = fail(state, token, CANCELLED_ERROR, cause).await {
            tracing::error!(run_id = %run.id, error = ?error, "could not end the run's waiting task");
        }
    }
    if let Err(error) = stop(state, run.id, cause).await {
        tracing::error!(run_id = %run.id, error = ?error, "could not stop the run's execution");
    }
}

/// Answers a waiting task. A token that is no longer current (answered already, timed out,
/// or its execution stopped) is not an error: someone else got there first.
pub async fn answer(state: &AppState, token: &str, output: Value) -> anyhow::Result<()> {
    match state
        .clients
        .sfn
        .send_task_success()
        .task_token(token)
        .output(output.to_string())
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_stale_token(err.code()) => {
            tracing::info!(
                code = err.code().unwrap_or_default(),
                "the task was already answered or has ended"
            );
            Ok(())
        }
        Err(err) => Err(anyhow::Error::new(err).context("Failed to answer a lifecycle task")),
    }
}

/// Fails a waiting task with `error`; a token that is no longer current is ignored.
pub async fn fail(state: &AppState, token: &str, error: &str, cause: &str) -> anyhow::Result<()> {
    match state
        .clients
        .sfn
        .send_task_failure()
        .task_token(token)
        .error(error)
        .cause(cause)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_stale_token(err.code()) => Ok(()),
        Err(err) => Err(anyhow::Error::new(err).context("Failed to fail a lifecycle task")),
    }
}

/// The error a cancelled or rejected run's parked task is failed with; the state machine
/// routes it to its `Cancelled` end.
pub const CANCELLED_ERROR: &str = "RunCancelled";

/// Step Functions' answers for a token that is no longer current.
pub fn is_stale_token(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("TaskTimedOut" | "TaskDoesNotExist" | "InvalidToken" | "ExecutionDoesNotExist")
    )
}
