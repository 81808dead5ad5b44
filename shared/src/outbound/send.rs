//! Sending: the one retry, backoff and `Retry-After` policy and the one response-size cap
//! for every outbound call (tools, OAuth token endpoints, webhooks, LLM endpoints).
//!
//! [`send_with_retries`] makes up to `1 + retries` attempts:
//!
//! 1. Each attempt reads at most [`MAX_RESPONSE_BYTES`] of the body; a bigger answer is
//!    [`Failure::TooLarge`] and is not retried.
//! 2. A timeout, a connection failure or a [`retryable_status`] (`408`, `429`, `5xx`) is
//!    retried after a jittered exponential wait ([`Backoff`]). Anything else is final, and
//!    so is an egress refusal.
//! 3. A `429` or `503` with `Retry-After: <seconds>` is waited out when that is at most the
//!    backoff cap. A longer wait ends the retries: waiting less would only be refused again,
//!    and the caller passes the wait on ([`Attempts::retry_after_secs`]).
//! 4. Everything runs under the caller's [`Budget`] (a step's): each attempt's timeout is the
//!    configured one or what is left, whichever is shorter, and no retry starts whose wait
//!    plus [`MIN_ATTEMPT`] does not fit. Running out is [`Failure::OutOfTime`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use super::Refused;
pub use crate::backoff::Backoff;

/// Largest response body read from any outbound call.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Most characters of a failed answer quoted in an error.
const MAX_DETAIL_CHARS: usize = 200;

/// The least time worth giving an attempt; with less left, none is started.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(250);

/// How long a whole call may take, every attempt and wait included: the budget of the step
/// that makes it. A prompt step's model turns and tool calls share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    total: Duration,
    deadline: Instant,
}

impl Budget {
    /// `total` from now.
    pub fn new(total: Duration) -> Self {
        Self {
            total,
            deadline: Instant::now() + total,
        }
    }

    /// The whole budget, as given.
    pub fn total(self) -> Duration {
        self.total
    }

    /// What is left of it (zero once spent).
    pub fn remaining(self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Why a call stopped for lack of time, e.g. "step budget of 3 s exhausted after 2
    /// attempts (last: HTTP 503)"; `last` is how the last attempt went, when it did not
    /// simply run out of time.
    pub fn exhausted(self, attempts: u32, last: Option<&str>) -> String {
        let seconds = (self.total.as_secs_f64() * 10.0).round() / 10.0;
        let mut text = format!("step budget of {seconds} s exhausted after {attempts} attempts");
        if let Some(last) = last {
            text.push_str(&format!(" (last: {last})"));
        }
        text
    }
}

/// Whether an answer with this status may succeed if sent again: `408`, `429` and `5xx`.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// A response read whole (up to [`MAX_RESPONSE_BYTES`]).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why an attempt got no usable response.
pub enum Failure {
    /// No complete answer within the timeout.
    Timeout,
    /// The connection failed or broke; why, without the URL.
    Unreachable(String),
    /// The body (of an answer with this status) exceeds [`MAX_RESPONSE_BYTES`].
    TooLarge(u16),
    /// The egress policy refused the destination when its name was resolved.
    Refused(Refused),
    /// The [`Budget`] ran out; the text says after how many attempts and how the last went.
    OutOfTime(String),
}

impl Failure {
    /// A short description.
    pub fn describe(&self) -> String {
        match self {
            Self::Timeout => "it did not answer in time".to_owned(),
            Self::Unreachable(reason) => reason.clone(),
            Self::TooLarge(status) => {
                format!("its answer (HTTP {status}) exceeds {MAX_RESPONSE_BYTES} bytes")
            }
            Self::Refused(refused) => refused.to_string(),
            Self::OutOfTime(why) => why.clone(),
        }
    }
}

/// The last attempt's result and how many attempts were made.
pub struct Attempts {
    /// The final response or failure.
    pub result: Result<Reply, Failure>,
    pub attempts: u32,
    /// The final response's `Retry-After`, in seconds.
    pub retry_after_secs: Option<u64>,
}

/// Sends the request `build` makes under the policy of this module (see its doc), each
/// attempt bounded by `timeout` and all of them by `budget`.
pub async fn send_with_retries(
    mut build: impl FnMut() -> reqwest::RequestBuilder,
    retries: u32,
    backoff: Backoff,
    timeout: Duration,
    budget: Budget,
) -> Attempts {
    let mut attempts = 0u32;
    let out_of_time = |attempts: u32, last: Option<String>| Attempts {
        result: Err(Failure::OutOfTime(
            budget.exhausted(attempts, last.as_deref()),
        )),
        attempts,
        retry_after_secs: None,
    };
    loop {
        let left = budget.remaining();
        if left < MIN_ATTEMPT {
            return out_of_time(attempts, None);
        }
        attempts += 1;
        let result = send_once(build().timeout(timeout.min(left))).await;
        if matches!(result, Err(Failure::Timeout)) && left < timeout {
            return out_of_time(attempts, None);
        }
        let retry_after_secs = result
            .as_ref()
            .ok()
            .and_then(|reply| retry_after(&reply.headers));
        let wait = match &result {
            Ok(reply) if retryable_status(reply.status.as_u16()) => {
                let asked = matches!(
                    reply.status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                )
                .then_some(retry_after_secs)
                .flatten()
                .map(Duration::from_secs);
                match asked {
                    Some(asked) if asked > backoff.cap => None,
                    asked => Some(backoff.wait(attempts - 1, asked)),
                }
            }
            Ok(_) | Err(Failure::TooLarge(_) | Failure::Refused(_) | Failure::OutOfTime(_)) => None,
            Err(Failure::Timeout | Failure::Unreachable(_)) => Some(backoff.delay(attempts - 1)),
        };
        match wait {
            Some(wait) if attempts <= retries => {
                if wait + MIN_ATTEMPT > budget.remaining() {
                    let last = match &result {
                        Ok(reply) => format!("HTTP {}", reply.status.as_u16()),
                        Err(failure) => failure.describe(),
                    };
                    return out_of_time(attempts, Some(last));
                }
                tracing::debug!(
                    attempt = attempts,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "retrying"
                );
                tokio::time::sleep(wait).await;
            }
            _ => {
                return Attempts {
                    result,
                    attempts,
                    retry_after_secs,
                }
            }
        }
    }
}

/// One attempt, reading at most [`MAX_RESPONSE_BYTES`] of the body.
pub async fn send_once(request: reqwest::RequestBuilder) -> Result<Reply, Failure> {
    let mut response = request.send().await.map_err(failure)?;
    let status = response.status();
    let headers = response.headers().clone();
    let too_large = Failure::TooLarge(status.as_u16());
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failure)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Reply {
        status,
        headers,
        body: Bytes::from(body),
    })
}

/// Classifies a transport error; the description never holds the URL.
fn failure(err: reqwest::Error) -> Failure {
    if let Some(refused) = Refused::in_error(&err) {
        return Failure::Refused(refused.clone());
    }
    if err.is_timeout() {
        return Failure::Timeout;
    }
    let what = if err.is_connect() {
        "the connection failed"
    } else if err.is_body() || err.is_decode() {
        "its answer broke off"
    } else {
        "the request failed"
    };
    let mut root = None;
    let mut cause = std::error::Error::source(&err);
    while let Some(source) = cause {
        root = Some(source);
        cause = source.source();
    }
    Failure::Unreachable(match root {
        Some(root) => format!("{what}: {root}"),
        None => what.to_owned(),
    })
}

/// `Retry-After` in whole seconds (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
}

/// The start of a failed answer's body, as one line of text to quote in an error.
pub fn detail(body: &[u8]) -> String {
    clip(&String::from_utf8_lossy(body), MAX_DETAIL_CHARS)
}

/// The first `max` characters of an answer's text on one line.
pub fn clip(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_timeouts_throttling_and_server_errors_are_worth_retrying() {
        for retryable in [408, 429, 500, 502, 503, 504] {
            assert!(retryable_status(retryable), "{retryable}");
        }
        for not in [200, 301, 400, 401, 403, 404, 410, 413, 422] {
            assert!(!retryable_status(not), "{not}");
        }
    }

    async fn send_to(
        server: &wiremock::MockServer,
        retries: u32,
        timeout: Duration,
        budget: Budget,
    ) -> Attempts {
        let client = reqwest::Client::new();
        let url = server.uri();
        send_with_retries(
            || client.get(&url),
            retries,
            Backoff::default(),
            timeout,
            budget,
        )
        .await
    }

    #[tokio::test]
    async fn an_attempt_is_cut_to_what_is_left_of_the_budget() {
        // GIVEN an endpoint that answers after 30 s and a budget of 1 s
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(wiremock::ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
            .mount(&server)
            .await;
        let started = Instant::now();

        // WHEN a call with a 60 s timeout and 5 retries is sent
        let sent = send_to(
            &server,
            5,
            Duration::from_secs(60),
            Budget::new(Duration::from_secs(1)),
        )
        .await;

        // THEN it stops when the budget does, after the one attempt that fit
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(sent.attempts, 1);
        let Err(Failure::OutOfTime(why)) = sent.result else {
            panic!("expected OutOfTime");
        };
        assert_eq!(why, "step budget of 1 s exhausted after 1 attempts");
        assert_eq!(
            server.received_requests().await.unwrap_or_default().len(),
            1
        );
    }

    #[tokio::test]
    async fn no_retry_starts_that_cannot_fit_in_the_budget() {
        // GIVEN an endpoint that asks to come back in 3 s, and a budget of 2 s
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(wiremock::ResponseTemplate::new(503).insert_header("retry-after", "3"))
            .mount(&server)
            .await;
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        };
        let client = reqwest::Client::new();
        let url = server.uri();

        // WHEN the call is sent with retries left
        let sent = send_with_retries(
            || client.get(&url),
            3,
            backoff,
            Duration::from_secs(1),
            Budget::new(Duration::from_secs(2)),
        )
        .await;

        // THEN it gives up at once instead of waiting past its budget
        assert_eq!(sent.attempts, 1);
        let Err(Failure::OutOfTime(why)) = sent.result else {
            panic!("expected OutOfTime");
        };
        assert!(why.ends_with("after 1 attempts (last: HTTP 503)"), "{why}");
        // AND with no time left, nothing is sent at all
        let spent = send_to(
            &server,
            3,
            Duration::from_secs(1),
            Budget::new(Duration::ZERO),
        )
        .await;
        assert_eq!(spent.attempts, 0);
        assert_eq!(
            server.received_requests().await.unwrap_or_default().len(),
            1
        );
    }

    #[test]
    fn details_are_one_clipped_line() {
        assert_eq!(detail(b"{\"error\":\n\"nope\"}"), "{\"error\": \"nope\"}");
        assert_eq!(detail("é".repeat(300).as_bytes()).chars().count(), 201);
    }
}
