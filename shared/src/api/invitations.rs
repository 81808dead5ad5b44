//! `/api/v1/projects/{id}/invitations`: invitations waiting for their email's owner.
//!
//! `POST /projects/{id}/members` invites an email (see [`super::members`]). Whether the email
//! has an account or not, the answer is the same `202` and the invitation waits here: it
//! becomes a membership when the email's owner next logs in, or registers. So an admin, who
//! may be anyone who signed up a minute ago, learns nothing about who has an account.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{ApiQuery, PageQuery};
use super::Page;
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{ts, Email, Role};
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::store::invitations::{Accepted, Invitation};
use crate::store::projects::Membership;
use crate::store::users::User;
use crate::usecase::projects::project_id;

/// An invitation as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationView {
    /// The project.
    pub project_id: Uuid,
    /// The invited email.
    pub email: String,
    /// The role the membership will have.
    pub role: Role,
    /// Always `invited`: the invitation waits until the email's owner logs in or registers.
    pub status: &'static str,
    /// Who invited.
    pub invited_by: Uuid,
    /// When.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// When it lapses unless accepted.
    #[serde(with = "ts")]
    pub expires_at: DateTime<Utc>,
}

impl From<Invitation> for InvitationView {
    fn from(invitation: Invitation) -> Self {
        Self {
            project_id: invitation.project_id,
            email: invitation.email.to_string(),
            role: invitation.role,
            status: "invited",
            invited_by: invitation.invited_by,
            created_at: invitation.created_at,
            expires_at: invitation.expires_at,
        }
    }
}

/// Makes `user` a member of every project that invited their email (at most
/// [`crate::store::invitations::ACCEPT_PER_LOGIN`] at a time). A failure leaves the
/// invitations waiting for the next login and does not stop the caller's own work.
pub async fn accept_pending(state: &AppState, user: &User, invitations: Vec<Invitation>) {
    let now = state.clock.now();
    for invitation in invitations {
        let membership = Membership {
            project_id: invitation.project_id,
            user_id: user.id,
            role: invitation.role,
            email: user.email.to_string(),
            name: user.name.clone(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        match state
            .store
            .accept_invitation(&invitation, &membership)
            .await
        {
            Ok(Accepted::Joined) => tracing::info!(
                project_id = %invitation.project_id, user_id = %user.id, role = %invitation.role,
                "invitation accepted"
            ),
            Ok(Accepted::Dropped) => {}
            Err(err) => tracing::warn!(
                project_id = %invitation.project_id, user_id = %user.id, error = ?err,
                "an invitation could not be accepted; it waits for the next login"
            ),
        }
    }
}

/// The invitations of `user`'s email that are still live, for [`accept_pending`]. A failure
/// is logged and reads as none.
pub async fn pending_for(state: &AppState, email: &Email) -> Vec<Invitation> {
    match state.store.invitations_for(email, state.clock.now()).await {
        Ok(invitations) => invitations,
        Err(err) => {
            tracing::warn!(error = ?err, "invitations could not be read; they wait for the next login");
            Vec::new()
        }
    }
}

/// Lists a project's invitations that wait for their email's owner.
#[utoipa::path(
    get, path = "/api/v1/projects/{id}/invitations", tag = "members",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Project id"), PageQuery),
    responses(
        (status = 200, description = "A page of invitations", body = Page<InvitationView>),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn list_invitations(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<InvitationView>>> {
    let access = authorize(&state, &principal, project_id(&id)?, Action::ReadMembers).await?;
    let request = query.resolve(&state, format!("invitations:{}", access.project.id))?;
    let page = state
        .store
        .list_invitations(
            access.project.id,
            state.clock.now(),
            request.limit,
            request.start.clone(),
        )
        .await?;
    request.respond(&state, page)
}

/// Withdraws an invitation.
#[utoipa::path(
    delete, path = "/api/v1/projects/{id}/invitations/{email}", tag = "members",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Project id"),
        ("email" = String, Path, description = "The invited email"),
    ),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 403, description = "Needs admin, and a person (not an API key)", body = Problem),
        (status = 404, description = "No such project or invitation", body = Problem),
    )
)]
pub async fn withdraw_invitation(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, email)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let access = authorize(&state, &principal, project_id(&id)?, Action::ManageMembers).await?;
    principal.person("change members")?;
    let not_found = || ApiError::NotFound("invitation not found".to_owned());
    let email = Email::parse(&email).map_err(|_| not_found())?;
    match state
        .store
        .delete_invitation(access.project.id, &email)
        .await
    {
        Ok(()) => {
            tracing::info!(project_id = %access.project.id, "invitation withdrawn");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(crate::store::StoreError::ConditionFailed) => Err(not_found()),
        Err(err) => Err(err.into()),
    }
}

/// The invitation routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_invitations))
        .routes(routes!(withdraw_invitation))
}
