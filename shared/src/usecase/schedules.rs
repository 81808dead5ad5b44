//! Schedules: creating, changing, pausing and deleting them (developers), reading them
//! (viewers), and starting their runs, on demand or for a fire, through the one run-creation
//! use case ([`crate::usecase::runs::start`]).
//!
//! A schedule acts as its owner (`owner_user_id`: its creator, or an API key's creator) with
//! the owner's **current** role in the project: a fire whose owner may no longer start runs
//! there is recorded `denied`, and starts nothing.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::{check_version, record_id, visible};
use super::runs::{self, FromSchedule, Idempotency, StartRun, Started};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{Env, Name};
use crate::engine::webhook::WebhookSecret;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::run::Trigger;
use crate::schedule::{
    parse_timezone, CronSpec, Fire, FireOutcome, OverlapPolicy, Schedule, ScheduleStatus,
    ScheduleType, DEFAULT_CATCHUP_WINDOW_SECONDS, MAX_CATCHUP_WINDOW_SECONDS,
};
use crate::state::AppState;
use crate::store::StoreError;
use crate::validate::{check_json_object, required_project_id, FieldErrors};

mod event;

pub use event::start_event_fire;
use event::{
    check_event_schedule, create_event_schedule, delete_event_schedule, update_event_schedule,
};

const WHAT: &str = "schedule";
/// Longest accepted expression.
const MAX_EXPRESSION_CHARS: usize = 255;

/// `POST /schedules`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// The project the schedule belongs to.
    #[schema(value_type = Uuid)]
    pub project_id: Option<String>,
    /// Name (1–255 characters).
    pub name: String,
    /// What fires it: `cron`, `webhook` or `event`.
    #[serde(rename = "type")]
    #[schema(value_type = ScheduleType)]
    pub kind: String,
    /// `cron`: a five-field cron expression (`min hour day-of-month month day-of-week`; `*`,
    /// lists, ranges, steps, names, `L`, `#`, `W`, `@daily`…), evaluated in `timezone`.
    /// `event`: an EventBridge event pattern as a JSON string, matched against the
    /// project's events.
    /// `webhook`: none (empty or absent); signed deliveries fire it.
    #[serde(default)]
    pub expression: String,
    /// IANA time zone (default `UTC`).
    pub timezone: Option<String>,
    /// The workflow its runs run (of the same project).
    #[schema(value_type = Uuid)]
    pub target_workflow_id: String,
    /// The version its runs use; by default the workflow's current released version at
    /// fire time.
    pub workflow_version: Option<u64>,
    /// The agent of its runs (of the same project).
    #[schema(value_type = Uuid)]
    pub agent_id: String,
    /// The environment of its runs (default `dev`).
    #[schema(value_type = Option<Env>)]
    pub env: Option<String>,
    /// The input of its runs, an object; `input.event` is set at fire time.
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// Free-form metadata, an object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `active` (default) or `paused`.
    #[schema(value_type = Option<ScheduleStatus>)]
    pub status: Option<String>,
    /// What a fire does while the previous run is unfinished (default `skip`).
    #[schema(value_type = Option<OverlapPolicy>)]
    pub overlap_policy: Option<String>,
    /// Slots found later than this are `skipped_missed` (default 300, at most 604800).
    pub catchup_window_seconds: Option<i64>,
}

/// `PATCH /schedules/{id}`: only the fields given change. Resuming (`status: active`) or a
/// new expression or time zone starts from the next slot after now.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchedule {
    /// Name.
    pub name: Option<String>,
    /// A new cron expression or event pattern.
    pub expression: Option<String>,
    /// A new IANA time zone.
    pub timezone: Option<String>,
    /// A new workflow (of the same project).
    #[schema(value_type = Option<Uuid>)]
    pub target_workflow_id: Option<String>,
    /// A new version; `null`: the workflow's current version at fire time.
    #[serde(default, deserialize_with = "crate::validate::nullable")]
    #[schema(value_type = Option<u64>)]
    pub workflow_version: Option<Option<u64>>,
    /// A new agent (of the same project).
    #[schema(value_type = Option<Uuid>)]
    pub agent_id: Option<String>,
    /// A new environment.
    #[schema(value_type = Option<Env>)]
    pub env: Option<String>,
    /// A new input object.
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// New metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `active` or `paused`.
    #[schema(value_type = Option<ScheduleStatus>)]
    pub status: Option<String>,
    /// A new overlap policy.
    #[schema(value_type = Option<OverlapPolicy>)]
    pub overlap_policy: Option<String>,
    /// A new catch-up window, 0–604800 seconds.
    pub catchup_window_seconds: Option<i64>,
    /// The version this change is based on; a stale one gets `409`.
    pub version: Option<u64>,
}

/// The user a principal's schedules act as: the user, or an API key's creator.
fn owner_of(principal: &Principal) -> Uuid {
    match principal {
        Principal::User(user) => user.id,
        Principal::ApiKey(key) => key.created_by,
    }
}

fn parse_id(field: &str, raw: &str, errors: &mut Vec<FieldError>) -> Option<Uuid> {
    errors.check(
        field,
        Uuid::try_parse(raw).map_err(|_| "must be a UUID".to_owned()),
    )
}

/// A created schedule.
pub struct CreatedSchedule {
    /// The schedule.
    pub schedule: Schedule,
    /// A webhook schedule's signing secret, shown this once.
    pub secret: Option<SecretString>,
}

/// Creates a schedule in the body's project, owned by the caller (an API key's creator).
pub async fn create(
    state: &AppState,
    principal: &Principal,
    body: CreateSchedule,
) -> ApiResult<CreatedSchedule> {
    let project_id = required_project_id(body.project_id.as_deref())?;
    let access = authorize(state, principal, project_id, Action::WriteRegistry).await?;
    let mut errors = Vec::new();
    let name = errors.check("name", Name::parse(&body.name));
    let kind = errors.check("type", ScheduleType::parse(&body.kind));
    let workflow = parse_id("target_workflow_id", &body.target_workflow_id, &mut errors);
    let agent = parse_id("agent_id", &body.agent_id, &mut errors);
    let now = state.clock.now();
    let mut schedule = Schedule {
        id: Uuid::now_v7(),
        project_id: access.project.id,
        name: name.map(Name::into_inner).unwrap_or_default(),
        kind: kind.unwrap_or(ScheduleType::Cron),
        expression: String::new(),
        timezone: "UTC".to_owned(),
        target_workflow_id: workflow.unwrap_or_default(),
        workflow_version: None,
        agent_id: agent.unwrap_or_default(),
        env: Env::Dev,
        input: json!({}),
        metadata: json!({}),
        status: ScheduleStatus::Active,
        overlap_policy: OverlapPolicy::Skip,
        catchup_window_seconds: DEFAULT_CATCHUP_WINDOW_SECONDS,
        next_run_at: None,
        due_at: None,
        buffered: None,
        in_flight: None,
        claimed_at: None,
        last_run_at: None,
        last_run_id: None,
        owner_user_id: owner_of(principal),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    let changes = UpdateSchedule {
        expression: Some(body.expression),
        timezone: body.timezone,
        workflow_version: body.workflow_version.map(Some),
        env: body.env,
        input: body.input,
        metadata: body.metadata,
        status: body.status,
        overlap_policy: body.overlap_policy,
        catchup_window_seconds: body.catchup_window_seconds,
        ..UpdateSchedule::default()
    };
    let retime = apply(&mut schedule, changes, &mut errors);
    check_targets(
        state,
        &schedule,
        workflow.is_some(),
        agent.is_some(),
        &mut errors,
    )
    .await?;
    errors.finish()?;
    retime_if(&mut schedule, retime, now);
    // A webhook schedule's secret is stored first, so no schedule exists without one.
    let secret = match schedule.kind {
        ScheduleType::Webhook => Some(create_hook_secret(state, schedule.id).await?),
        _ => None,
    };
    let stored = if schedule.kind == ScheduleType::Event {
        create_event_schedule(state, &schedule).await
    } else {
        state
            .store
            .create_schedule(&schedule)
            .await
            .map_err(ApiError::from)
    };
    if let Err(err) = stored {
        if secret.is_some() {
            state.secrets.discard_hook_secret(schedule.id).await;
        }
        return Err(err);
    }
    tracing::info!(project_id = %schedule.project_id, schedule_id = %schedule.id, "schedule created");
    Ok(CreatedSchedule { schedule, secret })
}

/// Stores a new signing secret for the webhook schedule `id`; returns it.
async fn create_hook_secret(state: &AppState, id: Uuid) -> ApiResult<SecretString> {
    let fresh = fresh_hook_secret();
    state.secrets.create_hook_secret(id, &fresh).await?;
    Ok(fresh)
}

/// A new webhook signing secret, generated as the outbound webhook secrets are.
pub(super) fn fresh_hook_secret() -> SecretString {
    let secret = WebhookSecret::generate();
    SecretString::from(String::from_utf8_lossy(secret.key()).into_owned())
}

/// The schedule at `raw_id` if the caller may perform `action` on it; `404` if they cannot
/// see it.
pub async fn visible_schedule(
    state: &AppState,
    principal: &Principal,
    raw_id: &str,
    action: Action,
) -> ApiResult<Schedule> {
    let found = state.store.get_schedule(record_id(raw_id, WHAT)?).await?;
    visible(state, principal, found, action, WHAT).await
}

/// Changes the schedule `id`, if it is still at `expected` (when given).
pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
    body: UpdateSchedule,
) -> ApiResult<Schedule> {
    let current = visible_schedule(state, principal, id, Action::WriteRegistry).await?;
    check_version(expected, current.version)?;
    let mut errors = Vec::new();
    let mut updated = current.clone();
    let workflow = body
        .target_workflow_id
        .as_deref()
        .map(|raw| parse_id("target_workflow_id", raw, &mut errors));
    let agent = body
        .agent_id
        .as_deref()
        .map(|raw| parse_id("agent_id", raw, &mut errors));
    if let Some(Some(workflow)) = workflow {
        updated.target_workflow_id = workflow;
    }
    if let Some(Some(agent)) = agent {
        updated.agent_id = agent;
    }
    let version_changed = body.workflow_version.is_some();
    let retime = apply(&mut updated, body, &mut errors);
    let (workflow_ok, agent_ok) = (
        workflow.map_or(version_changed, |w| w.is_some()),
        agent.is_some_and(|a| a.is_some()),
    );
    check_targets(state, &updated, workflow_ok, agent_ok, &mut errors).await?;
    errors.finish()?;
    let now = state.clock.now();
    retime_if(&mut updated, retime, now);
    updated.version = current.version + 1;
    updated.updated_at = now;
    if updated.kind == ScheduleType::Event {
        update_event_schedule(state, &current, &updated).await?;
    } else {
        concurrent(
            state
                .store
                .update_schedule(&updated, current.version, current.due_at.as_ref())
                .await,
        )?;
    }
    tracing::info!(schedule_id = %updated.id, version = updated.version, status = updated.status.as_str(), "schedule updated");
    Ok(updated)
}

/// Deletes the schedule `id` (if still at `expected`, when given).
pub async fn delete(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
) -> ApiResult<()> {
    let schedule = visible_schedule(state, principal, id, Action::WriteRegistry).await?;
    check_version(expected, schedule.version)?;
    if schedule.kind == ScheduleType::Event {
        delete_event_schedule(state, &schedule).await?;
    } else {
        concurrent(
            state
                .store
                .delete_schedule(schedule.id, schedule.version)
                .await,
        )?;
    }
    if schedule.kind == ScheduleType::Webhook {
        state.secrets.discard_hook_secret(schedule.id).await;
    }
    tracing::info!(schedule_id = %schedule.id, "schedule deleted");
    Ok(())
}

/// Starts a run of the schedule now, for `principal` (`trigger: manual`): it records the
/// schedule but no slot, and does not move the schedule's slots.
pub async fn trigger(state: &AppState, principal: &Principal, id: &str) -> ApiResult<Started> {
    let schedule = visible_schedule(state, principal, id, Action::OperateRuns).await?;
    let request = run_request(&schedule, Trigger::Manual, None, None);
    runs::start(state, principal, request).await
}

/// Starts the run of `schedule`'s fire of `nominal_time`, as its owner. The idempotency key
/// is the fire's, so a fire delivered twice starts one run.
pub async fn start_fire(
    state: &AppState,
    schedule: &Schedule,
    nominal_time: DateTime<Utc>,
) -> ApiResult<Started> {
    let owner = owner(state, schedule).await?;
    let key = format!(
        "schedule:{}:{}",
        schedule.id,
        crate::domain::ts::format(&nominal_time)
    );
    let idempotency = Idempotency {
        request_digest: key.clone(),
        key,
    };
    let request = run_request(
        schedule,
        Trigger::Schedule,
        Some(nominal_time),
        Some(idempotency),
    );
    runs::start(state, &owner, request).await
}

/// The principal a schedule's fires act as: its owner, `403` once the owner is gone.
pub(super) async fn owner(state: &AppState, schedule: &Schedule) -> ApiResult<Principal> {
    state
        .store
        .get_user(schedule.owner_user_id)
        .await?
        .filter(|user| user.deleted_at.is_none())
        .map(Principal::User)
        .ok_or_else(|| ApiError::Forbidden("the schedule's owner no longer exists".into()))
}

/// The record of a fire of `schedule` at `nominal` whose run's start gave `started`. Errors
/// are worth a retry; a run the owner may not start is `denied`, and a deleted project's
/// schedule is paused, rather than be denied every fire.
pub async fn fire_record(
    state: &AppState,
    schedule: &Schedule,
    nominal: DateTime<Utc>,
    started: Result<Started, ApiError>,
) -> anyhow::Result<Fire> {
    let now = state.clock.now();
    match started {
        Ok(started) => Ok(Fire {
            run_id: Some(started.run.id),
            ..Fire::new(schedule.id, nominal, FireOutcome::Started, now)
        }),
        Err(ApiError::Internal(error)) => Err(error),
        Err(error @ (ApiError::Unavailable(_) | ApiError::Conflict(_))) => {
            Err(anyhow::Error::new(error).context("the fire's run did not start yet"))
        }
        Err(denied) => {
            let live = state
                .store
                .get_project(schedule.project_id)
                .await?
                .is_some_and(|project| project.deleted_at.is_none());
            if !live {
                state.store.pause_schedule(schedule.id).await?;
            }
            Ok(Fire::new(schedule.id, nominal, FireOutcome::Denied, now).because(reason(&denied)))
        }
    }
}

/// A denial's reason, naming each invalid field.
fn reason(error: &ApiError) -> String {
    match error {
        ApiError::Validation { detail, errors } | ApiError::BadRequest { detail, errors } => {
            let fields: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            if fields.is_empty() {
                detail.clone()
            } else {
                fields.join("; ")
            }
        }
        other => other.to_string(),
    }
}

/// The run request of a schedule: its input with `input.event` naming the schedule and the
/// slot.
pub(super) fn run_request(
    schedule: &Schedule,
    trigger: Trigger,
    nominal_time: Option<DateTime<Utc>>,
    idempotency: Option<Idempotency>,
) -> StartRun {
    let mut input = schedule.input.clone();
    if let Value::Object(map) = &mut input {
        map.insert(
            "event".to_owned(),
            json!({
                "schedule_id": schedule.id,
                "nominal_time": nominal_time.as_ref().map(crate::domain::ts::format),
            }),
        );
    }
    StartRun {
        workflow_id: schedule.target_workflow_id,
        version: schedule.workflow_version,
        allow_draft: false,
        agent_id: Some(schedule.agent_id),
        env: Some(schedule.env),
        input,
        metadata: schedule.metadata.clone(),
        require_approval: false,
        trigger,
        origin: Some(schedule.id.to_string()),
        schedule: Some(FromSchedule {
            schedule_id: schedule.id,
            nominal_time,
        }),
        chain_depth: 0,
        idempotency,
        invalid: Vec::new(),
    }
}

/// Applies `body`'s fields to `schedule`, recording what is invalid; whether the slots must
/// be found again (a new expression or time zone, or a change of status).
fn apply(schedule: &mut Schedule, body: UpdateSchedule, errors: &mut Vec<FieldError>) -> bool {
    let mut retime = false;
    errors.rename(body.name.as_deref(), &mut schedule.name);
    if let Some(expression) = body.expression {
        // An event pattern's bound is its own (`EventPattern::parse`).
        if schedule.kind != ScheduleType::Event && expression.chars().count() > MAX_EXPRESSION_CHARS
        {
            errors.fail(
                "expression",
                format!("must be at most {MAX_EXPRESSION_CHARS} characters"),
            );
        }
        retime |= expression != schedule.expression;
        schedule.expression = expression;
    }
    if let Some(timezone) = body.timezone {
        retime |= timezone != schedule.timezone;
        schedule.timezone = timezone;
    }
    let tz = errors.check("timezone", parse_timezone(&schedule.timezone));
    if let (Some(tz), ScheduleType::Cron) = (tz, schedule.kind) {
        errors.check("expression", CronSpec::parse(&schedule.expression, tz));
    }
    check_webhook_expression(schedule, errors);
    if let Some(version) = body.workflow_version {
        schedule.workflow_version = version;
    }
    if let Some(env) = body
        .env
        .as_deref()
        .and_then(|raw| errors.check("env", Env::parse(raw)))
    {
        schedule.env = env;
    }
    if let Some(input) = body.input {
        schedule.input = runs::read_input("input", Some(input), errors);
    }
    if let Some(metadata) = body.metadata {
        schedule.metadata = runs::read_object("metadata", Some(metadata), errors);
        if let Value::Object(map) = &schedule.metadata {
            check_json_object("metadata", map, errors);
        }
    }
    if let Some(status) = body
        .status
        .as_deref()
        .and_then(|raw| errors.check("status", ScheduleStatus::parse(raw)))
    {
        retime |= status != schedule.status;
        schedule.status = status;
    }
    if let Some(policy) = body
        .overlap_policy
        .as_deref()
        .and_then(|raw| errors.check("overlap_policy", OverlapPolicy::parse(raw)))
    {
        schedule.overlap_policy = policy;
    }
    if let Some(window) = body.catchup_window_seconds {
        match u32::try_from(window)
            .ok()
            .filter(|w| *w <= MAX_CATCHUP_WINDOW_SECONDS)
        {
            Some(window) => schedule.catchup_window_seconds = window,
            None => errors.fail(
                "catchup_window_seconds",
                format!("must be a whole number from 0 to {MAX_CATCHUP_WINDOW_SECONDS} (7 days)"),
            ),
        }
    }
    if schedule.kind == ScheduleType::Event {
        check_event_schedule(schedule, errors);
    }
    retime || schedule.next_run_at.is_none()
}

/// A webhook schedule fires on signed deliveries only: an expression would suggest otherwise.
fn check_webhook_expression(schedule: &Schedule, errors: &mut Vec<FieldError>) {
    if schedule.kind == ScheduleType::Webhook && !schedule.expression.is_empty() {
        errors.fail(
            "expression",
            "a webhook schedule has no expression: its signed deliveries fire it",
        );
    }
}

/// Finds the next slot after `now` when `retime`; a paused schedule has none, and leaves the
/// due index.
fn retime_if(schedule: &mut Schedule, retime: bool, now: DateTime<Utc>) {
    if schedule.status == ScheduleStatus::Paused {
        schedule.next_run_at = None;
        schedule.due_at = None;
        schedule.buffered = None;
        return;
    }
    if retime {
        schedule.next_run_at = schedule.cron().and_then(|spec| spec.next_after(now, false));
        schedule.buffered = None;
        schedule.due_at = schedule.next_run_at;
    }
}

/// Checks that the workflow, its version and the agent exist in the schedule's project
/// (`workflow_ok`/`agent_ok`: their ids parsed).
async fn check_targets(
    state: &AppState,
    schedule: &Schedule,
    workflow_ok: bool,
    agent_ok: bool,
    errors: &mut Vec<FieldError>,
) -> ApiResult<()> {
    if workflow_ok {
        match state
            .store
            .get_workflow(schedule.target_workflow_id)
            .await?
        {
            Some(w) if w.project_id == schedule.project_id => {}
            _ => errors.fail("target_workflow_id", "no such workflow in the project"),
        }
    }
    if let (true, Some(number)) = (workflow_ok, schedule.workflow_version) {
        if state
            .store
            .get_workflow_version(schedule.target_workflow_id, number)
            .await?
            .is_none()
        {
            errors.fail("workflow_version", "no such version of the workflow");
        }
    }
    if agent_ok {
        match state.store.get_agent(schedule.agent_id).await? {
            Some(a) if a.project_id == schedule.project_id => {}
            _ => errors.fail("agent_id", "no such agent in the project"),
        }
    }
    Ok(())
}

/// A store write's outcome, a lost condition being a concurrent change.
fn concurrent(written: Result<(), StoreError>) -> ApiResult<()> {
    match written {
        Ok(()) => Ok(()),
        Err(StoreError::ConditionFailed) => Err(changed_concurrently()),
        Err(err) => Err(err.into()),
    }
}

fn changed_concurrently() -> ApiError {
    ApiError::Conflict(
        "the schedule was changed, fired or deleted concurrently; read it again and retry"
            .to_owned(),
    )
}
