//! `/api/v1/tools` over HTTP: the tools agents and workflow steps call. The rules (contracts,
//! write-only credentials) live in [`crate::usecase::tools`]; responses never show
//! credentials, only `has_credentials`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery};
use super::registry::with_deprecation;
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{ts, Env};
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::store::tools::Tool;
use crate::tool::{AuthType, ToolKind};
use crate::usecase::tools::{self, CreateTool, UpdateTool};
use crate::validate::required_project_id;

/// A tool as the API shows it: never its credentials.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolView {
    /// Tool id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Name.
    pub name: String,
    /// What the tool talks to.
    #[schema(value_type = ToolKind)]
    pub kind: String,
    /// Who provides it, e.g. `salesforce`.
    pub provider: Option<String>,
    /// How it authenticates.
    pub auth_type: AuthType,
    /// Scopes it needs.
    pub scopes: Vec<String>,
    /// Environment.
    pub env: Env,
    /// Calls allowed per minute.
    pub rate_limit_per_min: Option<u32>,
    /// Kind-specific configuration. For `http`: `url`, `method`, `headers`, `timeout_ms`,
    /// `retry_attempts`, `circuit_breaker_threshold` (defaults filled in), `inputs_schema`,
    /// `outputs_schema`.
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// What it does.
    pub description: Option<String>,
    /// The team or person responsible.
    pub owner: Option<String>,
    /// Semantic version of its contract, e.g. `1.2.0`.
    pub release: String,
    /// What changed in this release.
    pub changelog: Option<String>,
    /// Whether it should no longer be used.
    pub deprecated: bool,
    /// A free classification, e.g. `data`.
    pub category: Option<String>,
    /// When a call last failed.
    #[serde(with = "ts::option")]
    pub last_error_at: Option<DateTime<Utc>>,
    /// Whether credentials are stored (they are never shown).
    pub has_credentials: bool,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Version for optimistic concurrency (`version` in PATCH, or `If-Match`).
    pub version: u64,
}

impl From<Tool> for ToolView {
    fn from(tool: Tool) -> Self {
        Self {
            has_credentials: tool.has_credentials(),
            id: tool.id,
            project_id: tool.project_id,
            name: tool.name,
            kind: tool.kind.to_string(),
            provider: tool.provider,
            auth_type: tool.auth_type,
            scopes: tool.scopes,
            env: tool.env,
            rate_limit_per_min: tool.rate_limit_per_min,
            config: tool.config.into(),
            description: tool.description,
            owner: tool.owner,
            release: tool.release,
            changelog: tool.changelog,
            deprecated: tool.deprecated,
            category: tool.category,
            last_error_at: tool.last_error_at,
            created_at: tool.created_at,
            updated_at: tool.updated_at,
            version: tool.version,
        }
    }
}

/// `GET /tools` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTools {
    /// The project whose tools to list (required).
    #[param(required = true, value_type = Uuid)]
    pub project_id: Option<String>,
    /// Only tools of this environment.
    #[param(value_type = Option<Env>)]
    pub env: Option<String>,
    /// Only tools of this kind (filtered after the read, so a page may be short).
    #[param(value_type = Option<ToolKind>)]
    pub kind: Option<String>,
    /// Items per page, 1–200 (default 50).
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Registers a tool; its credentials go to Secrets Manager before the record is written.
#[utoipa::path(
    post, path = "/api/v1/tools", tag = "tools",
    security(("bearer" = []), ("api_key" = [])),
    request_body = CreateTool,
    responses(
        (status = 201, description = "Created; `Location` names it and `ETag` carries its version", body = ToolView),
        (status = 400, description = "No project_id", body = Problem),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 422, description = "Invalid fields, each named (e.g. `config.inputs_schema.type`)", body = Problem),
    )
)]
pub async fn create_tool(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateTool>,
) -> ApiResult<Response> {
    let tool = tools::create(&state, &principal, body).await?;
    Ok(created(
        &format!("/api/v1/tools/{}", tool.id),
        tool.version,
        ToolView::from(tool),
    ))
}

/// Lists a project's tools, oldest first, optionally of one environment and one kind.
#[utoipa::path(
    get, path = "/api/v1/tools", tag = "tools",
    security(("bearer" = []), ("api_key" = [])),
    params(ListTools),
    responses(
        (status = 200, description = "A page of tools; with `kind`, a page may be short while `next_cursor` continues", body = Page<ToolView>),
        (status = 400, description = "No project_id, or a bad filter, limit or cursor", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn list_tools(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListTools>,
) -> ApiResult<Json<Page<ToolView>>> {
    let project_id = required_project_id(query.project_id.as_deref())?;
    let env = query
        .env
        .as_deref()
        .map(|raw| Env::parse(raw).map_err(|m| ApiError::bad_request("env", m)))
        .transpose()?;
    let kind = query
        .kind
        .as_deref()
        .map(|raw| ToolKind::parse(raw).map_err(|m| ApiError::bad_request("kind", m)))
        .transpose()?;
    authorize(&state, &principal, project_id, Action::ReadRegistry).await?;
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    };
    let scope = format!(
        "tools:{project_id}:env:{}:kind:{}",
        env.map_or("*", Env::as_str),
        kind.map_or("*", ToolKind::as_str)
    );
    let request = page.resolve(&state, scope)?;
    let page = state
        .store
        .list_tools(project_id, env, kind, request.limit, request.start.clone())
        .await?;
    request.respond(&state, page)
}

/// Reads a tool (never its credentials).
#[utoipa::path(
    get, path = "/api/v1/tools/{id}", tag = "tools",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Tool id")),
    responses(
        (status = 200, description = "The tool; `ETag` carries its version", body = ToolView),
        (status = 404, description = "No such tool visible to the caller", body = Problem),
    )
)]
pub async fn get_tool(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let tool = tools::visible_tool(&state, &principal, &id, Action::ReadRegistry).await?;
    let (version, deprecated) = (tool.version, tool.deprecated);
    let response = with_etag(version, Json(ToolView::from(tool)));
    Ok(with_deprecation(deprecated, response))
}

/// Changes a tool. New credentials replace the stored ones; `credentials: null` removes them.
#[utoipa::path(
    patch, path = "/api/v1/tools/{id}", tag = "tools",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Tool id"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on"),
    ),
    request_body = UpdateTool,
    responses(
        (status = 200, description = "The changed tool", body = ToolView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such tool visible to the caller", body = Problem),
        (status = 409, description = "Stale version", body = Problem),
        (status = 422, description = "Invalid fields, each named", body = Problem),
    )
)]
pub async fn update_tool(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateTool>,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, body.version)?;
    let tool = tools::update(&state, &principal, &id, expected, body).await?;
    let version = tool.version;
    Ok(with_etag(version, Json(ToolView::from(tool))))
}

/// Deletes a tool, then schedules its credentials for deletion (recoverable for 7 days).
#[utoipa::path(
    delete, path = "/api/v1/tools/{id}", tag = "tools",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Tool id"),
        ("If-Match" = Option<String>, Header, description = "Delete only if still at this version"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such tool visible to the caller", body = Problem),
        (status = 409, description = "Stale version, or changed concurrently", body = Problem),
    )
)]
pub async fn delete_tool(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let expected = expected_version(&headers, None)?;
    tools::delete(&state, &principal, &id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The tools routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tools, create_tool))
        .routes(routes!(get_tool, update_tool, delete_tool))
}
