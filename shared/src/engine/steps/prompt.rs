//! The `prompt` step: runs the agent's model on the rendered prompt, offering the step's
//! tools, and prices the tokens it spent.

use std::collections::HashMap;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{idempotency_key, StepResult};
use crate::engine::budget::Budget;
use crate::engine::cost::PriceTable;
use crate::engine::llm::{self, Endpoint, PromptParams, ToolCaller, ToolSpec};
use crate::engine::run::{Engine, Slice};
use crate::run::{LogLevel, StepRecord};
use crate::store::agents::Agent;
use crate::store::tools::Tool;
use crate::workflow::{PromptConfig, Scope};

/// Default `max_iterations` of a prompt step.
const DEFAULT_PROMPT_ITERATIONS: u32 = 10;

impl Engine {
    pub(in crate::engine) async fn prompt_step(
        &self,
        slice: &Slice<'_>,
        config: &PromptConfig,
        scope: &Scope<'_>,
        record: &StepRecord,
    ) -> StepResult {
        let prompt = match config.prompt.render_text(scope) {
            Ok(prompt) => prompt,
            Err(error) => {
                return StepResult::failed(
                    None,
                    format!("the prompt could not be rendered: {error}"),
                )
            }
        };
        let budget = slice.deadline.step_budget();
        let request = json!({"prompt": prompt, "tools": config.tools});
        let agent = match self.state.store.get_agent(slice.run.agent_id).await {
            Ok(Some(agent)) if agent.project_id == slice.run.project_id => agent,
            Ok(_) => return StepResult::failed(Some(request), "the run's agent no longer exists"),
            Err(error) => {
                return StepResult::failed(
                    Some(request),
                    format!("the agent could not be read: {error}"),
                )
            }
        };
        let endpoint = match self.endpoint(&agent).await {
            Ok(endpoint) => endpoint,
            Err(error) => return StepResult::failed(Some(request), error),
        };
        let prices = match self.prices(slice.run.project_id).await {
            Ok(prices) => prices,
            Err(error) => return StepResult::failed(Some(request), error),
        };
        let mut tools = Vec::new();
        for id in &config.tools {
            match self.project_tool(slice.run.project_id, *id).await {
                Ok(tool) => tools.push(tool),
                Err(error) => return StepResult::failed(Some(request), error),
            }
        }
        let names = llm::function_names(tools.iter().map(|t| t.name.as_str()));
        let specs = tools
            .iter()
            .zip(&names)
            .map(|(tool, name)| {
                ToolSpec::new(
                    name.clone(),
                    tool.description.clone(),
                    tool.http_config()
                        .and_then(|c| c.inputs_schema.clone())
                        .map(Value::Object),
                )
            })
            .collect();
        let params = PromptParams {
            model: agent.model.clone(),
            system_prompt: agent.system_prompt.clone(),
            temperature: agent.temperature.as_deref().and_then(|t| t.parse().ok()),
            max_tokens: agent.max_tokens,
            prompt,
            tools: specs,
            max_iterations: config.max_iterations.unwrap_or(DEFAULT_PROMPT_ITERATIONS),
            budget,
        };
        let caller = PromptTools {
            engine: self,
            tools: names.into_iter().zip(tools).collect(),
            key: idempotency_key(record),
            budget,
        };
        let (outcome, error) = match llm::run_prompt(&self.chat, &endpoint, &params, &caller).await
        {
            Ok(outcome) => (outcome, None),
            Err(error) => (error.partial().clone(), Some(error.to_string())),
        };
        let mut result = match error {
            None => StepResult::succeeded(request, outcome.output()),
            Some(error) => {
                let mut failed = StepResult::failed(Some(request), error);
                failed.response = Some(outcome.output());
                failed
            }
        };
        result.usage.tokens_prompt = outcome.tokens_prompt;
        result.usage.tokens_completion = outcome.tokens_completion;
        match prices.cost(&agent.model, outcome.tokens_prompt, outcome.tokens_completion) {
            Ok(cost) => result.usage.usd_cost = cost,
            Err(error) => result.logs.push((
                LogLevel::Warn,
                format!("cost not counted: {error}; add the model to the project's settings.model_prices"),
            )),
        }
        result.logs.push((
            LogLevel::Info,
            format!(
                "model `{}`: {} call(s), {} prompt + {} completion tokens, {} tool call(s)",
                agent.model,
                outcome.model_calls,
                outcome.tokens_prompt,
                outcome.tokens_completion,
                outcome.tool_calls.len()
            ),
        ));
        result
    }

    /// The chat endpoint of an agent: its own, or the deployment's default.
    async fn endpoint(&self, agent: &Agent) -> Result<Endpoint, String> {
        let secrets = &self.state.secrets;
        let (base_url, key) = match &agent.llm {
            Some(llm) => {
                let key = if llm.has_api_key {
                    secrets
                        .get(&crate::store::secrets::path::agent_llm_key(agent.id))
                        .await
                        .map_err(|e| {
                            tracing::error!(error = ?e, "could not read an agent's LLM key");
                            "the agent's LLM API key could not be read".to_owned()
                        })?
                } else {
                    None
                };
                (llm.base_url.clone(), key)
            }
            None => {
                let base_url = self.state.config.llm_base_url.clone().ok_or_else(|| {
                    "the agent has no llm.base_url and the deployment sets no LLM_BASE_URL"
                        .to_owned()
                })?;
                let key = secrets.get("llm-api-key").await.map_err(|e| {
                    tracing::error!(error = ?e, "could not read the default LLM key");
                    "the default LLM API key could not be read".to_owned()
                })?;
                (base_url, key)
            }
        };
        Ok(Endpoint {
            base_url,
            api_key: key.map(|k: SecretString| k),
        })
    }

    async fn prices(&self, project_id: Uuid) -> Result<PriceTable, String> {
        let project = self
            .state
            .store
            .get_project(project_id)
            .await
            .map_err(|e| format!("the project could not be read: {e}"))?
            .ok_or_else(|| "the run's project no longer exists".to_owned())?;
        PriceTable::with_overrides(&project.settings)
            .map_err(|e| format!("the project's settings.model_prices are invalid: {e}"))
    }
}

/// The tools a prompt step offers, called through the tool executor.
struct PromptTools<'a> {
    engine: &'a Engine,
    tools: HashMap<String, Tool>,
    key: String,
    budget: Budget,
}

#[async_trait]
impl ToolCaller for PromptTools<'_> {
    async fn call(&self, name: &str, arguments: Value) -> Result<Value, String> {
        let tool = self
            .tools
            .get(name)
            .ok_or_else(|| format!("no tool is called `{name}`"))?;
        // One key per call, stable across a re-run of the same prompt attempt.
        let key = format!("{}:{name}:{}", self.key, digest(&arguments));
        self.engine
            .call_tool(tool, &arguments, &key, self.budget)
            .await
            .map(|outcome| outcome.output)
            .map_err(|error| error.to_string())
    }
}

/// A short, stable fingerprint of a tool call's arguments.
fn digest(value: &Value) -> String {
    let mut hex = crate::auth::tokens::digest(&value.to_string());
    hex.truncate(16);
    hex
}
