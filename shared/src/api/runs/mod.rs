//! `/api/v1/runs`: start runs and follow, cancel, retry, resume, approve or reject them.
//!
//! The handlers read the request and shape the response; what happens to a run, and the
//! rules it follows (idempotency, governance, status changes), is the run use cases'
//! ([`crate::usecase::runs`]). A `POST /runs` replayed with its `Idempotency-Key` answers the
//! first run with `Idempotent-Replayed: true`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{parse_json, ApiJson, ApiQuery, PageQuery};
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::tokens::digest;
use crate::auth::{authorize, Principal, ProjectAccess};
use crate::domain::Env;
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::run::{Run, RunStatus, StepsSummary, Trigger};
use crate::state::AppState;
use crate::store::runs::RunFilter;
use crate::usecase::access::record_id;
use crate::usecase::runs::{self, Idempotency, StartRun};
use crate::validate::{check_json_object, required_project_id, FieldErrors};

/// What the errors call a run.
const WHAT: &str = "run";
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

mod views;

pub use views::{LogView, PayloadLinkView, RunView, StepView};

/// Header marking a replayed `POST /runs`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// `POST /runs` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// The workflow to run.
    pub workflow_id: String,
    /// Its version; the workflow's `current_version` (which must be released) by default. A
    /// draft version needs `allow_draft`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Run `version` even if it is a draft. Needs the role that may release versions
    /// (`developer`); without it, a draft is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_draft: Option<bool>,
    /// The agent whose model runs prompt steps; in the workflow's project.
    pub agent_id: String,
    /// The run input, an object (default `{}`), at most 128 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// `dev`, `staging` or `prod`.
    pub env: String,
    /// Free-form metadata, an object of at most 32 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Wait for an approval before running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_approval: Option<bool>,
}

/// `POST /runs/{id}/resume` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRun {
    /// The human step's output, an object.
    #[schema(value_type = Object)]
    pub input: Value,
}

/// `POST /runs/{id}/approve` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRun {
    /// A note kept with the decision.
    #[serde(default)]
    pub comment: Option<String>,
}

/// `POST /runs/{id}/reject` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRun {
    /// Why; kept as the run's `error_message`.
    pub reason: String,
}

/// `GET /runs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRunsQuery {
    /// The project (required).
    pub project_id: Option<String>,
    /// Only runs in this status.
    pub status: Option<String>,
    /// Only runs of this workflow.
    pub workflow_id: Option<String>,
    /// Only runs by this agent.
    pub agent_id: Option<String>,
    /// Only runs started this way: `manual`, `schedule`, `webhook` or `event`.
    pub trigger: Option<String>,
    /// Only runs started by this schedule.
    pub schedule_id: Option<String>,
    /// Only runs created at or after this RFC 3339 time.
    pub created_after: Option<String>,
    /// Only runs created before this RFC 3339 time.
    pub created_before: Option<String>,
    /// Page size, 1-200 (default 50).
    pub limit: Option<String>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}
/// Starts a run.
#[utoipa::path(
    post, path = "/api/v1/runs", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first run instead of starting another")),
    request_body = CreateRun,
    responses(
        (status = 201, description = "Started (or replayed, with `Idempotent-Replayed: true`); `Location` is its address", body = RunView),
        (status = 403, description = "Needs developer (also to run a draft with `allow_draft`)", body = Problem),
        (status = 422, description = "Invalid fields; an unknown workflow, version or agent; a draft version without `allow_draft`; an `Idempotency-Key` reused with another body", body = Problem),
        (status = 503, description = "The run's lifecycle could not start; the run is recorded as failed", body = Problem),
    )
)]
pub async fn create_run(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateRun>,
) -> ApiResult<Response> {
    let idempotency = idempotency_key(&headers)?.map(|key| Idempotency {
        key,
        request_digest: request_digest(&body),
    });
    let mut invalid = Vec::new();
    let workflow_id = parse_id("workflow_id", &body.workflow_id, &mut invalid);
    let agent_id = parse_id("agent_id", &body.agent_id, &mut invalid);
    let env = invalid.check("env", Env::parse(&body.env));
    let input = runs::read_input("input", body.input, &mut invalid);
    let metadata = runs::read_object("metadata", body.metadata, &mut invalid);
    if let Value::Object(map) = &metadata {
        check_json_object("metadata", map, &mut invalid);
    }
    let Some(workflow_id) = workflow_id else {
        return Err(ApiError::invalid_fields(invalid));
    };
    let request = StartRun {
        workflow_id,
        version: body.version,
        allow_draft: body.allow_draft == Some(true),
        agent_id,
        env,
        input,
        metadata,
        require_approval: body.require_approval.unwrap_or(false),
        trigger: Trigger::Manual,
        origin: None,
        chain_depth: 0,
        schedule: None,
        idempotency,
        invalid,
    };
    let started = runs::start(&state, &principal, request).await?;
    let location = format!("/api/v1/runs/{}", started.run.id);
    let version = started.run.version;
    let mut response = created(&location, version, RunView::from(started.run));
    if started.replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Lists a project's runs, newest first.
#[utoipa::path(
    get, path = "/api/v1/runs", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(ListRunsQuery),
    responses(
        (status = 200, description = "A page of runs, newest first", body = Page<RunView>),
        (status = 400, description = "A missing project_id or a bad filter, limit or cursor", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn list_runs(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListRunsQuery>,
) -> ApiResult<Json<Page<RunView>>> {
    let project_id = required_project_id(query.project_id.as_deref())?;
    let filter = RunFilter {
        status: query
            .status
            .as_deref()
            .map(|raw| {
                RunStatus::parse(raw).ok_or_else(|| {
                    ApiError::bad_request(
                        "status",
                        "must be one of queued, awaiting_approval, running, awaiting_input, \
                         succeeded, failed, cancelled",
                    )
                })
            })
            .transpose()?,
        workflow_id: query_id("workflow_id", query.workflow_id.as_deref())?,
        agent_id: query_id("agent_id", query.agent_id.as_deref())?,
        trigger: query
            .trigger
            .as_deref()
            .map(|raw| match raw {
                "manual" => Ok(Trigger::Manual),
                "schedule" => Ok(Trigger::Schedule),
                "webhook" => Ok(Trigger::Webhook),
                "event" => Ok(Trigger::Event),
                _ => Err(ApiError::bad_request(
                    "trigger",
                    "must be one of manual, schedule, webhook, event",
                )),
            })
            .transpose()?,
        schedule_id: query_id("schedule_id", query.schedule_id.as_deref())?,
        created_after: query_time("created_after", query.created_after.as_deref())?,
        created_before: query_time("created_before", query.created_before.as_deref())?,
    };
    if let (Some(after), Some(before)) = (filter.created_after, filter.created_before) {
        if after >= before {
            return Err(ApiError::bad_request(
                "created_before",
                "must be later than created_after",
            ));
        }
    }
    authorize(&state, &principal, project_id, Action::ReadRuns).await?;
    let scope = format!(
        "runs:{project_id}:{:?}:{:?}:{:?}:{:?}:{:?}:{:?}:{:?}",
        filter.status,
        filter.workflow_id,
        filter.agent_id,
        filter.trigger,
        filter.schedule_id,
        filter.created_after,
        filter.created_before
    );
    let page_request = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .resolve(&state, scope)?;
    let mut page = state
        .store
        .list_runs(
            project_id,
            &filter,
            page_request.limit,
            page_request.start.clone(),
        )
        .await?;
    page.items.retain(|r| r.project_id == project_id);
    page_request.respond(&state, page)
}

/// Reads a run, with a summary of its steps counted on the run item (one read, whatever the
/// run's size).
#[utoipa::path(
    get, path = "/api/v1/runs/{id}", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run with `steps_summary`; `ETag` carries its version", body = RunView),
        (status = 404, description = "No such run visible to the caller", body = Problem),
    )
)]
pub async fn get_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (run, _) = visible_run(&state, &principal, &id, Action::ReadRuns).await?;
    let version = run.version;
    let summary = StepsSummary::of(run.steps_total, run.step_counts);
    let mut view = RunView::from(run);
    view.steps_summary = Some(summary);
    Ok(with_etag(version, Json(view)))
}

/// Cancels a run that has not ended: its execution stops, and a worker mid-run stops at
/// the next step boundary.
#[utoipa::path(
    patch, path = "/api/v1/runs/{id}/cancel", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The cancelled run", body = RunView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such run visible to the caller", body = Problem),
        (status = 409, description = "The run has already ended", body = Problem),
    )
)]
pub async fn cancel_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let (run, _) = visible_run(&state, &principal, &id, Action::OperateRuns).await?;
    let run = runs::cancel(&state, &principal, &run).await?;
    Ok(Json(RunView::from(run)))
}

/// Re-drives a failed run from its first failed step; steps that succeeded are kept.
#[utoipa::path(
    post, path = "/api/v1/runs/{id}/retry", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run, queued again with `retries` incremented", body = RunView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such run visible to the caller", body = Problem),
        (status = 409, description = "The run has not failed, or its lifecycle has ended (its retry window passed)", body = Problem),
    )
)]
pub async fn retry_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let (run, _) = visible_run(&state, &principal, &id, Action::OperateRuns).await?;
    let run = runs::retry(&state, &principal, &run).await?;
    Ok(Json(RunView::from(run)))
}

/// Completes the `human` step a run waits on; its input becomes the step's output.
#[utoipa::path(
    post, path = "/api/v1/runs/{id}/resume", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    request_body = ResumeRun,
    responses(
        (status = 200, description = "The run, running again", body = RunView),
        (status = 403, description = "Needs developer, and a person: API keys cannot resume human steps", body = Problem),
        (status = 404, description = "No such run visible to the caller", body = Problem),
        (status = 409, description = "The run is not waiting for input", body = Problem),
        (status = 422, description = "`input` is not an object or is too large", body = Problem),
    )
)]
pub async fn resume_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ResumeRun>,
) -> ApiResult<Json<RunView>> {
    let (run, _) = visible_run(&state, &principal, &id, Action::OperateRuns).await?;
    let run = runs::resume(&state, &principal, &run, body.input).await?;
    Ok(Json(RunView::from(run)))
}

/// Approves a run waiting for approval; it is queued to run.
#[utoipa::path(
    post, path = "/api/v1/runs/{id}/approve", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    request_body(content = ApproveRun, description = "Optional comment"),
    responses(
        (status = 200, description = "The approved run", body = RunView),
        (status = 403, description = "Needs admin; and someone other than who started the run, unless the project allows self-approval", body = Problem),
        (status = 404, description = "No such run visible to the caller", body = Problem),
        (status = 409, description = "The run is not awaiting approval", body = Problem),
    )
)]
pub async fn approve_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RunView>> {
    let (run, access) = visible_run(&state, &principal, &id, Action::ApproveRuns).await?;
    // The body is optional.
    let comment = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        parse_json::<ApproveRun>(&body)?.comment
    };
    let run = runs::approve(&state, &principal, &access, &run, comment).await?;
    Ok(Json(RunView::from(run)))
}

/// Rejects a run waiting for approval; it ends `cancelled` with the reason.
#[utoipa::path(
    post, path = "/api/v1/runs/{id}/reject", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    request_body = RejectRun,
    responses(
        (status = 200, description = "The rejected run", body = RunView),
        (status = 403, description = "Needs admin; and someone other than who started the run, unless the project allows self-approval", body = Problem),
        (status = 404, description = "No such run visible to the caller", body = Problem),
        (status = 409, description = "The run is not awaiting approval", body = Problem),
        (status = 422, description = "A missing or too long reason", body = Problem),
    )
)]
pub async fn reject_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RejectRun>,
) -> ApiResult<Json<RunView>> {
    let (run, access) = visible_run(&state, &principal, &id, Action::ApproveRuns).await?;
    let run = runs::reject(&state, &principal, &access, &run, &body.reason).await?;
    Ok(Json(RunView::from(run)))
}

/// Lists a run's step records in execution order; loop iterations follow their loop. A
/// request or response larger than 32 KiB of JSON is kept whole outside the record: it shows
/// as `null`, and its `request_ref` / `response_ref` gives its size, SHA-256 and a presigned
/// URL (valid 15 minutes) that answers it to a plain `GET`.
#[utoipa::path(
    get, path = "/api/v1/runs/{id}/steps", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Run id"), PageQuery),
    responses(
        (status = 200, description = "A page of step records", body = Page<StepView>),
        (status = 400, description = "A bad limit or cursor", body = Problem),
        (status = 404, description = "No such run visible to the caller", body = Problem),
    )
)]
pub async fn list_steps(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<StepView>>> {
    let (run, _) = visible_run(&state, &principal, &id, Action::ReadRuns).await?;
    let request = page.resolve(&state, format!("runs:{}:steps", run.id))?;
    let mut page = state
        .store
        .list_steps(run.id, request.limit, request.start.clone())
        .await?;
    let next_cursor = request.next_cursor(&state, &page)?;
    let mut items = Vec::with_capacity(page.items.len());
    for step in std::mem::take(&mut page.items) {
        items.push(StepView::of(&state, step).await?);
    }
    Ok(Json(Page { items, next_cursor }))
}

/// Lists a run's log lines, oldest first.
#[utoipa::path(
    get, path = "/api/v1/runs/{id}/logs", tag = "runs",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Run id"), PageQuery),
    responses(
        (status = 200, description = "A page of log lines", body = Page<LogView>),
        (status = 400, description = "A bad limit or cursor", body = Problem),
        (status = 404, description = "No such run visible to the caller", body = Problem),
    )
)]
pub async fn list_logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<LogView>>> {
    let (run, _) = visible_run(&state, &principal, &id, Action::ReadRuns).await?;
    let request = page.resolve(&state, format!("runs:{}:logs", run.id))?;
    let page = state
        .store
        .list_logs(run.id, request.limit, request.start.clone())
        .await?;
    request.respond(&state, page)
}

/// Routes of `/api/v1/runs`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_runs, create_run))
        .routes(routes!(get_run))
        .routes(routes!(cancel_run))
        .routes(routes!(retry_run))
        .routes(routes!(resume_run))
        .routes(routes!(approve_run))
        .routes(routes!(reject_run))
        .routes(routes!(list_steps))
        .routes(routes!(list_logs))
}

/// The run with id `raw`, if the principal may do `action` on its project, with that access.
async fn visible_run(
    state: &AppState,
    principal: &Principal,
    raw: &str,
    action: Action,
) -> ApiResult<(Run, ProjectAccess)> {
    runs::visible(state, principal, record_id(raw, WHAT)?, action).await
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_CHARS
                && k.chars().all(|c| c.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "Idempotency-Key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// A digest of the request: the body as canonical JSON (keys sorted).
fn request_digest(body: &CreateRun) -> String {
    let canonical = serde_json::to_value(body)
        .map(|v| v.to_string())
        .unwrap_or_default();
    digest(&canonical)
}

fn parse_id(field: &str, raw: &str, errors: &mut Vec<FieldError>) -> Option<Uuid> {
    Uuid::try_parse(raw)
        .map_err(|_| errors.push(FieldError::new(field, "must be a UUID")))
        .ok()
}

fn query_id(field: &str, raw: Option<&str>) -> ApiResult<Option<Uuid>> {
    raw.map(|raw| Uuid::try_parse(raw).map_err(|_| ApiError::bad_request(field, "must be a UUID")))
        .transpose()
}

fn query_time(field: &str, raw: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_| ApiError::bad_request(field, "must be an RFC 3339 time"))
    })
    .transpose()
}
