//! `/api/v1/workflows`: workflows (validated DAGs) and their immutable versions.
//!
//! - `definition` is parsed into a typed DAG whenever it is saved (create, `PATCH`, a version
//!   with its own definition); see [`crate::workflow`] for the rules. Every problem is
//!   reported at once, under `definition.`, e.g. `definition.steps[2].config.then[0]`.
//!   A tool of another project is reported exactly like a missing one.
//! - `POST /workflows/{id}/versions` numbers versions 1, 2, 3… without gaps or duplicates:
//!   one transaction advances the workflow's `latest_version` only if it is still what the
//!   writer read, and writes the version; a writer that loses the race reads again and
//!   retries, up to [`VERSION_ATTEMPTS`] times, then gets `409`. Without a `definition` the
//!   version copies the workflow's current one; with one, the workflow's own definition is
//!   left as it is.
//! - A version never changes except its `status`: `draft` → `released` → `deprecated`.
//!   `current_version` is the newest released version: releasing a newer version moves it
//!   up, deprecating the current one moves it down to the newest still released (or `null`).
//! - The workflow's `version` (its `ETag`) changes with every change to the workflow,
//!   including a new version number or a new `current_version`.
//! - `DELETE` removes the workflow, then its versions in batches.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery};
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{ts, Name};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;
use crate::store::workflows::{VersionStatus, Workflow, WorkflowVersion};
use crate::store::StoreError;
use crate::usecase::access::{authorize_record, check_version, not_found, record_id};
use crate::validate::required_project_id;
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

/// A workflow as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowView {
    /// Workflow id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// The working definition (a DAG of steps).
    pub definition: Definition,
    /// The newest released version; `null` until one is released.
    pub current_version: Option<u64>,
    /// The highest version number created; 0 before the first.
    pub latest_version: u64,
    /// Who created it (a user or an API key id).
    pub created_by: Uuid,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Version for optimistic concurrency (`version` in PATCH, or `If-Match`).
    pub version: u64,
}

impl From<Workflow> for WorkflowView {
    fn from(w: Workflow) -> Self {
        Self {
            id: w.id,
            project_id: w.project_id,
            name: w.name,
            description: w.description,
            tags: w.tags,
            definition: w.definition,
            current_version: w.current_version,
            latest_version: w.latest_version,
            created_by: w.created_by,
            created_at: w.created_at,
            updated_at: w.updated_at,
            version: w.version,
        }
    }
}

/// A workflow version as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowVersionView {
    /// Version record id.
    pub id: Uuid,
    /// The workflow.
    pub workflow_id: Uuid,
    /// The workflow's project.
    pub project_id: Uuid,
    /// The version number: 1, 2, 3…
    pub version: u64,
    /// `draft`, `released` or `deprecated`.
    pub status: VersionStatus,
    /// The frozen definition.
    pub definition: Definition,
    /// Who created it (a user or an API key id).
    pub author_user_id: Uuid,
    /// Note.
    pub note: Option<String>,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// When it was released.
    #[serde(with = "ts::option")]
    pub released_at: Option<DateTime<Utc>>,
    /// When it was deprecated.
    #[serde(with = "ts::option")]
    pub deprecated_at: Option<DateTime<Utc>>,
}

impl From<WorkflowVersion> for WorkflowVersionView {
    fn from(v: WorkflowVersion) -> Self {
        Self {
            id: v.id,
            workflow_id: v.workflow_id,
            project_id: v.project_id,
            version: v.number,
            status: v.status,
            definition: v.definition,
            author_user_id: v.author_user_id,
            note: v.note,
            created_at: v.created_at,
            released_at: v.released_at,
            deprecated_at: v.deprecated_at,
        }
    }
}

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

/// `?project_id=&tag=&limit=&cursor=` of the workflow list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListWorkflowsQuery {
    /// The project (required).
    pub project_id: Option<String>,
    /// Only workflows with this tag (a page may then be short and still have a next one).
    pub tag: Option<String>,
    /// Items per page, 1–200 (default 50).
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

fn check_text(field: &str, text: Option<String>, errors: &mut Vec<FieldError>) -> Option<String> {
    let text = text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    if text
        .as_ref()
        .is_some_and(|t| t.chars().count() > MAX_TEXT_CHARS)
    {
        errors.push(FieldError::new(
            field,
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    text
}

fn parse_tag(raw: &str) -> Result<String, String> {
    let tag = raw.trim();
    if tag.is_empty() || tag.chars().count() > MAX_TAG_CHARS || tag.chars().any(char::is_control) {
        return Err(format!(
            "must be 1-{MAX_TAG_CHARS} characters without control characters"
        ));
    }
    Ok(tag.to_owned())
}

fn check_tags(raw: Vec<String>, errors: &mut Vec<FieldError>) -> Vec<String> {
    if raw.len() > MAX_TAGS {
        errors.push(FieldError::new(
            "tags",
            format!("may hold at most {MAX_TAGS} tags"),
        ));
        return Vec::new();
    }
    let mut tags: Vec<String> = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        match parse_tag(raw) {
            Ok(tag) if !tags.contains(&tag) => tags.push(tag),
            Ok(_) => {}
            Err(m) => errors.push(FieldError::new(format!("tags[{i}]"), m)),
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
async fn visible_workflow(
    state: &AppState,
    principal: &Principal,
    id: &str,
    action: Action,
) -> ApiResult<Workflow> {
    let id = record_id(id, WHAT)?;
    let workflow = state
        .store
        .get_workflow(id)
        .await?
        .ok_or_else(|| not_found(WHAT))?;
    authorize_record(state, principal, workflow.project_id, action, WHAT).await?;
    Ok(workflow)
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

fn version_number(raw: &str) -> ApiResult<u64> {
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

/// Creates a workflow.
#[utoipa::path(
    post, path = "/api/v1/workflows", tag = "workflows",
    security(("bearer" = []), ("api_key" = [])),
    request_body = CreateWorkflow,
    responses(
        (status = 201, description = "Created; `ETag` carries its version, `Location` its address", body = WorkflowView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 422, description = "Invalid fields, each DAG problem at its path, e.g. `definition.steps[2].config.then[0]`", body = Problem),
    )
)]
pub async fn create_workflow(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateWorkflow>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    let project_id = Uuid::try_parse(&body.project_id)
        .map_err(|_| errors.push(FieldError::new("project_id", "must be a project id (UUID)")))
        .ok();
    if let Some(project_id) = project_id {
        authorize(&state, &principal, project_id, Action::WriteRegistry).await?;
    }
    let name = Name::parse(&body.name)
        .map_err(|m| errors.push(FieldError::new("name", m)))
        .ok();
    let description = check_text("description", body.description, &mut errors);
    let tags = check_tags(body.tags.unwrap_or_default(), &mut errors);
    let definition = match project_id {
        Some(project_id) => {
            check_definition(&state, project_id, &body.definition, &mut errors).await?
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
    let location = format!("/api/v1/workflows/{}", workflow.id);
    let version = workflow.version;
    Ok(created(&location, version, WorkflowView::from(workflow)))
}

/// Lists a project's workflows, oldest first.
#[utoipa::path(
    get, path = "/api/v1/workflows", tag = "workflows",
    security(("bearer" = []), ("api_key" = [])),
    params(ListWorkflowsQuery),
    responses(
        (status = 200, description = "A page of workflows", body = Page<WorkflowView>),
        (status = 400, description = "Missing project_id, a bad tag, limit or cursor", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn list_workflows(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListWorkflowsQuery>,
) -> ApiResult<Json<Page<WorkflowView>>> {
    let project_id = required_project_id(query.project_id.as_deref())?;
    let tag = query
        .tag
        .as_deref()
        .map(parse_tag)
        .transpose()
        .map_err(|m| ApiError::bad_request("tag", m))?;
    authorize(&state, &principal, project_id, Action::ReadRegistry).await?;
    let scope = match &tag {
        Some(tag) => format!("workflows:{project_id}:tag:{tag}"),
        None => format!("workflows:{project_id}"),
    };
    let page_request = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .resolve(&state, scope)?;
    let mut page = state
        .store
        .list_workflows(
            project_id,
            tag.as_deref(),
            page_request.limit,
            page_request.start.clone(),
        )
        .await?;
    page.items.retain(|w| w.project_id == project_id);
    page_request.respond(&state, page)
}

/// Reads a workflow.
#[utoipa::path(
    get, path = "/api/v1/workflows/{id}", tag = "workflows",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The workflow; `ETag` carries its version", body = WorkflowView),
        (status = 404, description = "No such workflow visible to the caller", body = Problem),
    )
)]
pub async fn get_workflow(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let workflow = visible_workflow(&state, &principal, &id, Action::ReadRegistry).await?;
    let version = workflow.version;
    Ok(with_etag(version, Json(WorkflowView::from(workflow))))
}

/// Changes a workflow's name, description, tags or definition.
#[utoipa::path(
    patch, path = "/api/v1/workflows/{id}", tag = "workflows",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Workflow id"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on"),
    ),
    request_body = UpdateWorkflow,
    responses(
        (status = 200, description = "The changed workflow", body = WorkflowView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such workflow visible to the caller", body = Problem),
        (status = 409, description = "Stale version", body = Problem),
        (status = 422, description = "Invalid fields, each DAG problem at its path", body = Problem),
    )
)]
pub async fn update_workflow(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateWorkflow>,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, body.version)?;
    let current = visible_workflow(&state, &principal, &id, Action::WriteRegistry).await?;
    check_version(expected, current.version)?;
    let mut errors = Vec::new();
    let mut updated = current.clone();
    if let Some(name) = &body.name {
        match Name::parse(name) {
            Ok(name) => updated.name = name.into_inner(),
            Err(m) => errors.push(FieldError::new("name", m)),
        }
    }
    if body.description.is_some() {
        updated.description = check_text("description", body.description, &mut errors);
    }
    if let Some(tags) = body.tags {
        updated.tags = check_tags(tags, &mut errors);
    }
    if let Some(raw) = &body.definition {
        if let Some(definition) =
            check_definition(&state, current.project_id, raw, &mut errors).await?
        {
            updated.definition = definition;
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    updated.updated_at = state.clock.now();
    match state.store.update_workflow(&updated, current.version).await {
        Ok(stored) => {
            let version = stored.version;
            Ok(with_etag(version, Json(WorkflowView::from(stored))))
        }
        Err(StoreError::ConditionFailed) => Err(ApiError::Conflict(
            "the workflow was changed concurrently; read it again and retry".to_owned(),
        )),
        Err(err) => Err(err.into()),
    }
}

/// Deletes a workflow and all its versions.
#[utoipa::path(
    delete, path = "/api/v1/workflows/{id}", tag = "workflows",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Workflow id"),
        ("If-Match" = Option<String>, Header, description = "Delete only this version"),
    ),
    responses(
        (status = 204, description = "Deleted, with its versions"),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such workflow visible to the caller", body = Problem),
        (status = 409, description = "Stale version", body = Problem),
    )
)]
pub async fn delete_workflow(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let expected = expected_version(&headers, None)?;
    let workflow = visible_workflow(&state, &principal, &id, Action::WriteRegistry).await?;
    check_version(expected, workflow.version)?;
    match state.store.delete_workflow(&workflow, expected).await {
        Ok(()) => {
            tracing::info!(workflow_id = %workflow.id, "workflow deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(StoreError::ConditionFailed) if expected.is_some() => Err(ApiError::Conflict(
            "the workflow was changed concurrently; read it again and retry".to_owned(),
        )),
        Err(StoreError::ConditionFailed) => Err(not_found(WHAT)),
        Err(err) => Err(err.into()),
    }
}

/// Creates the next version of a workflow, as a draft.
#[utoipa::path(
    post, path = "/api/v1/workflows/{id}/versions", tag = "workflows",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Workflow id")),
    request_body = CreateWorkflowVersion,
    responses(
        (status = 201, description = "Created as a draft with the next number; `Location` is its address", body = WorkflowVersionView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such workflow visible to the caller", body = Problem),
        (status = 409, description = "Too many concurrent writers; retry", body = Problem),
        (status = 422, description = "Invalid note or definition", body = Problem),
    )
)]
pub async fn create_version(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateWorkflowVersion>,
) -> ApiResult<Response> {
    let mut workflow = visible_workflow(&state, &principal, &id, Action::WriteRegistry).await?;
    let mut errors = Vec::new();
    let note = check_text("note", body.note, &mut errors);
    let given = match &body.definition {
        Some(raw) => check_definition(&state, workflow.project_id, raw, &mut errors).await?,
        None => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
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
                let location = format!(
                    "/api/v1/workflows/{}/versions/{}",
                    workflow.id, version.number
                );
                return Ok((
                    StatusCode::CREATED,
                    [(header::LOCATION, location)],
                    Json(WorkflowVersionView::from(version)),
                )
                    .into_response());
            }
            Err(err) if lost_race(&err, 0) => {
                tracing::debug!(workflow_id = %workflow.id, attempt, "version number taken; retrying");
                back_off(attempt).await;
                workflow = reread(&state, workflow.id).await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(too_busy())
}

/// Lists a workflow's versions, lowest number first.
#[utoipa::path(
    get, path = "/api/v1/workflows/{id}/versions", tag = "workflows",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Workflow id"), PageQuery),
    responses(
        (status = 200, description = "A page of versions", body = Page<WorkflowVersionView>),
        (status = 400, description = "Bad limit or cursor", body = Problem),
        (status = 404, description = "No such workflow visible to the caller", body = Problem),
    )
)]
pub async fn list_versions(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<WorkflowVersionView>>> {
    let workflow = visible_workflow(&state, &principal, &id, Action::ReadRegistry).await?;
    let page_request = query.resolve(&state, format!("workflow-versions:{}", workflow.id))?;
    let page = state
        .store
        .list_workflow_versions(workflow.id, page_request.limit, page_request.start.clone())
        .await?;
    let next_cursor = page_request.next_cursor(&state, &page)?;
    let items = page
        .items
        .into_iter()
        .map(WorkflowVersionView::from)
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// Reads one version of a workflow.
#[utoipa::path(
    get, path = "/api/v1/workflows/{id}/versions/{n}", tag = "workflows",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Workflow id"),
        ("n" = u64, Path, description = "Version number, from 1"),
    ),
    responses(
        (status = 200, description = "The version", body = WorkflowVersionView),
        (status = 404, description = "No such workflow or version visible to the caller", body = Problem),
    )
)]
pub async fn get_version(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, n)): Path<(String, String)>,
) -> ApiResult<Json<WorkflowVersionView>> {
    let workflow = visible_workflow(&state, &principal, &id, Action::ReadRegistry).await?;
    let number = version_number(&n)?;
    let version = state
        .store
        .get_workflow_version(workflow.id, number)
        .await?
        .ok_or_else(|| not_found(WHAT_VERSION))?;
    Ok(Json(version.into()))
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

/// Releases or deprecates a version, keeping `current_version` on the newest released one.
#[utoipa::path(
    patch, path = "/api/v1/workflows/{id}/versions/{n}", tag = "workflows",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Workflow id"),
        ("n" = u64, Path, description = "Version number, from 1"),
    ),
    request_body = UpdateWorkflowVersion,
    responses(
        (status = 200, description = "The version with its new status", body = WorkflowVersionView),
        (status = 403, description = "Needs developer", body = Problem),
        (status = 404, description = "No such workflow or version visible to the caller", body = Problem),
        (status = 409, description = "Not a legal transition from the version's status, or too many concurrent writers", body = Problem),
        (status = 422, description = "Unknown status", body = Problem),
    )
)]
pub async fn update_version(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, n)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateWorkflowVersion>,
) -> ApiResult<Json<WorkflowVersionView>> {
    let mut workflow = visible_workflow(&state, &principal, &id, Action::WriteRegistry).await?;
    let number = version_number(&n)?;
    let to = body.status;
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
                return Ok(Json(version.into()));
            }
            // The version moved meanwhile: the next round reads it and judges again.
            Err(err) if lost_race(&err, 0) || lost_race(&err, 1) => {
                back_off(attempt).await;
                workflow = reread(&state, workflow.id).await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(too_busy())
}

/// The workflows routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workflows, create_workflow))
        .routes(routes!(get_workflow, update_workflow, delete_workflow))
        .routes(routes!(list_versions, create_version))
        .routes(routes!(get_version, update_version))
}
