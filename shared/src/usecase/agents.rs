//! Agents: registering, changing and deleting them, and recording their heartbeats.
//!
//! - `runtime` is a short identifier (`[a-z][a-z0-9._-]{0,31}`, e.g. `python`, `node`,
//!   `python3.12`) rather than a closed list, so a new runtime needs no release.
//! - `tools` must name tools of the agent's own project; a tool of another project is
//!   reported exactly like a missing one.
//! - `capabilities` are at most [`MAX_CAPABILITIES`] identifiers; duplicates are dropped. The
//!   bound keeps a change that replaces every capability (one marker removed and one added per
//!   capability, plus the record) inside one 100-item transaction.
//! - `llm.api_key` is write-only: it goes to Secrets Manager (`agents/<id>/llm-api-key`) and
//!   the record keeps only `has_api_key`.
//! - In a change, a nullable field set to `null` is cleared; `llm: {base_url}` keeps the
//!   stored key while the origin (scheme, host, port) stays the same and drops it otherwise,
//!   `llm: {base_url, api_key: null}` drops it, and `llm: null` drops both.
//! - A heartbeat does not change the agent's `version`; a change that races one is retried.

use secrecy::SecretString;
use serde_json::Value;
use uuid::Uuid;

mod input;

pub use input::{capability, CreateAgent, HeartbeatReport, LlmInput, UpdateAgent};
use input::{check_tools_exist, validate};

use super::access::{check_version, not_found, record_id, visible};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::agents::{Agent, Heartbeat, JsonObject};
use crate::store::secrets::path;
use crate::store::StoreError;
use crate::validate::{self, check_storable, FieldErrors};

/// What the errors call an agent.
const WHAT: &str = "agent";
/// Default `concurrency`.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Default `heartbeat_interval_seconds`.
pub const DEFAULT_HEARTBEAT_INTERVAL_SECONDS: u32 = 30;
/// Most capabilities an agent can have.
pub const MAX_CAPABILITIES: usize = 49;
/// Most tools an agent can use.
pub const MAX_TOOLS: usize = 100;
/// Largest `metrics` object of a heartbeat, serialised.
pub const MAX_METRICS_BYTES: usize = 8 * 1024;
/// Longest heartbeat `status`.
const MAX_STATUS_CHARS: usize = 64;
/// Attempts at a write that lost a race with a heartbeat (or a heartbeat with a change).
const WRITE_ATTEMPTS: usize = 3;

/// Reads an agent and authorises `action` on it; `404` if it is missing or invisible.
pub async fn visible_agent(
    state: &AppState,
    principal: &Principal,
    id: &str,
    action: Action,
) -> ApiResult<Agent> {
    let found = state.store.get_agent(record_id(id, WHAT)?).await?;
    visible(state, principal, found, action, WHAT).await
}

/// Whether a write lost a race it may retry after reading the agent again.
fn lost_race(err: &StoreError) -> bool {
    err.failed_at(0) || err.is_conflict()
}

/// Writes the LLM API key; the value never leaves this function except to Secrets Manager.
async fn store_api_key(state: &AppState, agent_id: Uuid, key: &SecretString) -> ApiResult<()> {
    state
        .secrets
        .put(&path::agent_llm_key(agent_id), key)
        .await
        .map_err(|err| ApiError::Internal(err.context("Failed to store an agent's LLM API key")))
}

/// Registers an agent in the body's project; the caller needs developer there.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    body: CreateAgent,
) -> ApiResult<Agent> {
    let (project_id, change) = body.into_change();
    let mut errors = Vec::new();
    let project_id = errors.check(
        "project_id",
        Uuid::try_parse(&project_id).map_err(|_| "must be a project id (UUID)".to_owned()),
    );
    if let Some(project_id) = project_id {
        authorize(state, principal, project_id, Action::WriteRegistry).await?;
    }
    let changes = validate(change, &mut errors);
    if let (Some(project_id), Some(tools)) = (project_id, &changes.tools) {
        check_tools_exist(state, project_id, tools, &mut errors).await?;
    }
    let (Some(project_id), Some(name), Some(runtime), Some(model), Some(env)) = (
        project_id,
        changes.name.clone(),
        changes.runtime.clone(),
        changes.model.clone(),
        changes.env,
    ) else {
        return Err(ApiError::invalid_fields(errors));
    };
    errors.finish()?;
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
        release: validate::DEFAULT_RELEASE.to_owned(),
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
        store_api_key(state, agent.id, key).await?;
    }
    if let Err(err) = state.store.create_agent(&agent).await {
        if key.is_some() {
            state.secrets.discard(&path::agent_llm_key(agent.id)).await;
        }
        return Err(err.into());
    }
    tracing::info!(agent_id = %agent.id, project_id = %agent.project_id, "agent created");
    Ok(agent)
}

/// Changes the agent `id`, if it is still at `expected` (when given).
pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
    body: UpdateAgent,
) -> ApiResult<Agent> {
    let mut current = visible_agent(state, principal, id, Action::WriteRegistry).await?;
    check_version(expected, current.version)?;
    let basis = current.version;
    let mut errors = Vec::new();
    let changes = validate(body, &mut errors);
    if let Some(tools) = &changes.tools {
        check_tools_exist(state, current.project_id, tools, &mut errors).await?;
    }
    errors.finish()?;
    // Stored first so the record never claims a key that is not there; if the record write
    // then fails, the client's retry writes the same key again.
    if let Some(key) = changes.new_api_key() {
        store_api_key(state, current.id, key).await?;
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
                    state
                        .secrets
                        .discard(&path::agent_llm_key(updated.id))
                        .await;
                }
                return Ok(updated);
            }
            Err(err) if lost_race(&err) => {
                // A heartbeat moved the record; a change of the version is a real conflict.
                current = reread(state, current.id).await?;
                if current.version != basis {
                    return Err(changed_concurrently());
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(changed_concurrently())
}

/// Deletes the agent `id` (if still at `expected`, when given) and its capability markers,
/// and schedules its LLM API key for deletion.
pub async fn delete(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
) -> ApiResult<()> {
    let mut current = visible_agent(state, principal, id, Action::WriteRegistry).await?;
    for _attempt in 0..WRITE_ATTEMPTS {
        check_version(expected, current.version)?;
        match state.store.delete_agent(&current).await {
            Ok(()) => {
                // Even without `has_api_key`: a change that failed after storing a key may
                // have left one behind.
                state
                    .secrets
                    .discard(&path::agent_llm_key(current.id))
                    .await;
                tracing::info!(agent_id = %current.id, "agent deleted");
                return Ok(());
            }
            Err(err) if lost_race(&err) => current = reread(state, current.id).await?,
            Err(err) => return Err(err.into()),
        }
    }
    Err(changed_concurrently())
}

/// Records a heartbeat of the agent `id`, returning the agent it was recorded on.
pub async fn record_heartbeat(
    state: &AppState,
    principal: &Principal,
    id: &str,
    report: HeartbeatReport,
) -> ApiResult<(Agent, Heartbeat)> {
    let mut agent = visible_agent(state, principal, id, Action::WriteRegistry).await?;
    let (status, metrics) = check_report(report)?;
    for _attempt in 0..WRITE_ATTEMPTS {
        let beat = Heartbeat {
            agent_id: agent.id,
            at: state.clock.now(),
            status: status.clone(),
            metrics: metrics.clone(),
        };
        match state.store.record_heartbeat(&agent, &beat).await {
            Ok(()) => return Ok((agent, beat)),
            // The interval changed or the agent is gone; read it again.
            Err(err) if lost_race(&err) => agent = reread(state, agent.id).await?,
            Err(err) => return Err(err.into()),
        }
    }
    Err(ApiError::Conflict(
        "the agent kept changing while the heartbeat was recorded; retry".to_owned(),
    ))
}

/// The agent `id` with its `limit` most recent heartbeats, newest first.
pub async fn heartbeats(
    state: &AppState,
    principal: &Principal,
    id: &str,
    limit: i32,
) -> ApiResult<(Agent, Vec<Heartbeat>)> {
    let agent = visible_agent(state, principal, id, Action::ReadRegistry).await?;
    let history = state.store.recent_heartbeats(agent.id, limit).await?;
    Ok((agent, history))
}

fn check_report(report: HeartbeatReport) -> ApiResult<(Option<String>, Option<JsonObject>)> {
    let mut errors = Vec::new();
    let status = report
        .status
        .and_then(|s| errors.check("status", validate::line(&s, MAX_STATUS_CHARS)))
        .flatten();
    let metrics = report.metrics.and_then(|metrics| {
        let size = serde_json::to_vec(&metrics)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_METRICS_BYTES {
            errors.fail(
                "metrics",
                format!("must be at most {MAX_METRICS_BYTES} bytes of JSON"),
            );
            return None;
        }
        let before = errors.len();
        for (name, value) in &metrics {
            let field = format!("metrics.{name}");
            match value {
                _ if name.is_empty() => errors.fail("metrics", "names must not be empty"),
                Value::Number(_) => check_storable(&field, value, 1, &mut errors),
                Value::String(_) => {}
                _ => errors.fail(field, "must be a number or a string"),
            }
        }
        (errors.len() == before).then_some(metrics)
    });
    errors.finish()?;
    Ok((status, metrics))
}

async fn reread(state: &AppState, id: Uuid) -> ApiResult<Agent> {
    state
        .store
        .get_agent(id)
        .await?
        .ok_or_else(|| not_found(WHAT))
}

fn changed_concurrently() -> ApiError {
    ApiError::Conflict("the agent was changed concurrently; read it again and retry".to_owned())
}
