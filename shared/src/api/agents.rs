//! `/api/v1/agents`: agents, their heartbeats and their derived health.
//!
//! - `runtime` is a short identifier (`[a-z][a-z0-9._-]{0,31}`, e.g. `python`, `node`,
//!   `python3.12`) rather than a closed list, so a new runtime needs no release.
//! - `tools` must name tools of the agent's own project; a tool of another project is
//!   reported exactly like a missing one.
//! - `capabilities` are at most [`MAX_CAPABILITIES`] identifiers; duplicates are dropped. The
//!   bound keeps a change that replaces every capability (one marker removed and one added per
//!   capability, plus the record) inside one 100-item transaction.
//! - `llm.api_key` is write-only: it goes to Secrets Manager (`agents/<id>/llm-api-key`) and
//!   responses show only `llm.has_api_key`.
//! - In a `PATCH`, a nullable field set to `null` is cleared; `llm: {base_url}` keeps the
//!   stored key while the origin (scheme, host, port) stays the same and drops it otherwise,
//!   `llm: {base_url, api_key: null}` drops it, and `llm: null` drops both.
//! - Health is derived on every read (see [`crate::agent_health`]); a heartbeat does not
//!   change the agent's `version`.
//! - Lists take one filter at a time: `env`, `capability` or `health`.

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{check_version, expected_version, ApiJson, ApiQuery, PageQuery, MAX_LIMIT};
use super::registry::{authorize_record, check_json_object, check_storable, not_found, record_id};
use super::{created, with_etag, Page};
use crate::agent_health::HealthStatus;
use crate::auth::rbac::Action;
use crate::auth::{authorize, HeartbeatCaller, Principal};
use crate::domain::{ts, Env, Name};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::outbound;
use crate::state::AppState;
use crate::store::agents::{Agent, AgentFilter, Heartbeat, JsonObject, LlmEndpoint};
use crate::store::StoreError;

/// What the errors call an agent.
const WHAT: &str = "agent";
/// Default `concurrency`.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Default `heartbeat_interval_seconds`.
pub const DEFAULT_HEARTBEAT_INTERVAL_SECONDS: u32 = 30;
/// Default `release`.
pub const DEFAULT_RELEASE: &str = "1.0.0";
/// Most capabilities an agent can have.
pub const MAX_CAPABILITIES: usize = 49;
/// Most tools an agent can use.
pub const MAX_TOOLS: usize = 100;
/// Largest `metrics` object of a heartbeat, serialised.
pub const MAX_METRICS_BYTES: usize = 8 * 1024;
/// Default number of heartbeats in `GET /agents/{id}/metrics`.
pub const DEFAULT_HISTORY: i32 = 50;
/// Deepest nesting accepted in free-form JSON (DynamoDB stores at most 32 levels).
/// Attempts at a write that lost a race with a heartbeat (or a heartbeat with a change).
const WRITE_ATTEMPTS: usize = 3;

/// An agent's LLM endpoint as the API shows it: never the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct LlmView {
    /// Base URL of the OpenAI-compatible API.
    pub base_url: String,
    /// Whether an API key is stored (it is never returned).
    pub has_api_key: bool,
}

/// An agent as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    /// Agent id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Name.
    pub name: String,
    /// Runtime identifier, e.g. `python`.
    pub runtime: String,
    /// Model name.
    pub model: String,
    /// Tool ids, all of the same project.
    pub tools: Vec<Uuid>,
    /// Environment.
    pub env: Env,
    /// Parallel tasks it accepts.
    pub concurrency: u32,
    /// Autoscaling settings.
    #[schema(value_type = Option<Object>)]
    pub autoscale_config: Option<JsonObject>,
    /// Short description of its prompt.
    pub prompt_summary: Option<String>,
    /// Free-form metadata.
    #[schema(value_type = Object)]
    pub metadata: JsonObject,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// System prompt.
    pub system_prompt: Option<String>,
    /// Sampling temperature.
    #[schema(value_type = Option<f64>)]
    pub temperature: Option<serde_json::Number>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
    /// Seconds between expected heartbeats.
    pub heartbeat_interval_seconds: u32,
    /// OpenAI-compatible endpoint.
    pub llm: Option<LlmView>,
    /// Release (semantic version).
    pub release: String,
    /// Owning team or person.
    pub owner: Option<String>,
    /// What changed in this release.
    pub changelog: Option<String>,
    /// Whether it is deprecated.
    pub deprecated: bool,
    /// Description.
    pub description: Option<String>,
    /// Health now, derived from the heartbeats.
    pub health_status: HealthStatus,
    /// Time of the last heartbeat.
    #[serde(with = "ts::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Status reported by the last heartbeat.
    pub last_status: Option<String>,
    /// Metrics of the last heartbeat that reported any.
    #[schema(value_type = Option<Object>)]
    pub latest_metrics: Option<JsonObject>,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change of the definition.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Version for optimistic concurrency (`version` in PATCH, or `If-Match`).
    pub version: u64,
}

impl AgentView {
    /// The view of `agent`, with its health at `now`.
    pub fn new(agent: Agent, now: DateTime<Utc>) -> Self {
        let health_status = agent.health_at(now);
        Self {
            id: agent.id,
            project_id: agent.project_id,
            name: agent.name,
            runtime: agent.runtime,
            model: agent.model,
            tools: agent.tools,
            env: agent.env,
            concurrency: agent.concurrency,
            autoscale_config: agent.autoscale_config,
            prompt_summary: agent.prompt_summary,
            metadata: agent.metadata,
            capabilities: agent.capabilities,
            system_prompt: agent.system_prompt,
            temperature: agent.temperature.and_then(|t| t.parse().ok()),
            max_tokens: agent.max_tokens,
            heartbeat_interval_seconds: agent.heartbeat_interval_seconds,
            llm: agent.llm.map(|llm| LlmView {
                base_url: llm.base_url,
                has_api_key: llm.has_api_key,
            }),
            release: agent.release,
            owner: agent.owner,
            changelog: agent.changelog,
            deprecated: agent.deprecated,
            description: agent.description,
            health_status,
            last_heartbeat: agent.last_heartbeat,
            last_status: agent.last_status,
            latest_metrics: agent.latest_metrics,
            created_at: agent.created_at,
            updated_at: agent.updated_at,
            version: agent.version,
        }
    }
}

/// An OpenAI-compatible endpoint, as written.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmInput {
    /// Base URL (`http` or `https`), e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// API key; write-only. In a PATCH, leaving it out keeps the stored key and `null`
    /// removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, write_only)]
    pub api_key: Option<Option<SecretString>>,
}

/// `POST /agents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    /// The project the agent belongs to.
    pub project_id: String,
    /// Name.
    pub name: String,
    /// Runtime identifier: `[a-z][a-z0-9._-]{0,31}`, e.g. `python`, `node`.
    pub runtime: String,
    /// Model name.
    pub model: String,
    /// Ids of tools of the same project (at most 100).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Environment.
    pub env: Env,
    /// Parallel tasks, 1–1000 (default 4).
    pub concurrency: Option<i64>,
    /// Autoscaling settings (an object of at most 32 KiB).
    #[schema(value_type = Option<Object>)]
    pub autoscale_config: Option<JsonObject>,
    /// Short description of its prompt.
    pub prompt_summary: Option<String>,
    /// Free-form metadata (an object of at most 32 KiB).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<JsonObject>,
    /// Capabilities: at most 49 of 1–64 characters of `[a-z0-9_.-]`; duplicates are dropped.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// System prompt (at most 64 KiB).
    pub system_prompt: Option<String>,
    /// Sampling temperature, 0–2.
    #[schema(value_type = Option<f64>)]
    pub temperature: Option<serde_json::Number>,
    /// Completion token limit, 1–1,000,000.
    pub max_tokens: Option<i64>,
    /// Seconds between expected heartbeats, 5–3600 (default 30).
    pub heartbeat_interval_seconds: Option<i64>,
    /// OpenAI-compatible endpoint; its `api_key` is stored in Secrets Manager.
    pub llm: Option<LlmInput>,
    /// Release, a semantic version (default `1.0.0`).
    pub release: Option<String>,
    /// Owning team or person.
    pub owner: Option<String>,
    /// What changed in this release.
    pub changelog: Option<String>,
    /// Whether the agent is deprecated (default false).
    pub deprecated: Option<bool>,
    /// Description.
    pub description: Option<String>,
}

/// `PATCH /agents/{id}`: only the fields given change; `null` clears a nullable field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    /// Name.
    pub name: Option<String>,
    /// Runtime identifier.
    pub runtime: Option<String>,
    /// Model name.
    pub model: Option<String>,
    /// Replaces the tool ids.
    pub tools: Option<Vec<String>>,
    /// Environment.
    pub env: Option<Env>,
    /// Parallel tasks, 1–1000.
    pub concurrency: Option<i64>,
    /// Autoscaling settings; `null` clears them.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub autoscale_config: Option<Option<JsonObject>>,
    /// Short description of its prompt; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub prompt_summary: Option<Option<String>>,
    /// Replaces the metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<JsonObject>,
    /// Replaces the capabilities.
    pub capabilities: Option<Vec<String>>,
    /// System prompt; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub system_prompt: Option<Option<String>>,
    /// Sampling temperature, 0–2; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<f64>)]
    pub temperature: Option<Option<serde_json::Number>>,
    /// Completion token limit; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>)]
    pub max_tokens: Option<Option<i64>>,
    /// Seconds between expected heartbeats, 5–3600.
    pub heartbeat_interval_seconds: Option<i64>,
    /// OpenAI-compatible endpoint; `null` removes it and its key.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<LlmInput>)]
    pub llm: Option<Option<LlmInput>>,
    /// Release, a semantic version.
    pub release: Option<String>,
    /// Owning team or person; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// What changed in this release; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub changelog: Option<Option<String>>,
    /// Whether the agent is deprecated.
    pub deprecated: Option<bool>,
    /// Description; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// The version this change is based on; a stale one gets `409`.
    pub version: Option<u64>,
}

/// Tells a field set to `null` (`Some(None)`) from a field left out (`None`).
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `POST /agents/{id}/heartbeat`; the body may also be empty.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatReport {
    /// A short status word, e.g. `ok` or `busy` (at most 64 characters).
    pub status: Option<String>,
    /// Numbers or strings by name (at most 8 KiB).
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<JsonObject>,
}

/// The answer to a heartbeat.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatAck {
    /// The agent.
    pub agent_id: Uuid,
    /// Health after this heartbeat.
    pub health_status: HealthStatus,
    /// When the heartbeat was recorded.
    #[serde(with = "ts")]
    pub last_heartbeat: DateTime<Utc>,
    /// When the next heartbeat is expected.
    #[serde(with = "ts")]
    pub next_heartbeat_due: DateTime<Utc>,
    /// Seconds between expected heartbeats.
    pub heartbeat_interval_seconds: u32,
}

/// One heartbeat of the history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatView {
    /// When it was received.
    #[serde(with = "ts")]
    pub at: DateTime<Utc>,
    /// Reported status.
    pub status: Option<String>,
    /// Reported metrics.
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<JsonObject>,
}

/// An agent's health, latest metrics and recent heartbeats.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentMetrics {
    /// The agent.
    pub agent_id: Uuid,
    /// Health now.
    pub health_status: HealthStatus,
    /// Time of the last heartbeat.
    #[serde(with = "ts::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Status reported by the last heartbeat.
    pub last_status: Option<String>,
    /// Seconds between expected heartbeats.
    pub heartbeat_interval_seconds: u32,
    /// Metrics of the last heartbeat that reported any.
    #[schema(value_type = Option<Object>)]
    pub latest_metrics: Option<JsonObject>,
    /// Recent heartbeats, newest first (kept for a day).
    pub history: Vec<HeartbeatView>,
}

/// `?project_id=&env=&capability=&health=&limit=&cursor=` of the agent list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAgentsQuery {
    /// The project (required).
    pub project_id: Option<String>,
    /// Only agents of this environment (`dev`, `staging`, `prod`).
    pub env: Option<String>,
    /// Only agents with this capability.
    pub capability: Option<String>,
    /// Only agents in this health state (`healthy`, `degraded`, `unhealthy`).
    pub health: Option<String>,
    /// Items per page, 1–200 (default 50).
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// `?limit=` of the heartbeat history.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Heartbeats to return, 1–200 (default 50).
    pub limit: Option<String>,
}

/// What happens to the stored LLM API key.
enum KeyChange {
    Keep,
    Remove,
    Replace(SecretString),
}

/// What happens to the LLM endpoint.
enum LlmChange {
    Remove,
    Set { base_url: String, key: KeyChange },
}

/// Validated values of a create or a change; `None` leaves a field as it is.
struct Changes {
    name: Option<String>,
    runtime: Option<String>,
    model: Option<String>,
    tools: Option<Vec<Uuid>>,
    env: Option<Env>,
    concurrency: Option<u32>,
    autoscale_config: Option<Option<JsonObject>>,
    prompt_summary: Option<Option<String>>,
    metadata: Option<JsonObject>,
    capabilities: Option<Vec<String>>,
    system_prompt: Option<Option<String>>,
    temperature: Option<Option<String>>,
    max_tokens: Option<Option<u32>>,
    heartbeat_interval_seconds: Option<u32>,
    llm: Option<LlmChange>,
    release: Option<String>,
    owner: Option<Option<String>>,
    changelog: Option<Option<String>>,
    deprecated: Option<bool>,
    description: Option<Option<String>>,
}

impl Changes {
    /// The key to write to Secrets Manager, if any.
    fn new_api_key(&self) -> Option<&SecretString> {
        match &self.llm {
            Some(LlmChange::Set {
                key: KeyChange::Replace(key),
                ..
            }) => Some(key),
            _ => None,
        }
    }

    /// Applies the changes to `agent`.
    fn apply(&self, agent: &mut Agent) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *field = value.clone();
            }
        }
        set(&mut agent.name, &self.name);
        set(&mut agent.runtime, &self.runtime);
        set(&mut agent.model, &self.model);
        set(&mut agent.tools, &self.tools);
        set(&mut agent.env, &self.env);
        set(&mut agent.concurrency, &self.concurrency);
        set(&mut agent.autoscale_config, &self.autoscale_config);
        set(&mut agent.prompt_summary, &self.prompt_summary);
        set(&mut agent.metadata, &self.metadata);
        set(&mut agent.capabilities, &self.capabilities);
        set(&mut agent.system_prompt, &self.system_prompt);
        set(&mut agent.temperature, &self.temperature);
        set(&mut agent.max_tokens, &self.max_tokens);
        set(
            &mut agent.heartbeat_interval_seconds,
            &self.heartbeat_interval_seconds,
        );
        set(&mut agent.release, &self.release);
        set(&mut agent.owner, &self.owner);
        set(&mut agent.changelog, &self.changelog);
        set(&mut agent.deprecated, &self.deprecated);
        set(&mut agent.description, &self.description);
        match &self.llm {
            None => {}
            Some(LlmChange::Remove) => agent.llm = None,
            Some(LlmChange::Set { base_url, key }) => {
                // A key stays bound to the origin it was given for: another origin drops it
                // unless it is sent again.
                let had_key = agent.llm.as_ref().is_some_and(|llm| {
                    llm.has_api_key && outbound::same_origin(&llm.base_url, base_url)
                });
                agent.llm = Some(LlmEndpoint {
                    base_url: base_url.clone(),
                    has_api_key: match key {
                        KeyChange::Keep => had_key,
                        KeyChange::Remove => false,
                        KeyChange::Replace(_) => true,
                    },
                });
            }
        }
    }
}

/// Collects field errors while values are parsed.
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn new() -> Self {
        Self { errors: Vec::new() }
    }

    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// The value if it is valid; otherwise its message is recorded against `field`.
    fn check<T>(&mut self, field: &str, value: Result<T, String>) -> Option<T> {
        value.map_err(|m| self.fail(field, m)).ok()
    }

    fn finish(self) -> ApiResult<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_fields(self.errors))
        }
    }
}

fn name(raw: &str) -> Result<String, String> {
    Name::parse(raw).map(Name::into_inner)
}

fn runtime(raw: &str) -> Result<String, String> {
    let mut chars = raw.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if starts_with_letter && rest_ok && raw.len() <= 32 {
        Ok(raw.to_owned())
    } else {
        Err("must be 1-32 characters of [a-z0-9._-] starting with a letter, e.g. `python` or `node`".into())
    }
}

/// Optional single-line text: trimmed, no control characters; empty means none.
fn line(raw: &str, max_chars: usize) -> Result<Option<String>, String> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(Some(trimmed.to_owned()).filter(|t| !t.is_empty()))
}

/// Optional multi-line text of at most `max_bytes` of UTF-8; empty means none.
fn text(raw: &str, max_bytes: usize) -> Result<Option<String>, String> {
    if raw.len() > max_bytes {
        return Err(format!("must be at most {max_bytes} bytes"));
    }
    if raw
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("must not contain control characters other than newlines and tabs".into());
    }
    Ok(Some(raw.to_owned()).filter(|t| !t.trim().is_empty()))
}

fn model(raw: &str) -> Result<String, String> {
    line(raw, 255)?.ok_or_else(|| "must not be empty".to_owned())
}

fn in_range(value: i64, range: std::ops::RangeInclusive<u32>) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            )
        })
}

fn temperature(raw: &serde_json::Number) -> Result<String, String> {
    match raw.as_f64() {
        Some(t) if (0.0..=2.0).contains(&t) => Ok(raw.to_string()),
        _ => Err("must be a number from 0 to 2".into()),
    }
}

fn release(raw: &str) -> Result<String, String> {
    if raw.len() <= 64 && is_semver(raw) {
        Ok(raw.to_owned())
    } else {
        Err("must be a semantic version, e.g. `1.0.0`".into())
    }
}

/// Whether `raw` is a semantic version (`MAJOR.MINOR.PATCH[-pre][+build]`).
fn is_semver(raw: &str) -> bool {
    fn numeric(part: &str) -> bool {
        !part.is_empty()
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'))
    }
    fn identifiers(part: &str, pre_release: bool) -> bool {
        part.split('.').all(|id| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !(pre_release && id.bytes().all(|b| b.is_ascii_digit()) && !numeric(id))
        })
    }
    let (rest, build) = match raw.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (raw, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(|p| identifiers(p, true))
        && build.is_none_or(|b| identifiers(b, false))
}

fn capability(raw: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if valid {
        Ok(raw.to_owned())
    } else {
        Err("must be 1-64 characters of [a-z0-9_.-]".into())
    }
}

fn capabilities(raw: &[String], checker: &mut Checker) -> Option<Vec<String>> {
    let mut unique: Vec<String> = Vec::new();
    let mut ok = true;
    for (i, cap) in raw.iter().enumerate() {
        match capability(cap) {
            Ok(cap) if !unique.contains(&cap) => unique.push(cap),
            Ok(_) => {}
            Err(m) => {
                checker.fail(format!("capabilities[{i}]"), m);
                ok = false;
            }
        }
    }
    if unique.len() > MAX_CAPABILITIES {
        checker.fail(
            "capabilities",
            format!("must hold at most {MAX_CAPABILITIES} capabilities"),
        );
        ok = false;
    }
    ok.then_some(unique)
}

/// Parses tool ids; their existence is checked by [`check_tools_exist`].
fn tool_ids(raw: &[String], checker: &mut Checker) -> Option<Vec<Uuid>> {
    if raw.len() > MAX_TOOLS {
        checker.fail("tools", format!("must hold at most {MAX_TOOLS} tools"));
        return None;
    }
    let mut ids = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, id) in raw.iter().enumerate() {
        match Uuid::try_parse(id) {
            Ok(id) if ids.contains(&id) => {
                checker.fail(format!("tools[{i}]"), "is listed twice");
                ok = false;
            }
            Ok(id) => ids.push(id),
            Err(_) => {
                checker.fail(format!("tools[{i}]"), "must be a tool id (UUID)");
                ok = false;
            }
        }
    }
    ok.then_some(ids)
}

/// Records an error for every tool that is not in `project_id`; another project's tool is
/// reported exactly like a missing one.
async fn check_tools_exist(
    state: &AppState,
    project_id: Uuid,
    ids: &[Uuid],
    checker: &mut Checker,
) -> ApiResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let found = state.store.get_tools(ids).await?;
    for (i, id) in ids.iter().enumerate() {
        if !found
            .iter()
            .any(|tool| tool.id == *id && tool.project_id == project_id)
        {
            checker.fail(format!("tools[{i}]"), "no such tool in this project");
        }
    }
    Ok(())
}

/// A free-form object: at most 32 KiB and storable.
fn object(field: &str, value: JsonObject, checker: &mut Checker) -> Option<JsonObject> {
    let before = checker.errors.len();
    check_json_object(field, &value, &mut checker.errors);
    (checker.errors.len() == before).then_some(value)
}

fn llm(input: &LlmInput, checker: &mut Checker) -> Option<LlmChange> {
    let base_url = checker.check("llm.base_url", base_url(&input.base_url));
    let key = match &input.api_key {
        None => Some(KeyChange::Keep),
        Some(None) => Some(KeyChange::Remove),
        Some(Some(key)) => checker
            .check("llm.api_key", api_key(key))
            .map(|()| KeyChange::Replace(key.clone())),
    };
    Some(LlmChange::Set {
        base_url: base_url?,
        key: key?,
    })
}

fn base_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let parsed = url::Url::parse(raw).map_err(|_| "must be an absolute http or https URL")?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("must be an absolute http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials; send the key as `api_key`".into());
    }
    if raw.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    Ok(raw.to_owned())
}

fn api_key(key: &SecretString) -> Result<(), String> {
    let key = key.expose_secret();
    if key.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if key.len() > 4096 {
        return Err("must be at most 4096 bytes".into());
    }
    if key.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

// Text limits; together with the 32 KiB objects they keep an agent item far below
// DynamoDB's 400 KB.
/// Largest `prompt_summary`.
const PROMPT_SUMMARY_BYTES: usize = 4 * 1024;
/// Largest `system_prompt`.
const SYSTEM_PROMPT_BYTES: usize = 64 * 1024;
/// Largest `changelog`.
const CHANGELOG_BYTES: usize = 16 * 1024;
/// Largest `description`.
const DESCRIPTION_BYTES: usize = 4 * 1024;
/// Longest `owner`.
const OWNER_CHARS: usize = 255;

impl CreateAgent {
    /// The create as a change of a blank agent (every field given is set), and its project.
    fn into_change(self) -> (String, UpdateAgent) {
        let change = UpdateAgent {
            name: Some(self.name),
            runtime: Some(self.runtime),
            model: Some(self.model),
            tools: Some(self.tools),
            env: Some(self.env),
            concurrency: self.concurrency,
            autoscale_config: self.autoscale_config.map(Some),
            prompt_summary: self.prompt_summary.map(Some),
            metadata: self.metadata,
            capabilities: Some(self.capabilities),
            system_prompt: self.system_prompt.map(Some),
            temperature: self.temperature.map(Some),
            max_tokens: self.max_tokens.map(Some),
            heartbeat_interval_seconds: self.heartbeat_interval_seconds,
            llm: self.llm.map(Some),
            release: self.release,
            owner: self.owner.map(Some),
            changelog: self.changelog.map(Some),
            deprecated: self.deprecated,
            description: self.description.map(Some),
            version: None,
        };
        (self.project_id, change)
    }
}

/// Checks a nullable field: left out stays `None`, `null` becomes `Some(None)`, a value is
/// parsed (and may still turn out empty, which clears the field too).
fn clearable<R, T>(
    c: &mut Checker,
    field: &str,
    raw: Option<Option<R>>,
    parse: impl FnOnce(R, &mut Checker, &str) -> Option<Option<T>>,
) -> Option<Option<T>> {
    match raw {
        None => None,
        Some(None) => Some(None),
        Some(Some(value)) => parse(value, c, field),
    }
}

fn single_line(max: usize) -> impl FnOnce(String, &mut Checker, &str) -> Option<Option<String>> {
    move |raw, c, field| c.check(field, line(&raw, max))
}

fn multi_line(max: usize) -> impl FnOnce(String, &mut Checker, &str) -> Option<Option<String>> {
    move |raw, c, field| c.check(field, text(&raw, max))
}

/// Validates a change (or a create, see [`CreateAgent::into_change`]), collecting every
/// field error.
fn validate(body: UpdateAgent, c: &mut Checker) -> Changes {
    Changes {
        name: body.name.and_then(|v| c.check("name", name(&v))),
        runtime: body.runtime.and_then(|v| c.check("runtime", runtime(&v))),
        model: body.model.and_then(|v| c.check("model", model(&v))),
        tools: body.tools.and_then(|ids| tool_ids(&ids, c)),
        env: body.env,
        concurrency: body
            .concurrency
            .and_then(|v| c.check("concurrency", in_range(v, 1..=1000))),
        autoscale_config: clearable(c, "autoscale_config", body.autoscale_config, |v, c, f| {
            object(f, v, c).map(Some)
        }),
        prompt_summary: clearable(
            c,
            "prompt_summary",
            body.prompt_summary,
            multi_line(PROMPT_SUMMARY_BYTES),
        ),
        metadata: body.metadata.and_then(|m| object("metadata", m, c)),
        capabilities: body.capabilities.and_then(|caps| capabilities(&caps, c)),
        system_prompt: clearable(
            c,
            "system_prompt",
            body.system_prompt,
            multi_line(SYSTEM_PROMPT_BYTES),
        ),
        temperature: clearable(c, "temperature", body.temperature, |v, c, f| {
            c.check(f, temperature(&v)).map(Some)
        }),
        max_tokens: clearable(c, "max_tokens", body.max_tokens, |v, c, f| {
            c.check(f, in_range(v, 1..=1_000_000)).map(Some)
        }),
        heartbeat_interval_seconds: body
            .heartbeat_interval_seconds
            .and_then(|v| c.check("heartbeat_interval_seconds", in_range(v, 5..=3600))),
        llm: match body.llm {
            None => None,
            Some(None) => Some(LlmChange::Remove),
            Some(Some(input)) => llm(&input, c),
        },
        release: body.release.and_then(|r| c.check("release", release(&r))),
        owner: clearable(c, "owner", body.owner, single_line(OWNER_CHARS)),
        changelog: clearable(c, "changelog", body.changelog, multi_line(CHANGELOG_BYTES)),
        deprecated: body.deprecated,
        description: clearable(
            c,
            "description",
            body.description,
            multi_line(DESCRIPTION_BYTES),
        ),
    }
}

/// Reads an agent and authorises `action` on it; `404` if it is missing or invisible.
pub(crate) async fn visible_agent(
    state: &AppState,
    principal: &Principal,
    id: &str,
    action: Action,
) -> ApiResult<Agent> {
    let id = record_id(id, WHAT)?;
    let agent = state
        .store
        .get_agent(id)
        .await?
        .ok_or_else(|| not_found(WHAT))?;
    authorize_record(state, principal, agent.project_id, action, WHAT).await?;
    Ok(agent)
}

/// Whether a write lost a race it may retry after reading the agent again.
fn lost_race(err: &StoreError) -> bool {
    err.failed_at(0) || err.is_conflict()
}

/// Writes the LLM API key; the value never leaves this function except to Secrets Manager.
async fn store_api_key(state: &AppState, agent_id: Uuid, key: &SecretString) -> ApiResult<()> {
    state
        .secrets
        .put(&crate::store::secrets::path::agent_llm_key(agent_id), key)
        .await
        .map_err(|err| ApiError::Internal(err.context("Failed to store an agent's LLM API key")))
}

/// Schedules the deletion of the agent's LLM API key; a failure is logged, not returned,
/// because the record change it follows has already happened.
async fn forget_api_key(state: &AppState, agent_id: Uuid) {
    if let Err(err) = state
        .secrets
        .schedule_deletion(&crate::store::secrets::path::agent_llm_key(agent_id))
        .await
    {
        tracing::error!(agent_id = %agent_id, error = ?err, "failed to schedule the deletion of an LLM API key");
    }
}

/// Registers an agent.
#[utoipa::path(
    post, path = "/api/v1/agents", tag = "agents",
    security(("bearer" = []), ("api_key" = [])),
    request_body = CreateAgent,
    responses(
        (status = 201, description = "Created; `ETag` carries its version", body = AgentView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 422, description = "Invalid fields, e.g. `tools[0]` not in the project", body = Problem),
    )
)]
pub async fn create_agent(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateAgent>,
) -> ApiResult<Response> {
    let (project_id, change) = body.into_change();
    let mut c = Checker::new();
    let project_id = c.check(
        "project_id",
        Uuid::try_parse(&project_id).map_err(|_| "must be a project id (UUID)".to_owned()),
    );
    if let Some(project_id) = project_id {
        authorize(&state, &principal, project_id, Action::WriteRegistry).await?;
    }
    let changes = validate(change, &mut c);
    if let (Some(project_id), Some(tools)) = (project_id, &changes.tools) {
        check_tools_exist(&state, project_id, tools, &mut c).await?;
    }
    let (Some(project_id), Some(name), Some(runtime), Some(model), Some(env)) = (
        project_id,
        changes.name.clone(),
        changes.runtime.clone(),
        changes.model.clone(),
        changes.env,
    ) else {
        return Err(ApiError::invalid_fields(c.errors));
    };
    c.finish()?;
    let now = state.clock.now();
    let mut agent = Agent {
        id: Uuid::now_v7(),
        project_id,
        name,
        runtime,
        model,
        tools: Vec::new(),
        env,
        concurrency: DEFAULT_CONCURRENCY,
        autoscale_config: None,
        prompt_summary: None,
        metadata: JsonObject::new(),
        capabilities: Vec::new(),
        system_prompt: None,
        temperature: None,
        max_tokens: None,
        heartbeat_interval_seconds: DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        llm: None,
        release: DEFAULT_RELEASE.to_owned(),
        owner: None,
        changelog: None,
        deprecated: false,
        description: None,
        last_heartbeat: None,
        last_status: None,
        latest_metrics: None,
        created_at: now,
        updated_at: now,
        version: 1,
    };
    changes.apply(&mut agent);
    // The key is stored first so that no record ever claims a key that is not there.
    let key = changes.new_api_key();
    if let Some(key) = key {
        store_api_key(&state, agent.id, key).await?;
    }
    if let Err(err) = state.store.create_agent(&agent).await {
        if key.is_some() {
            forget_api_key(&state, agent.id).await;
        }
        return Err(err.into());
    }
    tracing::info!(agent_id = %agent.id, project_id = %agent.project_id, "agent created");
    let location = format!("/api/v1/agents/{}", agent.id);
    Ok(created(
        &location,
        agent.version,
        AgentView::new(agent, now),
    ))
}

fn single_filter(query: &ListAgentsQuery) -> ApiResult<AgentFilter> {
    let given: Vec<&str> = [
        ("env", query.env.is_some()),
        ("capability", query.capability.is_some()),
        ("health", query.health.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect();
    if given.len() > 1 {
        let errors: Vec<FieldError> = given
            .iter()
            .map(|field| {
                FieldError::new(
                    *field,
                    "only one of env, capability and health may be given",
                )
            })
            .collect();
        return Err(ApiError::BadRequest {
            detail: format!("filter by one of {} at a time", given.join(", ")),
            errors,
        });
    }
    if let Some(env) = &query.env {
        return serde_json::from_value::<Env>(Value::String(env.clone()))
            .map(AgentFilter::Env)
            .map_err(|_| ApiError::bad_request("env", "must be dev, staging or prod"));
    }
    if let Some(raw) = &query.capability {
        return capability(raw)
            .map(AgentFilter::Capability)
            .map_err(|m| ApiError::bad_request("capability", m));
    }
    if let Some(raw) = &query.health {
        return HealthStatus::parse(raw)
            .map(AgentFilter::Health)
            .ok_or_else(|| {
                ApiError::bad_request("health", "must be healthy, degraded or unhealthy")
            });
    }
    Ok(AgentFilter::All)
}

fn filter_scope(project_id: Uuid, filter: &AgentFilter) -> String {
    match filter {
        AgentFilter::All => format!("agents:{project_id}"),
        AgentFilter::Env(env) => format!("agents:{project_id}:env:{env}"),
        AgentFilter::Capability(cap) => format!("agents:{project_id}:capability:{cap}"),
        AgentFilter::Health(status) => format!("agents:{project_id}:health:{status}"),
    }
}

/// Lists a project's agents, optionally by environment, capability or health (one at a time).
#[utoipa::path(
    get, path = "/api/v1/agents", tag = "agents",
    security(("bearer" = []), ("api_key" = [])),
    params(ListAgentsQuery),
    responses(
        (status = 200, description = "A page of agents; with a health filter a page may be short and still have a next page", body = Page<AgentView>),
        (status = 400, description = "Missing project_id, several filters, a bad filter, limit or cursor", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn list_agents(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListAgentsQuery>,
) -> ApiResult<Json<Page<AgentView>>> {
    let project_id = super::registry::required_project_id(query.project_id.as_deref())?;
    let filter = single_filter(&query)?;
    authorize(&state, &principal, project_id, Action::ReadRegistry).await?;
    let page_query = PageQuery {
        limit: query.limit.clone(),
        cursor: query.cursor.clone(),
    };
    let page_request = page_query.resolve(&state, filter_scope(project_id, &filter))?;
    let now = state.clock.now();
    let page = state
        .store
        .list_agents(
            project_id,
            &filter,
            now,
            page_request.limit,
            page_request.start.clone(),
        )
        .await?;
    let next_cursor = page_request.next_cursor(&state, &page)?;
    let items = page
        .items
        .into_iter()
        .filter(|agent| agent.project_id == project_id)
        .map(|agent| AgentView::new(agent, now))
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// Reads an agent.
#[utoipa::path(
    get, path = "/api/v1/agents/{id}", tag = "agents",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The agent; `ETag` carries its version", body = AgentView),
        (status = 404, description = "No such agent visible to the caller", body = Problem),
    )
)]
pub async fn get_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let agent = visible_agent(&state, &principal, &id, Action::ReadRegistry).await?;
    let (version, deprecated) = (agent.version, agent.deprecated);
    let response = with_etag(version, Json(AgentView::new(agent, state.clock.now())));
    Ok(super::manifests::with_deprecation(deprecated, response))
}

/// Changes an agent.
#[utoipa::path(
    patch, path = "/api/v1/agents/{id}", tag = "agents",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Agent id"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on"),
    ),
    request_body = UpdateAgent,
    responses(
        (status = 200, description = "The changed agent", body = AgentView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such agent visible to the caller", body = Problem),
        (status = 409, description = "Stale version", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
pub async fn update_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateAgent>,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, body.version)?;
    let mut current = visible_agent(&state, &principal, &id, Action::WriteRegistry).await?;
    check_version(expected, current.version)?;
    let basis = current.version;
    let mut c = Checker::new();
    let changes = validate(body, &mut c);
    if let Some(tools) = &changes.tools {
        check_tools_exist(&state, current.project_id, tools, &mut c).await?;
    }
    c.finish()?;
    // Stored first so the record never claims a key that is not there; if the record write
    // then fails, the client's retry writes the same key again.
    if let Some(key) = changes.new_api_key() {
        store_api_key(&state, current.id, key).await?;
    }
    for _attempt in 0..WRITE_ATTEMPTS {
        let mut updated = current.clone();
        changes.apply(&mut updated);
        updated.version = current.version + 1;
        updated.updated_at = state.clock.now();
        match state.store.replace_agent(&updated, &current).await {
            Ok(()) => {
                let had_key = current.llm.as_ref().is_some_and(|l| l.has_api_key);
                let has_key = updated.llm.as_ref().is_some_and(|l| l.has_api_key);
                if had_key && !has_key {
                    forget_api_key(&state, updated.id).await;
                }
                let version = updated.version;
                return Ok(with_etag(
                    version,
                    Json(AgentView::new(updated, state.clock.now())),
                ));
            }
            Err(err) if lost_race(&err) => {
                // A heartbeat moved the record; a change of the version is a real conflict.
                current = state
                    .store
                    .get_agent(current.id)
                    .await?
                    .ok_or_else(|| not_found(WHAT))?;
                if current.version != basis {
                    return Err(changed_concurrently());
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(changed_concurrently())
}

fn changed_concurrently() -> ApiError {
    ApiError::Conflict("the agent was changed concurrently; read it again and retry".to_owned())
}

/// Deletes an agent and its capability markers, and schedules its LLM API key for deletion.
#[utoipa::path(
    delete, path = "/api/v1/agents/{id}", tag = "agents",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Agent id"),
        ("If-Match" = Option<String>, Header, description = "Delete only this version"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such agent visible to the caller", body = Problem),
        (status = 409, description = "Stale version", body = Problem),
    )
)]
pub async fn delete_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let expected = expected_version(&headers, None)?;
    let mut current = visible_agent(&state, &principal, &id, Action::WriteRegistry).await?;
    for _attempt in 0..WRITE_ATTEMPTS {
        check_version(expected, current.version)?;
        match state.store.delete_agent(&current).await {
            Ok(()) => {
                // Even without `has_api_key`: a change that failed after storing a key may
                // have left one behind.
                forget_api_key(&state, current.id).await;
                tracing::info!(agent_id = %current.id, "agent deleted");
                return Ok(StatusCode::NO_CONTENT);
            }
            Err(err) if lost_race(&err) => {
                current = state
                    .store
                    .get_agent(current.id)
                    .await?
                    .ok_or_else(|| not_found(WHAT))?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(changed_concurrently())
}

/// Reads a heartbeat body, which may be empty.
async fn heartbeat_report(request: Request<Body>) -> ApiResult<HeartbeatReport> {
    if request.headers().contains_key(header::CONTENT_TYPE) {
        let ApiJson(report) = ApiJson::<HeartbeatReport>::from_request(request, &()).await?;
        return Ok(report);
    }
    let bytes = axum::body::to_bytes(request.into_body(), super::extract::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            limit: super::extract::MAX_BODY_BYTES,
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(HeartbeatReport::default())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

fn check_report(report: HeartbeatReport) -> ApiResult<(Option<String>, Option<JsonObject>)> {
    let mut c = Checker::new();
    let status = report
        .status
        .and_then(|s| c.check("status", line(&s, 64)))
        .flatten();
    let metrics = report.metrics.and_then(|metrics| {
        let size = serde_json::to_vec(&metrics)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_METRICS_BYTES {
            c.fail(
                "metrics",
                format!("must be at most {MAX_METRICS_BYTES} bytes of JSON"),
            );
            return None;
        }
        let before = c.errors.len();
        for (name, value) in &metrics {
            let field = format!("metrics.{name}");
            match value {
                _ if name.is_empty() => c.fail("metrics", "names must not be empty"),
                Value::Number(_) => check_storable(&field, value, 1, &mut c.errors),
                Value::String(_) => {}
                _ => c.fail(field, "must be a number or a string"),
            }
        }
        (c.errors.len() == before).then_some(metrics)
    });
    c.finish()?;
    Ok((status, metrics))
}

/// Reports that an agent is alive, with an optional status and metrics. An agent's runtime
/// calls it with an `agent_runtime` API key naming the agent (the only thing such a key can
/// do); a developer's token or key works too.
#[utoipa::path(
    post, path = "/api/v1/agents/{id}/heartbeat", tag = "agents",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Agent id")),
    request_body(content = HeartbeatReport, description = "Optional; an empty body reports neither status nor metrics"),
    responses(
        (status = 200, description = "Recorded", body = HeartbeatAck),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such agent visible to the caller, or not named by its agent-runtime key", body = Problem),
        (status = 422, description = "Invalid status or metrics", body = Problem),
    )
)]
pub async fn record_heartbeat(
    State(state): State<AppState>,
    caller: HeartbeatCaller,
    Path(id): Path<String>,
    request: Request<Body>,
) -> ApiResult<Json<HeartbeatAck>> {
    let principal = caller
        .for_agent(record_id(&id, WHAT)?)
        .ok_or_else(|| not_found(WHAT))?;
    let mut agent = visible_agent(&state, principal, &id, Action::WriteRegistry).await?;
    let (status, metrics) = check_report(heartbeat_report(request).await?)?;
    for _attempt in 0..WRITE_ATTEMPTS {
        let beat = Heartbeat {
            agent_id: agent.id,
            at: state.clock.now(),
            status: status.clone(),
            metrics: metrics.clone(),
        };
        match state.store.record_heartbeat(&agent, &beat).await {
            Ok(()) => {
                let interval = agent.heartbeat_interval_seconds;
                return Ok(Json(HeartbeatAck {
                    agent_id: agent.id,
                    health_status: HealthStatus::Healthy,
                    last_heartbeat: beat.at,
                    next_heartbeat_due: beat.at + Duration::seconds(i64::from(interval)),
                    heartbeat_interval_seconds: interval,
                }));
            }
            Err(err) if lost_race(&err) => {
                // The interval changed or the agent is gone; read it again.
                agent = state
                    .store
                    .get_agent(agent.id)
                    .await?
                    .ok_or_else(|| not_found(WHAT))?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(ApiError::Conflict(
        "the agent kept changing while the heartbeat was recorded; retry".to_owned(),
    ))
}

/// An agent's health, latest metrics and recent heartbeats (newest first).
#[utoipa::path(
    get, path = "/api/v1/agents/{id}/metrics", tag = "agents",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Agent id"), MetricsQuery),
    responses(
        (status = 200, description = "Health and heartbeat history", body = AgentMetrics),
        (status = 400, description = "Bad limit", body = Problem),
        (status = 404, description = "No such agent visible to the caller", body = Problem),
    )
)]
pub async fn agent_metrics(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<MetricsQuery>,
) -> ApiResult<Json<AgentMetrics>> {
    let agent = visible_agent(&state, &principal, &id, Action::ReadRegistry).await?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_HISTORY,
        Some(raw) => raw
            .parse::<i32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let history = state
        .store
        .recent_heartbeats(agent.id, limit)
        .await?
        .into_iter()
        .map(|beat| HeartbeatView {
            at: beat.at,
            status: beat.status,
            metrics: beat.metrics,
        })
        .collect();
    Ok(Json(AgentMetrics {
        agent_id: agent.id,
        health_status: agent.health_at(state.clock.now()),
        last_heartbeat: agent.last_heartbeat,
        last_status: agent.last_status,
        heartbeat_interval_seconds: agent.heartbeat_interval_seconds,
        latest_metrics: agent.latest_metrics,
        history,
    }))
}

/// The agents routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(get_agent, update_agent, delete_agent))
        .routes(routes!(record_heartbeat))
        .routes(routes!(agent_metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_are_short_identifiers() {
        for ok in ["python", "node", "python3.12", "go", "java-21"] {
            assert!(runtime(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Python", "3python", "py thon", &"x".repeat(33)] {
            assert!(runtime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn releases_are_semantic_versions() {
        for ok in [
            "1.0.0",
            "0.1.2",
            "1.2.3-rc.1",
            "1.2.3+build.5",
            "10.20.30-alpha-1",
        ] {
            assert!(is_semver(ok), "{ok}");
        }
        for bad in [
            "1.0", "01.0.0", "1.0.0-", "1.0.0-01", "v1.0.0", "1.0.0+", "a.b.c",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
    }

    #[test]
    fn temperatures_keep_their_decimal_text() {
        let parse = |raw: &str| temperature(&raw.parse::<serde_json::Number>().unwrap());
        assert_eq!(parse("0.7").unwrap(), "0.7");
        assert_eq!(parse("2").unwrap(), "2");
        assert!(parse("2.01").is_err());
        assert!(parse("-0.1").is_err());
    }

    #[test]
    fn capabilities_are_validated_and_deduplicated() {
        let mut c = Checker::new();
        let caps = capabilities(
            &[
                "faq_handling".into(),
                "faq_handling".into(),
                "order.tracking".into(),
            ],
            &mut c,
        );
        assert_eq!(
            caps.unwrap(),
            vec!["faq_handling".to_owned(), "order.tracking".to_owned()]
        );
        let bad = capabilities(&["ok".into(), "Not OK".into()], &mut c);
        assert!(bad.is_none());
        assert_eq!(c.errors[0].field, "capabilities[1]");
        let too_many: Vec<String> = (0..=MAX_CAPABILITIES).map(|i| format!("c{i}")).collect();
        let mut c = Checker::new();
        assert!(capabilities(&too_many, &mut c).is_none());
        assert_eq!(c.errors[0].field, "capabilities");
    }

    #[test]
    fn base_urls_are_http_without_credentials() {
        assert!(base_url("https://api.openai.com/v1").is_ok());
        assert!(base_url("http://localhost:11434").is_ok());
        assert!(base_url("ftp://example.com").is_err());
        assert!(base_url("not a url").is_err());
        assert!(base_url("https://user:pw@example.com").is_err());
    }
}
