//! `/api/v1/auth`: registration, login, password changes and the current user; sessions
//! after login are in [`super::sessions`].
//!
//! Password guessing meets two brakes, each reserved atomically *before* Argon2 runs (see
//! [`crate::store::throttle`]): attempts per account (`LOGIN_MAX_FAILURES`, shared by login,
//! password change and account deletion) and login attempts per source address
//! (`LOGIN_MAX_FAILURES_PER_ADDRESS`; a successful login gives its attempt back).
//! Registrations are limited per source address (`REGISTER_MAX_PER_ADDRESS`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::client_addr::ClientAddr;
use super::extract::ApiJson;
use super::invitations;
use super::sessions::{self, TokenPair};
use crate::auth::{password, Principal};
use crate::domain::{ts, Email, Name, Role};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;
use crate::store::throttle::{Bucket, Reservation, Reserved};
use crate::store::users::User;
use crate::store::StoreError;

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

/// `DELETE /auth/me`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccountRequest {
    /// The current password, to confirm.
    pub password: String,
}

/// `POST /auth/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The password now.
    pub current_password: String,
    /// The new password: at least 10 characters and hard to guess.
    pub new_password: String,
}

/// The answer to a registration. It is the same whether or not the email already had an
/// account (which is left untouched), so sign-up tells nobody who has one.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationView {
    /// The email, normalised.
    pub email: String,
    /// Always `accepted`.
    pub status: &'static str,
    /// What to do next.
    pub detail: &'static str,
}

/// `429` with `Retry-After` when `bucket` has no attempt left in its window.
async fn reserve(
    state: &AppState,
    bucket: Bucket<'_>,
    limit: u32,
    window: std::time::Duration,
) -> ApiResult<Reserved> {
    match state
        .store
        .reserve_attempt(bucket, limit, window, state.clock.now())
        .await?
    {
        Reservation::Granted(reserved) => Ok(reserved),
        Reservation::Refused { retry_after_secs } => {
            Err(ApiError::TooManyRequests { retry_after_secs })
        }
    }
}

/// Reserves one password check of `user`'s account, then checks `password`: `401` if wrong,
/// `429` once the account has used its attempts. A right password gives the attempts back.
async fn check_password(state: &AppState, user: &User, password: String) -> ApiResult<()> {
    reserve(
        state,
        Bucket::Password(&user.email),
        state.config.login_max_failures,
        state.config.login_window,
    )
    .await?;
    let secret = SecretString::from(password);
    let hash = user.password_hash.clone();
    if !password::blocking(move || password::verify(&secret, &hash)).await? {
        return Err(ApiError::Unauthorized("the password is wrong".to_owned()));
    }
    state
        .store
        .clear_attempts(Bucket::Password(&user.email))
        .await?;
    Ok(())
}

/// Registers a user. The answer is the same `202` whether the email is new or already
/// registered (then nothing changes), so it tells nobody who has an account; log in next.
/// Invitations of the email become memberships.
#[utoipa::path(
    post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 202, description = "Accepted: log in with this email to continue", body = RegistrationView),
        (status = 422, description = "Invalid email, name or password", body = Problem),
        (status = 429, description = "Too many registrations from this address; see Retry-After", body = Problem),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<RegistrationView>)> {
    let mut errors = Vec::new();
    let email = Email::parse(&body.email).map_err(|m| errors.push(FieldError::new("email", m)));
    let name = Name::parse(&body.name).map_err(|m| errors.push(FieldError::new("name", m)));
    if let Err(message) = password::check_strength(&body.password, &[&body.email, &body.name]) {
        errors.push(FieldError::new("password", message));
    }
    let (Ok(email), Ok(name), true) = (email, name, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    reserve(
        &state,
        Bucket::RegisterFrom(&client.bucket()),
        state.config.register_max_per_address,
        state.config.register_window,
    )
    .await?;
    // Both outcomes do the same work up to the write (hash, invitation read), so they take
    // about as long.
    let secret = SecretString::from(body.password);
    let password_hash = password::blocking(move || password::hash(&secret)).await??;
    let invitations = invitations::pending_for(&state, &email).await;
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
        session_epoch: 0,
    };
    match state.store.create_user(&user).await {
        Ok(()) => {
            tracing::info!(user_id = %user.id, "user registered");
            invitations::accept_pending(&state, &user, invitations).await;
        }
        Err(err) if err.failed_at(0) => {
            tracing::info!("registration of an email that is already registered; nothing changed");
        }
        Err(err) => return Err(err.into()),
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(RegistrationView {
            email: user.email.to_string(),
            status: "accepted",
            detail: "log in with this email and your password to continue",
        }),
    ))
}

/// Logs in with email and password. Invitations of the email become memberships.
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 401, description = "Wrong email or password", body = Problem),
        (status = 429, description = "Too many attempts for this email or from this address; see Retry-After", body = Problem),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    let rejected = || ApiError::Unauthorized("invalid email or password".to_owned());
    let email = Email::parse(&body.email).map_err(|m| ApiError::invalid("email", m))?;
    let from_address = reserve(
        &state,
        Bucket::LoginFrom(&client.bucket()),
        state.config.login_max_failures_per_address,
        state.config.login_window,
    )
    .await?;
    if let Err(refused) = reserve(
        &state,
        Bucket::Password(&email),
        state.config.login_max_failures,
        state.config.login_window,
    )
    .await
    {
        // No password was checked: the address gets its attempt back.
        state.store.release_attempt(&from_address).await?;
        return Err(refused);
    }
    let user = state.store.find_user_by_email(&email).await?;
    let hash = user.as_ref().map_or_else(
        || password::dummy_hash().to_owned(),
        |u| u.password_hash.clone(),
    );
    let secret = SecretString::from(body.password);
    let verified = password::blocking(move || password::verify(&secret, &hash)).await?;
    let Some(user) = user.filter(|_| verified) else {
        return Err(rejected());
    };
    state.store.clear_attempts(Bucket::Password(&email)).await?;
    state.store.release_attempt(&from_address).await?;
    state.store.record_login(user.id, state.clock.now()).await?;
    let invitations = invitations::pending_for(&state, &user.email).await;
    invitations::accept_pending(&state, &user, invitations).await;
    tracing::info!(user_id = %user.id, "user logged in");
    Ok(Json(sessions::start_session(&state, &user).await?))
}

/// Changes the caller's password. Every session ends, on every device, and every access token
/// issued so far stops working; the answer is a fresh session for the caller.
#[utoipa::path(
    post, path = "/api/v1/auth/password", tag = "auth",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "Changed; a new session", body = TokenPair),
        (status = 401, description = "No valid access token, or wrong current password", body = Problem),
        (status = 403, description = "Called with an API key", body = Problem),
        (status = 409, description = "The password changed concurrently", body = Problem),
        (status = 422, description = "The new password is too weak", body = Problem),
        (status = 429, description = "Too many wrong passwords; see Retry-After", body = Problem),
    )
)]
pub async fn change_password(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> ApiResult<Json<TokenPair>> {
    let user = principal.user()?.clone();
    password::check_strength(&body.new_password, &[user.email.as_str(), &user.name])
        .map_err(|m| ApiError::invalid("new_password", m))?;
    check_password(&state, &user, body.current_password).await?;
    let secret = SecretString::from(body.new_password);
    let new_hash = password::blocking(move || password::hash(&secret)).await??;
    let epoch = match state
        .store
        .end_sessions(&user, Some(&new_hash), state.clock.now())
        .await
    {
        Ok(epoch) => epoch,
        Err(StoreError::ConditionFailed) => {
            return Err(ApiError::Conflict(
                "the password was changed concurrently; log in again".to_owned(),
            ))
        }
        Err(err) => return Err(err.into()),
    };
    tracing::info!(user_id = %user.id, session_epoch = epoch, "password changed; every session ended");
    let changed = User {
        password_hash: new_hash,
        session_epoch: epoch,
        ..user
    };
    Ok(Json(sessions::start_session(&state, &changed).await?))
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
    check_password(&state, &user, body.password).await?;
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

/// The auth routes, with the session routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(change_password))
        .routes(routes!(me, delete_me))
        .merge(sessions::routes())
}
