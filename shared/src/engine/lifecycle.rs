//! The run's Step Functions execution: started, answered and stopped from here.
//!
//! Each run has exactly one execution, named by the run id, of the state machine in
//! `infra/statemachine/run-lifecycle.asl.json`. Starting it again with the same name and
//! input returns the same execution, so a retried request starts nothing twice.

use anyhow::Context;
use aws_sdk_sfn::error::ProvideErrorMetadata;
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

/// Whether a run's execution is still going (and so can still be answered).
pub async fn is_running(state: &AppState, run_id: Uuid) -> anyhow::Result<bool> {
    let arn = execution_arn(state_machine_arn(state)?, run_id);
    match state
        .clients
        .sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
    {
        Ok(execution) => Ok(execution.status() == &aws_sdk_sfn::types::ExecutionStatus::Running),
        Err(err) if err.code() == Some("ExecutionDoesNotExist") => Ok(false),
        Err(err) => Err(anyhow::Error::new(err).context("Failed to read the run's execution")),
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
