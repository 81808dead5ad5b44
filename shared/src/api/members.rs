//! `/api/v1/projects/{id}/members`: who belongs to a project and with which role.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery};
use super::invitations::InvitationView;
use super::{with_etag, Page};
use crate::auth::rbac::{may_assign, Action};
use crate::auth::{authorize, Principal, ProjectAccess};
use crate::domain::{ts, Email, Role};
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::store::invitations::{Invitation, INVITATION_TTL};
use crate::store::projects::Membership;
use crate::store::StoreError;
use crate::usecase::access::check_version;
use crate::usecase::projects::project_id;

/// A member as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    /// The user.
    pub user_id: Uuid,
    /// Their email.
    pub email: String,
    /// Their name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// When they joined.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Version for optimistic concurrency.
    pub version: u64,
}

impl From<Membership> for MemberView {
    fn from(m: Membership) -> Self {
        Self {
            user_id: m.user_id,
            email: m.email,
            name: m.name,
            role: m.role,
            created_at: m.created_at,
            updated_at: m.updated_at,
            version: m.version,
        }
    }
}

/// `POST /projects/{id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The email to invite, with or without an account.
    pub email: String,
    /// Their role.
    pub role: Role,
}

/// `PATCH /projects/{id}/members/{user_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    /// The new role.
    pub role: Role,
    /// The version this change is based on.
    pub version: Option<u64>,
}

fn member_not_found() -> ApiError {
    ApiError::NotFound("member not found".to_owned())
}

fn last_owner() -> ApiError {
    ApiError::Conflict("a project must keep at least one owner".to_owned())
}

fn check_assignable(access: &ProjectAccess, role: Role) -> ApiResult<()> {
    if may_assign(access.role, role) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "your role `{}` cannot give or change the role `{role}`",
            access.role
        )))
    }
}

async fn target_member(
    state: &AppState,
    access: &ProjectAccess,
    raw_user_id: &str,
) -> ApiResult<Membership> {
    let user_id = Uuid::try_parse(raw_user_id).map_err(|_| member_not_found())?;
    state
        .store
        .get_member(access.project.id, user_id)
        .await?
        .ok_or_else(member_not_found)
}

/// Lists a project's members.
#[utoipa::path(
    get, path = "/api/v1/projects/{id}/members", tag = "members",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Project id"), PageQuery),
    responses(
        (status = 200, description = "A page of members", body = Page<MemberView>),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn list_members(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<MemberView>>> {
    let access = authorize(&state, &principal, project_id(&id)?, Action::ReadMembers).await?;
    let request = query.resolve(&state, format!("members:{}", access.project.id))?;
    let page = state
        .store
        .list_members(access.project.id, request.limit, request.start.clone())
        .await?;
    request.respond(&state, page)
}

/// Invites an email to a project. The answer is the same `202` whether or not the email has
/// an account: the invitation becomes a membership when the email's owner next logs in or
/// registers (see [`super::invitations`]).
#[utoipa::path(
    post, path = "/api/v1/projects/{id}/members", tag = "members",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Project id")),
    request_body = AddMember,
    responses(
        (status = 202, description = "Invited; pending until the email's owner logs in or registers", body = InvitationView),
        (status = 403, description = "Needs admin, and a person (not an API key); only owners grant owner", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 409, description = "Already a member (members are listed with their emails), or already invited", body = Problem),
        (status = 422, description = "Invalid email or role", body = Problem),
    )
)]
pub async fn add_member(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AddMember>,
) -> ApiResult<(StatusCode, Json<InvitationView>)> {
    let access = authorize(&state, &principal, project_id(&id)?, Action::ManageMembers).await?;
    let inviter = principal.person("change members")?;
    check_assignable(&access, body.role)?;
    let email = Email::parse(&body.email).map_err(|m| ApiError::invalid("email", m))?;
    // Members are listed with their emails, so refusing a current member tells nothing new.
    // Both branches read the same items, whether or not the email has an account.
    let user_id = state.store.find_user_id_by_email(&email).await?;
    if state
        .store
        .get_member(access.project.id, user_id.unwrap_or(Uuid::nil()))
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(
            "this user is already a member".to_owned(),
        ));
    }
    let now = state.clock.now();
    let invitation = Invitation {
        project_id: access.project.id,
        email,
        role: body.role,
        invited_by: inviter.id,
        created_at: now,
        expires_at: now + INVITATION_TTL,
    };
    match state.store.create_invitation(&invitation).await {
        Ok(()) => {
            tracing::info!(project_id = %invitation.project_id, role = %invitation.role, "member invited");
            Ok((StatusCode::ACCEPTED, Json(InvitationView::from(invitation))))
        }
        Err(StoreError::ConditionFailed) => Err(ApiError::Conflict(
            "this email is already invited; withdraw the invitation to change it".to_owned(),
        )),
        Err(err) => Err(err.into()),
    }
}

/// Changes a member's role. Only owners grant or take away ownership, and the last owner
/// cannot be demoted.
#[utoipa::path(
    patch, path = "/api/v1/projects/{id}/members/{user_id}", tag = "members",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Project id"),
        ("user_id" = Uuid, Path, description = "Member's user id"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on"),
    ),
    request_body = UpdateMember,
    responses(
        (status = 200, description = "Changed", body = MemberView),
        (status = 403, description = "Role too small for this change, or an API key", body = Problem),
        (status = 404, description = "No such project or member", body = Problem),
        (status = 409, description = "Stale version, or the last owner", body = Problem),
    )
)]
pub async fn update_member(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, user_id)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateMember>,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, body.version)?;
    let access = authorize(&state, &principal, project_id(&id)?, Action::ManageMembers).await?;
    principal.person("change members")?;
    let current = target_member(&state, &access, &user_id).await?;
    check_version(expected, current.version)?;
    check_assignable(&access, current.role)?;
    check_assignable(&access, body.role)?;
    let now = state.clock.now();
    match state.store.change_role(&current, body.role, now).await {
        Ok(()) => {
            let version = current.version + 1;
            let changed = Membership {
                role: body.role,
                updated_at: now,
                version,
                ..current
            };
            Ok(with_etag(version, Json(MemberView::from(changed))))
        }
        Err(err) if err.failed_at(1) && current.role == Role::Owner => Err(last_owner()),
        Err(err) if err.failed_at(1) => Err(ApiError::NotFound("project not found".to_owned())),
        Err(err) => {
            tracing::info!(error = %err, "member update lost a race");
            Err(ApiError::Conflict(
                "the member was changed concurrently; read it again and retry".to_owned(),
            ))
        }
    }
}

/// Removes a member. Anyone may leave; removing others needs admin (owner to remove an
/// owner). The last owner cannot be removed.
#[utoipa::path(
    delete, path = "/api/v1/projects/{id}/members/{user_id}", tag = "members",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Project id"),
        ("user_id" = Uuid, Path, description = "Member's user id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Role too small, or an API key", body = Problem),
        (status = 404, description = "No such project or member", body = Problem),
        (status = 409, description = "The last owner", body = Problem),
    )
)]
pub async fn remove_member(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = project_id(&id)?;
    let leaving =
        matches!(&principal, Principal::User(u) if Uuid::try_parse(&user_id).ok() == Some(u.id));
    let action = if leaving {
        Action::ReadProject
    } else {
        Action::ManageMembers
    };
    let access = authorize(&state, &principal, project, action).await?;
    principal.person("change members")?;
    let current = target_member(&state, &access, &user_id).await?;
    if !leaving {
        check_assignable(&access, current.role)?;
    }
    match state.store.remove_member(&current).await {
        Ok(()) => {
            tracing::info!(project_id = %project, user_id = %current.user_id, "member removed");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(err) if err.failed_at(1) && current.role == Role::Owner => Err(last_owner()),
        Err(err) if err.failed_at(1) => Err(ApiError::NotFound("project not found".to_owned())),
        Err(err) => {
            tracing::info!(error = %err, "member removal lost a race");
            Err(ApiError::Conflict(
                "the member was changed concurrently; read it again and retry".to_owned(),
            ))
        }
    }
}

/// The member routes, with the invitations they create.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_members, add_member))
        .routes(routes!(update_member, remove_member))
        .merge(super::invitations::routes())
}
