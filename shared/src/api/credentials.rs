//! `/api/v1/credentials`: a project's named secrets for webhook steps.
//!
//! A workflow version is immutable and readable by every viewer, so a secret header of a
//! webhook step cannot live in it. It lives here instead: the value goes to Secrets Manager
//! (`credentials/<id>`) and is never shown again; a webhook step names the credential
//! (`config.credentials.id`). Each credential is bound to one **origin**
//! (`scheme://host[:port]`): a webhook step may use it only when its URL has that origin,
//! checked when the workflow is saved and again when the step runs, and moving it to another
//! origin needs the secret sent again. Reading needs `viewer`; writing needs `developer`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery};
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{ts, Name};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;
use crate::store::credentials::Credential;
use crate::store::StoreError;
use crate::usecase::access::{authorize_record, check_version, not_found, record_id};
use crate::validate::required_project_id;

const WHAT: &str = "credential";

/// Longest accepted secret value.
const MAX_SECRET_CHARS: usize = 8192;

/// A credential as the API shows it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialView {
    /// Credential id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// A name people recognise it by.
    pub name: String,
    /// The only origin its secret is sent to.
    pub origin: String,
    /// Who created it.
    pub created_by: Uuid,
    #[serde(with = "ts")]
    #[allow(missing_docs)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "ts")]
    #[allow(missing_docs)]
    pub updated_at: DateTime<Utc>,
    /// Optimistic-concurrency version.
    pub version: u64,
}

impl From<Credential> for CredentialView {
    fn from(c: Credential) -> Self {
        Self {
            id: c.id,
            project_id: c.project_id,
            name: c.name,
            origin: c.origin,
            created_by: c.created_by,
            created_at: c.created_at,
            updated_at: c.updated_at,
            version: c.version,
        }
    }
}

/// A new credential.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    /// The project it belongs to.
    pub project_id: Option<String>,
    /// A name people recognise it by.
    pub name: String,
    /// The origin its secret may be sent to, e.g. `https://hooks.example.com` (a path is
    /// ignored).
    pub origin: String,
    /// The secret, write-only: e.g. the token a webhook receiver expects.
    #[schema(value_type = String, format = Password)]
    pub value: SecretString,
}

/// A change to a credential; what is left out stays.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCredential {
    /// The version the change is based on (or send `If-Match`).
    pub version: Option<u64>,
    #[allow(missing_docs)]
    pub name: Option<String>,
    /// Another origin; the secret must then be sent again in `value`.
    pub origin: Option<String>,
    /// A new secret, replacing the stored one.
    #[schema(value_type = Option<String>, format = Password)]
    pub value: Option<SecretString>,
}

/// Query of `GET /credentials`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListCredentials {
    /// The project whose credentials to list (required).
    #[param(required = true, value_type = Uuid)]
    pub project_id: Option<String>,
    /// Items per page, 1–200 (default 50).
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Parses an origin: an absolute `http(s)` URL without user info, reduced to
/// `scheme://host[:port]`.
pub fn parse_origin(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .filter(|_| raw.len() <= 2048)
        .ok_or_else(|| {
            "must be an absolute http or https URL such as https://hooks.example.com".to_owned()
        })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold user info".to_owned());
    }
    Ok(url.origin().ascii_serialization())
}

fn parse_value(value: &SecretString) -> Result<(), String> {
    let text = value.expose_secret();
    if text.trim().is_empty() || text.chars().count() > MAX_SECRET_CHARS {
        return Err(format!(
            "must be a non-empty string of at most {MAX_SECRET_CHARS} characters"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("must not hold control characters: it is sent in a header".to_owned());
    }
    Ok(())
}

fn conflict() -> ApiError {
    ApiError::Conflict(
        "the credential was changed or deleted concurrently; read it again and retry".to_owned(),
    )
}

async fn discard_secret(state: &AppState, id: Uuid) {
    if let Err(err) = state
        .secrets
        .schedule_deletion(&crate::store::secrets::path::credential(id))
        .await
    {
        tracing::error!(credential_id = %id, error = ?err, "failed to schedule deletion of a credential's secret");
    }
}

/// Creates a credential; its value goes to Secrets Manager before the record is written.
#[utoipa::path(
    post, path = "/api/v1/credentials", tag = "credentials",
    security(("bearer" = []), ("api_key" = [])),
    request_body = CreateCredential,
    responses(
        (status = 201, description = "Created; `Location` names it", body = CredentialView),
        (status = 400, description = "No project_id", body = Problem),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 422, description = "Invalid fields, each named", body = Problem),
    )
)]
pub async fn create_credential(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateCredential>,
) -> ApiResult<Response> {
    let project_id = required_project_id(body.project_id.as_deref())?;
    let access = authorize(&state, &principal, project_id, Action::WriteRegistry).await?;
    let mut errors = Vec::new();
    let name = Name::parse(&body.name)
        .map_err(|m| errors.push(FieldError::new("name", m)))
        .ok();
    let origin = parse_origin(&body.origin)
        .map_err(|m| errors.push(FieldError::new("origin", m)))
        .ok();
    if let Err(m) = parse_value(&body.value) {
        errors.push(FieldError::new("value", m));
    }
    let (Some(name), Some(origin), true) = (name, origin, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    let now = state.clock.now();
    let credential = Credential {
        id: Uuid::now_v7(),
        project_id: access.project.id,
        name: name.into_inner(),
        origin,
        created_by: principal.actor_id(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    state
        .secrets
        .put(&credential.secret_path(), &body.value)
        .await?;
    if let Err(err) = state.store.put_credential(&credential, None).await {
        discard_secret(&state, credential.id).await;
        return Err(err.into());
    }
    tracing::info!(project_id = %credential.project_id, credential_id = %credential.id, "credential created");
    Ok(created(
        &format!("/api/v1/credentials/{}", credential.id),
        credential.version,
        CredentialView::from(credential),
    ))
}

/// Lists a project's credentials, oldest first (never their values).
#[utoipa::path(
    get, path = "/api/v1/credentials", tag = "credentials",
    security(("bearer" = []), ("api_key" = [])),
    params(ListCredentials),
    responses(
        (status = 200, description = "A page of credentials", body = Page<CredentialView>),
        (status = 400, description = "No project_id, or a bad limit or cursor", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn list_credentials(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListCredentials>,
) -> ApiResult<Json<Page<CredentialView>>> {
    let project_id = required_project_id(query.project_id.as_deref())?;
    authorize(&state, &principal, project_id, Action::ReadRegistry).await?;
    let request = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .resolve(&state, format!("credentials:{project_id}"))?;
    let page = state
        .store
        .list_credentials(project_id, request.limit, request.start.clone())
        .await?;
    request.respond(&state, page)
}

/// The credential at `raw_id` if the caller may perform `action` on it; `404` otherwise.
async fn visible_credential(
    state: &AppState,
    principal: &Principal,
    raw_id: &str,
    action: Action,
) -> ApiResult<Credential> {
    let id = record_id(raw_id, WHAT)?;
    let credential = state
        .store
        .get_credential(id)
        .await?
        .ok_or_else(|| not_found(WHAT))?;
    authorize_record(state, principal, credential.project_id, action, WHAT).await?;
    Ok(credential)
}

/// Reads a credential (never its value).
#[utoipa::path(
    get, path = "/api/v1/credentials/{id}", tag = "credentials",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Credential id")),
    responses(
        (status = 200, description = "The credential; `ETag` carries its version", body = CredentialView),
        (status = 404, description = "No such credential visible to the caller", body = Problem),
    )
)]
pub async fn get_credential(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let credential = visible_credential(&state, &principal, &id, Action::ReadRegistry).await?;
    Ok(with_etag(
        credential.version,
        Json(CredentialView::from(credential)),
    ))
}

/// Renames a credential, replaces its value, or moves it to another origin (with its value
/// sent again).
#[utoipa::path(
    patch, path = "/api/v1/credentials/{id}", tag = "credentials",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Credential id"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on"),
    ),
    request_body = UpdateCredential,
    responses(
        (status = 200, description = "The changed credential", body = CredentialView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such credential visible to the caller", body = Problem),
        (status = 409, description = "Stale version", body = Problem),
        (status = 422, description = "Invalid fields, each named", body = Problem),
    )
)]
pub async fn update_credential(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateCredential>,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, body.version)?;
    let current = visible_credential(&state, &principal, &id, Action::WriteRegistry).await?;
    check_version(expected, current.version)?;
    let mut errors = Vec::new();
    let mut updated = current.clone();
    if let Some(name) = &body.name {
        match Name::parse(name) {
            Ok(name) => updated.name = name.into_inner(),
            Err(m) => errors.push(FieldError::new("name", m)),
        }
    }
    if let Some(origin) = &body.origin {
        match parse_origin(origin) {
            Ok(origin) => updated.origin = origin,
            Err(m) => errors.push(FieldError::new("origin", m)),
        }
    }
    if let Some(value) = &body.value {
        if let Err(m) = parse_value(value) {
            errors.push(FieldError::new("value", m));
        }
    }
    if updated.origin != current.origin && body.value.is_none() {
        errors.push(FieldError::new(
            "value",
            format!(
                "the origin changes from {} to {}: send `value` again, so the stored secret \
                 never goes where it was not meant to",
                current.origin, updated.origin
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    updated.version = current.version + 1;
    updated.updated_at = state.clock.now();
    // The value is written first, the old one kept to put back should the record lose a race.
    let previous = match &body.value {
        Some(value) => {
            let previous = state.secrets.get(&current.secret_path()).await?;
            state.secrets.put(&current.secret_path(), value).await?;
            previous
        }
        None => None,
    };
    if let Err(err) = state
        .store
        .put_credential(&updated, Some(current.version))
        .await
    {
        if let Some(previous) = previous {
            if let Err(restore) = state.secrets.put(&current.secret_path(), &previous).await {
                tracing::error!(credential_id = %current.id, error = ?restore, "failed to restore a credential's value after a lost race");
            }
        }
        return Err(match err {
            StoreError::ConditionFailed => conflict(),
            other => other.into(),
        });
    }
    tracing::info!(credential_id = %updated.id, version = updated.version, "credential updated");
    Ok(with_etag(
        updated.version,
        Json(CredentialView::from(updated)),
    ))
}

/// Deletes a credential and schedules its value's deletion (recoverable for 7 days). Webhook
/// steps that name it fail, saying so, until their workflow is changed.
#[utoipa::path(
    delete, path = "/api/v1/credentials/{id}", tag = "credentials",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Credential id"),
        ("If-Match" = Option<String>, Header, description = "Delete only if still at this version"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such credential visible to the caller", body = Problem),
        (status = 409, description = "Stale version, or changed concurrently", body = Problem),
    )
)]
pub async fn delete_credential(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let expected = expected_version(&headers, None)?;
    let credential = visible_credential(&state, &principal, &id, Action::WriteRegistry).await?;
    check_version(expected, credential.version)?;
    match state
        .store
        .delete_credential(credential.id, credential.version)
        .await
    {
        Ok(()) => {}
        Err(StoreError::ConditionFailed) => return Err(conflict()),
        Err(err) => return Err(err.into()),
    }
    discard_secret(&state, credential.id).await;
    tracing::info!(credential_id = %credential.id, "credential deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The credentials routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_credentials, create_credential))
        .routes(routes!(
            get_credential,
            update_credential,
            delete_credential
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_reduced_to_scheme_host_and_port() {
        assert_eq!(
            parse_origin("https://Hooks.example.com/in?x=1").as_deref(),
            Ok("https://hooks.example.com")
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:9000").as_deref(),
            Ok("http://127.0.0.1:9000")
        );
        assert!(parse_origin("ftp://hooks.example.com").is_err());
        assert!(parse_origin("https://u:p@hooks.example.com").is_err());
        assert!(parse_origin("hooks.example.com").is_err());
    }
}
