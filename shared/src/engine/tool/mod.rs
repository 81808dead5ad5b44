//! The `tool` step executor: calls a registered http tool under its contract.
//!
//! One [`ToolExecutor::call`] is one *call* of the tool, made of one or more HTTP *attempts*:
//!
//! 1. The input is checked against `inputs_schema`, and the URL and header templates are
//!    filled in from it, before anything leaves the process.
//! 2. The circuit breaker (shared by every worker, see [`crate::store::tool_runtime`]) is
//!    read: while it is open the call fails fast with [`ToolError::CircuitOpen`].
//! 3. Credentials are read from Secrets Manager (`tools/<id>/credentials`), and for OAuth an
//!    access token is fetched from the token endpoint; both are cached in memory per tool
//!    version.
//! 4. `rate_limit_per_min`, shared by every worker, admits the call or refuses it with
//!    [`ToolError::RateLimited`]; then, if the breaker is half-open, the call claims the
//!    single probe or fails fast.
//! 5. Attempts: up to `retry_attempts` more, under the one outbound retry policy of
//!    [`crate::outbound::send`]: a 408, a 429, a 5xx, a timeout or a connection failure is
//!    retried with jittered backoff, and a `Retry-After` longer than the backoff cap ends the
//!    retries (the error carries it, see [`ToolError::retry_after`]). Any other status is final.
//!    Attempts and waits stay within the calling step's budget ([`ToolExecutor::call_within`]);
//!    running out is [`ToolError::OutOfTime`].
//! 6. The response must be JSON valid against `outputs_schema`; it becomes the output.
//! 7. The breaker learns whether the tool answered: a timeout, a connection failure or a
//!    retryable status counts as a failed call; any other answer (even a 4xx or an invalid output)
//!    proves the tool is up and resets the count. A failed call also sets `last_error_at`.
//!
//! ## Templates
//!
//! `config.url` and `config.headers` values are templates of [`crate::tool::template`],
//! checked again before each call. Input values go in as they are (other JSON values as
//! JSON); in the URL they are percent-encoded, and a missing field is
//! [`ToolError::InvalidInput`], as is input that would make the URL and headers together
//! longer than [`crate::workflow::template::MAX_RENDERED_BYTES`]. `{{ credentials.<field> }}` is filled from the stored
//! credentials: `api_key`, or an OAuth `access_token` (fetched with the client-credentials or
//! refresh-token grant), `client_id` or `client_secret`.
//!
//! ## Egress
//!
//! Every request, the OAuth token fetch included, goes out through [`Egress`]: a refused
//! destination fails the call with [`ToolError::Egress`] before credentials are read, and no
//! redirect is followed.
//!
//! ## Secrets
//!
//! Credential values never appear in an error, a log line or the outcome: headers filled from
//! credentials (and secret-looking headers) are recorded as `[REDACTED]`, and every text that
//! echoes the tool's answer (an error's detail, a successful output) has the credential
//! values scrubbed.

mod credentials;
mod error;
mod plan;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use self::credentials::CachedCredentials;
pub use self::error::ToolError;
use self::plan::Plan;
pub use self::plan::IDEMPOTENCY_HEADER;
use crate::clock::Clock;
use crate::engine::budget::{Budget, MAX_STEP};
use crate::outbound::send::{
    detail, send_with_retries, Backoff, Failure, Reply, MAX_RESPONSE_BYTES,
};
use crate::outbound::Egress;
use crate::store::secrets::SecretStore;
use crate::store::tool_runtime::Admission;
use crate::store::tools::Tool;
use crate::store::{Store, StoreError};
use crate::tool::{HttpConfig, HttpMethod, ToolKind};

/// How long the circuit breaker stays open by default.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

/// How long credentials read from Secrets Manager are reused by default.
pub const DEFAULT_CREDENTIALS_TTL: Duration = Duration::from_secs(300);

/// What a redacted value is recorded as.
pub use crate::outbound::scrub::REDACTED;

/// A successful call.
#[derive(Clone, Debug, Serialize)]
pub struct ToolOutcome {
    /// The response JSON, valid against `outputs_schema`.
    pub output: Value,
    /// The HTTP status of the answer.
    pub status: u16,
    /// HTTP attempts made (1 without retries).
    pub attempts: u32,
    /// Time the call took, admission checks included.
    pub duration_ms: u64,
    /// What was sent: method, URL, headers (secrets as `[REDACTED]`) and body or query.
    pub request: Value,
}

/// Calls http tools; build one per process and share it.
pub struct ToolExecutor {
    egress: Egress,
    store: Store,
    secrets: SecretStore,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
    breaker_cooldown: Duration,
    credentials_ttl: Duration,
    credentials: Mutex<HashMap<Uuid, CachedCredentials>>,
}

impl ToolExecutor {
    /// An executor with the default backoff, breaker cooldown and credentials cache.
    pub fn new(egress: Egress, store: Store, secrets: SecretStore, clock: Arc<dyn Clock>) -> Self {
        Self {
            egress,
            store,
            secrets,
            clock,
            backoff: Backoff::default(),
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            credentials_ttl: DEFAULT_CREDENTIALS_TTL,
            credentials: Mutex::new(HashMap::new()),
        }
    }

    /// Uses `backoff` between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Keeps a tripped breaker open for `cooldown`.
    pub fn with_breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Reuses credentials read from Secrets Manager for at most `ttl` (zero: read every call).
    pub fn with_credentials_ttl(mut self, ttl: Duration) -> Self {
        self.credentials_ttl = ttl;
        self
    }

    /// Calls `tool` with `input` (already rendered from the step's templates).
    pub async fn call(&self, tool: &Tool, input: Value) -> Result<ToolOutcome, ToolError> {
        self.call_with_key(tool, input, None).await
    }

    /// Like [`ToolExecutor::call`], sending `Idempotency-Key: <key>` on every attempt when a
    /// key is given, so an API that honours it applies a repeated call once. A stable key
    /// (e.g. `<run_id>:<step_id>`) also covers a step re-run after a worker died mid-call.
    pub async fn call_with_key(
        &self,
        tool: &Tool,
        input: Value,
        idempotency_key: Option<&str>,
    ) -> Result<ToolOutcome, ToolError> {
        self.call_within(tool, input, idempotency_key, Budget::new(MAX_STEP))
            .await
    }

    /// Like [`ToolExecutor::call_with_key`], every attempt and wait within `budget` (a
    /// step's).
    #[tracing::instrument(name = "tool_call", skip_all, fields(tool_id = %tool.id, project_id = %tool.project_id))]
    pub async fn call_within(
        &self,
        tool: &Tool,
        input: Value,
        idempotency_key: Option<&str>,
        budget: Budget,
    ) -> Result<ToolOutcome, ToolError> {
        let started = Instant::now();
        let result = self
            .call_inner(tool, input, idempotency_key, started, budget)
            .await;
        match &result {
            Ok(outcome) => tracing::info!(
                status = outcome.status,
                attempts = outcome.attempts,
                duration_ms = outcome.duration_ms,
                "tool call succeeded"
            ),
            Err(ToolError::Unexpected(cause)) => {
                tracing::error!(error = ?cause, "tool call failed unexpectedly");
            }
            Err(err) => tracing::warn!(
                error = %err,
                retryable = err.is_retryable(),
                "tool call failed"
            ),
        }
        result
    }

    async fn call_inner(
        &self,
        tool: &Tool,
        input: Value,
        idempotency_key: Option<&str>,
        started: Instant,
        budget: Budget,
    ) -> Result<ToolOutcome, ToolError> {
        if tool.kind != ToolKind::Http {
            return Err(ToolError::Unsupported(tool.kind.to_string()));
        }
        let config = tool
            .http_config()
            .ok_or_else(|| ToolError::Config("its stored http config cannot be read".to_owned()))?;
        if let Some(schema) = &config.inputs_schema {
            check_against(schema, &input, "inputs_schema")
                .map_err(|(pointer, message)| ToolError::InvalidInput { pointer, message })?;
        }
        let mut plan = Plan::new(config, &input)?;
        if let Some(key) = idempotency_key {
            plan.idempotency_key(key)?;
        }
        // Checked before credentials are read: a refused destination learns nothing.
        let client = self
            .egress
            .client_for(&plan.url, !plan.credential_fields.is_empty())
            .map_err(ToolError::Egress)?
            .clone();

        let now = self.clock.now();
        let breaker = self.store.tool_breaker(tool.id).await?;
        let admission = breaker.admission(now);
        if let Admission::Open(until) = admission {
            return Err(ToolError::CircuitOpen {
                retry_after_secs: seconds_until(now, until),
            });
        }
        let secrets = self
            .resolve_credentials(tool, &plan.credential_fields, config)
            .await?;
        // Finished before the call is admitted, so a request that cannot be built takes
        // neither a rate slot nor the breaker's probe.
        let request = plan.finish(&secrets)?;
        if let Some(limit) = tool.rate_limit_per_min {
            if !self.store.take_rate_slot(tool.id, now, limit).await? {
                return Err(ToolError::RateLimited {
                    limit,
                    retry_after_secs: 60 - u64::from(chrono::Timelike::second(&now)),
                });
            }
        }
        let probe = match admission {
            Admission::HalfOpen(expired) => {
                let lease = now + chrono_duration(self.worst_case(config));
                if !self
                    .store
                    .claim_breaker_probe(tool.id, expired, lease, now)
                    .await?
                {
                    return Err(ToolError::CircuitOpen {
                        retry_after_secs: 1,
                    });
                }
                tracing::info!("circuit breaker half-open: probing the tool");
                Some(lease)
            }
            _ => None,
        };

        let timeout = Duration::from_millis(config.timeout_ms);
        let retries = u32::try_from(config.retry_attempts).unwrap_or(u32::MAX);
        let sent = send_with_retries(
            || request.builder(&client),
            retries,
            self.backoff,
            timeout,
            budget,
        )
        .await;
        let attempts = sent.attempts;
        let result = match sent.result {
            Ok(reply) if reply.status.is_success() => {
                read_output(&reply, config.outputs_schema.as_ref(), attempts)
            }
            Ok(reply) => {
                if reply.status == StatusCode::UNAUTHORIZED {
                    self.forget_token(tool.id);
                }
                Err(ToolError::Status {
                    status: reply.status.as_u16(),
                    attempts,
                    retry_after_secs: sent.retry_after_secs,
                    detail: secrets.scrub(&detail(&reply.body)),
                })
            }
            Err(Failure::Timeout) => Err(ToolError::Timeout {
                timeout_ms: config.timeout_ms,
                attempts,
            }),
            Err(Failure::Unreachable(reason)) => Err(ToolError::Unreachable {
                reason: secrets.scrub(&reason),
                attempts,
            }),
            Err(Failure::TooLarge(status)) => Err(ToolError::InvalidOutput {
                pointer: String::new(),
                message: format!("the response is larger than {MAX_RESPONSE_BYTES} bytes"),
                status,
                attempts,
            }),
            Err(Failure::Refused(refused)) => Err(ToolError::Egress(refused)),
            Err(Failure::OutOfTime(why)) => Err(ToolError::OutOfTime(why)),
        };
        // A tool that echoes its credentials must not get them stored in the step.
        let result = result.map(|(output, status)| (secrets.scrub_value(&output), status));
        self.settle(tool, config, probe, breaker.consecutive_failures, &result)
            .await;
        result.map(|(output, status)| ToolOutcome {
            output,
            status,
            attempts,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            request: request.record,
        })
    }

    /// Tells the breaker how the call went and records `last_error_at`. The call's result
    /// stands whatever happens here: failing a call whose effect took place would invite a
    /// duplicate.
    async fn settle(
        &self,
        tool: &Tool,
        config: &HttpConfig,
        probe: Option<DateTime<Utc>>,
        seen_failures: u64,
        result: &Result<(Value, u16), ToolError>,
    ) {
        let now = self.clock.now();
        let tripped = result.as_ref().err().is_some_and(ToolError::trips_breaker);
        let breaker = if tripped {
            let open_until = now + chrono_duration(self.breaker_cooldown);
            self.store
                .record_breaker_failure(
                    tool.id,
                    config.circuit_breaker_threshold,
                    open_until,
                    probe,
                    now,
                )
                .await
                .map(|opened| {
                    if opened {
                        tracing::warn!(
                            cooldown_ms = u64::try_from(self.breaker_cooldown.as_millis())
                                .unwrap_or(u64::MAX),
                            "circuit breaker opened"
                        );
                    }
                })
        } else {
            self.close_breaker(tool.id, probe, seen_failures).await
        };
        if let Err(err) = breaker {
            tracing::warn!(error = ?err, "failed to update the tool's circuit breaker");
        }
        if result.as_ref().err().is_some_and(ToolError::reached_tool) {
            if let Err(err) = self.store.mark_tool_failed(tool.id, now).await {
                tracing::warn!(error = ?err, "failed to record the tool's last error");
            }
        }
    }

    /// Resets the breaker after an answer. Without a probe, it writes only if failures were
    /// counted when the call started: most calls find a healthy breaker and write nothing.
    async fn close_breaker(
        &self,
        tool_id: Uuid,
        probe: Option<DateTime<Utc>>,
        seen_failures: u64,
    ) -> Result<(), StoreError> {
        if probe.is_none() && seen_failures == 0 {
            return Ok(());
        }
        if self.store.record_breaker_success(tool_id, probe).await? && probe.is_some() {
            tracing::info!("circuit breaker closed after a successful probe");
        }
        Ok(())
    }

    /// The longest a call can take: every attempt timing out after the longest waits.
    fn worst_case(&self, config: &HttpConfig) -> Duration {
        let attempts = u32::try_from(config.retry_attempts.saturating_add(1)).unwrap_or(u32::MAX);
        Duration::from_millis(config.timeout_ms)
            .saturating_add(self.backoff.cap)
            .saturating_mul(attempts)
            .saturating_add(Duration::from_secs(5))
    }
}

/// Whether calling `tool` twice has the effect of calling it once, by HTTP semantics (`GET`,
/// `PUT`, `DELETE`): such a call interrupted mid-way may be made again safely; a `POST` or
/// `PATCH` one may not unless the tool honours an idempotency key.
pub fn is_idempotent(tool: &Tool) -> bool {
    tool.http_config().is_some_and(|config| {
        matches!(
            config.method,
            HttpMethod::Get | HttpMethod::Put | HttpMethod::Delete
        )
    })
}

fn seconds_until(now: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
    let millis = (until - now).num_milliseconds().max(0);
    u64::try_from(millis)
        .unwrap_or_default()
        .div_ceil(1000)
        .max(1)
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// Checks `value` against a stored JSON Schema; the first problem as (pointer, message).
fn check_against(
    schema: &Map<String, Value>,
    value: &Value,
    which: &str,
) -> Result<(), (String, String)> {
    let validator = jsonschema::draft202012::options()
        .build(&Value::Object(schema.clone()))
        .map_err(|_| {
            (
                String::new(),
                format!("the tool's {which} does not compile"),
            )
        })?;
    let mut errors = validator.iter_errors(value);
    let Some(first) = errors.next() else {
        return Ok(());
    };
    let more = errors.count();
    let mut message = first.masked().to_string();
    if more > 0 {
        message.push_str(&format!(" (and {more} more problems)"));
    }
    Err((first.instance_path().as_str().to_owned(), message))
}

/// Parses a 2xx answer into the output and checks it against `outputs_schema`.
fn read_output(
    reply: &Reply,
    schema: Option<&Map<String, Value>>,
    attempts: u32,
) -> Result<(Value, u16), ToolError> {
    let status = reply.status.as_u16();
    let invalid = |pointer: String, message: String| ToolError::InvalidOutput {
        pointer,
        message,
        status,
        attempts,
    };
    let output = if reply.body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&reply.body)
            .map_err(|_| invalid(String::new(), "the response is not JSON".to_owned()))?
    };
    if let Some(schema) = schema {
        check_against(schema, &output, "outputs_schema")
            .map_err(|(pointer, message)| invalid(pointer, message))?;
    }
    Ok((output, status))
}
