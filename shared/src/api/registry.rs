//! Pieces shared by the project-scoped registry resources (agents, tools, workflows).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal, ProjectAccess};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;

/// Largest accepted free-form JSON object (`metadata`, `settings`, `config`), serialised.
pub const MAX_JSON_OBJECT_BYTES: usize = 32 * 1024;

/// Authorises `action` on a record of `project_id`. A caller who cannot see the project gets
/// the same `404` as for a missing record, so record ids disclose nothing.
pub async fn authorize_record(
    state: &AppState,
    principal: &Principal,
    project_id: Uuid,
    action: Action,
    what: &str,
) -> ApiResult<ProjectAccess> {
    authorize(state, principal, project_id, action)
        .await
        .map_err(|err| match err {
            ApiError::NotFound(_) => not_found(what),
            other => other,
        })
}

/// `404` for a record of kind `what`.
pub fn not_found(what: &str) -> ApiError {
    ApiError::NotFound(format!("{what} not found"))
}

/// Parses a record id from the path; a malformed one cannot name a record, so `404`.
pub fn record_id(raw: &str, what: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(raw).map_err(|_| not_found(what))
}

/// The `project_id` a list or create is scoped to: required, and a UUID.
pub fn required_project_id(raw: Option<&str>) -> ApiResult<Uuid> {
    let raw = raw.ok_or_else(|| ApiError::bad_request("project_id", "is required"))?;
    Uuid::try_parse(raw)
        .map_err(|_| ApiError::bad_request("project_id", "must be a project id (UUID)"))
}

/// Records an error if a JSON object serialises to more than [`MAX_JSON_OBJECT_BYTES`].
pub fn check_json_object_size(
    field: &str,
    value: &serde_json::Map<String, serde_json::Value>,
    errors: &mut Vec<FieldError>,
) {
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_JSON_OBJECT_BYTES {
        errors.push(FieldError::new(
            field,
            format!("must be at most {MAX_JSON_OBJECT_BYTES} bytes of JSON"),
        ));
    }
}

/// The key that verifies this deployment's manifest signatures.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicKey {
    /// Always `Ed25519`.
    pub algorithm: &'static str,
    /// The 32-byte public key, base64.
    pub public_key: String,
}

/// The public key of the manifest signing key.
#[utoipa::path(
    get, path = "/api/v1/registry/public-key", tag = "registry",
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The Ed25519 public key", body = PublicKey),
        (status = 401, description = "No valid credentials", body = Problem),
    )
)]
pub async fn public_key(
    State(state): State<AppState>,
    _principal: Principal,
) -> ApiResult<Json<PublicKey>> {
    let signer = state.manifest_signer().await?;
    Ok(Json(PublicKey {
        algorithm: "Ed25519",
        public_key: signer.public_key_base64(),
    }))
}

/// The registry-wide routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(public_key))
}
