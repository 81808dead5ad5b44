//! `/api/v1/schedules` over HTTP: schedules that start runs on a cron expression, their
//! preview and fire history, and starting one now. The rules live in
//! [`crate::usecase::schedules`] and [`crate::schedule`].

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery};
use super::runs::RunView;
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{ts, Env};
use crate::error::{ApiError, ApiResult, Problem};
use crate::schedule::{Fire, FireOutcome, OverlapPolicy, Schedule, ScheduleStatus, ScheduleType};
use crate::state::AppState;
use crate::store::schedules::ScheduleFilter;
use crate::usecase::schedules::{self, CreateSchedule, CreatedSchedule, UpdateSchedule};
use crate::validate::required_project_id;

/// Most fires one preview lists.
const MAX_PREVIEW: usize = 100;
/// Fires a preview lists by default.
const DEFAULT_PREVIEW: usize = 10;

/// A schedule as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Schedule id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Name.
    pub name: String,
    /// What fires it.
    #[serde(rename = "type")]
    pub kind: ScheduleType,
    /// The cron expression.
    pub expression: String,
    /// IANA time zone the expression is evaluated in.
    pub timezone: String,
    /// The workflow its runs run.
    pub target_workflow_id: Uuid,
    /// The version its runs use; `null`: the workflow's current version at fire time.
    pub workflow_version: Option<u64>,
    /// The agent of its runs.
    pub agent_id: Uuid,
    /// The environment of its runs.
    pub env: Env,
    /// The input of its runs; `input.event` (`schedule_id`, `nominal_time`) is added at fire
    /// time.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Free-form metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// `active` or `paused`.
    pub status: ScheduleStatus,
    /// What a fire does while the previous run is unfinished.
    pub overlap_policy: OverlapPolicy,
    /// Slots found later than this are `skipped_missed`; those within collapse into one
    /// catch-up run.
    pub catchup_window_seconds: u32,
    /// The next slot (UTC); `null` while paused.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_run_at: Option<String>,
    /// When its last run was started.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_run_at: Option<String>,
    /// Its last run.
    pub last_run_id: Option<Uuid>,
    /// The user it acts as: its runs start with this user's current role.
    pub owner_user_id: Uuid,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: String,
    /// Version for optimistic concurrency (`version` in PATCH, or `If-Match`).
    pub version: u64,
    /// A webhook schedule's signing secret (64 hex characters): only in the answer that
    /// creates it, never again (`rotate-secret` issues a new one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<Schedule> for ScheduleView {
    fn from(s: Schedule) -> Self {
        Self {
            id: s.id,
            project_id: s.project_id,
            name: s.name,
            kind: s.kind,
            expression: s.expression,
            timezone: s.timezone,
            target_workflow_id: s.target_workflow_id,
            workflow_version: s.workflow_version,
            agent_id: s.agent_id,
            env: s.env,
            input: s.input,
            metadata: s.metadata,
            status: s.status,
            overlap_policy: s.overlap_policy,
            catchup_window_seconds: s.catchup_window_seconds,
            next_run_at: s.next_run_at.as_ref().map(ts::format),
            last_run_at: s.last_run_at.as_ref().map(ts::format),
            last_run_id: s.last_run_id,
            owner_user_id: s.owner_user_id,
            created_at: ts::format(&s.created_at),
            updated_at: ts::format(&s.updated_at),
            version: s.version,
            secret: None,
        }
    }
}

/// One fire of a schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct FireView {
    /// The slot (UTC).
    #[schema(value_type = String, format = DateTime)]
    pub nominal_time: String,
    /// What became of it.
    pub outcome: FireOutcome,
    /// The run it started (`started` only).
    pub run_id: Option<Uuid>,
    /// Why it was denied or collapsed.
    pub reason: Option<String>,
    /// When the outcome was recorded.
    #[schema(value_type = String, format = DateTime)]
    pub recorded_at: String,
}

impl From<Fire> for FireView {
    fn from(fire: Fire) -> Self {
        Self {
            nominal_time: ts::format(&fire.nominal_time),
            outcome: fire.outcome,
            run_id: fire.run_id,
            reason: fire.reason,
            recorded_at: ts::format(&fire.recorded_at),
        }
    }
}

/// One upcoming fire.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewFire {
    /// The instant, UTC (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub at: String,
    /// The same instant in the schedule's time zone (RFC 3339 with offset).
    pub local: String,
    /// Why it fires at this instant rather than the local time the expression names (a
    /// local time skipped by daylight saving), if so.
    pub note: Option<String>,
}

/// `GET /schedules/{id}/preview`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    /// The next fires at or after `from`, in order.
    pub fires: Vec<PreviewFire>,
}

/// `GET /schedules` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListSchedules {
    /// The project whose schedules to list (required).
    #[param(required = true, value_type = Uuid)]
    pub project_id: Option<String>,
    /// Only schedules of this type.
    #[param(value_type = Option<ScheduleType>)]
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Only schedules in this status.
    #[param(value_type = Option<ScheduleStatus>)]
    pub status: Option<String>,
    /// Only schedules of this workflow.
    #[param(value_type = Option<Uuid>)]
    pub workflow_id: Option<String>,
    /// Items per page, 1–200 (default 50).
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// `GET /schedules/{id}/preview` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// The first instant to consider, RFC 3339 (default now).
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<String>,
    /// How many fires, 1–100 (default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub count: Option<String>,
}

/// Creates a schedule owned by the caller (an API key's creator).
#[utoipa::path(
    post, path = "/api/v1/schedules", tag = "schedules",
    security(("bearer" = []), ("api_key" = [])),
    request_body = CreateSchedule,
    responses(
        (status = 201, description = "Created; `Location` names it and `ETag` carries its version", body = ScheduleView),
        (status = 400, description = "No project_id", body = Problem),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 422, description = "Invalid fields, each named: an invalid cron expression, an unknown time zone, a workflow or agent of another project…", body = Problem),
    )
)]
pub async fn create_schedule(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateSchedule>,
) -> ApiResult<Response> {
    let CreatedSchedule { schedule, secret } = schedules::create(&state, &principal, body).await?;
    let (path, version) = (
        format!("/api/v1/schedules/{}", schedule.id),
        schedule.version,
    );
    let view = ScheduleView {
        secret: secret.map(|s| s.expose_secret().to_owned()),
        ..ScheduleView::from(schedule)
    };
    Ok(created(&path, version, view))
}

/// Lists a project's schedules, oldest first.
#[utoipa::path(
    get, path = "/api/v1/schedules", tag = "schedules",
    security(("bearer" = []), ("api_key" = [])),
    params(ListSchedules),
    responses(
        (status = 200, description = "A page of schedules; with filters, a page may be short while `next_cursor` continues", body = Page<ScheduleView>),
        (status = 400, description = "No project_id, or a bad filter, limit or cursor", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn list_schedules(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListSchedules>,
) -> ApiResult<Json<Page<ScheduleView>>> {
    let project_id = required_project_id(query.project_id.as_deref())?;
    let filter = ScheduleFilter {
        kind: query
            .kind
            .as_deref()
            .map(|raw| ScheduleType::parse(raw).map_err(|m| ApiError::bad_request("type", m)))
            .transpose()?,
        status: query
            .status
            .as_deref()
            .map(|raw| ScheduleStatus::parse(raw).map_err(|m| ApiError::bad_request("status", m)))
            .transpose()?,
        workflow_id: query
            .workflow_id
            .as_deref()
            .map(|raw| {
                Uuid::try_parse(raw)
                    .map_err(|_| ApiError::bad_request("workflow_id", "must be a UUID"))
            })
            .transpose()?,
    };
    authorize(&state, &principal, project_id, Action::ReadRegistry).await?;
    let scope = format!(
        "schedules:{project_id}:{:?}:{:?}:{:?}",
        filter.kind, filter.status, filter.workflow_id
    );
    let request = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .resolve(&state, scope)?;
    let page = state
        .store
        .list_schedules(project_id, filter, request.limit, request.start.clone())
        .await?;
    request.respond(&state, page)
}

/// Reads a schedule.
#[utoipa::path(
    get, path = "/api/v1/schedules/{id}", tag = "schedules",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The schedule; `ETag` carries its version", body = ScheduleView),
        (status = 404, description = "No such schedule visible to the caller", body = Problem),
    )
)]
pub async fn get_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let schedule =
        schedules::visible_schedule(&state, &principal, &id, Action::ReadRegistry).await?;
    Ok(with_etag(
        schedule.version,
        Json(ScheduleView::from(schedule)),
    ))
}

/// Changes a schedule; pausing stops its fires, resuming starts from the next slot after now.
#[utoipa::path(
    patch, path = "/api/v1/schedules/{id}", tag = "schedules",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Schedule id"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on"),
    ),
    request_body = UpdateSchedule,
    responses(
        (status = 200, description = "The changed schedule", body = ScheduleView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such schedule visible to the caller", body = Problem),
        (status = 409, description = "Stale version, or changed or fired concurrently", body = Problem),
        (status = 422, description = "Invalid fields, each named", body = Problem),
    )
)]
pub async fn update_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateSchedule>,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, body.version)?;
    let schedule = schedules::update(&state, &principal, &id, expected, body).await?;
    Ok(with_etag(
        schedule.version,
        Json(ScheduleView::from(schedule)),
    ))
}

/// Deletes a schedule; its fire history expires on its own.
#[utoipa::path(
    delete, path = "/api/v1/schedules/{id}", tag = "schedules",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Schedule id"),
        ("If-Match" = Option<String>, Header, description = "Delete only if still at this version"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such schedule visible to the caller", body = Problem),
        (status = 409, description = "Stale version, or changed concurrently", body = Problem),
    )
)]
pub async fn delete_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let expected = expected_version(&headers, None)?;
    schedules::delete(&state, &principal, &id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a run of the schedule now, as the caller (`trigger: manual`, with `schedule_id`).
#[utoipa::path(
    post, path = "/api/v1/schedules/{id}/trigger", tag = "schedules",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses(
        (status = 201, description = "The run started; `Location` is its address", body = RunView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such schedule visible to the caller", body = Problem),
        (status = 422, description = "The schedule's workflow has no released version, or its agent is gone", body = Problem),
        (status = 503, description = "The run's lifecycle could not start; the run is recorded as failed", body = Problem),
    )
)]
pub async fn trigger_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let started = schedules::trigger(&state, &principal, &id).await?;
    let run = started.run;
    Ok(created(
        &format!("/api/v1/runs/{}", run.id),
        run.version,
        RunView::from(run),
    ))
}

/// The next fires of a cron schedule at or after `from`, UTC and local, with a note where
/// daylight saving moves one.
#[utoipa::path(
    get, path = "/api/v1/schedules/{id}/preview", tag = "schedules",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Schedule id"), PreviewQuery),
    responses(
        (status = 200, description = "The next fires", body = Preview),
        (status = 400, description = "A bad `from` or `count`", body = Problem),
        (status = 404, description = "No such schedule visible to the caller", body = Problem),
    )
)]
pub async fn preview_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PreviewQuery>,
) -> ApiResult<Json<Preview>> {
    let from = match query.from.as_deref() {
        None => state.clock.now(),
        Some(raw) => DateTime::parse_from_rfc3339(raw)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_| ApiError::bad_request("from", "must be an RFC 3339 time"))?,
    };
    let count = match query.count.as_deref() {
        None => DEFAULT_PREVIEW,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PREVIEW).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "count",
                    format!("must be a whole number from 1 to {MAX_PREVIEW}"),
                )
            })?,
    };
    let schedule =
        schedules::visible_schedule(&state, &principal, &id, Action::ReadRegistry).await?;
    let fires = schedule
        .cron()
        .map(|spec| spec.fires_from(from, count))
        .unwrap_or_default()
        .into_iter()
        .map(|fire| PreviewFire {
            at: ts::format(&fire.at),
            local: fire.local.to_rfc3339(),
            note: fire.note,
        })
        .collect();
    Ok(Json(Preview { fires }))
}

/// The schedule's fires, the latest slot first: started, skipped, collapsed, buffered or
/// denied (kept 90 days).
#[utoipa::path(
    get, path = "/api/v1/schedules/{id}/fires", tag = "schedules",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Schedule id"), PageQuery),
    responses(
        (status = 200, description = "A page of fires, newest first", body = Page<FireView>),
        (status = 400, description = "A bad limit or cursor", body = Problem),
        (status = 404, description = "No such schedule visible to the caller", body = Problem),
    )
)]
pub async fn list_fires(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<FireView>>> {
    let schedule =
        schedules::visible_schedule(&state, &principal, &id, Action::ReadRegistry).await?;
    let request = page.resolve(&state, format!("fires:{}", schedule.id))?;
    let page = state
        .store
        .list_fires(schedule.id, request.limit, request.start.clone())
        .await?;
    request.respond(&state, page)
}

/// The schedules routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_schedules, create_schedule))
        .routes(routes!(get_schedule, update_schedule, delete_schedule))
        .routes(routes!(trigger_schedule))
        .routes(routes!(preview_schedule))
        .routes(routes!(list_fires))
}
