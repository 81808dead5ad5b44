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
//! 6. The response must be JSON valid against `outputs_schema`; it becomes the output.
//! 7. The breaker learns whether the tool answered: a timeout, a connection failure or a
//!    retryable status counts as a failed call; any other answer (even a 4xx or an invalid output)
//!    proves the tool is up and resets the count. A failed call also sets `last_error_at`.
//!
//! ## Templates
//!
//! `config.url` and `config.headers` values are templates of [`crate::tool_template`],
//! checked again before each call. Input values go in as they are (other JSON values as
//! JSON); in the URL they are percent-encoded, and a missing field is
//! [`ToolError::InvalidInput`]. `{{ credentials.<field> }}` is filled from the stored
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

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::clock::Clock;
use crate::outbound::send::{
    clip, retryable_status, send_once, send_with_retries, Backoff, Failure, Reply,
    MAX_RESPONSE_BYTES,
};
use crate::outbound::{headers, scrub, Egress, Refused};
use crate::store::secrets::SecretStore;
use crate::store::tool_runtime::Admission;
use crate::store::tools::Tool;
use crate::store::{Store, StoreError};
use crate::tool_config::{Credentials, HttpConfig, HttpMethod, OAuthCredentials, ToolKind};
use crate::tool_template::{self, parse_template, CredentialField, Piece};

/// How long the circuit breaker stays open by default.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

/// How long credentials read from Secrets Manager are reused by default.
pub const DEFAULT_CREDENTIALS_TTL: Duration = Duration::from_secs(300);

/// What a redacted value is recorded as.
pub use crate::outbound::scrub::REDACTED;

/// Most characters of a failed answer quoted in an error.
const MAX_DETAIL_CHARS: usize = 200;

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
    fn trips_breaker(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Unreachable { .. } => true,
            Self::Status { status, .. } => retryable_status(*status),
            _ => false,
        }
    }

    /// Whether the failure happened at the tool (so it is worth `last_error_at`).
    fn reached_tool(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::Unreachable { .. }
                | Self::Status { .. }
                | Self::InvalidOutput { .. }
        )
    }
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

/// Credentials of one tool version, with the OAuth access token once fetched.
struct CachedCredentials {
    version: u64,
    loaded_at: Instant,
    credentials: Credentials,
    token: Option<AccessToken>,
}

#[derive(Clone)]
struct AccessToken {
    value: SecretString,
    expires: Instant,
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
    #[tracing::instrument(name = "tool_call", skip_all, fields(tool_id = %tool.id, project_id = %tool.project_id))]
    pub async fn call_with_key(
        &self,
        tool: &Tool,
        input: Value,
        idempotency_key: Option<&str>,
    ) -> Result<ToolOutcome, ToolError> {
        let started = Instant::now();
        let result = self.call_inner(tool, input, idempotency_key, started).await;
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
    ) -> Result<ToolOutcome, ToolError> {
        if tool.tool_kind() != Some(ToolKind::Http) {
            return Err(ToolError::Unsupported(tool.kind.clone()));
        }
        let config = HttpConfig::from_config(&tool.config)
            .map_err(|_| ToolError::Config("its stored http config cannot be read".to_owned()))?;
        if let Some(schema) = &config.inputs_schema {
            check_against(schema, &input, "inputs_schema")
                .map_err(|(pointer, message)| ToolError::InvalidInput { pointer, message })?;
        }
        let mut plan = Plan::new(&config, &input)?;
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
            .resolve_credentials(tool, &plan.credential_fields, &config)
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
                let lease = now + chrono_duration(self.worst_case(&config));
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
        let sent =
            send_with_retries(|| request.builder(&client), retries, self.backoff, timeout).await;
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
        };
        // A tool that echoes its credentials must not get them stored in the step.
        let result = result.map(|(output, status)| (secrets.scrub_value(&output), status));
        self.settle(tool, &config, probe, breaker.consecutive_failures, &result)
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

    /// The credential values the templates use, reading (and caching) the secret and
    /// fetching an OAuth token when needed.
    async fn resolve_credentials(
        &self,
        tool: &Tool,
        fields: &BTreeSet<CredentialField>,
        config: &HttpConfig,
    ) -> Result<Resolved, ToolError> {
        if fields.is_empty() {
            return Ok(Resolved::default());
        }
        let cached = self.cached(tool);
        let (credentials, mut token) = match cached {
            Some(found) => found,
            None => (self.load_credentials(tool).await?, None),
        };
        let mut resolved = Resolved::default();
        for secret in secret_values(&credentials) {
            resolved.scrubbed.push(secret);
        }
        for field in fields {
            let value = match (field, &credentials) {
                (CredentialField::ApiKey, Credentials::ApiKey(key)) => key.clone(),
                (CredentialField::ClientId, Credentials::OAuth(oauth)) => {
                    SecretString::from(oauth.client_id.clone())
                }
                (CredentialField::ClientSecret, Credentials::OAuth(oauth)) => {
                    oauth.client_secret.clone()
                }
                (CredentialField::AccessToken, Credentials::OAuth(oauth)) => {
                    let fresh = match &token {
                        Some(token) if token.expires > Instant::now() => token.clone(),
                        _ => {
                            let fetched = self.fetch_token(oauth, config).await?;
                            token = Some(fetched.clone());
                            fetched
                        }
                    };
                    resolved.scrubbed.push(fresh.value.clone());
                    fresh.value
                }
                (field, credentials) => {
                    return Err(ToolError::Config(format!(
                        "a header uses `credentials.{}`, which {} credentials do not have",
                        field.name(),
                        credentials.auth_type()
                    )))
                }
            };
            resolved.values.insert(*field, value);
        }
        self.remember(tool, credentials, token);
        Ok(resolved)
    }

    fn cached(&self, tool: &Tool) -> Option<(Credentials, Option<AccessToken>)> {
        let cache = self.credentials.lock().ok()?;
        cache
            .get(&tool.id)
            .filter(|c| c.version == tool.version && c.loaded_at.elapsed() < self.credentials_ttl)
            .map(|c| (c.credentials.clone(), c.token.clone()))
    }

    fn remember(&self, tool: &Tool, credentials: Credentials, token: Option<AccessToken>) {
        if self.credentials_ttl.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.credentials.lock() {
            let loaded_at = match cache.get(&tool.id) {
                Some(c) if c.version == tool.version => c.loaded_at,
                _ => Instant::now(),
            };
            cache.retain(|_, c| c.loaded_at.elapsed() < self.credentials_ttl);
            cache.insert(
                tool.id,
                CachedCredentials {
                    version: tool.version,
                    loaded_at,
                    credentials,
                    token,
                },
            );
        }
    }

    /// Drops a cached access token the tool refused, so the next call fetches a new one.
    fn forget_token(&self, tool_id: Uuid) {
        if let Ok(mut cache) = self.credentials.lock() {
            if let Some(cached) = cache.get_mut(&tool_id) {
                cached.token = None;
            }
        }
    }

    async fn load_credentials(&self, tool: &Tool) -> Result<Credentials, ToolError> {
        let secret = self
            .secrets
            .get(&tool.credentials_path())
            .await
            .map_err(ToolError::Unexpected)?
            .ok_or_else(|| ToolError::Credentials {
                message: "the tool's headers use credentials, but none are stored; set them \
                          with `credentials` on the tool"
                    .to_owned(),
                retryable: false,
            })?;
        Credentials::from_secret(&secret).map_err(|message| ToolError::Credentials {
            message,
            retryable: false,
        })
    }

    /// Gets an access token with the refresh-token grant when the credentials hold a refresh
    /// token, the client-credentials grant otherwise.
    async fn fetch_token(
        &self,
        oauth: &OAuthCredentials,
        config: &HttpConfig,
    ) -> Result<AccessToken, ToolError> {
        let scrub = Resolved {
            scrubbed: secret_values(&Credentials::OAuth(oauth.clone())),
            ..Resolved::default()
        };
        let scope = oauth.scopes.join(" ");
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", oauth.client_id.as_str()),
            ("client_secret", oauth.client_secret.expose_secret()),
        ];
        match &oauth.refresh_token {
            Some(refresh) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", refresh.expose_secret()));
            }
            None => form.push(("grant_type", "client_credentials")),
        }
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        let asked = Instant::now();
        let token_url = url::Url::parse(&oauth.token_url).map_err(|_| ToolError::Credentials {
            message: "the OAuth token_url is not a valid URL".to_owned(),
            retryable: false,
        })?;
        let request = self
            .egress
            .request(Method::POST, token_url, true)
            .map_err(ToolError::Egress)?
            .header(ACCEPT, "application/json")
            .form(&form)
            .timeout(Duration::from_millis(config.timeout_ms));
        let reply = match send_once(request).await {
            Ok(reply) => reply,
            Err(Failure::Refused(refused)) => return Err(ToolError::Egress(refused)),
            Err(failure) => {
                return Err(ToolError::Credentials {
                    message: format!(
                        "the OAuth token endpoint failed: {}",
                        scrub.scrub(&failure.describe())
                    ),
                    retryable: true,
                })
            }
        };
        if !reply.status.is_success() {
            return Err(ToolError::Credentials {
                message: format!(
                    "the OAuth token endpoint answered HTTP {}",
                    reply.status.as_u16()
                ),
                retryable: retryable_status(reply.status.as_u16()),
            });
        }
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let Some(token) = body.get("access_token").and_then(Value::as_str) else {
            return Err(ToolError::Credentials {
                message: "the OAuth token endpoint's answer has no `access_token`".to_owned(),
                retryable: false,
            });
        };
        // Refresh a little early so a token does not expire in flight.
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(300)
            .saturating_sub(30);
        Ok(AccessToken {
            value: SecretString::from(token.to_owned()),
            expires: asked + Duration::from_secs(lifetime),
        })
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

/// Every secret text of `credentials`, to scrub from what the tool echoes.
fn secret_values(credentials: &Credentials) -> Vec<SecretString> {
    match credentials {
        Credentials::ApiKey(key) => vec![key.clone()],
        Credentials::OAuth(oauth) => {
            let mut values = vec![oauth.client_secret.clone()];
            values.extend(oauth.refresh_token.clone());
            values
        }
    }
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

/// The start of a body, as one line of text.
fn detail(body: &[u8]) -> String {
    clip(&String::from_utf8_lossy(body), MAX_DETAIL_CHARS)
}

// ---------------------------------------------------------------------------------------
// Templates

/// The value at `path` inside `input`: object members by name, list items by index.
fn lookup<'a>(input: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(input, |at, field| match at {
        Value::Object(members) => members.get(field),
        Value::Array(items) => field.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// The JSON Pointer of `path`.
fn pointer(path: &[String]) -> String {
    path.iter()
        .map(|f| format!("/{}", f.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// A value as template text: strings as they are, anything else as JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A header template with its input placeholders filled in; credentials still to come.
struct HeaderPlan {
    /// The name as configured, for the record.
    configured: String,
    name: HeaderName,
    pieces: Vec<Piece>,
    sensitive: bool,
}

/// Everything about the request that does not need credentials, worked out before any I/O.
struct Plan {
    method: Method,
    url: url::Url,
    headers: Vec<HeaderPlan>,
    body: Option<Value>,
    credential_fields: BTreeSet<CredentialField>,
}

/// The header carrying a call's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

impl Plan {
    fn new(config: &HttpConfig, input: &Value) -> Result<Self, ToolError> {
        let fill_input = |pieces: Vec<Piece>, what: &str, encode: bool| {
            pieces
                .into_iter()
                .map(|piece| match piece {
                    Piece::Input(path) => lookup(input, &path)
                        .map(|value| {
                            let text = text_of(value);
                            Piece::Text(if encode { percent_encode(&text) } else { text })
                        })
                        .ok_or_else(|| ToolError::InvalidInput {
                            pointer: pointer(&path),
                            message: format!("is required by the tool's {what}"),
                        }),
                    other => Ok(other),
                })
                .collect::<Result<Vec<Piece>, ToolError>>()
        };

        // Checked again here, not only when saved: a record saved under older rules must not
        // let an input choose the host.
        tool_template::check_url(&config.url)
            .map_err(|why| ToolError::Config(format!("its `url` {why}")))?;
        let url_pieces = parse_template(&config.url)
            .map_err(|why| ToolError::Config(format!("its `url` {why}")))?;
        let dots = url_pieces.iter().find_map(|piece| match piece {
            Piece::Input(path) => lookup(input, path)
                .map(text_of)
                .filter(|text| !text.is_empty() && text.bytes().all(|b| b == b'.'))
                .map(|_| pointer(path)),
            _ => None,
        });
        let url_text: String = fill_input(url_pieces, "url", true)?
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(text) => text,
                _ => String::new(),
            })
            .collect();
        if tool_template::check_filled_path(&url_text).is_err() {
            return Err(ToolError::InvalidInput {
                pointer: dots.unwrap_or_default(),
                message: "fills a segment of the tool's URL path with `.` or `..`, which is \
                          refused"
                    .to_owned(),
            });
        }
        let mut url = url::Url::parse(&url_text).map_err(|_| {
            ToolError::Config("its `url` is not a valid URL once filled in".to_owned())
        })?;

        let mut headers = Vec::with_capacity(config.headers.len());
        let mut credential_fields = BTreeSet::new();
        for (name, template) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ToolError::Config(format!("`{name}` is not a valid header name")))?;
            let pieces = tool_template::check_header(name, template)
                .map_err(|why| ToolError::Config(format!("its header `{name}` {why}")))?;
            let pieces = fill_input(pieces, &format!("header `{name}`"), false)?;
            let mut sensitive = headers::is_sensitive(name);
            for piece in &pieces {
                if let Piece::Credential(field) = piece {
                    credential_fields.insert(*field);
                    sensitive = true;
                }
            }
            headers.push(HeaderPlan {
                configured: name.clone(),
                name: header,
                pieces,
                sensitive,
            });
        }

        let method = match config.method {
            HttpMethod::Get => Method::GET,
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Patch => Method::PATCH,
            HttpMethod::Delete => Method::DELETE,
        };
        let body = if method == Method::GET {
            for (name, value) in query_parameters(input)? {
                url.query_pairs_mut().append_pair(&name, &value);
            }
            None
        } else {
            Some(input.clone())
        };
        Ok(Self {
            method,
            url,
            headers,
            body,
            credential_fields,
        })
    }

    /// Sends `key` as the [`IDEMPOTENCY_HEADER`], unless the tool's headers set it already.
    fn idempotency_key(&mut self, key: &str) -> Result<(), ToolError> {
        let name = HeaderName::from_static("idempotency-key");
        if self.headers.iter().any(|h| h.name == name) {
            return Ok(());
        }
        if HeaderValue::from_str(key).is_err() {
            return Err(ToolError::Config(
                "the idempotency key is not a valid header value".to_owned(),
            ));
        }
        self.headers.push(HeaderPlan {
            configured: IDEMPOTENCY_HEADER.to_owned(),
            name,
            pieces: vec![Piece::Text(key.to_owned())],
            sensitive: false,
        });
        Ok(())
    }

    /// The request, with credentials filled in.
    fn finish(self, secrets: &Resolved) -> Result<Prepared, ToolError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if self.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let mut recorded = Map::new();
        for header in self.headers {
            let mut text = String::new();
            for piece in &header.pieces {
                match piece {
                    Piece::Text(part) => text.push_str(part),
                    Piece::Credential(field) => match secrets.values.get(field) {
                        Some(value) => text.push_str(value.expose_secret()),
                        None => {
                            return Err(ToolError::Unexpected(anyhow::anyhow!(
                                "credential `{}` was not resolved",
                                field.name()
                            )))
                        }
                    },
                    // Already filled in by `Plan::new`.
                    Piece::Input(_) => {}
                }
            }
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                if header.sensitive {
                    ToolError::Credentials {
                        message: format!(
                            "header `{}` would not be a valid HTTP header value",
                            header.name
                        ),
                        retryable: false,
                    }
                } else {
                    ToolError::InvalidInput {
                        pointer: String::new(),
                        message: format!(
                            "header `{}` would not be a valid HTTP header value",
                            header.name
                        ),
                    }
                }
            })?;
            value.set_sensitive(header.sensitive);
            recorded.insert(
                header.configured,
                Value::String(if header.sensitive {
                    REDACTED.to_owned()
                } else {
                    secrets.scrub(&text)
                }),
            );
            headers.insert(header.name, value);
        }
        let body = match &self.body {
            Some(body) => Some(Bytes::from(serde_json::to_vec(body).map_err(|e| {
                ToolError::Unexpected(anyhow::Error::new(e).context("Failed to encode the input"))
            })?)),
            None => None,
        };
        let mut record = json!({
            "method": self.method.as_str(),
            "url": self.url.as_str(),
            "headers": recorded,
        });
        if let (Some(input), Some(map)) = (&self.body, record.as_object_mut()) {
            map.insert("body".to_owned(), secrets.scrub_value(input));
        }
        Ok(Prepared {
            method: self.method,
            url: self.url,
            headers,
            body,
            record,
        })
    }
}

/// A GET tool's input as query parameters: an object of scalars or lists of scalars.
fn query_parameters(input: &Value) -> Result<Vec<(String, String)>, ToolError> {
    let members = match input {
        Value::Null => return Ok(Vec::new()),
        Value::Object(members) => members,
        _ => {
            return Err(ToolError::InvalidInput {
                pointer: String::new(),
                message: "must be an object: a GET tool sends its input as query parameters"
                    .to_owned(),
            })
        }
    };
    let mut pairs = Vec::new();
    for (name, value) in members {
        let scalar = |value: &Value| match value {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(text_of(value)),
            _ => None,
        };
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    match scalar(item) {
                        Some(text) => pairs.push((name.clone(), text)),
                        None => {
                            return Err(ToolError::InvalidInput {
                                pointer: pointer(std::slice::from_ref(name)),
                                message: "must list only strings, numbers or booleans: a GET \
                                          tool sends its input as query parameters"
                                    .to_owned(),
                            })
                        }
                    }
                }
            }
            other => match scalar(other) {
                Some(text) => pairs.push((name.clone(), text)),
                None => {
                    return Err(ToolError::InvalidInput {
                        pointer: pointer(std::slice::from_ref(name)),
                        message: "must be a string, number, boolean or a list of those: a GET \
                                  tool sends its input as query parameters"
                            .to_owned(),
                    })
                }
            },
        }
    }
    Ok(pairs)
}

/// Credential values for one call, and every secret text to scrub.
#[derive(Default)]
struct Resolved {
    values: HashMap<CredentialField, SecretString>,
    scrubbed: Vec<SecretString>,
}

impl Resolved {
    /// `text` with every credential value replaced by [`REDACTED`].
    fn scrub(&self, text: &str) -> String {
        scrub::text(text, &self.scrubbed)
    }

    fn scrub_value(&self, value: &Value) -> Value {
        scrub::value(value, &self.scrubbed)
    }
}

/// A request ready to send, any number of times.
struct Prepared {
    method: Method,
    url: url::Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    record: Value,
}

impl Prepared {
    fn builder(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let builder = client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        match &self.body {
            Some(body) => builder.body(body.clone()),
            None => builder,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_config(value: Value) -> HttpConfig {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_plan_fills_input_into_the_url_and_headers_and_leaves_credentials_for_later() {
        let config = http_config(json!({
            "url": "https://crm.example.com/customers/{{ input.id }}",
            "method": "GET",
            "headers": {"Authorization": "Bearer {{ credentials.api_key }}", "X-Action": "{{ input.action }}"},
            "timeout_ms": 1000, "retry_attempts": 0, "circuit_breaker_threshold": 5
        }));
        let plan = Plan::new(
            &config,
            &json!({"id": "a b/c", "action": "search", "tags": ["x", "y"], "limit": 5, "skip": null}),
        )
        .unwrap();
        assert_eq!(
            plan.credential_fields,
            BTreeSet::from([CredentialField::ApiKey])
        );
        let mut resolved = Resolved::default();
        resolved.values.insert(
            CredentialField::ApiKey,
            SecretString::from("sk-plan-secret".to_owned()),
        );
        resolved
            .scrubbed
            .push(SecretString::from("sk-plan-secret".to_owned()));
        let prepared = plan.finish(&resolved).unwrap();
        assert_eq!(
            prepared.url.as_str(),
            "https://crm.example.com/customers/a%20b%2Fc?action=search&id=a+b%2Fc&limit=5&tags=x&tags=y"
        );
        assert_eq!(
            prepared.headers["authorization"].to_str().unwrap(),
            "Bearer sk-plan-secret"
        );
        assert!(prepared.headers["authorization"].is_sensitive());
        assert_eq!(
            prepared.record["headers"],
            json!({"Authorization": REDACTED, "X-Action": "search"})
        );
        assert!(!prepared.record.to_string().contains("sk-plan-secret"));
    }

    #[test]
    fn a_plan_refuses_missing_input_fields_and_nested_get_parameters() {
        let config = http_config(json!({
            "url": "https://x.example.com/{{ input.id }}", "method": "GET",
            "timeout_ms": 1000, "retry_attempts": 0, "circuit_breaker_threshold": 5
        }));
        let missing = Plan::new(&config, &json!({})).err().unwrap();
        assert!(
            matches!(&missing, ToolError::InvalidInput { pointer, .. } if pointer == "/id"),
            "{missing}"
        );
        let nested = Plan::new(&config, &json!({"id": 1, "filter": {"a": 1}}))
            .err()
            .unwrap();
        assert!(
            matches!(&nested, ToolError::InvalidInput { pointer, .. } if pointer == "/filter"),
            "{nested}"
        );
        let leaky = http_config(json!({
            "url": "https://x.example.com/?key={{ credentials.api_key }}", "method": "POST",
            "timeout_ms": 1000, "retry_attempts": 0, "circuit_breaker_threshold": 5
        }));
        assert!(matches!(
            Plan::new(&leaky, &json!({})),
            Err(ToolError::Config(_))
        ));
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let status = |status| ToolError::Status {
            status,
            attempts: 1,
            retry_after_secs: None,
            detail: String::new(),
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!ToolError::Unsupported("db".into()).is_retryable());
        assert!(ToolError::CircuitOpen {
            retry_after_secs: 3
        }
        .is_retryable());
        assert_eq!(
            ToolError::RateLimited {
                limit: 2,
                retry_after_secs: 7
            }
            .retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            ToolError::InvalidInput {
                pointer: String::new(),
                message: "x".into()
            }
            .to_string(),
            "the tool input is invalid at `(root)`: x"
        );
    }

    #[test]
    fn details_are_one_clipped_line() {
        assert_eq!(detail(b"{\"error\":\n\"nope\"}"), "{\"error\": \"nope\"}");
        assert_eq!(detail("é".repeat(300).as_bytes()).chars().count(), 201);
    }

    #[test]
    fn seconds_until_rounds_up() {
        let now = Utc::now();
        assert_eq!(
            seconds_until(now, now + chrono::Duration::milliseconds(1500)),
            2
        );
        assert_eq!(seconds_until(now, now), 1);
    }
}
