//! `/api/v1/hooks/{schedule_id}`: signed inbound deliveries that start a webhook schedule's
//! run (no JWT: the signature authenticates them), and rotating a webhook schedule's signing
//! secret. The rules live in [`crate::usecase::hooks`].

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Principal;
use crate::engine::webhook::{DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::usecase::hooks::{self, Delivery, MAX_HOOK_BODY_BYTES};

/// A delivery accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookAccepted {
    /// The run it started (or, for a redelivery, the first delivery's run).
    pub run_id: Uuid,
}

/// A new signing secret.
#[derive(Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new secret (64 hex characters), shown this once; the previous one stays valid
    /// for an hour.
    pub secret: String,
}

/// Starts a run of a webhook schedule (`trigger: webhook`) for a signed delivery, as the
/// schedule's owner. Sign `"<timestamp>.<raw body>"` with HMAC-SHA256 under the schedule's
/// secret: `X-Spark-Ops-Timestamp: <unix seconds>` (within 300 s),
/// `X-Spark-Ops-Signature: v1=<hex>`. `X-Spark-Ops-Delivery` (or, absent, the signature)
/// de-duplicates deliveries for 24 h. The run's input is the schedule's `input` with
/// `input.event = {"body", "delivery_id"}`.
#[utoipa::path(
    post, path = "/api/v1/hooks/{schedule_id}", tag = "schedules",
    params(
        ("schedule_id" = Uuid, Path, description = "The webhook schedule"),
        ("X-Spark-Ops-Timestamp" = String, Header, description = "Signing time, unix seconds"),
        ("X-Spark-Ops-Signature" = String, Header, description = "`v1=<hex HMAC-SHA256 of \"<timestamp>.<raw body>\">`"),
        ("X-Spark-Ops-Delivery" = Option<String>, Header, description = "Delivery id: the same delivery within 24 h starts one run"),
    ),
    request_body(content = Object, description = "Any JSON object (at most 256 KiB); it becomes `input.event.body`"),
    responses(
        (status = 202, description = "Accepted: the run started, or the one this delivery already started", body = HookAccepted),
        (status = 400, description = "The body is not a JSON object, or the delivery id is over 255 characters", body = Problem),
        (status = 401, description = "A missing or bad signature, a timestamp more than 300 s away, or no such webhook schedule (indistinguishable); nothing is started", body = Problem),
        (status = 403, description = "The schedule's owner may no longer start runs; the fire is recorded `denied`", body = Problem),
        (status = 409, description = "The schedule is paused", body = Problem),
        (status = 413, description = "The body is over 256 KiB", body = Problem),
        (status = 422, description = "The schedule's workflow or agent can no longer run; the fire is recorded `denied`", body = Problem),
        (status = 503, description = "The run's lifecycle could not start; deliver again", body = Problem),
    )
)]
pub async fn receive_hook(
    State(state): State<AppState>,
    Path(schedule_id): Path<String>,
    request: Request,
) -> ApiResult<(StatusCode, Json<HookAccepted>)> {
    let headers: HeaderMap = request.headers().clone();
    let body = read_bounded(request.into_body()).await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let delivery = Delivery {
        timestamp: header(TIMESTAMP_HEADER),
        signature: header(SIGNATURE_HEADER),
        delivery_id: header(DELIVERY_HEADER),
        body: &body,
    };
    let started = hooks::receive(&state, &schedule_id, delivery).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(HookAccepted {
            run_id: started.run.id,
        }),
    ))
}

async fn read_bounded(body: Body) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(body, MAX_HOOK_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            limit: MAX_HOOK_BODY_BYTES,
        })
}

/// Gives a webhook schedule a new signing secret, shown this once; the previous secret keeps
/// signing for an hour, so senders can switch without dropping deliveries.
#[utoipa::path(
    post, path = "/api/v1/schedules/{id}/rotate-secret", tag = "schedules",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The new secret", body = RotatedSecret),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such schedule visible to the caller", body = Problem),
        (status = 409, description = "Not a webhook schedule", body = Problem),
    )
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<RotatedSecret>> {
    let secret = hooks::rotate_secret(&state, &principal, &id).await?;
    Ok(Json(RotatedSecret {
        secret: secret.expose_secret().to_owned(),
    }))
}

/// The hooks routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive_hook))
        .routes(routes!(rotate_secret))
}
