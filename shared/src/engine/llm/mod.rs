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

mod chat;
mod prompt;
#[cfg(test)]
mod tests;

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

pub use self::chat::{
    function_names, ChatRequest, ChatResponse, FunctionCall, Message, ToolCall, ToolSpec, Usage,
};
use self::chat::{WireRequest, WireResponse};
pub use self::prompt::{
    run_prompt, PromptError, PromptOutcome, PromptParams, ToolCallRecord, ToolCaller,
};
use crate::engine::budget::MAX_STEP;
use crate::outbound::send::{
    retryable_status, send_with_retries, Backoff, Budget, Failure, MAX_RESPONSE_BYTES,
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
    /// The step's budget ran out before the endpoint answered.
    #[error("the LLM endpoint did not answer in time: {0}")]
    OutOfTime(String),
}

impl LlmError {
    /// Whether trying again may succeed: timeouts, connection failures, `408`, `429`, `5xx`.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Unreachable(_) | Self::OutOfTime(_) => true,
            Self::Status { status, .. } => retryable_status(*status),
            Self::Malformed(_) | Self::Invalid(_) | Self::Egress(_) => false,
        }
    }
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

    /// Sends one chat completion, with retries, within the longest a step may take.
    pub async fn complete(
        &self,
        endpoint: &Endpoint,
        request: &ChatRequest,
    ) -> Result<ChatResponse, LlmError> {
        self.complete_within(endpoint, request, Budget::new(MAX_STEP))
            .await
    }

    /// Sends one chat completion, with retries, every attempt and wait within `budget`.
    pub async fn complete_within(
        &self,
        endpoint: &Endpoint,
        request: &ChatRequest,
        budget: Budget,
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
            budget,
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
            Err(Failure::OutOfTime(why)) => return Err(LlmError::OutOfTime(why)),
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
        wire.first_choice()
            .ok_or_else(|| LlmError::Malformed("no choices".into()))
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
