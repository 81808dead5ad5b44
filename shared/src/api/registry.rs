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
use crate::manifest::KeyId;
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

/// Deepest nesting accepted in free-form JSON (DynamoDB itself stops at 32 levels).
pub const MAX_JSON_DEPTH: usize = 16;

/// Records errors for a free-form JSON object that is too large (over
/// [`MAX_JSON_OBJECT_BYTES`]) or that DynamoDB cannot store.
pub fn check_json_object(
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
    } else {
        check_storable_object(field, value, 1, errors);
    }
}

/// Records errors for JSON that DynamoDB cannot store: empty keys, numbers out of its range
/// (magnitudes from 1e-130 to below 1e126) and nesting deeper than [`MAX_JSON_DEPTH`].
pub fn check_storable(
    field: &str,
    value: &serde_json::Value,
    depth: usize,
    errors: &mut Vec<FieldError>,
) {
    use serde_json::Value;
    if errors.len() >= 10 {
        return;
    }
    match value {
        Value::Number(number) => {
            let magnitude = number.as_f64().map(f64::abs).unwrap_or(f64::INFINITY);
            if !(magnitude == 0.0 || (1e-130..1e126).contains(&magnitude)) {
                errors.push(FieldError::new(
                    field,
                    "numbers must be 0 or have a magnitude from 1e-130 to below 1e126",
                ));
            }
        }
        Value::Array(_) | Value::Object(_) if depth >= MAX_JSON_DEPTH => {
            errors.push(FieldError::new(
                field,
                format!("must not nest deeper than {MAX_JSON_DEPTH} levels"),
            ));
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_storable(&format!("{field}[{i}]"), item, depth + 1, errors);
            }
        }
        Value::Object(map) => check_storable_object(field, map, depth, errors),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// [`check_storable`] for the members of an object at `depth`.
pub fn check_storable_object(
    field: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    depth: usize,
    errors: &mut Vec<FieldError>,
) {
    for (key, value) in map {
        if key.is_empty() {
            errors.push(FieldError::new(field, "keys must not be empty"));
        } else {
            check_storable(&format!("{field}.{key}"), value, depth + 1, errors);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_dynamodb_cannot_store_is_named_by_path() {
        let value = serde_json::json!({"a": {"b": [1, 1e200]}, "": 1, "ok": 0.5});
        let mut errors = Vec::new();
        check_json_object("metadata", value.as_object().unwrap(), &mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"metadata.a.b[1]"), "{fields:?}");
        assert!(fields.contains(&"metadata"), "{fields:?}");
        assert_eq!(fields.len(), 2);
        let mut deep = serde_json::json!(1);
        for _ in 0..20 {
            deep = serde_json::json!({ "x": deep });
        }
        let mut errors = Vec::new();
        check_json_object("settings", deep.as_object().unwrap(), &mut errors);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn an_oversized_object_is_refused_before_its_content_is_walked() {
        let big = serde_json::json!({"blob": "x".repeat(MAX_JSON_OBJECT_BYTES)});
        let mut errors = Vec::new();
        check_json_object("config", big.as_object().unwrap(), &mut errors);
        assert_eq!(
            errors,
            vec![FieldError::new(
                "config",
                format!("must be at most {MAX_JSON_OBJECT_BYTES} bytes of JSON")
            )]
        );
    }
}
