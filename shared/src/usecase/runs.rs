//! Starting runs and deciding what happens to them, for every path that does: the API now,
//! schedules, webhooks and events next. No other code creates a run.
//!
//! - [`start`] honours an `Idempotency-Key` (per project, remembered 24 h): a replay with the
//!   same request returns the first run and starts nothing; the same key with another request
//!   is refused. The run and its key are written in one transaction; then the run's Step
//!   Functions execution (named by the run id) starts. If it cannot start, the run ends
//!   `failed` with the reason and the caller gets `503`.
//! - Every status change is a [`Move`] applied with a conditional write
//!   ([`RunStatus::can_become`]); a run found in another status gives `409` and changes
//!   nothing. Once stored, the move is published on the bus ([`events::publish_run`]), here
//!   and wherever else runs move.
//! - Approve, resume and retry move the run first, then answer the lifecycle's parked task
//!   (see [`crate::engine::worker`]); cancel and reject stop the execution.
//! - Governance ([`governance`]): a run uses a released version unless the request allows a
//!   draft (and the caller may release versions); whoever started a run cannot approve or
//!   reject it unless the project allows self-approval; and only people resume `human` steps.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::rbac::Action;
use crate::auth::tokens::digest;
use crate::auth::{authorize, Principal, ProjectAccess};
use crate::domain::Env;
use crate::engine::lifecycle;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::events;
use crate::run::{
    elapsed_ms, IdempotencyRecord, LogLevel, LogLine, Move, Run, RunStatus, StepCounts, Trigger,
    Usage, IDEMPOTENCY_TTL, MAX_TURNS,
};
use crate::state::AppState;
use crate::store::workflows::{VersionStatus, WorkflowVersion};
use crate::store::StoreError;
use crate::workflow::{Definition, LoopConfig, LoopStep, StepKind};

mod governance;

/// Largest run input (or `human` step input), as JSON.
pub const MAX_INPUT_BYTES: usize = 128 * 1024;
/// Longest rejection reason or approval comment.
const MAX_REASON_CHARS: usize = 1000;

/// A request to start a run, its fields read where it came in.
#[derive(Clone, Debug)]
pub struct StartRun {
    /// The workflow to run; it decides the project.
    pub workflow_id: Uuid,
    /// Its version; the workflow's `current_version` by default.
    pub version: Option<u64>,
    /// Run `version` even if it is a draft (needs the role that may release versions).
    pub allow_draft: bool,
    /// The agent whose model runs prompt steps; `None` if it could not be read.
    pub agent_id: Option<Uuid>,
    /// `None` if it could not be read.
    pub env: Option<Env>,
    /// The run input, an object ([`read_input`]).
    pub input: Value,
    /// Free-form metadata, an object.
    pub metadata: Value,
    /// Wait for an approval before running.
    pub require_approval: bool,
    /// What starts it.
    pub trigger: Trigger,
    /// Which schedule, webhook or event started it; `None` for a manual run.
    pub origin: Option<String>,
    /// Its place in a chain of event-started runs ([`crate::events::chain`]); 0 otherwise.
    pub chain_depth: u32,
    /// The schedule it comes from, if any.
    pub schedule: Option<FromSchedule>,
    /// The caller's `Idempotency-Key`, if any.
    pub idempotency: Option<Idempotency>,
    /// Fields that could not be read; reported together with those only stored records can
    /// check (version, agent), so one answer names every problem.
    pub invalid: Vec<FieldError>,
}

/// The schedule a run comes from.
#[derive(Clone, Copy, Debug)]
pub struct FromSchedule {
    /// The schedule.
    pub schedule_id: Uuid,
    /// The slot of the fire; `None` for `POST /schedules/{id}/trigger`.
    pub nominal_time: Option<DateTime<Utc>>,
}

/// An `Idempotency-Key` and a digest of the request it came with.
#[derive(Clone, Debug)]
pub struct Idempotency {
    /// The key as sent.
    pub key: String,
    /// A digest of the request: the same key with another digest is refused.
    pub request_digest: String,
}

/// A started run.
#[derive(Debug)]
pub struct Started {
    /// The run.
    pub run: Run,
    /// Whether an earlier request with the same `Idempotency-Key` started it.
    pub replayed: bool,
}

/// Starts a run of a workflow version by an agent, for `principal`.
#[tracing::instrument(name = "start_run", skip_all, fields(workflow_id = %request.workflow_id))]
pub async fn start(
    state: &AppState,
    principal: &Principal,
    request: StartRun,
) -> ApiResult<Started> {
    let StartRun {
        workflow_id,
        agent_id,
        env,
        invalid: mut errors,
        ..
    } = request;
    // The workflow decides the project; one the caller cannot see is reported as missing.
    let workflow = state
        .store
        .get_workflow(workflow_id)
        .await?
        .ok_or_else(|| ApiError::invalid("workflow_id", "no such workflow"))?;
    let project_id = workflow.project_id;
    let access = authorize(state, principal, project_id, Action::OperateRuns)
        .await
        .map_err(|err| match err {
            ApiError::NotFound(_) => ApiError::invalid("workflow_id", "no such workflow"),
            other => other,
        })?;
    if let Some(idempotency) = &request.idempotency {
        if let Some(run) = replay(state, project_id, idempotency).await? {
            return Ok(Started {
                run,
                replayed: true,
            });
        }
    }
    let version = match request.version.or(workflow.current_version) {
        Some(number) => {
            let version = state
                .store
                .get_workflow_version(workflow_id, number)
                .await?;
            runnable_version(version, request.allow_draft, &access, &mut errors)?
        }
        None => {
            errors.push(FieldError::new(
                "version",
                "the workflow has no released version; release one or pass `version`",
            ));
            None
        }
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
    let run = Run {
        id: Uuid::now_v7(),
        project_id,
        workflow_id,
        workflow_version: version.number,
        agent_id,
        env,
        trigger: request.trigger,
        origin: request.origin,
        schedule_id: request.schedule.map(|s| s.schedule_id),
        nominal_time: request.schedule.and_then(|s| s.nominal_time),
        status: if request.require_approval {
            RunStatus::AwaitingApproval
        } else {
            RunStatus::Queued
        },
        input: request.input,
        metadata: request.metadata,
        require_approval: request.require_approval,
        started_at: None,
        ended_at: None,
        duration_ms: None,
        usage: Usage::default(),
        retries: 0,
        waits: 0,
        has_human_in_loop: has_human_step(&version.definition),
        steps_total: u32::try_from(version.definition.steps.len()).unwrap_or(u32::MAX),
        step_counts: StepCounts::default(),
        region: state.config.region.clone(),
        error_message: None,
        approval: None,
        task_token: None,
        waiting_step: None,
        chain_depth: request.chain_depth,
        created_by: principal.actor_id(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let record = request.idempotency.as_ref().map(|idem| IdempotencyRecord {
        project_id,
        key_digest: digest(&idem.key),
        request_digest: idem.request_digest.clone(),
        run_id: run.id,
        created_at: now,
        ttl: (now + IDEMPOTENCY_TTL).timestamp(),
    });
    match state.store.create_run(&run, record.as_ref()).await {
        Ok(()) => {}
        Err(err) if matches!(err, StoreError::ConditionFailed) || err.is_conflict() => {
            // A concurrent request with the same key won the race.
            let replayed = match &request.idempotency {
                Some(idempotency) => replay(state, project_id, idempotency).await?,
                None => None,
            };
            return match replayed {
                Some(run) => Ok(Started {
                    run,
                    replayed: true,
                }),
                None => Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is in progress; retry shortly".into(),
                )),
            };
        }
        Err(err) => return Err(err.into()),
    }
    tracing::info!(run_id = %run.id, %project_id, %workflow_id, trigger = run.trigger.as_str(), "run created");
    let run = start_lifecycle(state, run).await?;
    events::publish_run(state, &run).await;
    Ok(Started {
        run,
        replayed: false,
    })
}

/// The version a run may use: released, or a draft when `allow_draft` and the caller may
/// release versions; otherwise an error in `errors` (or `403` for the role).
fn runnable_version(
    version: Option<WorkflowVersion>,
    allow_draft: bool,
    access: &ProjectAccess,
    errors: &mut Vec<FieldError>,
) -> ApiResult<Option<WorkflowVersion>> {
    match version {
        Some(v) if v.status == VersionStatus::Deprecated => {
            errors.push(FieldError::new("version", "is deprecated"));
            Ok(None)
        }
        Some(v) if v.status == VersionStatus::Draft && !allow_draft => {
            errors.push(FieldError::new(
                "version",
                format!(
                    "version {} is a draft; runs use released versions (release it, \
                     or pass `allow_draft: true` to run the draft)",
                    v.number
                ),
            ));
            Ok(None)
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
            Ok(Some(v))
        }
        Some(v) => Ok(Some(v)),
        None => {
            errors.push(FieldError::new(
                "version",
                "no such version of the workflow",
            ));
            Ok(None)
        }
    }
}

/// Starts a stored run's execution; if that fails, the run ends `failed` and the caller gets
/// `503`.
async fn start_lifecycle(state: &AppState, run: Run) -> ApiResult<Run> {
    let Err(error) = lifecycle::start(state, &run).await else {
        return Ok(run);
    };
    tracing::error!(run_id = %run.id, error = ?error, "the run's lifecycle did not start");
    let now = state.clock.now();
    match state
        .store
        .move_run(&run, Move::start_failed(&run, now), now)
        .await
    {
        Ok(failed) => events::publish_run(state, &failed).await,
        Err(err) => {
            tracing::error!(run_id = %run.id, error = ?err, "could not record the failed start");
        }
    }
    Err(ApiError::Unavailable(
        "the run could not be started; it is recorded as failed".into(),
    ))
}

/// The run a first request with this key started, or `None` if the key is new.
async fn replay(
    state: &AppState,
    project_id: Uuid,
    idempotency: &Idempotency,
) -> ApiResult<Option<Run>> {
    let now = state.clock.now();
    let Some(record) = state
        .store
        .get_idempotency(project_id, &digest(&idempotency.key), now)
        .await?
    else {
        return Ok(None);
    };
    if record.request_digest != idempotency.request_digest {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "was used with a different request body; use a new key for a new run",
        ));
    }
    let run = state
        .store
        .get_run(record.run_id)
        .await?
        .ok_or_else(no_such_run)?;
    if run.status == RunStatus::Queued || run.status == RunStatus::AwaitingApproval {
        // The first request may have died before starting the lifecycle; starting is
        // idempotent, so make sure it has.
        return start_lifecycle(state, run).await.map(Some);
    }
    Ok(Some(run))
}

/// The run `id`, if `principal` may do `action` on its project, with that access; a run
/// they may not see is `404`.
pub async fn visible(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    action: Action,
) -> ApiResult<(Run, ProjectAccess)> {
    let run = state.store.get_run(id).await?.ok_or_else(no_such_run)?;
    let access = authorize(state, principal, run.project_id, action)
        .await
        .map_err(|err| match err {
            ApiError::NotFound(_) => no_such_run(),
            other => other,
        })?;
    Ok((run, access))
}

/// `principal` cancels a run that has not ended: its execution stops, and a worker mid-run
/// stops at the next step boundary.
pub async fn cancel(state: &AppState, principal: &Principal, run: &Run) -> ApiResult<Run> {
    let at = state.clock.now();
    let run = apply(state, run, Move::cancel(run, principal.actor_id(), at)).await?;
    lifecycle::end(state, &run, "cancelled").await;
    Ok(run)
}

/// `principal` re-drives a failed run from its first failed step; steps that succeeded are
/// kept.
pub async fn retry(state: &AppState, principal: &Principal, run: &Run) -> ApiResult<Run> {
    if run.status != RunStatus::Failed {
        return Err(not_in(run, RunStatus::Failed));
    }
    // A failed run waits for a retry in its execution for seven days; one whose lifecycle
    // broke or expired cannot be re-driven.
    if !lifecycle::is_running(state, run.id)
        .await
        .map_err(ApiError::Internal)?
    {
        return Err(ApiError::Conflict(
            "the run's lifecycle has ended, so it cannot be retried; start a new run".into(),
        ));
    }
    if run.waits.saturating_add(run.retries) >= MAX_TURNS {
        return Err(ApiError::Conflict(format!(
            "the run has waited for input or been retried {MAX_TURNS} times, the most one run \
             may; start a new run"
        )));
    }
    let run = apply(state, run, Move::retry(run, principal.actor_id())).await?;
    release(state, &run, json!({"retried": true})).await?;
    Ok(run)
}

/// `principal` (a person) completes the `human` step a run waits on; `input` becomes the
/// step's output.
pub async fn resume(
    state: &AppState,
    principal: &Principal,
    run: &Run,
    input: Value,
) -> ApiResult<Run> {
    governance::person_resumes(principal)?;
    let mut errors = Vec::new();
    let input = read_input("input", Some(input), &mut errors);
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
    let input = state
        .payloads
        .keep(run.id, input)
        .await
        .map_err(ApiError::Internal)?;
    match state
        .store
        .resume_human_step(run, &step_sk, &input, now, waited)
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
    let run = state.store.get_run(run.id).await?.ok_or_else(no_such_run)?;
    let line = LogLine {
        at: now,
        level: LogLevel::Info,
        step_id: None,
        message: format!("resumed by {}", principal.actor_id()),
    };
    state.store.note(run.id, &[line]).await;
    release(state, &run, json!({"resumed": true})).await?;
    Ok(run)
}

/// `principal` approves a run waiting for approval; it is queued to run.
pub async fn approve(
    state: &AppState,
    principal: &Principal,
    access: &ProjectAccess,
    run: &Run,
    comment: Option<String>,
) -> ApiResult<Run> {
    if comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ApiError::invalid(
            "comment",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    governance::check_not_own_run(state, access, principal, run).await?;
    let at = state.clock.now();
    let run = apply(state, run, Move::approve(principal.actor_id(), comment, at)).await?;
    release(state, &run, json!({"decision": "approved"})).await?;
    Ok(run)
}

/// `principal` rejects a run waiting for approval; it ends `cancelled` with the reason.
pub async fn reject(
    state: &AppState,
    principal: &Principal,
    access: &ProjectAccess,
    run: &Run,
    reason: &str,
) -> ApiResult<Run> {
    let reason = reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            "reason",
            format!("must be 1 to {MAX_REASON_CHARS} characters"),
        ));
    }
    governance::check_not_own_run(state, access, principal, run).await?;
    let at = state.clock.now();
    let run = apply(
        state,
        run,
        Move::reject(run, principal.actor_id(), reason, at),
    )
    .await?;
    lifecycle::end(state, &run, "rejected").await;
    Ok(run)
}

/// A run input (or a `human` step's): an object (`{}` when absent) of at most
/// [`MAX_INPUT_BYTES`] of JSON; problems go to `errors`.
pub fn read_input(field: &str, value: Option<Value>, errors: &mut Vec<FieldError>) -> Value {
    let input = read_object(field, value, errors);
    if serde_json::to_vec(&input).map_or(usize::MAX, |v| v.len()) > MAX_INPUT_BYTES {
        errors.push(FieldError::new(
            field,
            format!("must be at most {MAX_INPUT_BYTES} bytes of JSON"),
        ));
    }
    input
}

/// An optional object field: `{}` when absent, an error in `errors` when not an object.
pub fn read_object(field: &str, value: Option<Value>, errors: &mut Vec<FieldError>) -> Value {
    match value {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(map)) => Value::Object(map),
        Some(_) => {
            errors.push(FieldError::new(field, "must be a JSON object"));
            Value::Object(Map::new())
        }
    }
}

/// Applies `step` to `run`; `409` naming what the operation needs if the run is elsewhere.
async fn apply(state: &AppState, run: &Run, step: Move) -> ApiResult<Run> {
    let (to, from) = (step.to, step.change.from.clone());
    let allowed = |status: RunStatus| {
        status.can_become(to) && status != to && (from.is_empty() || from.contains(&status))
    };
    if !allowed(run.status) {
        return Err(conflict_for(run, to, &from));
    }
    match state.store.move_run(run, step, state.clock.now()).await {
        Ok(run) => {
            events::publish_run(state, &run).await;
            Ok(run)
        }
        Err(StoreError::ConditionFailed) => {
            let current = state.store.get_run(run.id).await?.ok_or_else(no_such_run)?;
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

fn no_such_run() -> ApiError {
    ApiError::NotFound("run not found".into())
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
