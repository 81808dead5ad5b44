//! `/api/v1/auth/{refresh,logout,logout-all}`: sessions after login.
//!
//! A session is a family of refresh tokens (see [`crate::store::sessions`]). Refreshing
//! exchanges the presented token for its successor, which is derived from it with a server-side
//! key ([`crate::auth::jwt::Keys::refresh_successor`]):
//!
//! 1. An active token is retired and its successor stored, in one transaction that also checks
//!    the family and the user's session epoch.
//! 2. A token retired less than [`REFRESH_RETRY_GRACE`] ago, whose successor is still unused,
//!    is a client retrying after losing the reply: it gets the same successor again (the
//!    plaintext is recomputed, never stored).
//! 3. Any other retired token is reuse: the whole family is revoked.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::ApiJson;
use crate::auth::{tokens, Principal};
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::store::sessions::{NewRefresh, RefreshToken};
use crate::store::users::User;
use crate::store::StoreError;

/// How long after an exchange presenting the old refresh token again still counts as a retry
/// (the client lost the reply) rather than reuse.
pub const REFRESH_RETRY_GRACE: chrono::Duration = chrono::Duration::seconds(10);

/// Rounds of a refresh that keeps losing races with concurrent writers.
const REFRESH_ROUNDS: usize = 3;

/// `POST /auth/refresh` and `POST /auth/logout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from login or the last refresh.
    pub refresh_token: String,
}

/// An access token and a refresh token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// JWT for `Authorization: Bearer`; lasts 15 minutes.
    pub access_token: String,
    /// Opaque token for `/auth/refresh`; lasts 7 days and works once (a retry within a few
    /// seconds gets the same successor).
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

fn token_pair(
    state: &AppState,
    user_id: Uuid,
    epoch: u64,
    refresh_token: String,
    now: DateTime<Utc>,
) -> ApiResult<TokenPair> {
    Ok(TokenPair {
        access_token: state
            .keys()?
            .issue(user_id, epoch, now, state.config.access_token_ttl)?,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.config.access_token_ttl.as_secs(),
    })
}

fn refresh_expiry(state: &AppState, now: DateTime<Utc>) -> ApiResult<DateTime<Utc>> {
    let ttl =
        chrono::Duration::from_std(state.config.refresh_token_ttl).map_err(anyhow::Error::from)?;
    Ok(now + ttl)
}

fn session_ended() -> ApiError {
    ApiError::Unauthorized("the session has ended; log in again".to_owned())
}

/// Starts a session for `user` (who just proved their password) in their session epoch.
/// `401` if the epoch moved on meanwhile (a concurrent password change).
pub async fn start_session(state: &AppState, user: &User) -> ApiResult<TokenPair> {
    let now = state.clock.now();
    let refresh_token = tokens::random_secret();
    let digest = tokens::digest(&refresh_token);
    let new = NewRefresh {
        digest: &digest,
        user_id: user.id,
        session_epoch: user.session_epoch,
        family_id: Uuid::now_v7(),
        now,
        expires_at: refresh_expiry(state, now)?,
    };
    match state.store.start_session(&new).await {
        Ok(()) => token_pair(state, user.id, user.session_epoch, refresh_token, now),
        Err(err) if err.failed_at(2) => Err(session_ended()),
        Err(err) => Err(err.into()),
    }
}

/// Whether `token`, already exchanged, is being presented again by a client that lost the
/// reply: within the grace period, and its successor (`successor`) still unused in a live
/// family.
async fn is_retry(
    state: &AppState,
    token: &RefreshToken,
    successor: &str,
    now: DateTime<Utc>,
) -> ApiResult<bool> {
    let recent = token
        .rotated_at
        .is_some_and(|at| now - at <= REFRESH_RETRY_GRACE);
    let successor_digest = tokens::digest(successor);
    if !recent || token.successor_digest.as_deref() != Some(successor_digest.as_str()) {
        return Ok(false);
    }
    let unused = state
        .store
        .get_refresh(&successor_digest)
        .await?
        .is_some_and(|next| next.is_active());
    let live = state
        .store
        .get_family(token.family_id)
        .await?
        .is_some_and(|family| family.revoked_at.is_none());
    Ok(unused && live)
}

/// Exchanges a refresh token for a new pair; the old token stops working. Presenting it again
/// within a few seconds (a lost reply) answers the same new refresh token; later, it is reuse
/// and revokes the whole session.
#[utoipa::path(
    post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair", body = TokenPair),
        (status = 401, description = "Unknown, expired, reused or revoked refresh token", body = Problem),
        (status = 409, description = "The session kept changing meanwhile; retry", body = Problem),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    let now = state.clock.now();
    let invalid = || ApiError::Unauthorized("invalid or expired refresh token".to_owned());
    let digest = tokens::digest(&body.refresh_token);
    let successor = state.keys()?.refresh_successor(&body.refresh_token);
    for _round in 0..REFRESH_ROUNDS {
        let token = state
            .store
            .get_refresh(&digest)
            .await?
            .filter(|t| t.expires_at > now)
            .ok_or_else(invalid)?;
        let user = state
            .store
            .get_user(token.user_id)
            .await?
            .filter(|u| u.deleted_at.is_none())
            .ok_or_else(invalid)?;
        if token.session_epoch != user.session_epoch {
            return Err(session_ended());
        }
        if token.is_active() {
            let successor_digest = tokens::digest(&successor);
            let new = NewRefresh {
                digest: &successor_digest,
                user_id: token.user_id,
                session_epoch: token.session_epoch,
                family_id: token.family_id,
                now,
                expires_at: refresh_expiry(&state, now)?,
            };
            match state.store.rotate_refresh(&token, &new).await {
                Ok(()) => {
                    return Ok(Json(token_pair(
                        &state,
                        token.user_id,
                        token.session_epoch,
                        successor,
                        now,
                    )?))
                }
                // Exchanged or touched by a concurrent request: read it again.
                Err(err) if err.failed_at(0) || err.is_conflict() => continue,
                Err(err) if err.failed_at(2) => {
                    return Err(ApiError::Unauthorized(
                        "the session has been revoked".to_owned(),
                    ))
                }
                Err(err) if err.failed_at(3) => return Err(session_ended()),
                Err(err) => return Err(err.into()),
            }
        }
        if is_retry(&state, &token, &successor, now).await? {
            tracing::info!(family_id = %token.family_id, "refresh retried; the same successor answered");
            return Ok(Json(token_pair(
                &state,
                token.user_id,
                token.session_epoch,
                successor,
                now,
            )?));
        }
        state.store.revoke_family(token.family_id, now).await?;
        tracing::warn!(family_id = %token.family_id, "refresh token reused; family revoked");
        return Err(ApiError::Unauthorized(
            "refresh token was already used; the session is revoked".to_owned(),
        ));
    }
    Err(ApiError::Conflict(
        "the session kept changing during the refresh; retry".to_owned(),
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

/// Ends every session of the caller: every refresh token and every access token issued so far
/// stop working at once, including the one that made this call.
#[utoipa::path(
    post, path = "/api/v1/auth/logout-all", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every session ended"),
        (status = 401, description = "No valid access token", body = Problem),
        (status = 403, description = "Called with an API key", body = Problem),
    )
)]
pub async fn logout_all(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<StatusCode> {
    let user = principal.user()?;
    match state
        .store
        .end_sessions(user, None, state.clock.now())
        .await
    {
        Ok(epoch) => {
            tracing::info!(user_id = %user.id, session_epoch = epoch, "every session ended");
            Ok(StatusCode::NO_CONTENT)
        }
        // Deleted meanwhile: their sessions are over anyway.
        Err(StoreError::ConditionFailed) => Err(session_ended()),
        Err(err) => Err(err.into()),
    }
}

/// The session routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
}
