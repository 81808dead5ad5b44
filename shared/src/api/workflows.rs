//! `/api/v1/workflows` over HTTP: workflows (validated DAGs) and their immutable versions. The
//! rules (definition parsing, gap-free version numbers, the `draft` → `released` →
//! `deprecated` lifecycle) live in [`crate::usecase::workflows`].

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery};
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::ts;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::store::workflows::{VersionStatus, Workflow, WorkflowVersion};
use crate::usecase::workflows::{
    self, CreateWorkflow, CreateWorkflowVersion, UpdateWorkflow, UpdateWorkflowVersion,
};
use crate::validate::required_project_id;
use crate::workflow::Definition;

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
    let workflow = workflows::create(&state, &principal, body).await?;
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
        .map(workflows::parse_tag)
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
    let workflow =
        workflows::visible_workflow(&state, &principal, &id, Action::ReadRegistry).await?;
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
    let workflow = workflows::update(&state, &principal, &id, expected, body).await?;
    let version = workflow.version;
    Ok(with_etag(version, Json(WorkflowView::from(workflow))))
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
    workflows::delete(&state, &principal, &id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
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
    let version = workflows::create_version(&state, &principal, &id, body).await?;
    let location = format!(
        "/api/v1/workflows/{}/versions/{}",
        version.workflow_id, version.number
    );
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(WorkflowVersionView::from(version)),
    )
        .into_response())
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
    let workflow =
        workflows::visible_workflow(&state, &principal, &id, Action::ReadRegistry).await?;
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
    let version = workflows::get_version(&state, &principal, &id, &n).await?;
    Ok(Json(version.into()))
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
    let version = workflows::set_version_status(&state, &principal, &id, &n, body.status).await?;
    Ok(Json(version.into()))
}

/// The workflows routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workflows, create_workflow))
        .routes(routes!(get_workflow, update_workflow, delete_workflow))
        .routes(routes!(list_versions, create_version))
        .routes(routes!(get_version, update_version))
}
