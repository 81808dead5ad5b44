//! The `prompt` step's tool-calling loop: call the model, run the tools it asks for, send the
//! results back, until it answers or `max_iterations` model calls are spent.

use std::collections::HashSet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ChatClient, ChatRequest, Endpoint, LlmError, Message, ToolCall, ToolSpec, Usage};
use crate::outbound::send::Budget;

/// Runs a tool the model called: policy, rate-limit and budget checks included.
#[async_trait]
pub trait ToolCaller: Send + Sync {
    /// Calls tool `name` with `arguments`; an `Err` is told to the model as the tool's result.
    async fn call(&self, name: &str, arguments: Value) -> Result<Value, String>;
}

/// What a `prompt` step does, from the run's agent and the step's config.
#[derive(Clone, Debug)]
pub struct PromptParams {
    /// Model name.
    pub model: String,
    /// The agent's system prompt.
    pub system_prompt: Option<String>,
    /// The agent's sampling temperature.
    pub temperature: Option<f64>,
    /// The agent's completion token limit.
    pub max_tokens: Option<u32>,
    /// The rendered prompt.
    pub prompt: String,
    /// Tools offered to the model; none means a single call.
    pub tools: Vec<ToolSpec>,
    /// The most model calls the step may make.
    pub max_iterations: u32,
    /// The step's budget, shared by every model call (the `caller` holds its tool calls to
    /// it too).
    pub budget: Budget,
}

/// One tool call made during a prompt step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The model's id for the call.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Parsed arguments; the raw text when they were not valid JSON.
    pub arguments: Value,
    /// The tool's result, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why it failed, as told to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a prompt step produced. Serialised, it is the step output `{text, tool_calls}` plus
/// its token counts and number of model calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptOutcome {
    /// The model's final answer.
    pub text: String,
    /// Every tool call, in order.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Input tokens over all model calls.
    pub tokens_prompt: u64,
    /// Output tokens over all model calls.
    pub tokens_completion: u64,
    /// How many model calls were made.
    pub model_calls: u32,
}

impl PromptOutcome {
    /// The step output: `{text, tool_calls}`.
    pub fn output(&self) -> Value {
        json!({"text": self.text, "tool_calls": self.tool_calls})
    }

    fn add_usage(&mut self, usage: Usage) {
        self.tokens_prompt = self.tokens_prompt.saturating_add(usage.prompt_tokens);
        self.tokens_completion = self
            .tokens_completion
            .saturating_add(usage.completion_tokens);
    }
}

/// Why a prompt step failed. Each carries what was done before the failure — tool calls made,
/// tokens spent — so the step can still be recorded and charged.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The model was still calling tools at its last allowed call.
    #[error("the model did not answer within max_iterations ({max_iterations} model calls)")]
    MaxIterations {
        /// The bound.
        max_iterations: u32,
        /// What was done.
        partial: Box<PromptOutcome>,
    },
    /// A model call failed (after its retries).
    #[error("model call {call} failed: {error}")]
    Llm {
        /// Which call, from 1.
        call: u32,
        /// The failure.
        error: LlmError,
        /// What was done.
        partial: Box<PromptOutcome>,
    },
}

impl PromptError {
    /// What was done before the failure, tokens included.
    pub fn partial(&self) -> &PromptOutcome {
        match self {
            Self::MaxIterations { partial, .. } | Self::Llm { partial, .. } => partial,
        }
    }

    /// Whether running the step again may succeed. Tool calls already made would run again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::MaxIterations { .. } => false,
            Self::Llm { error, .. } => error.is_retryable(),
        }
    }
}

/// Runs a prompt step: calls the model, runs the tools it asks for through `caller`, and sends
/// their results back until it answers. At most `max_iterations` model calls are made; if the
/// last one still asks for tools, those are not run and the step fails.
#[tracing::instrument(name = "prompt", skip_all, fields(model = %params.model, tools = params.tools.len()))]
pub async fn run_prompt(
    client: &ChatClient,
    endpoint: &Endpoint,
    params: &PromptParams,
    caller: &dyn ToolCaller,
) -> Result<PromptOutcome, PromptError> {
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = &params.system_prompt {
        messages.push(Message::System {
            content: system.clone(),
        });
    }
    messages.push(Message::User {
        content: params.prompt.clone(),
    });
    let mut request = ChatRequest {
        model: params.model.clone(),
        messages,
        temperature: params.temperature,
        max_tokens: params.max_tokens,
        tools: params.tools.clone(),
    };
    let offered: HashSet<&str> = params.tools.iter().map(|t| t.name.as_str()).collect();
    let mut outcome = PromptOutcome::default();

    while outcome.model_calls < params.max_iterations {
        outcome.model_calls += 1;
        let reply = match client
            .complete_within(endpoint, &request, params.budget)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                return Err(PromptError::Llm {
                    call: outcome.model_calls,
                    error,
                    partial: Box::new(outcome),
                })
            }
        };
        outcome.add_usage(reply.usage);
        tracing::debug!(
            call = outcome.model_calls,
            prompt_tokens = reply.usage.prompt_tokens,
            completion_tokens = reply.usage.completion_tokens,
            tool_calls = reply.tool_calls.len(),
            "model answered"
        );
        if reply.tool_calls.is_empty() {
            outcome.text = reply.content.unwrap_or_default();
            return Ok(outcome);
        }
        if outcome.model_calls == params.max_iterations {
            break;
        }
        let calls = reply.tool_calls.clone();
        request.messages.push(Message::Assistant {
            content: reply.content,
            tool_calls: reply.tool_calls,
        });
        for call in calls {
            let record = call_tool(&call, &offered, caller).await;
            let content = match (&record.output, &record.error) {
                (_, Some(error)) => json!({ "error": error }).to_string(),
                (output, None) => output.clone().unwrap_or(Value::Null).to_string(),
            };
            request.messages.push(Message::Tool {
                tool_call_id: call.id,
                content,
            });
            outcome.tool_calls.push(record);
        }
    }
    Err(PromptError::MaxIterations {
        max_iterations: params.max_iterations,
        partial: Box::new(outcome),
    })
}

/// Runs one tool call; bad arguments or an unknown tool become an error for the model.
async fn call_tool(
    call: &ToolCall,
    offered: &HashSet<&str>,
    caller: &dyn ToolCaller,
) -> ToolCallRecord {
    let name = call.function.name.clone();
    let raw = call.function.arguments.trim();
    let parsed = if raw.is_empty() {
        Ok(json!({}))
    } else {
        serde_json::from_str::<Value>(raw)
    };
    let (arguments, result) = match parsed {
        Err(e) => (
            Value::String(call.function.arguments.clone()),
            Err(format!("the arguments are not valid JSON: {e}")),
        ),
        Ok(arguments) if !offered.contains(name.as_str()) => {
            let mut names: Vec<&str> = offered.iter().copied().collect();
            names.sort_unstable();
            let error = format!(
                "there is no tool named `{name}`; the tools are: {}",
                names.join(", ")
            );
            (arguments, Err(error))
        }
        Ok(arguments) => {
            let result = caller.call(&name, arguments.clone()).await;
            (arguments, result)
        }
    };
    tracing::info!(tool = %name, call_id = %call.id, ok = result.is_ok(), "tool call");
    let (output, error) = match result {
        Ok(output) => (Some(output), None),
        Err(error) => (None, Some(error)),
    };
    ToolCallRecord {
        id: call.id.clone(),
        name,
        arguments,
        output,
        error,
    }
}
