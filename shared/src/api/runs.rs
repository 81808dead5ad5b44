//! `/api/v1/runs`: start runs and follow, cancel, retry, resume, approve or reject them.
//!
//! - `POST /runs` honours `Idempotency-Key` (per project, remembered 24 h): a replay with the
//!   same body returns the first run (`Idempotent-Replayed: true`) and starts nothing; the
//!   same key with another body is `422`. The run and its key are written in one
//!   transaction; then the run's Step Functions execution (named by the run id) starts. If
//!   it cannot start, the run ends `failed` with the reason and the caller gets `503`.
//! - Status changes are conditional writes ([`RunStatus::can_become`]); a request that finds
//!   the run in another status gets `409` and changes nothing.
//! - Approve, resume and retry move the run first, then answer the lifecycle's parked task
//!   (see [`crate::engine::worker`]); cancel and reject stop the execution.
//! - Governance: a run uses a released version unless the request says `allow_draft` (and the
//!   caller may release versions); whoever started a run cannot approve or reject it unless
//!   the project's `settings.approvals.allow_self_approval` says so (a run started with an API
//!   key counts as started by the key's creator too); and only people resume `human` steps.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{parse_json, ApiJson, ApiQuery, PageQuery};
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::tokens::digest;
use crate::auth::{authorize, Principal, ProjectAccess};
use crate::domain::{ts, Env};
use crate::engine::lifecycle;
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;
use crate::store::runs::{
    Approval, IdempotencyRecord, LogLevel, LogLine, Run, RunChange, RunFilter, RunStatus,
    StepRecord, StepStatus, StepsSummary, Trigger, IDEMPOTENCY_TTL,
};
use crate::store::workflows::VersionStatus;
use crate::store::StoreError;
use crate::usecase::access::{authorize_record, not_found, record_id};
use crate::validate::{check_json_object, required_project_id};
use crate::workflow::{Definition, LoopConfig, LoopStep, StepKind};

mod governance;

/// What the errors call a run.
const WHAT: &str = "run";
/// Largest run input, as JSON.
pub const MAX_INPUT_BYTES: usize = 128 * 1024;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// Longest rejection reason or approval comment.
const MAX_REASON_CHARS: usize = 1000;

/// Header marking a replayed `POST /runs`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A run as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    /// Run id; also its Step Functions execution's name.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// The workflow.
    pub workflow_id: Uuid,
    /// The workflow version it runs.
    pub workflow_version: u64,
    /// The agent whose model runs prompt steps.
    pub agent_id: Uuid,
    /// Environment.
    pub env: Env,
    /// What started it.
    pub trigger: Trigger,
    /// `queued`, `awaiting_approval`, `running`, `awaiting_input`, `succeeded`, `failed` or
    /// `cancelled`.
    pub status: RunStatus,
    /// The run input.
    pub input: Value,
    /// Free-form metadata.
    pub metadata: Value,
    /// Whether it waited for an approval.
    pub require_approval: bool,
    /// The approval decision, once made.
    pub approval: Option<Approval>,
    /// When a worker first started it.
    pub started_at: Option<String>,
    /// When it ended.
    pub ended_at: Option<String>,
    /// How long it ran, in ms.
    pub duration_ms: Option<u64>,
    /// Input tokens of every prompt step.
    pub tokens_prompt: u64,
    /// Output tokens of every prompt step.
    pub tokens_completion: u64,
    /// Exact cost in USD, a decimal string: the sum of its steps' costs.
    #[schema(value_type = String, example = "0.0000375")]
    pub usd_cost: String,
    /// Times it was retried.
    pub retries: u32,
    /// Whether the workflow has a `human` step.
    pub has_human_in_loop: bool,
    /// AWS region.
    pub region: String,
    /// Why it failed or was rejected.
    pub error_message: Option<String>,
    /// Who started it (a user or an API key id).
    pub created_by: Uuid,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    /// Last change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: String,
    /// Bumped by every change.
    pub version: u64,
    /// Step records by status (on `GET /runs/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_summary: Option<StepsSummary>,
}

impl From<Run> for RunView {
    fn from(run: Run) -> Self {
        Self {
            id: run.id,
            project_id: run.project_id,
            workflow_id: run.workflow_id,
            workflow_version: run.workflow_version,
            agent_id: run.agent_id,
            env: run.env,
            trigger: run.trigger,
            status: run.status,
            input: run.input,
            metadata: run.metadata,
            require_approval: run.require_approval,
            approval: run.approval,
            started_at: run.started_at.as_ref().map(ts::format),
            ended_at: run.ended_at.as_ref().map(ts::format),
            duration_ms: run.duration_ms,
            tokens_prompt: run.tokens_prompt,
            tokens_completion: run.tokens_completion,
            usd_cost: decimal_text(run.usd_cost),
            retries: run.retries,
            has_human_in_loop: run.has_human_in_loop,
            region: run.region,
            error_message: run.error_message,
            created_by: run.created_by,
            created_at: ts::format(&run.created_at),
            updated_at: ts::format(&run.updated_at),
            version: run.version,
            steps_summary: None,
        }
    }
}

/// A step record as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    /// The run.
    pub run_id: Uuid,
    /// Place in the run's execution order.
    pub idx: u32,
    /// The step's id in the workflow.
    pub step_id: String,
    /// The loop iteration, from 0, for an iteration's record.
    pub iteration: Option<u32>,
    /// `prompt`, `tool`, `decision`, `loop`, `webhook` or `human`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The step id, or `<id>[n]` for an iteration.
    pub name: String,
    /// `running`, `waiting`, `succeeded`, `failed` or `skipped`.
    pub status: StepStatus,
    /// Whether it succeeded.
    pub success: bool,
    /// When its last attempt started.
    #[schema(value_type = String, format = DateTime)]
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Duration of its last attempt, in ms.
    pub duration_ms: Option<u64>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// What it sent (secrets redacted).
    pub request: Option<Value>,
    /// What it produced.
    pub response: Option<Value>,
    /// Input tokens over every attempt.
    pub tokens_prompt: u64,
    /// Output tokens over every attempt.
    pub tokens_completion: u64,
    /// Cost over every attempt, in USD, a decimal string.
    #[schema(value_type = String)]
    pub usd_cost: String,
    /// Attempts made.
    pub attempts: u32,
}

impl From<StepRecord> for StepView {
    fn from(step: StepRecord) -> Self {
        Self {
            run_id: step.run_id,
            idx: step.idx,
            step_id: step.step_id,
            iteration: step.iteration,
            kind: step.kind,
            name: step.name,
            success: step.status == StepStatus::Succeeded,
            status: step.status,
            started_at: ts::format(&step.started_at),
            ended_at: step.ended_at.as_ref().map(ts::format),
            duration_ms: step.duration_ms,
            error_message: step.error_message,
            request: step.request,
            response: step.response,
            tokens_prompt: step.tokens_prompt,
            tokens_completion: step.tokens_completion,
            usd_cost: decimal_text(step.usd_cost),
            attempts: step.attempts,
        }
    }
}

/// A log line as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogView {
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: String,
    /// `info`, `warn` or `error`.
    pub level: LogLevel,
    /// The step it is about.
    pub step_id: Option<String>,
    /// The message.
    pub message: String,
}

impl From<LogLine> for LogView {
    fn from(line: LogLine) -> Self {
        Self {
            at: ts::format(&line.at),
            level: line.level,
            step_id: line.step_id,
            message: line.message,
        }
    }
}

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
    let idempotency_key = idempotency_key(&headers)?;
    let mut errors = Vec::new();
    let workflow_id = parse_id("workflow_id", &body.workflow_id, &mut errors);
    let agent_id = parse_id("agent_id", &body.agent_id, &mut errors);
    let env = match body.env.as_str() {
        "dev" => Some(Env::Dev),
        "staging" => Some(Env::Staging),
        "prod" => Some(Env::Prod),
        _ => {
            errors.push(FieldError::new("env", "must be one of dev, staging, prod"));
            None
        }
    };
    let input = object_field("input", body.input.clone(), &mut errors);
    if serde_json::to_vec(&input).map_or(usize::MAX, |v| v.len()) > MAX_INPUT_BYTES {
        errors.push(FieldError::new(
            "input",
            format!("must be at most {MAX_INPUT_BYTES} bytes of JSON"),
        ));
    }
    let metadata = object_field("metadata", body.metadata.clone(), &mut errors);
    if let Value::Object(map) = &metadata {
        check_json_object("metadata", map, &mut errors);
    }
    let Some(workflow_id) = workflow_id else {
        return Err(ApiError::invalid_fields(errors));
    };
    // The workflow decides the project; one the caller cannot see is reported as missing.
    let workflow = state
        .store
        .get_workflow(workflow_id)
        .await?
        .ok_or_else(|| ApiError::invalid("workflow_id", "no such workflow"))?;
    let project_id = workflow.project_id;
    let access = authorize(&state, &principal, project_id, Action::OperateRuns)
        .await
        .map_err(|err| match err {
            ApiError::NotFound(_) => ApiError::invalid("workflow_id", "no such workflow"),
            other => other,
        })?;
    if let Some(key) = &idempotency_key {
        if let Some(replayed) = replay(&state, project_id, key, &body).await? {
            return Ok(replayed);
        }
    }
    let number = match body.version.or(workflow.current_version) {
        Some(number) => Some(number),
        None => {
            errors.push(FieldError::new(
                "version",
                "the workflow has no released version; release one or pass `version`",
            ));
            None
        }
    };
    let version = match number {
        Some(number) => {
            match state
                .store
                .get_workflow_version(workflow_id, number)
                .await?
            {
                Some(v) if v.status == VersionStatus::Deprecated => {
                    errors.push(FieldError::new("version", "is deprecated"));
                    None
                }
                Some(v) if v.status == VersionStatus::Draft && body.allow_draft != Some(true) => {
                    errors.push(FieldError::new(
                        "version",
                        format!(
                            "version {} is a draft; runs use released versions (release it, \
                             or pass `allow_draft: true` to run the draft)",
                            v.number
                        ),
                    ));
                    None
                }
                Some(v) if v.status == VersionStatus::Draft => {
                    // Whoever may release the draft may run it; others run what was released.
                    if !Action::WriteRegistry.allowed_for(access.role) {
                        return Err(ApiError::Forbidden(format!(
                            "`allow_draft` needs the `{}` role: only those who may release a \
                             version may run it as a draft",
                            Action::WriteRegistry.required_role()
                        )));
                    }
                    Some(v)
                }
                Some(v) => Some(v),
                None => {
                    errors.push(FieldError::new(
                        "version",
                        "no such version of the workflow",
                    ));
                    None
                }
            }
        }
        None => None,
    };
    if let Some(agent_id) = agent_id {
        match state.store.get_agent(agent_id).await? {
            Some(agent) if agent.project_id == project_id => {}
            _ => errors.push(FieldError::new(
                "agent_id",
                "no such agent in the workflow's project",
            )),
        }
    }
    let (Some(version), Some(agent_id), Some(env), true) =
        (version, agent_id, env, errors.is_empty())
    else {
        return Err(ApiError::invalid_fields(errors));
    };
    let now = state.clock.now();
    let require_approval = body.require_approval.unwrap_or(false);
    let run = Run {
        id: Uuid::now_v7(),
        project_id,
        workflow_id,
        workflow_version: version.number,
        agent_id,
        env,
        trigger: Trigger::Manual,
        status: if require_approval {
            RunStatus::AwaitingApproval
        } else {
            RunStatus::Queued
        },
        input,
        metadata,
        require_approval,
        started_at: None,
        ended_at: None,
        duration_ms: None,
        tokens_prompt: 0,
        tokens_completion: 0,
        usd_cost: Decimal::ZERO,
        retries: 0,
        has_human_in_loop: has_human_step(&version.definition),
        steps_total: u32::try_from(version.definition.steps.len()).unwrap_or(u32::MAX),
        region: state.config.region.clone(),
        error_message: None,
        approval: None,
        task_token: None,
        waiting_step: None,
        created_by: principal.actor_id(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let idempotency = idempotency_key.as_ref().map(|key| IdempotencyRecord {
        project_id,
        key_digest: digest(key),
        request_digest: request_digest(&body),
        run_id: run.id,
        created_at: now,
        ttl: (now + IDEMPOTENCY_TTL).timestamp(),
    });
    match state.store.create_run(&run, idempotency.as_ref()).await {
        Ok(()) => {}
        Err(err) if matches!(err, StoreError::ConditionFailed) || err.is_conflict() => {
            // A concurrent request with the same key won the race.
            let key = idempotency_key.as_deref().unwrap_or_default();
            return match replay(&state, project_id, key, &body).await? {
                Some(replayed) => Ok(replayed),
                None => Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is in progress; retry shortly".into(),
                )),
            };
        }
        Err(err) => return Err(err.into()),
    }
    tracing::info!(run_id = %run.id, %project_id, %workflow_id, "run created");
    let run = start_lifecycle(&state, run).await?;
    let location = format!("/api/v1/runs/{}", run.id);
    let version = run.version;
    Ok(created(&location, version, RunView::from(run)))
}

/// Starts a stored run's execution; if that fails, the run ends `failed` and the caller gets
/// `503`.
async fn start_lifecycle(state: &AppState, run: Run) -> ApiResult<Run> {
    let Err(error) = lifecycle::start(state, &run).await else {
        return Ok(run);
    };
    tracing::error!(run_id = %run.id, error = ?error, "the run's lifecycle did not start");
    let now = state.clock.now();
    let change = RunChange {
        from: vec![run.status],
        ended: Some((now, 0)),
        error_message: Some(Some(
            "the run's lifecycle could not be started; start a new run".into(),
        )),
        ..RunChange::default()
    };
    if let Err(err) = state
        .store
        .transition_run(&run, RunStatus::Failed, now, change)
        .await
    {
        tracing::error!(run_id = %run.id, error = ?err, "could not record the failed start");
    }
    Err(ApiError::Unavailable(
        "the run could not be started; it is recorded as failed".into(),
    ))
}

/// The first response to a request with this key, or `None` if the key is new.
async fn replay(
    state: &AppState,
    project_id: Uuid,
    key: &str,
    body: &CreateRun,
) -> ApiResult<Option<Response>> {
    let now = state.clock.now();
    let Some(record) = state
        .store
        .get_idempotency(project_id, &digest(key), now)
        .await?
    else {
        return Ok(None);
    };
    if record.request_digest != request_digest(body) {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "was used with a different request body; use a new key for a new run",
        ));
    }
    let run = state
        .store
        .get_run(record.run_id)
        .await?
        .ok_or_else(|| not_found(WHAT))?;
    let run = if run.status == RunStatus::Queued || run.status == RunStatus::AwaitingApproval {
        // The first request may have died before starting the lifecycle; starting is
        // idempotent, so make sure it has.
        start_lifecycle(state, run).await?
    } else {
        run
    };
    let location = format!("/api/v1/runs/{}", run.id);
    let version = run.version;
    let mut response = created(&location, version, RunView::from(run));
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    Ok(Some(response))
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
        "runs:{project_id}:{:?}:{:?}:{:?}:{:?}:{:?}:{:?}",
        filter.status,
        filter.workflow_id,
        filter.agent_id,
        filter.trigger,
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

/// Reads a run, with a summary of its steps.
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
    let run = visible_run(&state, &principal, &id, Action::ReadRuns).await?;
    let steps = state.store.all_steps(run.id).await?;
    let version = run.version;
    let summary = StepsSummary::of(run.steps_total, &steps);
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
    let run = visible_run(&state, &principal, &id, Action::OperateRuns).await?;
    let at = state.clock.now();
    let change = RunChange {
        ended: Some((at, elapsed_ms(run.started_at.unwrap_or(run.created_at), at))),
        ..RunChange::default()
    };
    let run = move_run(&state, &run, RunStatus::Cancelled, change).await?;
    stop_lifecycle(&state, &run, "cancelled").await;
    note(
        &state,
        &run,
        format!("cancelled by {}", principal.actor_id()),
    )
    .await;
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
    let run = visible_run(&state, &principal, &id, Action::OperateRuns).await?;
    if run.status != RunStatus::Failed {
        return Err(not_in(&run, RunStatus::Failed));
    }
    // A failed run waits for a retry in its execution for seven days; one whose lifecycle
    // broke or expired cannot be re-driven.
    if !lifecycle::is_running(&state, run.id)
        .await
        .map_err(ApiError::Internal)?
    {
        return Err(ApiError::Conflict(
            "the run's lifecycle has ended, so it cannot be retried; start a new run".into(),
        ));
    }
    let change = RunChange {
        from: vec![RunStatus::Failed],
        retried: true,
        ..RunChange::default()
    };
    let run = move_run(&state, &run, RunStatus::Queued, change).await?;
    note(
        &state,
        &run,
        format!("retry {} by {}", run.retries, principal.actor_id()),
    )
    .await;
    release(&state, &run, json!({"retried": true})).await?;
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
    let run = visible_run(&state, &principal, &id, Action::OperateRuns).await?;
    governance::person_resumes(&principal)?;
    let mut errors = Vec::new();
    let input = object_field("input", Some(body.input), &mut errors);
    if serde_json::to_vec(&input).map_or(usize::MAX, |v| v.len()) > MAX_INPUT_BYTES {
        errors.push(FieldError::new(
            "input",
            format!("must be at most {MAX_INPUT_BYTES} bytes of JSON"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let (RunStatus::AwaitingInput, Some(step_sk)) = (run.status, run.waiting_step.clone()) else {
        return Err(ApiError::Conflict(format!(
            "the run is {}, not awaiting_input",
            run.status.as_str()
        )));
    };
    let now = state.clock.now();
    let waited = state
        .store
        .get_step(run.id, &step_sk)
        .await?
        .map_or(0, |step| elapsed_ms(step.started_at, now));
    match state
        .store
        .resume_human_step(&run, &step_sk, &input, now, waited)
        .await
    {
        Ok(()) => {}
        Err(StoreError::ConditionFailed) => {
            return Err(ApiError::Conflict(
                "the run stopped waiting for input meanwhile".into(),
            ))
        }
        Err(err) => return Err(err.into()),
    }
    let run = state
        .store
        .get_run(run.id)
        .await?
        .ok_or_else(|| not_found(WHAT))?;
    note(&state, &run, format!("resumed by {}", principal.actor_id())).await;
    release(&state, &run, json!({"resumed": true})).await?;
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
    let (run, access) =
        visible_run_with_access(&state, &principal, &id, Action::ApproveRuns).await?;
    // The body is optional.
    let comment = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        parse_json::<ApproveRun>(&body)?.comment
    };
    if comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ApiError::invalid(
            "comment",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    governance::check_not_own_run(&state, &access, &principal, &run).await?;
    let change = RunChange {
        from: vec![RunStatus::AwaitingApproval],
        approval: Some(Approval {
            decision: "approved".into(),
            decided_by: principal.actor_id(),
            decided_at: state.clock.now(),
            comment,
        }),
        ..RunChange::default()
    };
    let run = move_run(&state, &run, RunStatus::Queued, change).await?;
    note(
        &state,
        &run,
        format!("approved by {}", principal.actor_id()),
    )
    .await;
    release(&state, &run, json!({"decision": "approved"})).await?;
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
    let (run, access) =
        visible_run_with_access(&state, &principal, &id, Action::ApproveRuns).await?;
    let reason = body.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            "reason",
            format!("must be 1 to {MAX_REASON_CHARS} characters"),
        ));
    }
    governance::check_not_own_run(&state, &access, &principal, &run).await?;
    let at = state.clock.now();
    let change = RunChange {
        from: vec![RunStatus::AwaitingApproval],
        ended: Some((at, elapsed_ms(run.created_at, at))),
        error_message: Some(Some(format!("rejected: {reason}"))),
        approval: Some(Approval {
            decision: "rejected".into(),
            decided_by: principal.actor_id(),
            decided_at: at,
            comment: Some(reason),
        }),
        ..RunChange::default()
    };
    let run = move_run(&state, &run, RunStatus::Cancelled, change).await?;
    stop_lifecycle(&state, &run, "rejected").await;
    note(
        &state,
        &run,
        format!("rejected by {}", principal.actor_id()),
    )
    .await;
    Ok(Json(RunView::from(run)))
}

/// Lists a run's step records in execution order; loop iterations follow their loop.
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
    let run = visible_run(&state, &principal, &id, Action::ReadRuns).await?;
    let request = page.resolve(&state, format!("runs:{}:steps", run.id))?;
    let page = state
        .store
        .list_steps(run.id, request.limit, request.start.clone())
        .await?;
    request.respond(&state, page)
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
    let run = visible_run(&state, &principal, &id, Action::ReadRuns).await?;
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

/// The run with id `raw`, if the principal may do `action` on its project.
async fn visible_run(
    state: &AppState,
    principal: &Principal,
    raw: &str,
    action: Action,
) -> ApiResult<Run> {
    Ok(visible_run_with_access(state, principal, raw, action)
        .await?
        .0)
}

/// [`visible_run`], with the principal's access to the run's project.
async fn visible_run_with_access(
    state: &AppState,
    principal: &Principal,
    raw: &str,
    action: Action,
) -> ApiResult<(Run, ProjectAccess)> {
    let id = record_id(raw, WHAT)?;
    let run = state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| not_found(WHAT))?;
    let access = authorize_record(state, principal, run.project_id, action, WHAT).await?;
    Ok((run, access))
}

/// Moves a run to `to` with a conditional write (only from `change.from`, when given);
/// `409` naming what the operation needs if the run is elsewhere.
async fn move_run(state: &AppState, run: &Run, to: RunStatus, change: RunChange) -> ApiResult<Run> {
    let from = change.from.clone();
    let allowed = |status: RunStatus| {
        status.can_become(to) && status != to && (from.is_empty() || from.contains(&status))
    };
    if !allowed(run.status) {
        return Err(conflict_for(run, to, &from));
    }
    match state
        .store
        .transition_run(run, to, state.clock.now(), change)
        .await
    {
        Ok(run) => Ok(run),
        Err(StoreError::ConditionFailed) => {
            let current = state
                .store
                .get_run(run.id)
                .await?
                .ok_or_else(|| not_found(WHAT))?;
            Err(conflict_for(&current, to, &from))
        }
        Err(err) => Err(err.into()),
    }
}

fn conflict_for(run: &Run, to: RunStatus, from: &[RunStatus]) -> ApiError {
    match from {
        [expected] => not_in(run, *expected),
        _ if to == RunStatus::Cancelled && run.status.is_terminal() => ApiError::Conflict(format!(
            "the run has already ended ({})",
            run.status.as_str()
        )),
        _ => ApiError::Conflict(format!(
            "the run is {} and cannot become {}",
            run.status.as_str(),
            to.as_str()
        )),
    }
}

fn not_in(run: &Run, expected: RunStatus) -> ApiError {
    ApiError::Conflict(format!(
        "the run is {}, not {}",
        run.status.as_str(),
        expected.as_str()
    ))
}

/// Answers the lifecycle's parked task, if a worker has parked it; otherwise the worker
/// answers when it parks and finds the run moved on.
async fn release(state: &AppState, run: &Run, output: Value) -> ApiResult<()> {
    if let Some(token) = &run.task_token {
        lifecycle::answer(state, token, output)
            .await
            .map_err(ApiError::Internal)?;
    }
    Ok(())
}

/// Ends a cancelled run's execution: fails the task parked on the run, if any (the state
/// machine routes that to its `Cancelled` end; a worker that parks a token later finds the
/// run cancelled and fails it itself), and stops the execution. The run's status already
/// says it ended, so a failure here is logged, not returned.
async fn stop_lifecycle(state: &AppState, run: &Run, cause: &str) {
    if let Some(token) = &run.task_token {
        if let Err(error) = lifecycle::fail(state, token, lifecycle::CANCELLED_ERROR, cause).await {
            tracing::error!(run_id = %run.id, error = ?error, "could not end the run's waiting task");
        }
    }
    if let Err(error) = lifecycle::stop(state, run.id, cause).await {
        tracing::error!(run_id = %run.id, error = ?error, "could not stop the run's execution");
    }
}

/// Adds a run-level log line; best effort.
async fn note(state: &AppState, run: &Run, message: String) {
    let line = LogLine {
        at: state.clock.now(),
        level: LogLevel::Info,
        step_id: None,
        message,
    };
    if let Err(error) = state.store.append_logs(run.id, &[line]).await {
        tracing::warn!(run_id = %run.id, error = %error, "could not store a run log line");
    }
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

/// An optional object field: `{}` when absent, an error when not an object.
fn object_field(field: &str, value: Option<Value>, errors: &mut Vec<FieldError>) -> Value {
    match value {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(map)) => Value::Object(map),
        Some(_) => {
            errors.push(FieldError::new(field, "must be a JSON object"));
            Value::Object(Map::new())
        }
    }
}

fn has_human_step(definition: &Definition) -> bool {
    definition.steps.iter().any(|step| {
        matches!(
            step.kind,
            StepKind::Human(_)
                | StepKind::Loop(LoopConfig {
                    step: LoopStep::Human(_),
                    ..
                })
        )
    })
}

/// A decimal as plain text, without trailing zeros: `0.0000375`, `0`.
fn decimal_text(value: Decimal) -> String {
    value.normalize().to_string()
}

fn elapsed_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    u64::try_from((to - from).num_milliseconds()).unwrap_or(0)
}
