//! The `webhook` step executor: a JSON `POST` signed with the project's webhook secret.
//!
//! ## Signature
//!
//! Every attempt carries:
//!
//! - `X-Spark-Ops-Timestamp: <unix seconds>`;
//! - `X-Spark-Ops-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`;
//! - `X-Spark-Ops-Delivery: <id>`, the same on every attempt, so a receiver can drop
//!   duplicates.
//!
//! The HMAC key is the project's webhook secret exactly as stored in Secrets Manager at
//! `projects/<project_id>/webhook-secret`: 64 hex characters encoding 32 random bytes, created
//! on first use. A receiver checks the signature with [`verify`], refusing timestamps too far
//! from its clock so a captured request cannot be replayed later.
//!
//! ## Delivery
//!
//! A 2xx answer delivers the webhook. A 5xx, a 408, a 429, a timeout or a connection failure
//! is retried up to `retries` times under the one outbound policy ([`crate::outbound::send`]);
//! any other answer, or the last failure, fails the step with the status in the message.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::RngCore;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use crate::clock::Clock;
use crate::engine::budget::MAX_STEP;
use crate::outbound::send::{
    clip, detail, retryable_status, send_with_retries, Backoff, Budget, Failure,
};
use crate::outbound::{headers, scrub, Egress, Refused};
use crate::store::secrets::SecretStore;

/// Header carrying the signing time, in unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Spark-Ops-Timestamp";

/// Header carrying the signature, `v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Spark-Ops-Signature";

/// Header carrying the delivery id, the same on every attempt.
pub const DELIVERY_HEADER: &str = "X-Spark-Ops-Delivery";

/// The signature scheme's version tag.
pub const SIGNATURE_VERSION: &str = "v1";

/// How far a receiver should accept a timestamp from its own clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Time limit of one attempt by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a project's secret is reused before it is read again.
const SECRET_TTL: Duration = Duration::from_secs(300);

/// Most characters of a non-JSON answer kept in the outcome.
const MAX_TEXT_RESPONSE_CHARS: usize = 2048;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex(&mac(secret, timestamp, body).finalize().into_bytes())
}

/// The value of [`SIGNATURE_HEADER`]: `v1=<signature>`.
pub fn signature_header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("{SIGNATURE_VERSION}={}", signature(secret, timestamp, body))
}

/// Whether `header_value` (one or more comma-separated `v1=<hex>`) signs `timestamp` and
/// `body` under `secret`, and `timestamp` is within `tolerance` of `now` (unix seconds).
/// Signatures are compared in constant time.
pub fn verify(
    secret: &[u8],
    timestamp: i64,
    body: &[u8],
    header_value: &str,
    now: i64,
    tolerance: Duration,
) -> bool {
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return false;
    }
    header_value.split(',').any(|part| {
        let Some((version, hex_signature)) = part.trim().split_once('=') else {
            return false;
        };
        let Some(expected) = unhex(hex_signature.trim()) else {
            return false;
        };
        version == SIGNATURE_VERSION && mac(secret, timestamp, body).verify_slice(&expected).is_ok()
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let nibble = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [high, low] => Some(nibble(*high)? << 4 | nibble(*low)?),
            _ => None,
        })
        .collect()
}

/// A project's webhook secret; it never prints.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

impl WebhookSecret {
    /// A new secret: 32 random bytes from the OS, as 64 hex characters.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(SecretString::from(hex(&bytes)))
    }

    /// The HMAC key: the secret's text.
    pub fn key(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

/// The webhook secret of `project_id`, created on first use. Race-safe: when two callers
/// create it at once, the loser reads the winner's, so every signature uses the same one.
pub async fn project_secret(
    secrets: &SecretStore,
    project_id: Uuid,
) -> anyhow::Result<WebhookSecret> {
    let path = crate::store::secrets::path::project_webhook_secret(project_id);
    if let Some(found) = secrets.get(&path).await? {
        return Ok(WebhookSecret(found));
    }
    let fresh = WebhookSecret::generate();
    if secrets.create_if_absent(&path, &fresh.0).await? {
        tracing::info!(project_id = %project_id, "webhook secret created");
    }
    // Whoever created it, every caller signs with what is stored: a store whose create is
    // not atomic under concurrency (LocalStack's) then still converges on one secret.
    secrets
        .get(&path)
        .await?
        .map(WebhookSecret)
        .ok_or_else(|| anyhow::anyhow!("the webhook secret of project {project_id} vanished"))
}

/// A delivered webhook.
#[derive(Clone, Debug, Serialize)]
pub struct WebhookOutcome {
    /// The receiver's 2xx status.
    pub status: u16,
    /// Attempts made (1 without retries).
    pub attempts: u32,
    /// Time the delivery took.
    pub duration_ms: u64,
    /// The delivery id sent in [`DELIVERY_HEADER`].
    pub delivery_id: String,
    /// The receiver's answer: its JSON, its text (clipped), or `null` when empty.
    pub response: Value,
}

/// Why a webhook was not delivered. Messages never hold the secret.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL cannot be called.
    #[error("the webhook URL is invalid: it must be an absolute http or https URL")]
    InvalidUrl,
    /// A header the step asked for cannot be sent.
    #[error("the webhook header `{0}` cannot be sent: {1}")]
    InvalidHeader(String, &'static str),
    /// The body cannot be encoded.
    #[error("the webhook body cannot be encoded as JSON")]
    InvalidBody,
    /// The receiver answered a non-2xx status, after retries when it was worth retrying.
    #[error(
        "the webhook receiver answered HTTP {status} (attempts: {attempts}){}",
        show_detail(detail)
    )]
    Status {
        /// The last status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The start of the last answer's body.
        detail: String,
    },
    /// No answer within the timeout, on every attempt.
    #[error("the webhook receiver did not answer within {timeout_ms} ms (attempts: {attempts})")]
    Timeout {
        /// The time limit of one attempt.
        timeout_ms: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// The receiver could not be reached.
    #[error("the webhook receiver could not be reached (attempts: {attempts}): {reason}")]
    Unreachable {
        /// What went wrong.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The egress policy refused the destination.
    #[error("{0}")]
    Egress(Refused),
    /// The step's budget ran out before the receiver answered.
    #[error("the webhook receiver did not answer in time: {0}")]
    OutOfTime(String),
    /// Reading or creating the project's secret failed; the cause is kept for the log.
    #[error("the webhook could not be signed")]
    Secret(#[source] anyhow::Error),
}

fn show_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl WebhookError {
    /// Whether sending again later may succeed: availability problems (5xx, 408, 429,
    /// timeouts, connection failures, secret access) yes; bad URLs, headers and other 4xx no.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::InvalidUrl | Self::InvalidHeader(..) | Self::InvalidBody | Self::Egress(_) => {
                false
            }
            Self::Status { status, .. } => retryable_status(*status),
            Self::Timeout { .. }
            | Self::Unreachable { .. }
            | Self::OutOfTime(_)
            | Self::Secret(_) => true,
        }
    }
}

/// One webhook to deliver, with everything [`WebhookSender::deliver`] accepts.
#[derive(Clone, Debug)]
pub struct Delivery<'a> {
    /// The project whose secret signs it.
    pub project_id: Uuid,
    /// Where to POST.
    pub url: &'a str,
    /// The JSON body.
    pub body: &'a Value,
    /// Extra headers (already rendered); the sender's own headers cannot be overridden.
    pub headers: &'a BTreeMap<String, String>,
    /// Retries after a retryable failure.
    pub retries: u32,
    /// The delivery id; a stable one (e.g. `<run_id>:<step_id>`) lets receivers drop
    /// duplicates across worker restarts. A fresh UUID when `None`.
    pub id: Option<&'a str>,
    /// A stored secret to send as one header. It requires `https` (but to an allowed
    /// address) and is scrubbed from whatever the receiver answers.
    pub secret_header: Option<SecretHeader<'a>>,
}

/// A header carrying a stored secret: `<name>: [<scheme> ]<value>`.
#[derive(Clone, Copy, Debug)]
pub struct SecretHeader<'a> {
    /// The header's name.
    pub name: &'a str,
    /// A word sent before the value, e.g. `Bearer`.
    pub scheme: Option<&'a str>,
    /// The secret.
    pub value: &'a SecretString,
}

/// Sends signed webhooks; build one per process and share it.
pub struct WebhookSender {
    egress: Egress,
    secrets: SecretStore,
    clock: Arc<dyn Clock>,
    timeout: Duration,
    backoff: Backoff,
    cache: Mutex<HashMap<Uuid, (WebhookSecret, Instant)>>,
}

impl WebhookSender {
    /// A sender with a 10 s timeout per attempt and the default backoff.
    pub fn new(egress: Egress, secrets: SecretStore, clock: Arc<dyn Clock>) -> Self {
        Self {
            egress,
            secrets,
            clock,
            timeout: DEFAULT_TIMEOUT,
            backoff: Backoff::default(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Uses `timeout` for each attempt.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses `backoff` between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// POSTs `body` to `url`, signed with the project's secret, retrying up to `retries`
    /// times.
    pub async fn send(
        &self,
        project_id: Uuid,
        url: &str,
        body: &Value,
        retries: u32,
    ) -> Result<WebhookOutcome, WebhookError> {
        self.deliver(&Delivery {
            project_id,
            url,
            body,
            headers: &BTreeMap::new(),
            retries,
            id: None,
            secret_header: None,
        })
        .await
    }

    /// Delivers a webhook within the longest a step may take; see the module documentation.
    pub async fn deliver(&self, delivery: &Delivery<'_>) -> Result<WebhookOutcome, WebhookError> {
        self.deliver_within(delivery, Budget::new(MAX_STEP)).await
    }

    /// Delivers a webhook, every attempt and wait within `budget` (a step's).
    #[tracing::instrument(name = "webhook", skip_all, fields(project_id = %delivery.project_id))]
    pub async fn deliver_within(
        &self,
        delivery: &Delivery<'_>,
        budget: Budget,
    ) -> Result<WebhookOutcome, WebhookError> {
        let started = Instant::now();
        let result = self.deliver_inner(delivery, started, budget).await;
        match &result {
            Ok(outcome) => tracing::info!(
                status = outcome.status,
                attempts = outcome.attempts,
                duration_ms = outcome.duration_ms,
                "webhook delivered"
            ),
            Err(WebhookError::Secret(cause)) => {
                tracing::error!(error = ?cause, "webhook secret unavailable");
            }
            Err(err) => tracing::warn!(error = %err, "webhook failed"),
        }
        result
    }

    async fn deliver_inner(
        &self,
        delivery: &Delivery<'_>,
        started: Instant,
        budget: Budget,
    ) -> Result<WebhookOutcome, WebhookError> {
        let url = url::Url::parse(delivery.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or(WebhookError::InvalidUrl)?;
        let mut headers = HeaderMap::new();
        for (name, value) in delivery.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| WebhookError::InvalidHeader(name.clone(), "not a header name"))?;
            if headers::check_webhook_name(header.as_str()).is_err() {
                return Err(WebhookError::InvalidHeader(
                    name.clone(),
                    "the sender sets it",
                ));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                WebhookError::InvalidHeader(name.clone(), "not a valid header value")
            })?;
            headers.insert(header, value);
        }
        if let Some(secret) = delivery.secret_header {
            let invalid = |why| WebhookError::InvalidHeader(secret.name.to_owned(), why);
            let header = HeaderName::from_bytes(secret.name.as_bytes())
                .map_err(|_| invalid("not a header name"))?;
            if headers::check_webhook_name(header.as_str()).is_err() {
                return Err(invalid("the sender sets it"));
            }
            let text = match secret.scheme {
                Some(scheme) => format!("{scheme} {}", secret.value.expose_secret()),
                None => secret.value.expose_secret().to_owned(),
            };
            let mut value = HeaderValue::from_str(&text)
                .map_err(|_| invalid("the credential is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        let secrets: Vec<SecretString> = delivery
            .secret_header
            .map(|secret| secret.value.clone())
            .into_iter()
            .collect();
        let body = bytes::Bytes::from(
            serde_json::to_vec(delivery.body).map_err(|_| WebhookError::InvalidBody)?,
        );
        let delivery_id = delivery
            .id
            .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned);
        let delivery_header = HeaderValue::from_str(&delivery_id).map_err(|_| {
            WebhookError::InvalidHeader(DELIVERY_HEADER.to_owned(), "not a valid header value")
        })?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers
            .entry(USER_AGENT)
            .or_insert(HeaderValue::from_static("Spark-Ops-Webhook/1"));
        headers.insert(DELIVERY_HEADER, delivery_header);
        let client = self
            .egress
            .client_for(&url, delivery.secret_header.is_some())
            .map_err(WebhookError::Egress)?;
        let secret = self
            .secret(delivery.project_id)
            .await
            .map_err(WebhookError::Secret)?;

        // Each attempt is signed when it is sent, so a retry after a wait is not stale.
        let sent = send_with_retries(
            || {
                let timestamp = self.clock.now().timestamp();
                let mut signed = headers.clone();
                signed.insert(TIMESTAMP_HEADER, HeaderValue::from(timestamp));
                if let Ok(mut value) =
                    HeaderValue::from_str(&signature_header(secret.key(), timestamp, &body))
                {
                    value.set_sensitive(true);
                    signed.insert(SIGNATURE_HEADER, value);
                }
                client.post(url.clone()).headers(signed).body(body.clone())
            },
            delivery.retries,
            self.backoff,
            self.timeout,
            budget,
        )
        .await;
        let attempts = sent.attempts;
        match sent.result {
            Ok(reply) if reply.status.is_success() => Ok(WebhookOutcome {
                status: reply.status.as_u16(),
                attempts,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                delivery_id,
                response: scrub::value(&response_value(&reply.body), &secrets),
            }),
            Ok(reply) => Err(WebhookError::Status {
                status: reply.status.as_u16(),
                attempts,
                detail: scrub::text(&detail(&reply.body), &secrets),
            }),
            Err(Failure::Refused(refused)) => Err(WebhookError::Egress(refused)),
            Err(Failure::OutOfTime(why)) => Err(WebhookError::OutOfTime(why)),
            Err(Failure::Timeout) => Err(WebhookError::Timeout {
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                attempts,
            }),
            Err(failure) => Err(WebhookError::Unreachable {
                reason: failure.describe(),
                attempts,
            }),
        }
    }

    /// The project's secret, cached for a few minutes.
    async fn secret(&self, project_id: Uuid) -> anyhow::Result<WebhookSecret> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((secret, loaded)) = cache.get(&project_id) {
                if loaded.elapsed() < SECRET_TTL {
                    return Ok(secret.clone());
                }
            }
        }
        let secret = project_secret(&self.secrets, project_id).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (_, loaded)| loaded.elapsed() < SECRET_TTL);
            cache.insert(project_id, (secret.clone(), Instant::now()));
        }
        Ok(secret)
    }
}

/// A receiver's answer as a value: JSON when it is, clipped text otherwise, `null` if empty.
fn response_value(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body).unwrap_or_else(|_| {
        Value::String(clip(
            &String::from_utf8_lossy(body),
            MAX_TEXT_RESPONSE_CHARS,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-test-key";

    #[test]
    fn the_signature_is_hex_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hex(&{
                let mut mac = <HmacSha256 as Mac>::new_from_slice(b"Jefe").unwrap();
                mac.update(b"what do ya want for nothing?");
                mac.finalize().into_bytes()
            }),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Our message is "<timestamp>.<body>"; this vector was computed independently with
        // `printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec-test-key`.
        assert_eq!(
            signature(SECRET, 1_700_000_000, br#"{"a":1}"#),
            "9a214c6d63b230a79e500518445176f01ae5eb75b3e0769f80d7adc4943415f3"
        );
        assert_eq!(
            signature_header(SECRET, 1_700_000_000, br#"{"a":1}"#),
            format!("v1={}", signature(SECRET, 1_700_000_000, br#"{"a":1}"#))
        );
    }

    #[test]
    fn a_genuine_signature_verifies() {
        let body = br#"{"event":"run.succeeded"}"#;
        let header = signature_header(SECRET, 1_700_000_000, body);
        assert!(verify(
            SECRET,
            1_700_000_000,
            body,
            &header,
            1_700_000_010,
            DEFAULT_TOLERANCE
        ));
        // Several signatures (e.g. during a secret rotation): any one may match.
        assert!(verify(
            SECRET,
            1_700_000_000,
            body,
            &format!("v1=00ff, {header}"),
            1_700_000_000,
            DEFAULT_TOLERANCE
        ));
    }

    #[test]
    fn tampering_a_wrong_secret_or_a_stale_timestamp_fail_verification() {
        let body = br#"{"event":"run.succeeded"}"#;
        let header = signature_header(SECRET, 1_700_000_000, body);
        let now = 1_700_000_000;
        let check = |secret: &[u8], ts: i64, body: &[u8], header: &str, now: i64| {
            verify(secret, ts, body, header, now, DEFAULT_TOLERANCE)
        };
        assert!(!check(
            SECRET,
            1_700_000_000,
            br#"{"event":"run.failed"}"#,
            &header,
            now
        ));
        assert!(!check(b"another-secret", 1_700_000_000, body, &header, now));
        assert!(
            !check(SECRET, 1_700_000_001, body, &header, now),
            "timestamp is signed"
        );
        assert!(
            !check(SECRET, 1_700_000_000, body, &header, now + 301),
            "stale"
        );
        assert!(
            !check(SECRET, 1_700_000_000, body, &header, now - 301),
            "from the future"
        );
        assert!(check(SECRET, 1_700_000_000, body, &header, now + 300));
        assert!(!check(
            SECRET,
            1_700_000_000,
            body,
            &header.replace("v1=", "v0="),
            now
        ));
        assert!(!check(SECRET, 1_700_000_000, body, "v1=zz", now));
        assert!(!check(SECRET, 1_700_000_000, body, "", now));
        assert!(!check(
            SECRET,
            1_700_000_000,
            body,
            &header[..header.len() - 2],
            now
        ));
    }

    #[test]
    fn generated_secrets_are_64_hex_characters_and_never_print() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert_eq!(a.key().len(), 64);
        assert!(a.key().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a.key(), b.key());
        assert_eq!(format!("{a:?}"), "WebhookSecret([REDACTED])");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
    }

    #[test]
    fn availability_failures_are_retryable_and_client_errors_are_not() {
        let status = |status| WebhookError::Status {
            status,
            attempts: 1,
            detail: String::new(),
        };
        assert!(status(502).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(410).is_retryable());
        assert!(!WebhookError::InvalidUrl.is_retryable());
        assert_eq!(
            status(410).to_string(),
            "the webhook receiver answered HTTP 410 (attempts: 1)"
        );
    }
}
