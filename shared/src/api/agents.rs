//! `/api/v1/agents`: agents, their heartbeats and their derived health, over HTTP. The rules
//! live in [`crate::usecase::agents`]; health is derived on every read (see
//! [`crate::agent_health`]).
//!
//! Lists take one filter at a time: `env`, `capability` or `health`.

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery, MAX_LIMIT};
use super::registry::with_deprecation;
use super::{created, with_etag, Page};
use crate::agent_health::HealthStatus;
use crate::auth::rbac::Action;
use crate::auth::{authorize, HeartbeatCaller, Principal};
use crate::domain::{ts, Env};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;
use crate::store::agents::{Agent, AgentFilter, JsonObject};
use crate::usecase::access::{not_found, record_id};
use crate::usecase::agents::{self, capability, CreateAgent, HeartbeatReport, UpdateAgent};
use crate::validate::required_project_id;

/// Default number of heartbeats in `GET /agents/{id}/metrics`.
pub const DEFAULT_HISTORY: i32 = 50;

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
    let agent = agents::create(&state, &principal, body).await?;
    let location = format!("/api/v1/agents/{}", agent.id);
    let version = agent.version;
    Ok(created(
        &location,
        version,
        AgentView::new(agent, state.clock.now()),
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
        return Env::parse(env)
            .map(AgentFilter::Env)
            .map_err(|m| ApiError::bad_request("env", m));
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
    let project_id = required_project_id(query.project_id.as_deref())?;
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
    let agent = agents::visible_agent(&state, &principal, &id, Action::ReadRegistry).await?;
    let (version, deprecated) = (agent.version, agent.deprecated);
    let response = with_etag(version, Json(AgentView::new(agent, state.clock.now())));
    Ok(with_deprecation(deprecated, response))
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
    let agent = agents::update(&state, &principal, &id, expected, body).await?;
    let version = agent.version;
    Ok(with_etag(
        version,
        Json(AgentView::new(agent, state.clock.now())),
    ))
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
    agents::delete(&state, &principal, &id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
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
        .for_agent(record_id(&id, "agent")?)
        .ok_or_else(|| not_found("agent"))?;
    let report = heartbeat_report(request).await?;
    let (agent, beat) = agents::record_heartbeat(&state, principal, &id, report).await?;
    let interval = agent.heartbeat_interval_seconds;
    Ok(Json(HeartbeatAck {
        agent_id: agent.id,
        health_status: HealthStatus::Healthy,
        last_heartbeat: beat.at,
        next_heartbeat_due: beat.at + Duration::seconds(i64::from(interval)),
        heartbeat_interval_seconds: interval,
    }))
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
    let (agent, history) = agents::heartbeats(&state, &principal, &id, limit).await?;
    let history = history
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
