//! The `decision` step: evaluates its condition (off the async executor, under the
//! expression cost limit) and names the branch taken.

use serde_json::json;

use super::StepResult;
use crate::workflow::{DecisionConfig, Scope};

/// Evaluates `decision`'s condition in `scope`: `{result, branch}` with `then` or `else`.
pub(in crate::engine) async fn decide(decision: &DecisionConfig, scope: &Scope<'_>) -> StepResult {
    match decision.condition.evaluate_bool_blocking(scope).await {
        Ok(result) => StepResult::succeeded(
            json!({"condition": decision.condition.as_str()}),
            json!({"result": result, "branch": if result { "then" } else { "else" }}),
        ),
        Err(error) => StepResult::failed(
            Some(json!({"condition": decision.condition.as_str()})),
            format!("the condition could not be evaluated: {error}"),
        ),
    }
}
