//! What a tool call can fail with, and whether trying again may help.

use std::time::Duration;

use crate::outbound::send::retryable_status;
use crate::outbound::Refused;
use crate::store::StoreError;

/// Why a call failed. Every message is safe to show: it never holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The engine cannot call tools of this kind.
    #[error("tools of kind `{0}` cannot be called by the engine; only `http` tools can")]
    Unsupported(String),
    /// The tool's stored configuration cannot be used.
    #[error("the tool is misconfigured: {0}")]
    Config(String),
    /// The input does not fit the tool.
    #[error("the tool input is invalid at `{}`: {message}", show_pointer(pointer))]
    InvalidInput {
        /// JSON Pointer of the offending value inside the input (`""` for the whole input).
        pointer: String,
        /// What is wrong, without quoting the value.
        message: String,
    },
    /// The tool's credentials are missing or unusable.
    #[error("the tool's credentials are unusable: {message}")]
    Credentials {
        /// What is wrong.
        message: String,
        /// Whether trying again later may help (e.g. the token endpoint is down).
        retryable: bool,
    },
    /// The circuit breaker is open: the tool failed repeatedly and is left alone for a while.
    #[error(
        "the tool failed repeatedly, so its circuit breaker is open; retry in {retry_after_secs} s"
    )]
    CircuitOpen {
        /// Seconds until a call may go through again.
        retry_after_secs: u64,
    },
    /// The tool's `rate_limit_per_min` is used up for this minute.
    #[error("the tool's rate limit of {limit} calls per minute is reached; retry in {retry_after_secs} s")]
    RateLimited {
        /// Calls allowed per minute.
        limit: u32,
        /// Seconds until the next minute.
        retry_after_secs: u64,
    },
    /// No answer within `timeout_ms`, on every attempt.
    #[error("the tool did not answer within {timeout_ms} ms (attempts: {attempts})")]
    Timeout {
        /// The time limit of one attempt.
        timeout_ms: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// The tool could not be reached (connection refused, reset, DNS…).
    #[error("the tool could not be reached (attempts: {attempts}): {reason}")]
    Unreachable {
        /// What went wrong.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The tool answered with a status other than 2xx.
    #[error(
        "the tool answered HTTP {status} (attempts: {attempts}){}",
        show_detail(detail)
    )]
    Status {
        /// The last status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The `Retry-After` of the last answer, in seconds, if it gave one.
        retry_after_secs: Option<u64>,
        /// The start of the answer's body, credentials scrubbed.
        detail: String,
    },
    /// The tool answered, but not with JSON valid against `outputs_schema`.
    #[error(
        "the tool's response is invalid at `{}`: {message}",
        show_pointer(pointer)
    )]
    InvalidOutput {
        /// JSON Pointer of the offending value inside the response (`""` for all of it).
        pointer: String,
        /// What is wrong, without quoting the value.
        message: String,
        /// The HTTP status of the answer.
        status: u16,
        /// Attempts made.
        attempts: u32,
    },
    /// The egress policy refused the destination.
    #[error("{0}")]
    Egress(Refused),
    /// The step's budget ran out before the tool answered.
    #[error("the tool did not answer in time: {0}")]
    OutOfTime(String),
    /// Reading state or secrets failed; the cause is kept for the log.
    #[error("the tool call failed unexpectedly")]
    Unexpected(#[source] anyhow::Error),
}

fn show_pointer(pointer: &str) -> &str {
    if pointer.is_empty() {
        "(root)"
    } else {
        pointer
    }
}

fn show_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl From<StoreError> for ToolError {
    fn from(err: StoreError) -> Self {
        Self::Unexpected(anyhow::Error::new(err))
    }
}

impl ToolError {
    /// Whether the same call may succeed later. Input, configuration, output and 4xx
    /// problems are final; availability problems (open breaker, rate limit, timeouts, 5xx,
    /// 429, unexpected failures) are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unsupported(_)
            | Self::Config(_)
            | Self::InvalidInput { .. }
            | Self::InvalidOutput { .. }
            | Self::Egress(_) => false,
            Self::Credentials { retryable, .. } => *retryable,
            Self::Status { status, .. } => retryable_status(*status),
            Self::CircuitOpen { .. }
            | Self::RateLimited { .. }
            | Self::Timeout { .. }
            | Self::Unreachable { .. }
            | Self::OutOfTime(_)
            | Self::Unexpected(_) => true,
        }
    }

    /// How long to wait before trying again, when the failure says so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen { retry_after_secs }
            | Self::RateLimited {
                retry_after_secs, ..
            } => Some(Duration::from_secs(*retry_after_secs)),
            Self::Status {
                retry_after_secs, ..
            } => retry_after_secs.map(Duration::from_secs),
            _ => None,
        }
    }

    /// Whether the failure says the tool is unhealthy, which counts towards its breaker.
    pub(super) fn trips_breaker(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Unreachable { .. } | Self::OutOfTime(_) => true,
            Self::Status { status, .. } => retryable_status(*status),
            _ => false,
        }
    }

    /// Whether the failure happened at the tool (so it is worth `last_error_at`).
    pub(super) fn reached_tool(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::Unreachable { .. }
                | Self::OutOfTime(_)
                | Self::Status { .. }
                | Self::InvalidOutput { .. }
        )
    }
}
