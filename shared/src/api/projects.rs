//! `/api/v1/projects`: the tenant boundary. Every other resource lives inside a project.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{expected_version, ApiJson, ApiQuery, PageQuery};
use super::{created, with_etag, Page};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{ts, Name, Role, Slug};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::governance::Governance;
use crate::state::AppState;
use crate::store::projects::{Membership, Project};
use crate::usecase::access::check_version;
use crate::validate::check_json_object;

/// Largest accepted description.
const MAX_DESCRIPTION_CHARS: usize = 2000;

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

/// `POST /projects`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// Display name.
    pub name: String,
    /// Slug, unique among the projects you created; derived from the name when left out.
    pub slug: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Settings object (at most 32 KiB). Free-form, except the governance settings
    /// `approvals.allow_self_approval` (boolean, default `false`) and `trusted_publishers`
    /// (key ids, or `<key id>/<project id>`; default empty, accepting any trusted signature).
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `PATCH /projects/{id}`: only the fields given change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    /// Display name.
    pub name: Option<String>,
    /// Slug, unique among the projects of the project's creator.
    pub slug: Option<String>,
    /// Description; an empty string clears it.
    pub description: Option<String>,
    /// Replaces the settings object (see `CreateProject.settings`).
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
    /// The version this change is based on; a stale one gets `409`.
    pub version: Option<u64>,
}

fn check_description(description: Option<String>, errors: &mut Vec<FieldError>) -> Option<String> {
    let description = description
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty());
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
    {
        errors.push(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    description
}

/// Records errors for settings that are too large, that DynamoDB cannot store, or whose
/// governance settings are invalid.
fn check_settings(
    settings: &serde_json::Map<String, serde_json::Value>,
    errors: &mut Vec<FieldError>,
) {
    check_json_object("settings", settings, errors);
    if let Err(invalid) = Governance::parse(settings) {
        errors.extend(invalid);
    }
}

/// Parses a project id from the path; a malformed one cannot name a project, so `404`.
pub fn project_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(raw).map_err(|_| ApiError::NotFound("project not found".to_owned()))
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
    let user = principal.user()?;
    let mut errors = Vec::new();
    let name = Name::parse(&body.name)
        .map_err(|m| errors.push(FieldError::new("name", m)))
        .ok();
    let slug = match (&body.slug, &name) {
        (Some(raw), _) => Slug::parse(raw)
            .map_err(|m| errors.push(FieldError::new("slug", m)))
            .ok(),
        (None, Some(name)) => Slug::from_name(name)
            .map_err(|m| errors.push(FieldError::new("slug", m)))
            .ok(),
        (None, None) => None,
    };
    let description = check_description(body.description, &mut errors);
    let settings = body.settings.unwrap_or_default();
    check_settings(&settings, &mut errors);
    let (Some(name), Some(slug), true) = (name, slug, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    let now = state.clock.now();
    let project = Project {
        id: Uuid::now_v7(),
        name: name.into_inner(),
        slug: slug.as_str().to_owned(),
        description,
        owner_user_id: user.id,
        settings,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        version: 1,
        owner_count: 1,
    };
    let owner = Membership {
        project_id: project.id,
        user_id: user.id,
        role: Role::Owner,
        email: user.email.to_string(),
        name: user.name.clone(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    match state.store.create_project(&project, &owner).await {
        Ok(()) => {
            tracing::info!(project_id = %project.id, "project created");
            let location = format!("/api/v1/projects/{}", project.id);
            Ok(created(
                &location,
                project.version,
                ProjectView::new(project, Role::Owner),
            ))
        }
        Err(err) if err.failed_at(0) => Err(ApiError::Conflict(format!(
            "you already have a project with the slug `{}`",
            slug.as_str()
        ))),
        Err(err) => Err(err.into()),
    }
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
    let access = authorize(&state, &principal, project_id(&id)?, Action::UpdateProject).await?;
    let current = access.project;
    check_version(expected, current.version)?;
    let mut errors = Vec::new();
    let mut updated = current.clone();
    if let Some(name) = &body.name {
        match Name::parse(name) {
            Ok(name) => updated.name = name.into_inner(),
            Err(m) => errors.push(FieldError::new("name", m)),
        }
    }
    if let Some(slug) = &body.slug {
        match Slug::parse(slug) {
            Ok(slug) => updated.slug = slug.as_str().to_owned(),
            Err(m) => errors.push(FieldError::new("slug", m)),
        }
    }
    if body.description.is_some() {
        updated.description = check_description(body.description, &mut errors);
    }
    if let Some(settings) = body.settings {
        check_settings(&settings, &mut errors);
        updated.settings = settings;
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    updated.version = current.version + 1;
    updated.updated_at = state.clock.now();
    let slug_changed = updated.slug != current.slug;
    match state
        .store
        .update_project(&updated, current.version, &current.slug)
        .await
    {
        Ok(()) => {
            let version = updated.version;
            Ok(with_etag(
                version,
                Json(ProjectView::new(updated, access.role)),
            ))
        }
        Err(err) if slug_changed && err.failed_at(0) => Err(ApiError::Conflict(format!(
            "the project's creator already has a project with the slug `{}`",
            updated.slug
        ))),
        Err(err) => {
            tracing::info!(error = %err, "project update lost a race");
            Err(ApiError::Conflict(
                "the project was changed concurrently; read it again and retry".to_owned(),
            ))
        }
    }
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
    let access = authorize(&state, &principal, project_id(&id)?, Action::DeleteProject).await?;
    match state
        .store
        .delete_project(&access.project, state.clock.now())
        .await
    {
        Ok(()) => {
            tracing::info!(project_id = %access.project.id, "project deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(err) if err.failed_at(0) => Err(ApiError::NotFound("project not found".to_owned())),
        Err(err) => Err(err.into()),
    }
}

/// The project routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, update_project, delete_project))
}
