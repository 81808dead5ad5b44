//! The `tool` step: renders its input and calls the project's tool through the tool
//! executor, with a key stable across re-runs of the same attempt round, within the step's
//! budget. A tool over its `rate_limit_per_min` is waited for when the next window fits in
//! the budget; otherwise the step yields to the next slice, so a rate limit never fails it.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::{idempotency_key, StepResult};
use crate::engine::budget::{Budget, MIN_STEP};
use crate::engine::run::{Engine, Slice};
use crate::engine::tool::{ToolError, ToolOutcome};
use crate::run::{LogLevel, StepRecord};
use crate::store::tools::Tool;
use crate::workflow::{Scope, ToolConfig};

impl Engine {
    pub(in crate::engine) async fn tool_step(
        &self,
        slice: &Slice<'_>,
        config: &ToolConfig,
        scope: &Scope<'_>,
        record: &StepRecord,
    ) -> StepResult {
        let input = match config.input.render(scope) {
            Ok(input) => input,
            Err(error) => {
                return StepResult::failed(
                    None,
                    format!("the input could not be rendered: {error}"),
                )
            }
        };
        let tool = match self
            .project_tool(slice.run.project_id, config.tool_id)
            .await
        {
            Ok(tool) => tool,
            Err(error) => return StepResult::failed(Some(input), error),
        };
        let key = idempotency_key(record);
        let budget = slice.deadline.step_budget();
        match self.call_tool(&tool, &input, &key, budget).await {
            Ok(outcome) => {
                let mut result = StepResult::succeeded(outcome.request.clone(), outcome.output);
                result.logs.push((
                    LogLevel::Info,
                    format!(
                        "tool `{}` answered HTTP {} after {} attempt(s)",
                        tool.name, outcome.status, outcome.attempts
                    ),
                ));
                result
            }
            Err(ToolError::RateLimited {
                retry_after_secs, ..
            }) => StepResult::yielded(
                json!({"tool_id": tool.id, "input": input}),
                format!(
                    "tool `{}` is at its rate limit for {retry_after_secs} s more, longer than \
                     this slice can wait: the step goes on in the next slice",
                    tool.name
                ),
            ),
            Err(error) => StepResult::failed(
                Some(json!({"tool_id": tool.id, "input": input})),
                format!("tool `{}`: {error}", tool.name),
            ),
        }
    }

    /// Calls `tool` within `budget`, waiting for the next window of its rate limit while the
    /// wait leaves at least [`MIN_STEP`] for the call.
    pub(in crate::engine) async fn call_tool(
        &self,
        tool: &Tool,
        input: &Value,
        key: &str,
        budget: Budget,
    ) -> Result<ToolOutcome, ToolError> {
        loop {
            match self
                .tools
                .call_within(tool, input.clone(), Some(key), budget)
                .await
            {
                Err(ToolError::RateLimited {
                    retry_after_secs, ..
                }) if Duration::from_secs(retry_after_secs) + MIN_STEP <= budget.remaining() => {
                    tracing::info!(
                        wait_secs = retry_after_secs,
                        "the tool's rate limit is reached: waiting for the next window"
                    );
                    tokio::time::sleep(Duration::from_secs(retry_after_secs)).await;
                }
                other => return other,
            }
        }
    }

    /// Tool `id`, if it still exists in the run's project.
    pub(in crate::engine) async fn project_tool(
        &self,
        project_id: Uuid,
        id: Uuid,
    ) -> Result<Tool, String> {
        match self.state.store.get_tool(id).await {
            Ok(Some(tool)) if tool.project_id == project_id => Ok(tool),
            Ok(_) => Err(format!("tool {id} no longer exists")),
            Err(error) => Err(format!("tool {id} could not be read: {error}")),
        }
    }
}
