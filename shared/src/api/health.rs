//! `GET /health`: readiness of each dependency (see [`crate::health`]). No authentication.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::health::{self, Health};
use crate::state::AppState;

/// Reports whether DynamoDB, SQS, Secrets Manager and the run lifecycle state machine are
/// ready, as `ok` or `degraded` each; the report may be up to 5 s old.
#[utoipa::path(
    get,
    path = "/health",
    tag = "platform",
    responses(
        (status = 200, description = "Every dependency is ready", body = Health),
        (status = 503, description = "A dependency is not ready", body = Health),
    )
)]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let health = state
        .health
        .get(health::check(&state.clients, &state.store, &state.config))
        .await;
    let status = if health.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health))
}

/// The platform routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}
