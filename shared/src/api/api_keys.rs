//! `/api/v1/projects/{id}/api-keys`: keys that let programs act inside one project.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{ApiJson, ApiQuery, PageQuery};
use super::Page;
use crate::auth::rbac::Action;
use crate::auth::{authorize, tokens, Principal};
use crate::domain::{ts, Name, Role};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;
use crate::store::api_keys::{ApiKey, ApiKeyKind};
use crate::usecase::projects::project_id;
use crate::validate::FieldErrors;

/// An API key as the API lists it: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    /// Key id.
    pub id: Uuid,
    /// The project it acts in.
    pub project_id: Uuid,
    /// Label.
    pub name: String,
    /// The role it was given; it acts with no more than its creator's current role. An
    /// `agent_runtime` key reports heartbeats as a developer.
    pub role: Role,
    /// `project`, or `agent_runtime`: a key that only reports heartbeats for `agent_ids`.
    pub kind: ApiKeyKind,
    /// The agents an `agent_runtime` key reports for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agent_ids: Vec<Uuid>,
    /// Who created it; the key stops working when they leave the project.
    pub created_by: Uuid,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    #[serde(with = "ts::option")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time, if revoked.
    #[serde(with = "ts::option")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(key: ApiKey) -> Self {
        Self {
            id: key.id,
            project_id: key.project_id,
            name: key.name,
            role: key.role,
            kind: key.kind,
            agent_ids: key.agent_ids,
            created_by: key.created_by,
            created_at: key.created_at,
            expires_at: key.expires_at,
            revoked_at: key.revoked_at,
        }
    }
}

/// A newly created key: the only response that ever contains `key`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key; send it as `X-API-Key` or `Authorization: Bearer`. Shown only once.
    pub key: String,
    /// The key's record.
    #[serde(flatten)]
    pub record: ApiKeyView,
}

/// Most agents one agent-runtime key may name.
pub const MAX_RUNTIME_AGENTS: usize = 50;

/// `POST /projects/{id}/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// Label.
    pub name: String,
    /// `project` (the default): acts in the project with `role`. `agent_runtime`: may only
    /// report heartbeats for `agent_ids`, which is what an agent's runtime needs.
    #[serde(default)]
    pub kind: ApiKeyKind,
    /// For `project` keys (required): `admin`, `developer` or `viewer`, at most the creator's
    /// own role. Not allowed for `agent_runtime` keys.
    pub role: Option<Role>,
    /// For `agent_runtime` keys (required): 1–50 agents of this project.
    pub agent_ids: Option<Vec<String>>,
    /// Optional expiry, RFC 3339, in the future.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a valid request creates: the key's role and agents.
struct Scope {
    role: Role,
    agent_ids: Vec<Uuid>,
}

/// Checks `kind`, `role` and `agent_ids` together, collecting every error; `None` if any.
async fn scope(
    state: &AppState,
    project_id: Uuid,
    body: &CreateApiKey,
    errors: &mut Vec<FieldError>,
) -> ApiResult<Option<Scope>> {
    match body.kind {
        ApiKeyKind::Project => {
            if body.agent_ids.is_some() {
                errors.fail("agent_ids", "only `agent_runtime` keys name agents");
            }
            match body.role {
                None => {
                    errors.fail("role", "is required for a `project` key");
                    Ok(None)
                }
                Some(Role::Owner) => {
                    errors.fail(
                        "role",
                        "an API key cannot be an owner; use admin, developer or viewer",
                    );
                    Ok(None)
                }
                Some(role) => Ok(Some(Scope {
                    role,
                    agent_ids: Vec::new(),
                })),
            }
        }
        ApiKeyKind::AgentRuntime => {
            if body.role.is_some() {
                errors.fail(
                    "role",
                    "an `agent_runtime` key has no role: it only reports heartbeats",
                );
            }
            let raw = body.agent_ids.as_deref().unwrap_or_default();
            if raw.is_empty() || raw.len() > MAX_RUNTIME_AGENTS {
                errors.fail(
                    "agent_ids",
                    format!("must name 1 to {MAX_RUNTIME_AGENTS} agents of this project"),
                );
                return Ok(None);
            }
            let mut agent_ids: Vec<Uuid> = Vec::with_capacity(raw.len());
            let mut parsed = Vec::with_capacity(raw.len());
            for (index, id) in raw.iter().enumerate() {
                match Uuid::try_parse(id) {
                    Ok(id) if agent_ids.contains(&id) => {
                        errors.fail(format!("agent_ids[{index}]"), "is listed twice")
                    }
                    Ok(id) => {
                        agent_ids.push(id);
                        parsed.push((index, id));
                    }
                    Err(_) => errors.fail(
                        format!("agent_ids[{index}]"),
                        "must be an agent id (a UUID)",
                    ),
                }
            }
            let found = state.store.get_agents(&agent_ids).await?;
            for (index, id) in parsed {
                if !found
                    .iter()
                    .any(|agent| agent.id == id && agent.project_id == project_id)
                {
                    errors.fail(
                        format!("agent_ids[{index}]"),
                        "no agent of this project has this id",
                    );
                }
            }
            Ok(Some(Scope {
                role: Role::Developer,
                agent_ids,
            }))
        }
    }
}

/// Creates an API key; its secret is returned only in this response. Only people create keys.
#[utoipa::path(
    post, path = "/api/v1/projects/{id}/api-keys", tag = "api-keys",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Project id")),
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "Created; `key` is shown only now", body = CreatedApiKey),
        (status = 403, description = "Needs admin and a person (not an API key), or a role above the caller's", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
pub async fn create_api_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let access = authorize(&state, &principal, project_id(&id)?, Action::ManageApiKeys).await?;
    let creator = principal.person("create API keys")?;
    let now = state.clock.now();
    let mut errors = Vec::new();
    let name = errors.check("name", Name::parse(&body.name));
    let scope = scope(&state, access.project.id, &body, &mut errors).await?;
    if body.expires_at.is_some_and(|at| at <= now) {
        errors.fail("expires_at", "must be in the future");
    }
    let (Some(name), Some(scope), true) = (name, scope, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    if !access.role.includes(scope.role) {
        return Err(ApiError::Forbidden(format!(
            "your role `{}` cannot create a key with role `{}`",
            access.role, scope.role
        )));
    }
    let minted = tokens::new_api_key();
    let key = ApiKey {
        id: minted.id,
        project_id: access.project.id,
        name: name.into_inner(),
        role: scope.role,
        kind: body.kind,
        agent_ids: scope.agent_ids,
        secret_digest: minted.secret_digest,
        created_by: creator.id,
        created_at: now,
        expires_at: body.expires_at,
        revoked_at: None,
    };
    state.store.create_api_key(&key).await?;
    tracing::info!(project_id = %key.project_id, key_id = %key.id, role = %key.role, kind = ?key.kind, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: minted.key,
            record: key.into(),
        }),
    ))
}

/// Lists a project's API keys, without their secrets.
#[utoipa::path(
    get, path = "/api/v1/projects/{id}/api-keys", tag = "api-keys",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Project id"), PageQuery),
    responses(
        (status = 200, description = "A page of keys", body = Page<ApiKeyView>),
        (status = 403, description = "Needs admin", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn list_api_keys(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<ApiKeyView>>> {
    let access = authorize(&state, &principal, project_id(&id)?, Action::ReadApiKeys).await?;
    let request = query.resolve(&state, format!("api-keys:{}", access.project.id))?;
    let page = state
        .store
        .list_api_keys(access.project.id, request.limit, request.start.clone())
        .await?;
    request.respond(&state, page)
}

/// Revokes an API key; it stops working at once. Only people revoke keys.
#[utoipa::path(
    delete, path = "/api/v1/projects/{id}/api-keys/{key_id}", tag = "api-keys",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Project id"),
        ("key_id" = Uuid, Path, description = "Key id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Needs admin and a person (not an API key)", body = Problem),
        (status = 404, description = "No such live key in this project", body = Problem),
    )
)]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, key_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let access = authorize(&state, &principal, project_id(&id)?, Action::ManageApiKeys).await?;
    principal.person("revoke API keys")?;
    let not_found = || ApiError::NotFound("API key not found".to_owned());
    let key_id = Uuid::try_parse(&key_id).map_err(|_| not_found())?;
    match state
        .store
        .revoke_api_key(access.project.id, key_id, state.clock.now())
        .await
    {
        Ok(()) => {
            tracing::info!(project_id = %access.project.id, key_id = %key_id, "API key revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(crate::store::StoreError::ConditionFailed) => Err(not_found()),
        Err(err) => Err(err.into()),
    }
}

/// The API key routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
}
