//! The `tool` step: renders its input and calls the project's tool through the tool
//! executor, with a key stable across re-runs of the same attempt round.

use serde_json::json;
use uuid::Uuid;

use super::{idempotency_key, StepResult};
use crate::engine::run::{Engine, Slice};
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
        match self
            .tools
            .call_with_key(&tool, input.clone(), Some(&key))
            .await
        {
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
            Err(error) => StepResult::failed(
                Some(json!({"tool_id": tool.id, "input": input})),
                format!("tool `{}`: {error}", tool.name),
            ),
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
