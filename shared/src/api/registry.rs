//! What the registry resources share over HTTP: the manifest signing key's public half and the
//! `Deprecation` header of deprecated assets.

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiResult, Problem};
use crate::manifest::KeyId;
use crate::state::AppState;

/// Marks a response as concerning a deprecated asset (RFC 9745 `Deprecation`).
pub fn with_deprecation(deprecated: bool, mut response: Response) -> Response {
    if deprecated {
        response
            .headers_mut()
            .insert("deprecation", HeaderValue::from_static("true"));
    }
    response
}

/// The key that verifies this deployment's manifest signatures.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicKey {
    /// Always `Ed25519`.
    pub algorithm: &'static str,
    /// The 32-byte public key, base64.
    pub public_key: String,
    /// The key's id, as manifests name it in `publisher.key_id` and projects list it in
    /// `settings.trusted_publishers`.
    pub key_id: KeyId,
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
        key_id: signer.key_id(),
    }))
}

/// The registry-wide routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(public_key))
}
