//! Who is calling and what they may do.

pub mod jwt;
pub mod password;
pub mod rbac;
pub mod tokens;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use uuid::Uuid;

use crate::domain::Role;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::api_keys::{ApiKey, ApiKeyKind};
use crate::store::projects::Project;
use crate::store::users::User;
use rbac::Action;

/// An authenticated caller.
#[derive(Clone, Debug)]
pub enum Principal {
    /// A user holding a valid access token.
    User(User),
    /// A project API key of kind `project`. Its `role` is the role it acts with: the role it
    /// was given, capped at its creator's current role in the project.
    ApiKey(ApiKey),
}

impl Principal {
    /// The id recorded as the actor of a change.
    pub fn actor_id(&self) -> Uuid {
        match self {
            Self::User(user) => user.id,
            Self::ApiKey(key) => key.id,
        }
    }

    /// The user, or `403` for an API key: some actions belong to people only.
    pub fn user(&self) -> ApiResult<&User> {
        match self {
            Self::User(user) => Ok(user),
            Self::ApiKey(_) => Err(ApiError::Forbidden(
                "this action needs a user access token; API keys act only inside their project"
                    .to_owned(),
            )),
        }
    }

    /// The user, or `403` for an API key, naming what keys may not do (`doing`, e.g. "create
    /// API keys"): who may act and who holds keys stays in people's hands.
    pub fn person(&self, doing: &str) -> ApiResult<&User> {
        match self {
            Self::User(user) => Ok(user),
            Self::ApiKey(_) => Err(ApiError::Forbidden(format!(
                "API keys cannot {doing}; use a person's access token"
            ))),
        }
    }
}

/// The credential presented on a request.
enum Credential<'a> {
    Jwt(&'a str),
    ApiKey(&'a str),
}

fn credential(headers: &HeaderMap) -> ApiResult<Credential<'_>> {
    let unreadable = || ApiError::Unauthorized("credentials must be ASCII".to_owned());
    if let Some(key) = headers.get("x-api-key") {
        return Ok(Credential::ApiKey(
            key.to_str().map_err(|_| unreadable())?.trim(),
        ));
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "missing credentials: send `Authorization: Bearer <token>` or `X-API-Key`".to_owned(),
        ));
    };
    let value = value.to_str().map_err(|_| unreadable())?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization scheme must be Bearer".to_owned())
        })?
        .trim();
    Ok(if token.starts_with(tokens::API_KEY_PREFIX) {
        Credential::ApiKey(token)
    } else {
        Credential::Jwt(token)
    })
}

/// Authenticates the request's credential. An API key's role comes back capped at its
/// creator's current role; a key whose creator is no longer a member of its project (they
/// left, were removed or deleted their account) is refused, and so is a key without a person
/// as creator (keys once could create keys).
///
/// DynamoDB requests: a user token reads the user (1); an API key reads the key and its
/// creator's membership (2).
async fn authenticate(parts: &Parts, state: &AppState) -> ApiResult<(Principal, KeyScope)> {
    let now = state.clock.now();
    match credential(&parts.headers)? {
        Credential::Jwt(token) => {
            let claims = state
                .keys()?
                .verify(token, now)
                .map_err(|err| ApiError::Unauthorized(err.to_string()))?;
            let user = state
                .store
                .get_user(claims.sub)
                .await?
                .filter(|user| user.deleted_at.is_none())
                .ok_or_else(|| {
                    ApiError::Unauthorized("the token's user no longer exists".to_owned())
                })?;
            if claims.sep != user.session_epoch {
                return Err(ApiError::Unauthorized(
                    "the session has ended (password changed or logged out everywhere); log in again"
                        .to_owned(),
                ));
            }
            tracing::Span::current().record("principal", tracing::field::display(user.id));
            Ok((Principal::User(user), KeyScope::Everything))
        }
        Credential::ApiKey(presented) => {
            let invalid = || ApiError::Unauthorized("invalid API key".to_owned());
            let (id, digest) = tokens::parse_api_key(presented).ok_or_else(invalid)?;
            let mut key = state.store.get_api_key(id).await?.ok_or_else(invalid)?;
            let matches: bool =
                subtle::ConstantTimeEq::ct_eq(key.secret_digest.as_bytes(), digest.as_bytes())
                    .into();
            if !matches || !key.is_usable(now) {
                return Err(invalid());
            }
            let creator = state
                .store
                .get_member(key.project_id, key.created_by)
                .await?
                .ok_or_else(|| {
                    ApiError::Unauthorized(
                        "this API key no longer works: its creator is no longer a member of its project"
                            .to_owned(),
                    )
                })?;
            key.role = key.role.min(creator.role);
            tracing::Span::current().record("principal", tracing::field::display(key.id));
            let scope = match key.kind {
                ApiKeyKind::Project => KeyScope::Everything,
                ApiKeyKind::AgentRuntime => KeyScope::Heartbeats(key.agent_ids.clone()),
            };
            Ok((Principal::ApiKey(key), scope))
        }
    }
}

/// What an authenticated credential may be used for.
#[derive(Clone, Debug)]
enum KeyScope {
    /// Whatever its role allows.
    Everything,
    /// Only heartbeats of these agents (an agent-runtime key).
    Heartbeats(Vec<Uuid>),
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        match authenticate(parts, state).await? {
            (principal, KeyScope::Everything) => Ok(principal),
            (_, KeyScope::Heartbeats(_)) => Err(ApiError::Forbidden(
                "this is an agent-runtime API key: it can only report heartbeats for its agents"
                    .to_owned(),
            )),
        }
    }
}

/// The caller of `POST /agents/{id}/heartbeat`: any principal, or an agent-runtime key, which
/// may report only for the agents it names.
#[derive(Clone, Debug)]
pub struct HeartbeatCaller(Principal, KeyScope);

impl HeartbeatCaller {
    /// The principal to authorise a heartbeat of `agent_id` with, or `None` for an
    /// agent-runtime key that does not name that agent.
    pub fn for_agent(&self, agent_id: Uuid) -> Option<&Principal> {
        match &self.1 {
            KeyScope::Everything => Some(&self.0),
            KeyScope::Heartbeats(agents) => agents.contains(&agent_id).then_some(&self.0),
        }
    }
}

impl FromRequestParts<AppState> for HeartbeatCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let (principal, scope) = authenticate(parts, state).await?;
        Ok(Self(principal, scope))
    }
}

/// A project the caller may act on, with the role they act with.
#[derive(Debug)]
pub struct ProjectAccess {
    /// The live project.
    pub project: Project,
    /// The caller's role in it.
    pub role: Role,
}

fn project_not_found() -> ApiError {
    ApiError::NotFound("project not found".to_owned())
}

/// Resolves the caller's access to a project for `action`: `404` if they cannot see it
/// (so ids are not disclosed), `403` if they can but their role is too small.
pub async fn authorize(
    state: &AppState,
    principal: &Principal,
    project_id: Uuid,
    action: Action,
) -> ApiResult<ProjectAccess> {
    let (project, role) = match principal {
        Principal::User(user) => {
            let (project, membership) = state
                .store
                .project_and_membership(project_id, user.id)
                .await?;
            (project, membership.map(|m| m.role))
        }
        Principal::ApiKey(key) if key.project_id == project_id => {
            (state.store.get_project(project_id).await?, Some(key.role))
        }
        Principal::ApiKey(_) => (None, None),
    };
    let (Some(project), Some(role)) = (project.filter(|p| p.deleted_at.is_none()), role) else {
        return Err(project_not_found());
    };
    if !action.allowed_for(role) {
        return Err(ApiError::Forbidden(format!(
            "your role `{role}` cannot do this; it needs `{}`",
            action.required_role()
        )));
    }
    Ok(ProjectAccess { project, role })
}
