//! `/api/v1/credentials` over HTTP: a project's named secrets for webhook steps, each bound to
//! one origin. The rules live in [`crate::usecase::credentials`]; responses never show a
//! secret.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery};
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::ts;
use crate::error::{ApiResult, Problem};
use crate::state::AppState;
use crate::store::credentials::Credential;
use crate::usecase::credentials::{self, CreateCredential, UpdateCredential};
use crate::validate::required_project_id;

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
    /// When it was created.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// When its name, origin or value last changed.
    #[serde(with = "ts")]
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
    let credential = credentials::create(&state, &principal, body).await?;
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
    let credential =
        credentials::visible_credential(&state, &principal, &id, Action::ReadRegistry).await?;
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
    let updated = credentials::update(&state, &principal, &id, expected, body).await?;
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
    credentials::delete(&state, &principal, &id, expected).await?;
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
