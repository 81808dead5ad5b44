//! `/api/v1/projects` over HTTP: the tenant boundary. Every other resource lives inside a
//! project; the rules live in [`crate::usecase::projects`].

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery};
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{ts, Role};
use crate::error::{ApiResult, Problem};
use crate::state::AppState;
use crate::store::projects::Project;
use crate::usecase::projects::{self, project_id, CreateProject, UpdateProject};

/// A project as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    /// Project id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Slug, unique among the projects of its creator.
    pub slug: String,
    /// Description.
    pub description: Option<String>,
    /// The creator.
    pub owner_user_id: Uuid,
    /// Settings object.
    #[schema(value_type = Object)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Version for optimistic concurrency (`version` in PATCH, or `If-Match`).
    pub version: u64,
    /// The caller's role in the project.
    pub role: Role,
}

impl ProjectView {
    fn new(project: Project, role: Role) -> Self {
        Self {
            id: project.id,
            name: project.name,
            slug: project.slug,
            description: project.description,
            owner_user_id: project.owner_user_id,
            settings: project.settings,
            created_at: project.created_at,
            updated_at: project.updated_at,
            version: project.version,
            role,
        }
    }
}

/// Creates a project; the caller becomes its owner.
#[utoipa::path(
    post, path = "/api/v1/projects", tag = "projects",
    security(("bearer" = [])),
    request_body = CreateProject,
    responses(
        (status = 201, description = "Created", body = ProjectView),
        (status = 403, description = "Called with an API key", body = Problem),
        (status = 409, description = "You already have a project with this slug", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
pub async fn create_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateProject>,
) -> ApiResult<Response> {
    let project = projects::create(&state, &principal, body).await?;
    let location = format!("/api/v1/projects/{}", project.id);
    let version = project.version;
    Ok(created(
        &location,
        version,
        ProjectView::new(project, Role::Owner),
    ))
}

/// Lists the projects the caller belongs to (an API key sees its own project).
#[utoipa::path(
    get, path = "/api/v1/projects", tag = "projects",
    security(("bearer" = []), ("api_key" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of projects", body = Page<ProjectView>),
        (status = 400, description = "Bad limit or cursor", body = Problem),
    )
)]
pub async fn list_projects(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<ProjectView>>> {
    let user = match &principal {
        Principal::User(user) => user,
        Principal::ApiKey(key) => {
            query.resolve(&state, format!("projects:key:{}", key.id))?;
            let items = state
                .store
                .get_project(key.project_id)
                .await?
                .filter(|p| p.deleted_at.is_none())
                .map(|p| ProjectView::new(p, key.role))
                .into_iter()
                .collect();
            return Ok(Json(Page {
                items,
                next_cursor: None,
            }));
        }
    };
    let page_request = query.resolve(&state, format!("projects:user:{}", user.id))?;
    let page = state
        .store
        .memberships_of_user(user.id, page_request.limit, page_request.start.clone())
        .await?;
    let next_cursor = page_request.next_cursor(&state, &page)?;
    let ids: Vec<Uuid> = page.items.iter().map(|m| m.project_id).collect();
    let projects = state.store.get_projects(&ids).await?;
    let items = projects
        .into_iter()
        .filter(|p| p.deleted_at.is_none())
        .filter_map(|p| {
            let role = page.items.iter().find(|m| m.project_id == p.id)?.role;
            Some(ProjectView::new(p, role))
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// Reads a project.
#[utoipa::path(
    get, path = "/api/v1/projects/{id}", tag = "projects",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Project id")),
    responses(
        (status = 200, description = "The project; `ETag` carries its version", body = ProjectView),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn get_project(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let access = authorize(&state, &principal, project_id(&id)?, Action::ReadProject).await?;
    let version = access.project.version;
    Ok(with_etag(
        version,
        Json(ProjectView::new(access.project, access.role)),
    ))
}

/// Changes a project's name, slug, description or settings.
#[utoipa::path(
    patch, path = "/api/v1/projects/{id}", tag = "projects",
    security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "Project id"),
        ("If-Match" = Option<String>, Header, description = "The version the change is based on"),
    ),
    request_body = UpdateProject,
    responses(
        (status = 200, description = "The changed project", body = ProjectView),
        (status = 403, description = "Needs admin", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
        (status = 409, description = "Stale version, or the project's creator already has a project with this slug", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
pub async fn update_project(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<UpdateProject>,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, body.version)?;
    let (project, role) = projects::update(&state, &principal, &id, expected, body).await?;
    let version = project.version;
    Ok(with_etag(version, Json(ProjectView::new(project, role))))
}

/// Deletes a project (soft delete); afterwards it answers `404` and its creator may use its
/// slug again.
#[utoipa::path(
    delete, path = "/api/v1/projects/{id}", tag = "projects",
    security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "Project id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs owner", body = Problem),
        (status = 404, description = "No such project visible to the caller", body = Problem),
    )
)]
pub async fn delete_project(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    projects::delete(&state, &principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The project routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, update_project, delete_project))
}
