//! Tools: registering, changing and deleting the tools agents and workflow steps call, with
//! their contracts (JSON Schemas, resilience settings) and write-only credentials.
//!
//! Credentials go to Secrets Manager (`tools/<id>/credentials`), never to DynamoDB, a
//! response or a log; a tool's record only says `has_credentials`.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::{check_version, record_id, visible};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{Env, Name};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::state::AppState;
use crate::store::secrets::path;
use crate::store::tools::Tool;
use crate::store::StoreError;
use crate::tool::http::credentials_rebound;
use crate::tool::{
    parse_config, parse_string_list, AuthType, Credentials, CredentialsInput, SecretJson, ToolKind,
};
use crate::validate::{self, check_json_object, required_project_id, FieldErrors};

const WHAT: &str = "tool";
/// Longest accepted short text (`provider`, `owner`, `category`).
const MAX_LABEL_CHARS: usize = 255;
/// Longest accepted description.
const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Longest accepted changelog.
const MAX_CHANGELOG_CHARS: usize = 10_000;
/// Greatest accepted `rate_limit_per_min`.
const MAX_RATE_LIMIT_PER_MIN: i64 = 100_000;

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
    #[serde(default, deserialize_with = "validate::nullable")]
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
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<i64>)]
    pub rate_limit_per_min: Option<Option<i64>>,
    /// Replaces the configuration.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Map<String, Value>>,
    /// What it does.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// The team or person responsible.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// Semantic version of its contract.
    pub release: Option<String>,
    /// What changed in this release.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>)]
    pub changelog: Option<Option<String>>,
    /// Whether it should no longer be used.
    pub deprecated: Option<bool>,
    /// A free classification.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<String>)]
    pub category: Option<Option<String>>,
    /// New write-only credentials replacing the stored ones; `null` removes them.
    #[serde(default, deserialize_with = "validate::nullable")]
    #[schema(value_type = Option<CredentialsInput>)]
    pub credentials: Option<Option<SecretJson>>,
    /// The version this change is based on; a stale one gets `409`.
    pub version: Option<u64>,
}

fn rate_limit(raw: Option<i64>, errors: &mut Vec<FieldError>) -> Option<u32> {
    let raw = raw?;
    match u32::try_from(raw)
        .ok()
        .filter(|n| (1..=MAX_RATE_LIMIT_PER_MIN).contains(&i64::from(*n)))
    {
        Some(n) => Some(n),
        None => {
            errors.fail(
                "rate_limit_per_min",
                format!("must be a whole number from 1 to {MAX_RATE_LIMIT_PER_MIN}"),
            );
            None
        }
    }
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
        (AuthType::NoAuth, Some(_)) => errors.fail(
            "credentials",
            "a tool with auth_type `none` holds no credentials; send `credentials: null` to \
             remove them",
        ),
        (expected, Some(held)) if held != expected => errors.fail(
            "credentials",
            format!(
                "auth_type `{expected}` needs `{}` credentials",
                if expected == AuthType::OAuth {
                    "oauth"
                } else {
                    "api_key"
                }
            ),
        ),
        _ => {}
    }
}

/// Registers a tool in the body's project; its credentials go to Secrets Manager before the
/// record is written.
pub async fn create(state: &AppState, principal: &Principal, body: CreateTool) -> ApiResult<Tool> {
    let project_id = required_project_id(body.project_id.as_deref())?;
    let access = authorize(state, principal, project_id, Action::WriteRegistry).await?;
    let mut errors = Vec::new();
    let name = errors.check("name", Name::parse(&body.name));
    let kind = errors.check("kind", ToolKind::parse(&body.kind));
    let auth_type = errors.check("auth_type", AuthType::parse(&body.auth_type));
    let env = errors.check("env", Env::parse(&body.env));
    let scopes = match body.scopes {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => parse_string_list("scopes", &value, &mut errors),
    };
    let rate_limit_per_min = rate_limit(body.rate_limit_per_min, &mut errors);
    let config = body.config.unwrap_or_default();
    check_json_object("config", &config, &mut errors);
    let config = kind.map(|kind| parse_config(kind, config, &mut errors));
    let provider = errors.line("provider", body.provider, MAX_LABEL_CHARS);
    let description = errors.text("description", body.description, MAX_DESCRIPTION_CHARS);
    let owner = errors.line("owner", body.owner, MAX_LABEL_CHARS);
    let category = errors.line("category", body.category, MAX_LABEL_CHARS);
    let changelog = errors.text("changelog", body.changelog, MAX_CHANGELOG_CHARS);
    let release = match &body.release {
        None => Some(validate::DEFAULT_RELEASE.to_owned()),
        Some(raw) => errors.check("release", validate::release(raw)),
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
        kind,
        env,
        created_at: now,
        updated_at: now,
        version: 1,
        provider,
        auth_type,
        scopes,
        rate_limit_per_min,
        config: config.into(),
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
            state
                .secrets
                .discard(&path::tool_credentials(tool.id))
                .await;
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
    Ok(tool)
}

/// The tool at `raw_id` if the caller may perform `action` on it; `404` if they cannot see it.
pub async fn visible_tool(
    state: &AppState,
    principal: &Principal,
    raw_id: &str,
    action: Action,
) -> ApiResult<Tool> {
    let found = state.store.get_tool(record_id(raw_id, WHAT)?).await?;
    visible(state, principal, found, action, WHAT).await
}

/// Changes the tool `id`, if it is still at `expected` (when given). New credentials replace
/// the stored ones; `credentials: null` removes them.
pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
    body: UpdateTool,
) -> ApiResult<Tool> {
    let current = visible_tool(state, principal, id, Action::WriteRegistry).await?;
    check_version(expected, current.version)?;
    let mut errors = Vec::new();
    let mut updated = current.clone();
    errors.rename(body.name.as_deref(), &mut updated.name);
    let kind = match &body.kind {
        Some(raw) => errors.check("kind", ToolKind::parse(raw)),
        None => Some(current.kind),
    };
    if let Some(raw) = &body.auth_type {
        if let Some(auth_type) = errors.check("auth_type", AuthType::parse(raw)) {
            updated.auth_type = auth_type;
        }
    }
    if let Some(raw) = &body.env {
        if let Some(env) = errors.check("env", Env::parse(raw)) {
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
        let config = body
            .config
            .unwrap_or_else(|| current.config.as_map().clone());
        check_json_object("config", &config, &mut errors);
        if let Some(kind) = kind {
            updated.kind = kind;
            updated.config = parse_config(kind, config, &mut errors).into();
        }
    }
    if let Some(provider) = body.provider {
        updated.provider = errors.line("provider", provider, MAX_LABEL_CHARS);
    }
    if let Some(description) = body.description {
        updated.description = errors.text("description", description, MAX_DESCRIPTION_CHARS);
    }
    if let Some(owner) = body.owner {
        updated.owner = errors.line("owner", owner, MAX_LABEL_CHARS);
    }
    if let Some(category) = body.category {
        updated.category = errors.line("category", category, MAX_LABEL_CHARS);
    }
    if let Some(changelog) = body.changelog {
        updated.changelog = errors.text("changelog", changelog, MAX_CHANGELOG_CHARS);
    }
    if let Some(raw) = &body.release {
        if let Some(release) = errors.check("release", validate::release(raw)) {
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
        if let Some(why) = after.and_then(|a| credentials_rebound(before, a)) {
            errors.fail("credentials", why);
        }
    }
    check_credentials_match(updated.auth_type, updated.credential_type, &mut errors);
    errors.finish()?;
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
                None => {
                    state
                        .secrets
                        .discard(&path::tool_credentials(current.id))
                        .await
                }
            }
        }
        return Err(match err {
            StoreError::ConditionFailed => changed_concurrently(),
            other => other.into(),
        });
    }
    if let Some(None) = &credentials_change {
        if current.has_credentials() {
            state
                .secrets
                .discard(&path::tool_credentials(current.id))
                .await;
        }
    }
    tracing::info!(
        project_id = %updated.project_id,
        tool_id = %updated.id,
        version = updated.version,
        has_credentials = updated.has_credentials(),
        "tool updated"
    );
    Ok(updated)
}

/// Deletes the tool `id` (if still at `expected`, when given), then schedules its credentials
/// for deletion (recoverable for 7 days).
pub async fn delete(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
) -> ApiResult<()> {
    let tool = visible_tool(state, principal, id, Action::WriteRegistry).await?;
    check_version(expected, tool.version)?;
    // Conditional on the version read, so credentials added meanwhile are never orphaned.
    match state.store.delete_tool(tool.id, tool.version).await {
        Ok(()) => {}
        Err(StoreError::ConditionFailed) => return Err(changed_concurrently()),
        Err(err) => return Err(err.into()),
    }
    if tool.has_credentials() {
        state
            .secrets
            .discard(&path::tool_credentials(tool.id))
            .await;
    }
    tracing::info!(project_id = %tool.project_id, tool_id = %tool.id, "tool deleted");
    Ok(())
}

fn changed_concurrently() -> ApiError {
    ApiError::Conflict(
        "the tool was changed or deleted concurrently; read it again and retry".to_owned(),
    )
}
