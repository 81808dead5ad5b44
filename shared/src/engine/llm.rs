//! The `prompt` step: OpenAI-compatible chat completions (OpenAI, Azure, vLLM, Ollama,
//! LiteLLM) and the tool-calling loop.
//!
//! [`ChatClient`] sends one `POST {base_url}/chat/completions`, retrying what is worth retrying
//! under the one outbound policy ([`crate::outbound::send`]: timeouts, connection failures,
//! `408`, `429`, `5xx`, with jittered backoff); a model call has no side effect but its cost,
//! so repeating one is safe. [`run_prompt`] loops: it offers the
//! step's tools as functions, runs each call the model makes through a [`ToolCaller`], sends
//! the results back, and stops when the model answers — or fails after `max_iterations` model
//! calls. Tool calls run one at a time, in the order the model listed them.
//!
//! The API key is a [`SecretString`]: it goes into the `Authorization` header and nowhere else,
//! and is scrubbed from whatever an endpoint echoes back into an error.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::outbound::send::{
    retryable_status, send_with_retries, Backoff, Failure, MAX_RESPONSE_BYTES,
};
use crate::outbound::{scrub, Egress, Refused};

/// How long one model call may take, connection to last byte, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a retryable failure of one model call is retried, unless configured otherwise.
pub const DEFAULT_RETRIES: u32 = 2;

/// The ceiling of the first retry's delay, doubled for each further one (then jittered).
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait before a retry, and the longest `Retry-After` waited out.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(20);

/// How much of an endpoint's error message an error keeps.
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

/// The longest function name OpenAI accepts.
const MAX_FUNCTION_NAME_CHARS: usize = 64;

/// Where to send chat completions.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Base URL, e.g. `https://api.openai.com/v1`; a trailing slash is fine.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when present.
    pub api_key: Option<SecretString>,
}

impl Endpoint {
    /// `{base_url}/chat/completions`.
    fn completions_url(&self) -> Result<reqwest::Url, LlmError> {
        let raw = format!("{}/chat/completions", self.base_url.trim_end_matches('/'));
        let url = reqwest::Url::parse(&raw)
            .map_err(|e| LlmError::Invalid(format!("base_url is not a valid URL: {e}")))?;
        match url.scheme() {
            "http" | "https" => Ok(url),
            _ => Err(LlmError::Invalid("base_url must be an http(s) URL".into())),
        }
    }

    /// The `Authorization` header value, marked sensitive.
    fn authorization(&self) -> Result<Option<HeaderValue>, LlmError> {
        let Some(key) = &self.api_key else {
            return Ok(None);
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
            .map_err(|_| LlmError::Invalid("the API key is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// `text` with every occurrence of the API key replaced.
    fn scrub(&self, text: String) -> String {
        match &self.api_key {
            Some(key) => scrub::text(&text, std::slice::from_ref(key)),
            None => text,
        }
    }
}

/// Why a model call failed. Its text never contains the API key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// No complete answer within the timeout.
    #[error("the LLM endpoint did not answer within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The connection failed or broke.
    #[error("could not reach the LLM endpoint: {0}")]
    Unreachable(String),
    /// The endpoint answered with an error status.
    #[error("the LLM endpoint answered HTTP {status}: {message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The endpoint's error message, shortened.
        message: String,
        /// How long the endpoint asked us to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// The endpoint answered `2xx` with something that is not a chat completion.
    #[error("the LLM endpoint sent a malformed response: {0}")]
    Malformed(String),
    /// The request cannot be sent: a bad base URL or API key.
    #[error("invalid LLM request: {0}")]
    Invalid(String),
    /// The egress policy refused the endpoint.
    #[error("{0}")]
    Egress(Refused),
}

impl LlmError {
    /// Whether trying again may succeed: timeouts, connection failures, `408`, `429`, `5xx`.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Unreachable(_) => true,
            Self::Status { status, .. } => retryable_status(*status),
            Self::Malformed(_) | Self::Invalid(_) | Self::Egress(_) => false,
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    /// Instructions: the agent's system prompt.
    System {
        /// Text.
        content: String,
    },
    /// The step's prompt.
    User {
        /// Text.
        content: String,
    },
    /// What the model said: an answer, tool calls, or both.
    Assistant {
        /// Text, if any.
        content: Option<String>,
        /// Functions the model wants called.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    Tool {
        /// The id of the call it answers.
        tool_call_id: String,
        /// The result, as JSON text.
        content: String,
    },
}

/// A function call requested by the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, echoed by the tool message that answers it.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// Which function, with which arguments.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

/// The function part of a [`ToolCall`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as JSON text, as the model wrote them (which may be invalid JSON).
    #[serde(deserialize_with = "arguments_text")]
    pub arguments: String,
}

/// Reads `arguments` as text; some servers (Ollama) send a JSON object instead of a string.
fn arguments_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// A tool offered to the model as a function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Function name: `[A-Za-z0-9_-]{1,64}` (see [`function_names`]).
    pub name: String,
    /// What the tool does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of its arguments.
    pub parameters: Value,
}

impl ToolSpec {
    /// A tool with its `inputs_schema`, or any object when it has none.
    pub fn new(
        name: impl Into<String>,
        description: Option<String>,
        inputs_schema: Option<Value>,
    ) -> Self {
        Self {
            name: name.into(),
            description,
            parameters: inputs_schema.unwrap_or_else(|| json!({"type": "object"})),
        }
    }
}

/// Function names for tools with these display names, in order: characters outside
/// `[A-Za-z0-9_-]` become `_`, at most 64 characters, duplicates get `_2`, `_3`, ….
pub fn function_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken = HashSet::new();
    names
        .into_iter()
        .map(|name| {
            let mut base: String = name
                .trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(MAX_FUNCTION_NAME_CHARS)
                .collect();
            if base.is_empty() {
                base = "tool".into();
            }
            let mut candidate = base.clone();
            let mut n = 1;
            while taken.contains(&candidate) {
                n += 1;
                let suffix = format!("_{n}");
                let keep = MAX_FUNCTION_NAME_CHARS - suffix.len();
                candidate = format!("{}{suffix}", &base[..base.len().min(keep)]);
            }
            taken.insert(candidate.clone());
            candidate
        })
        .collect()
}

/// One chat-completions request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// Model name.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
    /// Functions offered; `tool_choice` is `auto` when there are any.
    pub tools: Vec<ToolSpec>,
}

/// The request body as the endpoint expects it.
#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: &'a ToolSpec,
}

impl<'a> From<&'a ChatRequest> for WireRequest<'a> {
    fn from(request: &'a ChatRequest) -> Self {
        Self {
            model: &request.model,
            messages: &request.messages,
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            tools: request
                .tools
                .iter()
                .map(|function| WireTool {
                    kind: "function",
                    function,
                })
                .collect(),
            tool_choice: (!request.tools.is_empty()).then_some("auto"),
        }
    }
}

/// Token counts of one or more model calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// The first choice of a chat completion.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatResponse {
    /// The model's text, if any.
    pub content: Option<String>,
    /// The functions it wants called; empty when it answered.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens used; zero when the endpoint reports no `usage`.
    pub usage: Usage,
}

#[derive(Deserialize)]
struct WireResponse {
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

/// An OpenAI-compatible chat-completions client; cheap to clone, built once per cold start.
#[derive(Clone, Debug)]
pub struct ChatClient {
    egress: Egress,
    timeout: Duration,
    retries: u32,
    backoff: Backoff,
}

impl ChatClient {
    /// A client calling out through `egress`, with the default timeout and retries.
    pub fn new(egress: Egress) -> Self {
        Self {
            egress,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            backoff: Backoff {
                base: DEFAULT_BACKOFF,
                cap: MAX_RETRY_DELAY,
            },
        }
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client retrying a retryable failure `retries` times, the first after about
    /// `backoff`.
    pub fn with_retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff.base = backoff;
        self
    }

    /// Sends one chat completion, with retries.
    pub async fn complete(
        &self,
        endpoint: &Endpoint,
        request: &ChatRequest,
    ) -> Result<ChatResponse, LlmError> {
        let url = endpoint.completions_url()?;
        let authorization = endpoint.authorization()?;
        let body = bytes::Bytes::from(
            serde_json::to_vec(&WireRequest::from(request))
                .map_err(|e| LlmError::Invalid(format!("the request cannot be encoded: {e}")))?,
        );
        let client = self
            .egress
            .client_for(&url, authorization.is_some())
            .map_err(LlmError::Egress)?;
        let sent = send_with_retries(
            || {
                let builder = client
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                match &authorization {
                    Some(value) => builder.header(AUTHORIZATION, value.clone()),
                    None => builder,
                }
            },
            self.retries,
            self.backoff,
            self.timeout,
        )
        .await;
        if sent.attempts > 1 {
            tracing::info!(attempts = sent.attempts, "LLM call retried");
        }
        let reply = match sent.result {
            Ok(reply) => reply,
            Err(Failure::Timeout) => return Err(LlmError::Timeout(self.timeout)),
            Err(Failure::Unreachable(reason)) => {
                return Err(LlmError::Unreachable(endpoint.scrub(reason)))
            }
            Err(Failure::TooLarge(_)) => {
                return Err(LlmError::Malformed(format!(
                    "the response is larger than {MAX_RESPONSE_BYTES} bytes"
                )))
            }
            Err(Failure::Refused(refused)) => return Err(LlmError::Egress(refused)),
        };
        if !reply.status.is_success() {
            return Err(LlmError::Status {
                status: reply.status.as_u16(),
                message: endpoint.scrub(error_message(&reply.body)),
                retry_after: sent.retry_after_secs.map(Duration::from_secs),
            });
        }
        let wire: WireResponse = serde_json::from_slice(&reply.body)
            .map_err(|e| LlmError::Malformed(endpoint.scrub(e.to_string())))?;
        let choice = wire
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| LlmError::Malformed("no choices".into()))?;
        Ok(ChatResponse {
            content: choice.message.content,
            tool_calls: choice.message.tool_calls.unwrap_or_default(),
            usage: wire.usage.unwrap_or_default(),
        })
    }
}

/// The message of an error body (`{"error": {"message"}}`, `{"error": "…"}`, `{"message"}` or
/// text), shortened.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("message"))
        })
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if message.is_empty() {
        return "no error message".into();
    }
    let mut short: String = message.chars().take(MAX_ERROR_MESSAGE_CHARS).collect();
    if short.len() < message.len() {
        short.push('…');
    }
    short
}

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
        let reply = match client.complete(endpoint, &request).await {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    use super::*;

    const KEY: &str = "sk-test-5f1e2d3c4b5a69788796a5b4c3d2e1f0";

    /// Tools that remember their calls: `lookup_order` works, anything else fails.
    #[derive(Default)]
    struct FakeTools {
        calls: Mutex<Vec<(String, Value)>>,
    }

    impl FakeTools {
        fn calls(&self) -> Vec<(String, Value)> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl ToolCaller for FakeTools {
        async fn call(&self, name: &str, arguments: Value) -> Result<Value, String> {
            self.calls
                .lock()
                .unwrap()
                .push((name.to_owned(), arguments.clone()));
            match name {
                "lookup_order" => {
                    Ok(json!({"order_id": arguments["order_id"], "status": "shipped"}))
                }
                _ => Err("the order API answered 503".into()),
            }
        }
    }

    fn tool_call(id: &str, name: &str, arguments: &str, usage: (u64, u64)) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "id": id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments}
                    }]
                },
                "finish_reason": "tool_calls"
            }],
            "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}
        }))
    }

    fn answer(text: &str, usage: (u64, u64)) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-2",
            "object": "chat.completion",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}
        }))
    }

    /// A fake LLM answering with `replies` in turn, each once.
    async fn fake_llm(replies: Vec<ResponseTemplate>) -> MockServer {
        let server = MockServer::start().await;
        for reply in replies {
            Mock::given(method("POST"))
                .and(path("/v1/chat/completions"))
                .respond_with(reply)
                .up_to_n_times(1)
                .mount(&server)
                .await;
        }
        server
    }

    fn endpoint(server: &MockServer) -> Endpoint {
        Endpoint {
            base_url: format!("{}/v1/", server.uri()),
            api_key: Some(SecretString::from(KEY)),
        }
    }

    /// A client that may reach `servers` (local fakes, allowed as `EGRESS_ALLOW` would).
    fn client_allowing(servers: &[&str]) -> ChatClient {
        let allow = servers
            .iter()
            .map(|s| crate::outbound::HostPort::of_endpoint(s).unwrap());
        let egress = Egress::new(crate::outbound::EgressPolicy::new(allow, [])).unwrap();
        ChatClient::new(egress).with_retries(0, Duration::from_millis(1))
    }

    fn client(server: &MockServer) -> ChatClient {
        client_allowing(&[&server.uri()])
    }

    fn order_schema() -> Value {
        json!({
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"]
        })
    }

    fn params(max_iterations: u32) -> PromptParams {
        PromptParams {
            model: "gpt-4o".into(),
            system_prompt: Some("You are a support agent.".into()),
            temperature: Some(0.2),
            max_tokens: Some(512),
            prompt: "Where is order 42?".into(),
            tools: vec![
                ToolSpec::new(
                    "lookup_order",
                    Some("Finds an order".into()),
                    Some(order_schema()),
                ),
                ToolSpec::new("refund", None, None),
            ],
            max_iterations,
        }
    }

    async fn requests(server: &MockServer) -> Vec<Value> {
        server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r: &Request| r.body_json::<Value>().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_tool_call_then_an_answer_gives_the_text_the_call_and_the_summed_tokens() {
        // GIVEN a fake LLM that first calls a tool, then answers
        let server = fake_llm(vec![
            tool_call("call_1", "lookup_order", r#"{"order_id":"42"}"#, (120, 30)),
            answer("Order 42 has shipped.", (180, 12)),
        ])
        .await;
        let tools = FakeTools::default();

        // WHEN the prompt step runs
        let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
            .await
            .unwrap();

        // THEN the answer, the tool call with its output and the exact token sums are recorded
        assert_eq!(outcome.text, "Order 42 has shipped.");
        assert_eq!(
            outcome.tool_calls,
            vec![ToolCallRecord {
                id: "call_1".into(),
                name: "lookup_order".into(),
                arguments: json!({"order_id": "42"}),
                output: Some(json!({"order_id": "42", "status": "shipped"})),
                error: None,
            }]
        );
        assert_eq!(outcome.tokens_prompt, 300);
        assert_eq!(outcome.tokens_completion, 42);
        assert_eq!(outcome.model_calls, 2);
        assert_eq!(
            tools.calls(),
            vec![("lookup_order".to_owned(), json!({"order_id": "42"}))]
        );

        // AND the second request carries the assistant's call and the tool's result for it
        let sent = requests(&server).await;
        assert_eq!(sent.len(), 2);
        assert_eq!(
            sent[1]["messages"],
            json!([
                {"role": "system", "content": "You are a support agent."},
                {"role": "user", "content": "Where is order 42?"},
                {"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "lookup_order", "arguments": "{\"order_id\":\"42\"}"}
                }]},
                {"role": "tool", "tool_call_id": "call_1",
                 "content": "{\"order_id\":\"42\",\"status\":\"shipped\"}"}
            ])
        );
    }

    #[tokio::test]
    async fn the_request_offers_the_tools_as_functions_with_the_agent_settings_and_the_key() {
        // GIVEN a fake LLM that answers at once
        let server = fake_llm(vec![answer("Hello", (5, 1))]).await;

        // WHEN a prompt step with two tools runs
        run_prompt(
            &client(&server),
            &endpoint(&server),
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap();

        // THEN the request went to {base_url}/chat/completions with the bearer key
        let received = server.received_requests().await.unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].url.path(), "/v1/chat/completions");
        assert_eq!(
            received[0].headers.get("authorization").unwrap(),
            &format!("Bearer {KEY}")
        );
        // AND it names the model, the agent's settings and each tool as a function
        let body = received[0].body_json::<Value>().unwrap();
        assert_eq!(body["model"], "gpt-4o");
        assert_eq!(body["temperature"], json!(0.2));
        assert_eq!(body["max_tokens"], 512);
        assert_eq!(body["tool_choice"], "auto");
        assert_eq!(
            body["tools"],
            json!([
                {"type": "function", "function": {
                    "name": "lookup_order", "description": "Finds an order",
                    "parameters": order_schema()
                }},
                {"type": "function", "function": {
                    "name": "refund", "parameters": {"type": "object"}
                }}
            ])
        );
    }

    #[tokio::test]
    async fn without_tools_a_key_or_a_system_prompt_the_request_has_none_of_them() {
        let server = fake_llm(vec![answer("Hi", (3, 1))]).await;
        let endpoint = Endpoint {
            base_url: format!("{}/v1", server.uri()),
            api_key: None,
        };
        let params = PromptParams {
            system_prompt: None,
            temperature: None,
            max_tokens: None,
            tools: vec![],
            ..params(1)
        };

        let outcome = run_prompt(&client(&server), &endpoint, &params, &FakeTools::default())
            .await
            .unwrap();

        assert_eq!(outcome.text, "Hi");
        assert_eq!(outcome.model_calls, 1);
        let received = server.received_requests().await.unwrap();
        assert!(received[0].headers.get("authorization").is_none());
        assert_eq!(
            received[0].body_json::<Value>().unwrap(),
            json!({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "Where is order 42?"}]
            })
        );
    }

    #[tokio::test]
    async fn a_model_that_keeps_calling_tools_fails_after_max_iterations() {
        // GIVEN a fake LLM that always asks for a tool
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(tool_call(
                "call_x",
                "lookup_order",
                r#"{"order_id":"1"}"#,
                (10, 5),
            ))
            .mount(&server)
            .await;
        let tools = FakeTools::default();

        // WHEN a step allowing 3 model calls runs
        let err = run_prompt(&client(&server), &endpoint(&server), &params(3), &tools)
            .await
            .unwrap_err();

        // THEN it fails, not retryable, after exactly 3 calls
        assert!(matches!(
            err,
            PromptError::MaxIterations {
                max_iterations: 3,
                ..
            }
        ));
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("max_iterations (3 model calls)"));
        assert_eq!(server.received_requests().await.unwrap().len(), 3);
        // AND the tools asked for by the last call were not run
        assert_eq!(tools.calls().len(), 2);
        // AND what was spent is still known, for the step record and its cost
        let partial = err.partial();
        assert_eq!(partial.model_calls, 3);
        assert_eq!(partial.tool_calls.len(), 2);
        assert_eq!((partial.tokens_prompt, partial.tokens_completion), (30, 15));
    }

    #[tokio::test]
    async fn a_failing_tool_is_reported_to_the_model_which_then_answers() {
        // GIVEN a tool that fails
        let server = fake_llm(vec![
            tool_call("call_r", "refund", r#"{"order_id":"42"}"#, (50, 10)),
            answer("I could not refund it.", (70, 8)),
        ])
        .await;
        let tools = FakeTools::default();

        // WHEN the step runs
        let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
            .await
            .unwrap();

        // THEN the error went back to the model as the tool's result
        let sent = requests(&server).await;
        assert_eq!(
            sent[1]["messages"][3],
            json!({"role": "tool", "tool_call_id": "call_r",
                   "content": "{\"error\":\"the order API answered 503\"}"})
        );
        // AND the step succeeds with the failed call recorded
        assert_eq!(outcome.text, "I could not refund it.");
        assert_eq!(
            outcome.tool_calls[0].error.as_deref(),
            Some("the order API answered 503")
        );
        assert_eq!(outcome.tool_calls[0].output, None);
    }

    #[tokio::test]
    async fn malformed_tool_arguments_are_reported_to_the_model_not_run() {
        // GIVEN a model that writes broken JSON arguments, then answers
        let server = fake_llm(vec![
            tool_call("call_bad", "lookup_order", r#"{"order_id": 42"#, (40, 9)),
            answer("Sorry.", (60, 2)),
        ])
        .await;
        let tools = FakeTools::default();

        // WHEN the step runs
        let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
            .await
            .unwrap();

        // THEN the tool was not called, and the model was told why
        assert!(tools.calls().is_empty());
        let sent = requests(&server).await;
        let tool_message = &sent[1]["messages"][3];
        assert_eq!(tool_message["tool_call_id"], "call_bad");
        let content: Value =
            serde_json::from_str(tool_message["content"].as_str().unwrap()).unwrap();
        assert!(content["error"]
            .as_str()
            .unwrap()
            .starts_with("the arguments are not valid JSON"));
        // AND the record keeps the raw arguments and the error
        let record = &outcome.tool_calls[0];
        assert_eq!(record.arguments, json!(r#"{"order_id": 42"#));
        assert!(record.error.is_some());
        assert_eq!(outcome.text, "Sorry.");
        assert_eq!(
            (outcome.tokens_prompt, outcome.tokens_completion),
            (100, 11)
        );
    }

    #[tokio::test]
    async fn a_tool_that_was_not_offered_is_not_run() {
        let server = fake_llm(vec![
            tool_call("call_z", "delete_everything", "{}", (1, 1)),
            answer("OK.", (1, 1)),
        ])
        .await;
        let tools = FakeTools::default();

        let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
            .await
            .unwrap();

        assert!(tools.calls().is_empty());
        assert_eq!(
            outcome.tool_calls[0].error.as_deref(),
            Some("there is no tool named `delete_everything`; the tools are: lookup_order, refund")
        );
    }

    #[tokio::test]
    async fn a_server_error_is_retryable_and_a_bad_request_is_not() {
        // GIVEN a fake LLM that answers 500, then 400
        let server = fake_llm(vec![
            ResponseTemplate::new(500).set_body_string("upstream exploded"),
            ResponseTemplate::new(400).set_body_json(json!({
                "error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error"}
            })),
        ])
        .await;

        // WHEN a step runs, twice
        let first = run_prompt(
            &client(&server),
            &endpoint(&server),
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap_err();
        let second = run_prompt(
            &client(&server),
            &endpoint(&server),
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap_err();

        // THEN the 500 is retryable, the 400 is not, each with the endpoint's message
        assert!(first.is_retryable());
        assert_eq!(
            first.to_string(),
            "model call 1 failed: the LLM endpoint answered HTTP 500: upstream exploded"
        );
        assert!(!second.is_retryable());
        let PromptError::Llm { error, .. } = &second else {
            panic!("expected an LLM error, got {second:?}");
        };
        assert_eq!(
            error,
            &LlmError::Status {
                status: 400,
                message: "Invalid value for 'temperature'".into(),
                retry_after: None
            }
        );
    }

    #[tokio::test]
    async fn a_retryable_failure_is_retried_by_the_client() {
        // GIVEN a fake LLM that is overloaded once, then answers
        let server = fake_llm(vec![
            ResponseTemplate::new(429).insert_header("retry-after", "0"),
            answer("Done.", (7, 3)),
        ])
        .await;
        let client = client(&server).with_retries(2, Duration::from_millis(1));

        // WHEN the step runs
        let outcome = run_prompt(
            &client,
            &endpoint(&server),
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap();

        // THEN it succeeds, counting one model call and only the answer's tokens
        assert_eq!(outcome.text, "Done.");
        assert_eq!(outcome.model_calls, 1);
        assert_eq!((outcome.tokens_prompt, outcome.tokens_completion), (7, 3));
        assert_eq!(server.received_requests().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn retries_stop_after_the_configured_number() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let client = client(&server).with_retries(2, Duration::from_millis(1));
        let request = ChatRequest {
            model: "gpt-4o".into(),
            messages: vec![Message::User {
                content: "hi".into(),
            }],
            temperature: None,
            max_tokens: None,
            tools: vec![],
        };

        let err = client
            .complete(&endpoint(&server), &request)
            .await
            .unwrap_err();

        assert!(err.is_retryable());
        assert_eq!(server.received_requests().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn timeouts_and_unreachable_endpoints_are_retryable() {
        // A slow endpoint
        let server = fake_llm(vec![
            answer("late", (1, 1)).set_delay(Duration::from_secs(5))
        ])
        .await;
        let slow = client(&server).with_timeout(Duration::from_millis(200));
        let err = run_prompt(&slow, &endpoint(&server), &params(5), &FakeTools::default())
            .await
            .unwrap_err();
        let PromptError::Llm { error, .. } = &err else {
            panic!("expected an LLM error, got {err:?}");
        };
        assert_eq!(error, &LlmError::Timeout(Duration::from_millis(200)));
        assert!(err.is_retryable());

        // A port nobody listens on
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nowhere = Endpoint {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            api_key: Some(SecretString::from(KEY)),
        };
        let err = run_prompt(
            &client_allowing(&[&nowhere.base_url]),
            &nowhere,
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap_err();
        let PromptError::Llm { error, .. } = &err else {
            panic!("expected an LLM error, got {err:?}");
        };
        assert!(matches!(error, LlmError::Unreachable(_)), "{error:?}");
        assert!(err.is_retryable());
        assert!(!err.to_string().contains(KEY));
    }

    #[tokio::test]
    async fn a_malformed_response_is_not_retryable() {
        for body in [
            json!({"object": "chat.completion"}),
            json!({"choices": []}),
            json!({"choices": [{"message": {"content": 7}}]}),
        ] {
            let server =
                fake_llm(vec![ResponseTemplate::new(200).set_body_json(body.clone())]).await;
            let err = run_prompt(
                &client(&server),
                &endpoint(&server),
                &params(5),
                &FakeTools::default(),
            )
            .await
            .unwrap_err();
            let PromptError::Llm { error, .. } = &err else {
                panic!("expected an LLM error, got {err:?}");
            };
            assert!(matches!(error, LlmError::Malformed(_)), "{body}: {error:?}");
            assert!(!err.is_retryable(), "{body}");
        }
    }

    #[tokio::test]
    async fn the_api_key_never_appears_in_an_error() {
        // GIVEN endpoints that echo the key back: in an error message, in a broken body
        let server = fake_llm(vec![
            ResponseTemplate::new(401).set_body_json(json!({
                "error": {"message": format!("Incorrect API key provided: {KEY}.")}
            })),
            ResponseTemplate::new(200).set_body_string(format!("{{\"choices\": \"{KEY}\"}}")),
        ])
        .await;
        let endpoint = endpoint(&server);

        // WHEN steps fail because of them
        let errors = [
            run_prompt(
                &client(&server),
                &endpoint,
                &params(5),
                &FakeTools::default(),
            )
            .await
            .unwrap_err(),
            run_prompt(
                &client(&server),
                &endpoint,
                &params(5),
                &FakeTools::default(),
            )
            .await
            .unwrap_err(),
        ];

        // THEN no Display or Debug shows the key
        for err in &errors {
            assert!(!err.is_retryable());
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains(KEY), "{text}");
                assert!(!text.contains("5f1e2d3c4b5a"), "{text}");
            }
        }
        assert!(errors[0].to_string().contains("[REDACTED]"));
        assert!(errors[1].to_string().contains("[REDACTED]"));
        // AND neither does the endpoint's own Debug, nor the client's
        assert!(!format!("{endpoint:?}").contains(KEY));
        assert!(!format!("{:?}", client(&server)).contains(KEY));
    }

    #[tokio::test]
    async fn an_invalid_endpoint_is_refused_before_any_call() {
        for base_url in ["not a url", "ftp://example.com/v1"] {
            let endpoint = Endpoint {
                base_url: base_url.into(),
                api_key: None,
            };
            let err = run_prompt(
                &client_allowing(&[]),
                &endpoint,
                &params(5),
                &FakeTools::default(),
            )
            .await
            .unwrap_err();
            assert!(!err.is_retryable(), "{base_url}");
        }
        let server = MockServer::start().await;
        let bad_key = Endpoint {
            base_url: server.uri(),
            api_key: Some(SecretString::from("sk-line\nbreak")),
        };
        let err = run_prompt(
            &client(&server),
            &bad_key,
            &params(5),
            &FakeTools::default(),
        )
        .await
        .unwrap_err();
        assert!(!err.is_retryable());
        assert!(!format!("{err:?}").contains("sk-line"));
        assert!(server.received_requests().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn arguments_sent_as_an_object_and_missing_usage_are_accepted() {
        // GIVEN an Ollama-style reply: arguments as an object, no usage
        let server = fake_llm(vec![
            ResponseTemplate::new(200).set_body_json(json!({
                "choices": [{"message": {"role": "assistant", "content": "", "tool_calls": [{
                    "id": "call_o",
                    "function": {"name": "lookup_order", "arguments": {"order_id": "7"}}
                }]}}]
            })),
            answer("Shipped.", (4, 2)),
        ])
        .await;
        let tools = FakeTools::default();

        let outcome = run_prompt(&client(&server), &endpoint(&server), &params(5), &tools)
            .await
            .unwrap();

        assert_eq!(tools.calls()[0].1, json!({"order_id": "7"}));
        assert_eq!((outcome.tokens_prompt, outcome.tokens_completion), (4, 2));
        // The arguments go back to the model as text, as the API wants them.
        let sent = requests(&server).await;
        assert_eq!(
            sent[1]["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"order_id\":\"7\"}"
        );
    }

    #[test]
    fn the_outcome_serialises_as_the_step_output_plus_token_counts() {
        let outcome = PromptOutcome {
            text: "Done".into(),
            tool_calls: vec![
                ToolCallRecord {
                    id: "c1".into(),
                    name: "lookup_order".into(),
                    arguments: json!({"order_id": "1"}),
                    output: Some(json!({"status": "shipped"})),
                    error: None,
                },
                ToolCallRecord {
                    id: "c2".into(),
                    name: "refund".into(),
                    arguments: json!({}),
                    output: None,
                    error: Some("denied".into()),
                },
            ],
            tokens_prompt: 10,
            tokens_completion: 4,
            model_calls: 3,
        };
        let tool_calls = json!([
            {"id": "c1", "name": "lookup_order", "arguments": {"order_id": "1"}, "output": {"status": "shipped"}},
            {"id": "c2", "name": "refund", "arguments": {}, "error": "denied"}
        ]);
        assert_eq!(
            serde_json::to_value(&outcome).unwrap(),
            json!({"text": "Done", "tool_calls": tool_calls, "tokens_prompt": 10,
                   "tokens_completion": 4, "model_calls": 3})
        );
        assert_eq!(
            outcome.output(),
            json!({"text": "Done", "tool_calls": tool_calls})
        );
        let back: PromptOutcome =
            serde_json::from_value(serde_json::to_value(&outcome).unwrap()).unwrap();
        assert_eq!(back, outcome);
    }

    #[test]
    fn tool_names_become_valid_unique_function_names() {
        let long = "x".repeat(80);
        assert_eq!(
            function_names([
                "Order lookup",
                "order_lookup",
                "Order lookup",
                "Ünïcode!",
                "  ",
                &long,
                &long
            ]),
            vec![
                "Order_lookup".to_owned(),
                "order_lookup".into(),
                "Order_lookup_2".into(),
                "_n_code_".into(),
                "tool".into(),
                "x".repeat(64),
                format!("{}_2", "x".repeat(62)),
            ]
        );
    }

    #[test]
    fn error_messages_are_extracted_and_shortened() {
        assert_eq!(error_message(br#"{"error": {"message": "bad"}}"#), "bad");
        assert_eq!(error_message(br#"{"error": "worse"}"#), "worse");
        assert_eq!(error_message(br#"{"message": "meh"}"#), "meh");
        assert_eq!(error_message(b"  plain text \n"), "plain text");
        assert_eq!(error_message(b""), "no error message");
        let long = error_message("é".repeat(600).as_bytes());
        assert_eq!(long.chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn retry_delays_grow_with_jitter_and_honour_retry_after_within_a_cap() {
        let client = client_allowing(&[]).with_retries(3, Duration::from_millis(100));
        for attempt in 0..3 {
            let delay = client.backoff.wait(attempt, None);
            let full = Duration::from_millis(100 * 2_u64.pow(attempt));
            assert!(delay >= full / 2 && delay <= full, "{attempt}: {delay:?}");
        }
        let asked = |secs| Some(Duration::from_secs(secs));
        assert_eq!(client.backoff.wait(0, asked(3)), Duration::from_secs(3));
        assert_eq!(client.backoff.wait(0, asked(3600)), MAX_RETRY_DELAY);
        let huge = client.with_retries(100, Duration::from_secs(u64::MAX / 4));
        assert!(huge.backoff.wait(99, None) <= MAX_RETRY_DELAY);
    }

    #[test]
    fn retryability_follows_the_status() {
        let status = |status| LlmError::Status {
            status,
            message: String::new(),
            retry_after: None,
        };
        for retryable in [408, 429, 500, 502, 503, 504] {
            assert!(status(retryable).is_retryable(), "{retryable}");
        }
        for not in [400, 401, 403, 404, 413, 422] {
            assert!(!status(not).is_retryable(), "{not}");
        }
    }
}
