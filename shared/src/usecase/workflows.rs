//! Workflows (validated DAGs) and their immutable versions.
//!
//! - `definition` is parsed into a typed DAG whenever it is saved (create, change, a version
//!   with its own definition); see [`crate::workflow`] for the rules. Every problem is
//!   reported at once, under `definition.`, e.g. `definition.steps[2].config.then[0]`.
//!   A tool of another project is reported exactly like a missing one.
//! - New versions are numbered 1, 2, 3… without gaps or duplicates: one transaction advances
//!   the workflow's `latest_version` only if it is still what the writer read, and writes the
//!   version; a writer that loses the race reads again and retries, up to
//!   [`VERSION_ATTEMPTS`] times, then gets `409`. Without a `definition` the version copies
//!   the workflow's current one; with one, the workflow's own definition is left as it is.
//! - A version never changes except its `status`: `draft` → `released` → `deprecated`.
//!   `current_version` is the newest released version: releasing a newer version moves it
//!   up, deprecating the current one moves it down to the newest still released (or `null`).
//! - The workflow's `version` (its `ETag`) changes with every change to the workflow,
//!   including a new version number or a new `current_version`.
//! - Deleting removes the workflow, then its versions in batches.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::{check_version, not_found, record_id, visible};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::Name;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::state::AppState;
use crate::store::workflows::{VersionStatus, Workflow, WorkflowVersion};
use crate::store::StoreError;
use crate::validate::{self, FieldErrors};
use crate::workflow::{self, Definition};

/// What the errors call a workflow.
const WHAT: &str = "workflow";
/// What the errors call a workflow version.
const WHAT_VERSION: &str = "workflow version";
/// Longest description or note.
const MAX_TEXT_CHARS: usize = 2000;
/// Most tags of a workflow.
pub const MAX_TAGS: usize = 20;
/// Longest tag.
pub const MAX_TAG_CHARS: usize = 64;
/// Attempts at a version write before giving up with `409`.
pub const VERSION_ATTEMPTS: u32 = 10;

/// `POST /workflows`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkflow {
    /// The project (required).
    pub project_id: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Tags, at most 20 of at most 64 characters; duplicates are dropped.
    pub tags: Option<Vec<String>>,
    /// The DAG.
    #[schema(value_type = Definition)]
    pub definition: Value,
}

/// `PATCH /workflows/{id}`: only the fields given change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkflow {
    /// Display name.
    pub name: Option<String>,
    /// Description; an empty string clears it.
    pub description: Option<String>,
    /// Replaces the tags.
    pub tags: Option<Vec<String>>,
    /// Replaces the definition.
    #[schema(value_type = Option<Definition>)]
    pub definition: Option<Value>,
    /// The version this change is based on; a stale one gets `409`.
    pub version: Option<u64>,
}

/// `POST /workflows/{id}/versions`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkflowVersion {
    /// The version's definition; the workflow's current one when left out.
    #[schema(value_type = Option<Definition>)]
    pub definition: Option<Value>,
    /// A note, e.g. what changed.
    pub note: Option<String>,
}

/// `PATCH /workflows/{id}/versions/{n}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkflowVersion {
    /// The new status: `released` (from `draft`) or `deprecated` (from `released`).
    pub status: VersionStatus,
}

/// A tag: 1–64 characters without control characters.
pub fn parse_tag(raw: &str) -> Result<String, String> {
    validate::line(raw, MAX_TAG_CHARS)?.ok_or_else(|| "must not be empty".to_owned())
}

fn check_tags(raw: Vec<String>, errors: &mut Vec<FieldError>) -> Vec<String> {
    if raw.len() > MAX_TAGS {
        errors.fail("tags", format!("may hold at most {MAX_TAGS} tags"));
        return Vec::new();
    }
    let mut tags: Vec<String> = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        match parse_tag(raw) {
            Ok(tag) if !tags.contains(&tag) => tags.push(tag),
            Ok(_) => {}
            Err(m) => errors.fail(format!("tags[{i}]"), m),
        }
    }
    tags
}

/// Parses a definition for `project_id`, loading the project's tools and credentials it names; problems go
/// to `errors` under `definition.`.
async fn check_definition(
    state: &AppState,
    project_id: Uuid,
    raw: &Value,
    errors: &mut Vec<FieldError>,
) -> ApiResult<Option<Definition>> {
    let named = workflow::referenced_tool_ids(raw);
    let project_tools: HashSet<Uuid> = if named.is_empty() {
        HashSet::new()
    } else {
        state
            .store
            .get_tools(&named)
            .await?
            .into_iter()
            .filter(|tool| tool.project_id == project_id)
            .map(|tool| tool.id)
            .collect()
    };
    let named = workflow::referenced_credential_ids(raw);
    let project_credentials: HashMap<Uuid, String> = if named.is_empty() {
        HashMap::new()
    } else {
        state
            .store
            .get_credentials(&named)
            .await?
            .into_iter()
            .filter(|credential| credential.project_id == project_id)
            .map(|credential| (credential.id, credential.origin))
            .collect()
    };
    match workflow::parse_with(raw, &project_tools, &project_credentials) {
        Ok(definition) => Ok(Some(definition)),
        Err(found) => {
            errors.extend(workflow::under("definition", found));
            Ok(None)
        }
    }
}

/// The workflow `id`, if the caller may do `action` on it; `404` otherwise.
pub async fn visible_workflow(
    state: &AppState,
    principal: &Principal,
    id: &str,
    action: Action,
) -> ApiResult<Workflow> {
    let found = state.store.get_workflow(record_id(id, WHAT)?).await?;
    visible(state, principal, found, action, WHAT).await
}

/// Reads the workflow again after a lost race; `404` if it is gone.
async fn reread(state: &AppState, id: Uuid) -> ApiResult<Workflow> {
    state
        .store
        .get_workflow(id)
        .await?
        .ok_or_else(|| not_found(WHAT))
}

/// Whether a transaction lost a race on the workflow item (at `index`) and may be retried.
fn lost_race(err: &StoreError, index: usize) -> bool {
    err.failed_at(index) || err.is_conflict()
}

/// A short random pause before retrying a lost race, growing with the attempt.
async fn back_off(attempt: u32) {
    let ceiling = 10 + 15 * u64::from(attempt);
    let millis = rand::thread_rng().gen_range(1..=ceiling);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// A version number from the path; one that cannot name a version is `404`.
pub fn version_number(raw: &str) -> ApiResult<u64> {
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| not_found(WHAT_VERSION))
}

fn too_busy() -> ApiError {
    ApiError::Conflict(
        "the workflow is being changed by many writers at once; retry shortly".to_owned(),
    )
}

fn changed_concurrently() -> ApiError {
    ApiError::Conflict("the workflow was changed concurrently; read it again and retry".to_owned())
}

/// Creates a workflow in the body's project; the caller needs developer there.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    body: CreateWorkflow,
) -> ApiResult<Workflow> {
    let mut errors = Vec::new();
    let project_id = errors.check(
        "project_id",
        Uuid::try_parse(&body.project_id).map_err(|_| "must be a project id (UUID)".to_owned()),
    );
    if let Some(project_id) = project_id {
        authorize(state, principal, project_id, Action::WriteRegistry).await?;
    }
    let name = errors.check("name", Name::parse(&body.name));
    let description = errors.text("description", body.description, MAX_TEXT_CHARS);
    let tags = check_tags(body.tags.unwrap_or_default(), &mut errors);
    let definition = match project_id {
        Some(project_id) => {
            check_definition(state, project_id, &body.definition, &mut errors).await?
        }
        None => None,
    };
    let (Some(project_id), Some(name), Some(definition), true) =
        (project_id, name, definition, errors.is_empty())
    else {
        return Err(ApiError::invalid_fields(errors));
    };
    let now = state.clock.now();
    let workflow = Workflow {
        id: Uuid::now_v7(),
        project_id,
        name: name.into_inner(),
        description,
        tags,
        definition,
        current_version: None,
        latest_version: 0,
        created_by: principal.actor_id(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    state.store.create_workflow(&workflow).await?;
    tracing::info!(project_id = %project_id, workflow_id = %workflow.id, "workflow created");
    Ok(workflow)
}

/// Changes the workflow `id`'s name, description, tags or definition, if it is still at
/// `expected` (when given).
pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
    body: UpdateWorkflow,
) -> ApiResult<Workflow> {
    let current = visible_workflow(state, principal, id, Action::WriteRegistry).await?;
    check_version(expected, current.version)?;
    let mut errors = Vec::new();
    let mut updated = current.clone();
    errors.rename(body.name.as_deref(), &mut updated.name);
    if body.description.is_some() {
        updated.description = errors.text("description", body.description, MAX_TEXT_CHARS);
    }
    if let Some(tags) = body.tags {
        updated.tags = check_tags(tags, &mut errors);
    }
    if let Some(raw) = &body.definition {
        if let Some(definition) =
            check_definition(state, current.project_id, raw, &mut errors).await?
        {
            updated.definition = definition;
        }
    }
    errors.finish()?;
    updated.updated_at = state.clock.now();
    match state.store.update_workflow(&updated, current.version).await {
        Ok(stored) => Ok(stored),
        Err(StoreError::ConditionFailed) => Err(changed_concurrently()),
        Err(err) => Err(err.into()),
    }
}

/// Deletes the workflow `id` (if still at `expected`, when given) and all its versions.
pub async fn delete(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
) -> ApiResult<()> {
    let workflow = visible_workflow(state, principal, id, Action::WriteRegistry).await?;
    check_version(expected, workflow.version)?;
    match state.store.delete_workflow(&workflow, expected).await {
        Ok(()) => {
            tracing::info!(workflow_id = %workflow.id, "workflow deleted");
            Ok(())
        }
        Err(StoreError::ConditionFailed) if expected.is_some() => Err(changed_concurrently()),
        Err(StoreError::ConditionFailed) => Err(not_found(WHAT)),
        Err(err) => Err(err.into()),
    }
}

/// Creates the next version of the workflow `id`, as a draft.
pub async fn create_version(
    state: &AppState,
    principal: &Principal,
    id: &str,
    body: CreateWorkflowVersion,
) -> ApiResult<WorkflowVersion> {
    let mut workflow = visible_workflow(state, principal, id, Action::WriteRegistry).await?;
    let mut errors = Vec::new();
    let note = errors.text("note", body.note, MAX_TEXT_CHARS);
    let given = match &body.definition {
        Some(raw) => check_definition(state, workflow.project_id, raw, &mut errors).await?,
        None => None,
    };
    errors.finish()?;
    for attempt in 0..VERSION_ATTEMPTS {
        let version = WorkflowVersion {
            id: Uuid::now_v7(),
            workflow_id: workflow.id,
            project_id: workflow.project_id,
            number: workflow.latest_version + 1,
            status: VersionStatus::Draft,
            definition: given.clone().unwrap_or_else(|| workflow.definition.clone()),
            author_user_id: principal.actor_id(),
            note: note.clone(),
            created_at: state.clock.now(),
            released_at: None,
            deprecated_at: None,
        };
        match state
            .store
            .create_workflow_version(&workflow, &version, given.is_none())
            .await
        {
            Ok(()) => {
                tracing::info!(workflow_id = %workflow.id, number = version.number, "workflow version created");
                return Ok(version);
            }
            Err(err) if lost_race(&err, 0) => {
                tracing::debug!(workflow_id = %workflow.id, attempt, "version number taken; retrying");
                back_off(attempt).await;
                workflow = reread(state, workflow.id).await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(too_busy())
}

/// Version `n` of the workflow `id`.
pub async fn get_version(
    state: &AppState,
    principal: &Principal,
    id: &str,
    n: &str,
) -> ApiResult<WorkflowVersion> {
    let workflow = visible_workflow(state, principal, id, Action::ReadRegistry).await?;
    let number = version_number(n)?;
    state
        .store
        .get_workflow_version(workflow.id, number)
        .await?
        .ok_or_else(|| not_found(WHAT_VERSION))
}

/// The status a version may move to from `from`, as the only legal transitions allow.
fn check_transition(number: u64, from: VersionStatus, to: VersionStatus) -> ApiResult<()> {
    match (from, to) {
        (VersionStatus::Draft, VersionStatus::Released)
        | (VersionStatus::Released, VersionStatus::Deprecated) => Ok(()),
        (from, to) if from == to => Err(ApiError::Conflict(format!(
            "version {number} is already {}",
            from.as_str()
        ))),
        (from, to) => Err(ApiError::Conflict(format!(
            "version {number} cannot move from {} to {}; versions move draft → released → deprecated",
            from.as_str(),
            to.as_str()
        ))),
    }
}

/// Releases or deprecates version `n` of the workflow `id`, keeping `current_version` on the
/// newest released one.
pub async fn set_version_status(
    state: &AppState,
    principal: &Principal,
    id: &str,
    n: &str,
    to: VersionStatus,
) -> ApiResult<WorkflowVersion> {
    let mut workflow = visible_workflow(state, principal, id, Action::WriteRegistry).await?;
    let number = version_number(n)?;
    for attempt in 0..VERSION_ATTEMPTS {
        let mut version = state
            .store
            .get_workflow_version(workflow.id, number)
            .await?
            .ok_or_else(|| not_found(WHAT_VERSION))?;
        check_transition(number, version.status, to)?;
        let current = match to {
            VersionStatus::Released => Some(workflow.current_version.unwrap_or(0).max(number)),
            _ if workflow.current_version == Some(number) => {
                state
                    .store
                    .newest_released_version(workflow.id, number)
                    .await?
            }
            _ => workflow.current_version,
        };
        let now = state.clock.now();
        match state
            .store
            .set_workflow_version_status(&workflow, &version, to, current, now)
            .await
        {
            Ok(()) => {
                tracing::info!(workflow_id = %workflow.id, number, status = to.as_str(), "workflow version status changed");
                version.status = to;
                match to {
                    VersionStatus::Released => version.released_at = Some(now),
                    _ => version.deprecated_at = Some(now),
                }
                return Ok(version);
            }
            // The version moved meanwhile: the next round reads it and judges again.
            Err(err) if lost_race(&err, 0) || lost_race(&err, 1) => {
                back_off(attempt).await;
                workflow = reread(state, workflow.id).await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(too_busy())
}
