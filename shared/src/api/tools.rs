//! `/api/v1/tools`: the tools agents and workflow steps call, with their contracts (JSON
//! Schemas, resilience settings) and write-only credentials.
//!
//! Credentials go to Secrets Manager (`tools/<id>/credentials`), never to DynamoDB, a
//! response or a log; a tool's record only says `has_credentials`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{check_version, expected_version, ApiJson, ApiQuery, PageQuery};
use super::registry::{
    authorize_record, check_json_object, not_found, record_id, required_project_id,
};
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{ts, Env, Name};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;
use crate::store::tools::Tool;
use crate::store::StoreError;
use crate::tool::http::credentials_rebound;
use crate::tool::{
    parse_config, parse_release, parse_string_list, AuthType, Credentials, CredentialsInput,
    SecretJson, ToolKind, DEFAULT_RELEASE,
};

const WHAT: &str = "tool";
/// Longest accepted short text (`provider`, `owner`, `category`).
const MAX_LABEL_CHARS: usize = 255;
/// Longest accepted description.
const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Longest accepted changelog.
const MAX_CHANGELOG_CHARS: usize = 10_000;
/// Greatest accepted `rate_limit_per_min`.
const MAX_RATE_LIMIT_PER_MIN: i64 = 100_000;

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
            kind: tool.kind,
            provider: tool.provider,
            auth_type: tool.auth_type,
            scopes: tool.scopes,
            env: tool.env,
            rate_limit_per_min: tool.rate_limit_per_min,
            config: tool.config,
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

/// `POST /tools`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTool {
    /// The project the tool belongs to.
    #[schema(value_type = Uuid)]
    pub project_id: Option<String>,
    /// Name (1–255 characters).
    pub name: String,
    /// What the tool talks to.
    #[schema(value_type = ToolKind)]
    pub kind: String,
    /// Who provides it.
    pub provider: Option<String>,
    /// How it authenticates.
    #[schema(value_type = AuthType)]
    pub auth_type: String,
    /// Scopes it needs (at most 100).
    #[schema(value_type = Option<Vec<String>>)]
    pub scopes: Option<Value>,
    /// Environment.
    #[schema(value_type = Env)]
    pub env: String,
    /// Calls allowed per minute, 1–100000.
    pub rate_limit_per_min: Option<i64>,
    /// Kind-specific configuration (at most 32 KiB). For `http`: `url`, `method`, `headers`,
    /// `timeout_ms`, `retry_attempts`, `circuit_breaker_threshold`, `inputs_schema`,
    /// `outputs_schema`. Schemas are JSON Schema draft 2020-12 for every kind.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Map<String, Value>>,
    /// What it does (at most 2000 characters).
    pub description: Option<String>,
    /// The team or person responsible.
    pub owner: Option<String>,
    /// Semantic version of its contract (default `1.0.0`).
    pub release: Option<String>,
    /// What changed in this release.
    pub changelog: Option<String>,
    /// Whether it should no longer be used (default `false`).
    pub deprecated: Option<bool>,
    /// A free classification.
    pub category: Option<String>,
    /// Write-only credentials, matching `auth_type`; stored in Secrets Manager.
    #[schema(value_type = Option<CredentialsInput>)]
    pub credentials: Option<SecretJson>,
}

/// `PATCH /tools/{id}`: only the fields given change; `null` clears an optional field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTool {
    /// Name.
    pub name: Option<String>,
    /// What the tool talks to; `config` is checked against the new kind.
    #[schema(value_type = Option<ToolKind>)]
    pub kind: Option<String>,
    /// Who provides it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub provider: Option<Option<String>>,
    /// How it authenticates.
    #[schema(value_type = Option<AuthType>)]
    pub auth_type: Option<String>,
    /// Replaces the scopes.
    #[schema(value_type = Option<Vec<String>>)]
    pub scopes: Option<Value>,
    /// Environment.
    #[schema(value_type = Option<Env>)]
    pub env: Option<String>,
    /// Calls allowed per minute; `null` removes the limit.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>)]
    pub rate_limit_per_min: Option<Option<i64>>,
    /// Replaces the configuration.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Map<String, Value>>,
    /// What it does.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// The team or person responsible.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// Semantic version of its contract.
    pub release: Option<String>,
    /// What changed in this release.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub changelog: Option<Option<String>>,
    /// Whether it should no longer be used.
    pub deprecated: Option<bool>,
    /// A free classification.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub category: Option<Option<String>>,
    /// New write-only credentials replacing the stored ones; `null` removes them.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<CredentialsInput>)]
    pub credentials: Option<Option<SecretJson>>,
    /// The version this change is based on; a stale one gets `409`.
    pub version: Option<u64>,
}

/// Tells a field sent as `null` (`Some(None)`) from a field left out (`None`).
fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
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

fn parse_env(raw: &str) -> Result<Env, String> {
    [Env::Dev, Env::Staging, Env::Prod]
        .into_iter()
        .find(|env| env.as_str() == raw)
        .ok_or_else(|| "must be one of dev, staging, prod".to_owned())
}

/// Trims an optional text; empty means absent. Records an error if it is too long or has
/// control characters (line breaks and tabs are fine where `multiline`).
fn optional_text(
    field: &str,
    raw: Option<String>,
    max_chars: usize,
    multiline: bool,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let text = raw.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())?;
    let bad_char = |c: char| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t'));
    if text.chars().count() > max_chars || text.chars().any(bad_char) {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max_chars} characters without control characters"),
        ));
    }
    Some(text)
}

fn rate_limit(raw: Option<i64>, errors: &mut Vec<FieldError>) -> Option<u32> {
    let raw = raw?;
    match u32::try_from(raw)
        .ok()
        .filter(|n| (1..=MAX_RATE_LIMIT_PER_MIN).contains(&i64::from(*n)))
    {
        Some(n) => Some(n),
        None => {
            errors.push(FieldError::new(
                "rate_limit_per_min",
                format!("must be a whole number from 1 to {MAX_RATE_LIMIT_PER_MIN}"),
            ));
            None
        }
    }
}

fn parse_field<T>(
    field: &str,
    raw: &str,
    parse: impl Fn(&str) -> Result<T, String>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    parse(raw)
        .map_err(|m| errors.push(FieldError::new(field, m)))
        .ok()
}

fn parse_credentials(raw: &SecretJson, errors: &mut Vec<FieldError>) -> Option<Credentials> {
    Credentials::parse("credentials", &raw.0, errors)
}

/// Checks that the credentials a tool will hold match its `auth_type`.
fn check_credentials_match(
    auth_type: AuthType,
    credential_type: Option<AuthType>,
    errors: &mut Vec<FieldError>,
) {
    match (auth_type, credential_type) {
        (_, None) => {}
        (AuthType::NoAuth, Some(_)) => errors.push(FieldError::new(
            "credentials",
            "a tool with auth_type `none` holds no credentials; send `credentials: null` to \
             remove them",
        )),
        (expected, Some(held)) if held != expected => errors.push(FieldError::new(
            "credentials",
            format!(
                "auth_type `{expected}` needs `{}` credentials",
                if expected == AuthType::OAuth {
                    "oauth"
                } else {
                    "api_key"
                }
            ),
        )),
        _ => {}
    }
}

/// Schedules a secret's deletion after a failed or finished write; a failure only leaves an
/// unreachable secret behind, so it is logged rather than returned.
async fn discard_secret(state: &AppState, tool_id: Uuid) {
    if let Err(err) = state
        .secrets
        .schedule_deletion(&crate::store::secrets::path::tool_credentials(tool_id))
        .await
    {
        tracing::error!(tool_id = %tool_id, error = ?err, "failed to schedule deletion of tool credentials");
    }
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
    let project_id = required_project_id(body.project_id.as_deref())?;
    let access = authorize(&state, &principal, project_id, Action::WriteRegistry).await?;
    let mut errors = Vec::new();
    let name = Name::parse(&body.name)
        .map_err(|m| errors.push(FieldError::new("name", m)))
        .ok();
    let kind = parse_field("kind", &body.kind, ToolKind::parse, &mut errors);
    let auth_type = parse_field("auth_type", &body.auth_type, AuthType::parse, &mut errors);
    let env = parse_field("env", &body.env, parse_env, &mut errors);
    let scopes = match body.scopes {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => parse_string_list("scopes", &value, &mut errors),
    };
    let rate_limit_per_min = rate_limit(body.rate_limit_per_min, &mut errors);
    let config = body.config.unwrap_or_default();
    check_json_object("config", &config, &mut errors);
    let config = kind.map(|kind| parse_config(kind, config, &mut errors));
    let provider = optional_text(
        "provider",
        body.provider,
        MAX_LABEL_CHARS,
        false,
        &mut errors,
    );
    let description = optional_text(
        "description",
        body.description,
        MAX_DESCRIPTION_CHARS,
        true,
        &mut errors,
    );
    let owner = optional_text("owner", body.owner, MAX_LABEL_CHARS, false, &mut errors);
    let category = optional_text(
        "category",
        body.category,
        MAX_LABEL_CHARS,
        false,
        &mut errors,
    );
    let changelog = optional_text(
        "changelog",
        body.changelog,
        MAX_CHANGELOG_CHARS,
        true,
        &mut errors,
    );
    let release = match &body.release {
        None => Some(DEFAULT_RELEASE.to_owned()),
        Some(raw) => parse_field("release", raw, parse_release, &mut errors),
    };
    let credentials = body
        .credentials
        .as_ref()
        .and_then(|raw| parse_credentials(raw, &mut errors));
    if let Some(auth_type) = auth_type {
        check_credentials_match(
            auth_type,
            credentials.as_ref().map(Credentials::auth_type),
            &mut errors,
        );
    }
    let (Some(name), Some(kind), Some(auth_type), Some(env), Some(config), Some(release), true) = (
        name,
        kind,
        auth_type,
        env,
        config,
        release,
        errors.is_empty(),
    ) else {
        return Err(ApiError::invalid_fields(errors));
    };
    let now = state.clock.now();
    let tool = Tool {
        id: Uuid::now_v7(),
        project_id: access.project.id,
        name: name.into_inner(),
        kind: kind.as_str().to_owned(),
        env,
        created_at: now,
        updated_at: now,
        version: 1,
        provider,
        auth_type,
        scopes,
        rate_limit_per_min,
        config,
        description,
        owner,
        release,
        changelog,
        deprecated: body.deprecated.unwrap_or(false),
        category,
        credential_type: credentials.as_ref().map(Credentials::auth_type),
        last_error_at: None,
    };
    if let Some(credentials) = &credentials {
        state
            .secrets
            .put(&tool.credentials_path(), &credentials.to_secret())
            .await?;
    }
    if let Err(err) = state.store.create_tool(&tool).await {
        if credentials.is_some() {
            discard_secret(&state, tool.id).await;
        }
        return Err(err.into());
    }
    tracing::info!(
        project_id = %tool.project_id,
        tool_id = %tool.id,
        kind = %kind,
        has_credentials = tool.has_credentials(),
        "tool created"
    );
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
        .map(|raw| parse_env(raw).map_err(|m| ApiError::bad_request("env", m)))
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
    let tool = visible_tool(&state, &principal, &id, Action::ReadRegistry).await?;
    let (version, deprecated) = (tool.version, tool.deprecated);
    let response = with_etag(version, Json(ToolView::from(tool)));
    Ok(super::manifests::with_deprecation(deprecated, response))
}

/// The tool at `raw_id` if the caller may perform `action` on it; `404` if they cannot see it.
pub(crate) async fn visible_tool(
    state: &AppState,
    principal: &Principal,
    raw_id: &str,
    action: Action,
) -> ApiResult<Tool> {
    let id = record_id(raw_id, WHAT)?;
    let tool = state
        .store
        .get_tool(id)
        .await?
        .ok_or_else(|| not_found(WHAT))?;
    authorize_record(state, principal, tool.project_id, action, WHAT).await?;
    Ok(tool)
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
    let current = visible_tool(&state, &principal, &id, Action::WriteRegistry).await?;
    check_version(expected, current.version)?;
    let mut errors = Vec::new();
    let mut updated = current.clone();
    if let Some(name) = &body.name {
        if let Ok(name) = Name::parse(name).map_err(|m| errors.push(FieldError::new("name", m))) {
            updated.name = name.into_inner();
        }
    }
    let kind = match &body.kind {
        Some(raw) => parse_field("kind", raw, ToolKind::parse, &mut errors),
        None => current.tool_kind(),
    };
    if let Some(raw) = &body.auth_type {
        if let Some(auth_type) = parse_field("auth_type", raw, AuthType::parse, &mut errors) {
            updated.auth_type = auth_type;
        }
    }
    if let Some(raw) = &body.env {
        if let Some(env) = parse_field("env", raw, parse_env, &mut errors) {
            updated.env = env;
        }
    }
    if let Some(scopes) = body.scopes {
        updated.scopes = match scopes {
            Value::Null => Vec::new(),
            value => parse_string_list("scopes", &value, &mut errors),
        };
    }
    if let Some(limit) = body.rate_limit_per_min {
        updated.rate_limit_per_min = rate_limit(limit, &mut errors);
    }
    // A new kind re-checks the current config against that kind's rules.
    if body.config.is_some() || body.kind.is_some() {
        let config = body.config.unwrap_or_else(|| current.config.clone());
        check_json_object("config", &config, &mut errors);
        if let Some(kind) = kind {
            updated.kind = kind.as_str().to_owned();
            updated.config = parse_config(kind, config, &mut errors);
        }
    }
    if let Some(provider) = body.provider {
        updated.provider = optional_text("provider", provider, MAX_LABEL_CHARS, false, &mut errors);
    }
    if let Some(description) = body.description {
        updated.description = optional_text(
            "description",
            description,
            MAX_DESCRIPTION_CHARS,
            true,
            &mut errors,
        );
    }
    if let Some(owner) = body.owner {
        updated.owner = optional_text("owner", owner, MAX_LABEL_CHARS, false, &mut errors);
    }
    if let Some(category) = body.category {
        updated.category = optional_text("category", category, MAX_LABEL_CHARS, false, &mut errors);
    }
    if let Some(changelog) = body.changelog {
        updated.changelog = optional_text(
            "changelog",
            changelog,
            MAX_CHANGELOG_CHARS,
            true,
            &mut errors,
        );
    }
    if let Some(raw) = &body.release {
        if let Some(release) = parse_field("release", raw, parse_release, &mut errors) {
            updated.release = release;
        }
    }
    if let Some(deprecated) = body.deprecated {
        updated.deprecated = deprecated;
    }
    // `None`: unchanged; `Some(None)`: removed; `Some(Some(_))`: replaced.
    let credentials_change = match &body.credentials {
        None => None,
        Some(None) => Some(None),
        Some(Some(raw)) => parse_credentials(raw, &mut errors).map(Some),
    };
    if let Some(change) = &credentials_change {
        updated.credential_type = change.as_ref().map(Credentials::auth_type);
    }
    if current.has_credentials() && credentials_change.is_none() {
        let before = current.http_config();
        let after = updated.http_config();
        if let Some(why) = after.and_then(|a| credentials_rebound(before.as_ref(), &a)) {
            errors.push(FieldError::new("credentials", why));
        }
    }
    check_credentials_match(updated.auth_type, updated.credential_type, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    updated.version = current.version + 1;
    updated.updated_at = state.clock.now();
    let path = current.credentials_path();
    // New credentials are written before the record; should the record lose a race, the
    // previous value is put back (or the new secret discarded) so nothing partial shows.
    let mut previous = None;
    if let Some(Some(credentials)) = &credentials_change {
        if current.has_credentials() {
            previous = state.secrets.get(&path).await?;
        }
        state.secrets.put(&path, &credentials.to_secret()).await?;
    }
    if let Err(err) = state.store.update_tool(&updated, current.version).await {
        if let Some(Some(_)) = &credentials_change {
            match &previous {
                Some(previous) => {
                    if let Err(restore) = state.secrets.put(&path, previous).await {
                        tracing::error!(tool_id = %current.id, error = ?restore, "failed to restore tool credentials after a lost race");
                    }
                }
                None => discard_secret(&state, current.id).await,
            }
        }
        return Err(match err {
            StoreError::ConditionFailed => ApiError::Conflict(
                "the tool was changed or deleted concurrently; read it again and retry".to_owned(),
            ),
            other => other.into(),
        });
    }
    if let Some(None) = &credentials_change {
        if current.has_credentials() {
            discard_secret(&state, current.id).await;
        }
    }
    tracing::info!(
        project_id = %updated.project_id,
        tool_id = %updated.id,
        version = updated.version,
        has_credentials = updated.has_credentials(),
        "tool updated"
    );
    let version = updated.version;
    Ok(with_etag(version, Json(ToolView::from(updated))))
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
    let tool = visible_tool(&state, &principal, &id, Action::WriteRegistry).await?;
    check_version(expected, tool.version)?;
    // Conditional on the version read, so credentials added meanwhile are never orphaned.
    match state.store.delete_tool(tool.id, tool.version).await {
        Ok(()) => {}
        Err(StoreError::ConditionFailed) => {
            return Err(ApiError::Conflict(
                "the tool was changed or deleted concurrently; read it again and retry".to_owned(),
            ))
        }
        Err(err) => return Err(err.into()),
    }
    if tool.has_credentials() {
        discard_secret(&state, tool.id).await;
    }
    tracing::info!(project_id = %tool.project_id, tool_id = %tool.id, "tool deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The tools routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tools, create_tool))
        .routes(routes!(get_tool, update_tool, delete_tool))
}
