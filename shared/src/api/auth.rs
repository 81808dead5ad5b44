//! `/api/v1/auth`: registration, login, token refresh and logout, the current user.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::ApiJson;
use crate::auth::{password, tokens, Principal};
use crate::domain::{ts, Email, Name, Role};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;
use crate::store::sessions::NewRefresh;
use crate::store::users::User;

/// A user as the API shows it; never includes the password hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// User id.
    pub id: Uuid,
    /// Email (lower-case).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Registration time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Last successful login.
    #[serde(with = "ts::option")]
    pub last_login_at: Option<DateTime<Utc>>,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id,
            email: user.email.to_string(),
            name: user.name.clone(),
            created_at: user.created_at,
            updated_at: user.updated_at,
            last_login_at: user.last_login_at,
        }
    }
}

/// `POST /auth/register`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Email; unique, case-insensitively.
    pub email: String,
    /// At least 10 characters and hard to guess.
    pub password: String,
    /// Display name.
    pub name: String,
}

/// `POST /auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Email.
    pub email: String,
    /// Password.
    pub password: String,
}

/// `POST /auth/refresh` and `POST /auth/logout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from login or the last refresh.
    pub refresh_token: String,
}

/// `DELETE /auth/me`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccountRequest {
    /// The current password, to confirm.
    pub password: String,
}

/// An access token and a refresh token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// JWT for `Authorization: Bearer`; lasts 15 minutes.
    pub access_token: String,
    /// Opaque token for `/auth/refresh`; lasts 7 days and works once.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// Registers a user.
#[utoipa::path(
    post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = UserView),
        (status = 409, description = "Email already registered", body = Problem),
        (status = 422, description = "Invalid email, name or password", body = Problem),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> ApiResult<impl IntoResponse> {
    let mut errors = Vec::new();
    let email = Email::parse(&body.email).map_err(|m| errors.push(FieldError::new("email", m)));
    let name = Name::parse(&body.name).map_err(|m| errors.push(FieldError::new("name", m)));
    if let Err(message) = password::check_strength(&body.password, &[&body.email, &body.name]) {
        errors.push(FieldError::new("password", message));
    }
    let (Ok(email), Ok(name), true) = (email, name, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    let secret = SecretString::from(body.password);
    let password_hash = password::blocking(move || password::hash(&secret)).await??;
    let now = state.clock.now();
    let user = User {
        id: Uuid::now_v7(),
        email,
        name: name.into_inner(),
        password_hash,
        created_at: now,
        updated_at: now,
        last_login_at: None,
        deleted_at: None,
    };
    match state.store.create_user(&user).await {
        Ok(()) => {
            tracing::info!(user_id = %user.id, "user registered");
            Ok((StatusCode::CREATED, Json(UserView::from(&user))))
        }
        Err(err) if err.failed_at(0) => Err(ApiError::Conflict(
            "this email is already registered".to_owned(),
        )),
        Err(err) => Err(err.into()),
    }
}

async fn issue_tokens(
    state: &AppState,
    user_id: Uuid,
    family: Option<&crate::store::sessions::RefreshToken>,
) -> ApiResult<TokenPair> {
    let now = state.clock.now();
    let refresh_token = tokens::random_secret();
    let digest = tokens::digest(&refresh_token);
    let refresh_ttl =
        chrono::Duration::from_std(state.config.refresh_token_ttl).map_err(anyhow::Error::from)?;
    let new = NewRefresh {
        digest: &digest,
        user_id,
        family_id: family.map_or_else(Uuid::now_v7, |old| old.family_id),
        now,
        expires_at: now + refresh_ttl,
    };
    match family {
        None => state.store.start_session(&new).await?,
        Some(old) => match state.store.rotate_refresh(old, &new).await {
            Ok(()) => {}
            Err(err) if err.failed_at(0) || err.is_conflict() => {
                state.store.revoke_family(old.family_id, now).await?;
                tracing::warn!(family_id = %old.family_id, "refresh token reused; family revoked");
                return Err(ApiError::Unauthorized(
                    "refresh token was already used; the session is revoked".to_owned(),
                ));
            }
            Err(err) if err.failed_at(2) => {
                return Err(ApiError::Unauthorized(
                    "the session has been revoked".to_owned(),
                ));
            }
            Err(err) => return Err(err.into()),
        },
    }
    Ok(TokenPair {
        access_token: state
            .keys()?
            .issue(user_id, now, state.config.access_token_ttl)?,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.config.access_token_ttl.as_secs(),
    })
}

/// `429` while `email` has used up its failed password attempts in the current window.
async fn ensure_not_throttled(state: &AppState, email: &Email) -> ApiResult<()> {
    let now = state.clock.now();
    let window =
        chrono::Duration::from_std(state.config.login_window).map_err(anyhow::Error::from)?;
    if let Some(current) = state.store.login_window(email).await? {
        let reopens = current.window_start + window;
        if current.failures >= state.config.login_max_failures && reopens > now {
            let retry_after_secs = u64::try_from((reopens - now).num_seconds())
                .unwrap_or(0)
                .max(1);
            return Err(ApiError::TooManyRequests { retry_after_secs });
        }
    }
    Ok(())
}

/// Logs in with email and password.
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 401, description = "Wrong email or password", body = Problem),
        (status = 429, description = "Too many failed attempts for this email; see Retry-After", body = Problem),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    let rejected = || ApiError::Unauthorized("invalid email or password".to_owned());
    let email = Email::parse(&body.email).map_err(|m| ApiError::invalid("email", m))?;
    let now = state.clock.now();
    ensure_not_throttled(&state, &email).await?;
    let user = state.store.find_user_by_email(&email).await?;
    let hash = user.as_ref().map_or_else(
        || password::dummy_hash().to_owned(),
        |u| u.password_hash.clone(),
    );
    let secret = SecretString::from(body.password);
    let verified = password::blocking(move || password::verify(&secret, &hash)).await?;
    let Some(user) = user.filter(|_| verified) else {
        state
            .store
            .record_login_failure(&email, now, state.config.login_window)
            .await?;
        return Err(rejected());
    };
    state.store.clear_login_failures(&email).await?;
    state.store.record_login(user.id, now).await?;
    tracing::info!(user_id = %user.id, "user logged in");
    Ok(Json(issue_tokens(&state, user.id, None).await?))
}

/// Exchanges a refresh token for a new pair; the old token stops working. Presenting a
/// token that was already exchanged revokes its whole session.
#[utoipa::path(
    post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair", body = TokenPair),
        (status = 401, description = "Unknown, expired, reused or revoked refresh token", body = Problem),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    let now = state.clock.now();
    let invalid = || ApiError::Unauthorized("invalid or expired refresh token".to_owned());
    let token = state
        .store
        .get_refresh(&tokens::digest(&body.refresh_token))
        .await?
        .filter(|t| t.expires_at > now)
        .ok_or_else(invalid)?;
    let user_live = state
        .store
        .get_user(token.user_id)
        .await?
        .is_some_and(|u| u.deleted_at.is_none());
    if !user_live {
        return Err(invalid());
    }
    Ok(Json(
        issue_tokens(&state, token.user_id, Some(&token)).await?,
    ))
}

/// Ends the session of a refresh token: every token of its family stops working.
#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Unknown refresh token", body = Problem),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<StatusCode> {
    let token = state
        .store
        .get_refresh(&tokens::digest(&body.refresh_token))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("invalid refresh token".to_owned()))?;
    state
        .store
        .revoke_family(token.family_id, state.clock.now())
        .await?;
    tracing::info!(user_id = %token.user_id, family_id = %token.family_id, "session revoked by logout");
    Ok(StatusCode::NO_CONTENT)
}

/// The current user.
#[utoipa::path(
    get, path = "/api/v1/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = UserView),
        (status = 401, description = "No valid access token", body = Problem),
        (status = 403, description = "Called with an API key", body = Problem),
    )
)]
pub async fn me(principal: Principal) -> ApiResult<Json<UserView>> {
    Ok(Json(UserView::from(principal.user()?)))
}

/// Deletes the caller's account after confirming the password. Refused while the caller is
/// the last owner of a project. Their memberships go, and their tokens stop working.
#[utoipa::path(
    delete, path = "/api/v1/auth/me", tag = "auth",
    security(("bearer" = [])),
    request_body = DeleteAccountRequest,
    responses(
        (status = 204, description = "Account deleted"),
        (status = 401, description = "No valid access token, or wrong password", body = Problem),
        (status = 409, description = "The caller is the last owner of a project", body = Problem),
        (status = 429, description = "Too many wrong passwords; see Retry-After", body = Problem),
    )
)]
pub async fn delete_me(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<DeleteAccountRequest>,
) -> ApiResult<StatusCode> {
    let user = principal.user()?.clone();
    ensure_not_throttled(&state, &user.email).await?;
    let secret = SecretString::from(body.password);
    let hash = user.password_hash.clone();
    if !password::blocking(move || password::verify(&secret, &hash)).await? {
        let now = state.clock.now();
        state
            .store
            .record_login_failure(&user.email, now, state.config.login_window)
            .await?;
        return Err(ApiError::Unauthorized("the password is wrong".to_owned()));
    }
    let mut memberships = Vec::new();
    let mut start = None;
    loop {
        let page = state.store.memberships_of_user(user.id, 200, start).await?;
        memberships.extend(page.items);
        match page.next {
            Some(next) => start = Some(next),
            None => break,
        }
    }
    // Memberships of deleted projects are never shown again and stay as they are.
    let mut live = Vec::new();
    for membership in memberships {
        let Some(project) = state.store.get_project(membership.project_id).await? else {
            continue;
        };
        if project.deleted_at.is_some() {
            continue;
        }
        if membership.role == Role::Owner && project.owner_count <= 1 {
            return Err(last_owner_of(project.id));
        }
        live.push(membership);
    }
    for membership in &live {
        match state.store.remove_member(membership).await {
            Ok(()) => {}
            Err(err) if err.failed_at(1) && membership.role == Role::Owner => {
                return Err(last_owner_of(membership.project_id));
            }
            // The project was deleted meanwhile.
            Err(err) if err.failed_at(1) => {}
            Err(err) => return Err(err.into()),
        }
    }
    state.store.delete_user(&user, state.clock.now()).await?;
    tracing::info!(user_id = %user.id, "account deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn last_owner_of(project_id: Uuid) -> ApiError {
    ApiError::Conflict(format!(
        "you are the last owner of project {project_id}; transfer ownership or delete it first"
    ))
}

/// The auth routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me, delete_me))
}
