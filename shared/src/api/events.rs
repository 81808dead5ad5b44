//! `/api/v1/events`: tenants put their own events on the Spark-Ops bus, where the event
//! schedules of their project can match them ([`crate::usecase::events`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use crate::auth::Principal;
use crate::error::{ApiResult, Problem};
use crate::state::AppState;
use crate::usecase::events::{self, PublishEvent};

/// An event on the bus.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedEvent {
    /// EventBridge's id of the event.
    pub event_id: String,
}

/// Puts an event on the bus, with the project stamped in `detail.project_id`.
#[utoipa::path(
    post, path = "/api/v1/events", tag = "events",
    security(("bearer" = []), ("api_key" = [])),
    request_body = PublishEvent,
    responses(
        (status = 202, description = "On the bus", body = PublishedEvent),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 422, description = "Invalid fields: a `source` of Spark-Ops' or AWS's own, a `detail` that is not a bounded object", body = Problem),
        (status = 503, description = "The bus did not take the event; nothing was published", body = Problem),
    )
)]
pub async fn publish_event(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<PublishEvent>,
) -> ApiResult<(StatusCode, Json<PublishedEvent>)> {
    let event_id = events::publish(&state, &principal, body).await?;
    Ok((StatusCode::ACCEPTED, Json(PublishedEvent { event_id })))
}

/// Routes of the event bus.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(publish_event))
}
