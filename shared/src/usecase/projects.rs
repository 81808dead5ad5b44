//! Projects, the tenant boundary: creating one (its creator becomes the owner), changing its
//! name, slug, description or settings, and deleting it (soft delete).

use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::check_version;
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::{Name, Role, Slug};
use crate::engine::cost;
use crate::engine::teardown::{self, Teardown};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::governance::Governance;
use crate::state::AppState;
use crate::store::projects::{Membership, Project};
use crate::validate::{check_json_object, FieldErrors};

/// Longest accepted description.
const MAX_DESCRIPTION_CHARS: usize = 2000;

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
    /// (key ids, or `<key id>/<project id>`; default empty, accepting any trusted signature),
    /// and `model_prices` (model → `{input_per_million, output_per_million}`, decimal strings
    /// or numbers), all checked when saved.
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

/// Records errors for settings that are too large, that DynamoDB cannot store, or that the
/// platform reads and cannot parse: the governance settings and `model_prices`, each checked
/// by the parser its reader uses, so what is saved is what runs.
fn check_settings(
    settings: &serde_json::Map<String, serde_json::Value>,
    errors: &mut Vec<FieldError>,
) {
    check_json_object("settings", settings, errors);
    if let Err(invalid) = Governance::parse(settings) {
        errors.extend(invalid);
    }
    errors.extend(cost::validate_model_prices(settings));
}

/// Parses a project id from the path; a malformed one cannot name a project, so `404`.
pub fn project_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(raw).map_err(|_| ApiError::NotFound("project not found".to_owned()))
}

/// Creates a project; the calling user becomes its owner.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    body: CreateProject,
) -> ApiResult<Project> {
    let user = principal.user()?;
    let mut errors = Vec::new();
    let name = errors.check("name", Name::parse(&body.name));
    let slug = match (&body.slug, &name) {
        (Some(raw), _) => errors.check("slug", Slug::parse(raw)),
        (None, Some(name)) => errors.check("slug", Slug::from_name(name)),
        (None, None) => None,
    };
    let description = errors.text("description", body.description, MAX_DESCRIPTION_CHARS);
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
        deleted_by: None,
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
            Ok(project)
        }
        Err(err) if err.failed_at(0) => Err(ApiError::Conflict(format!(
            "you already have a project with the slug `{}`",
            slug.as_str()
        ))),
        Err(err) => Err(err.into()),
    }
}

/// Changes the project `id`, if it is still at `expected` (when given); returns it with the
/// caller's role in it.
pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
    body: UpdateProject,
) -> ApiResult<(Project, Role)> {
    let access = authorize(state, principal, project_id(id)?, Action::UpdateProject).await?;
    let current = access.project;
    check_version(expected, current.version)?;
    let mut errors = Vec::new();
    let mut updated = current.clone();
    errors.rename(body.name.as_deref(), &mut updated.name);
    if let Some(slug) = &body.slug {
        if let Some(slug) = errors.check("slug", Slug::parse(slug)) {
            updated.slug = slug.as_str().to_owned();
        }
    }
    if body.description.is_some() {
        updated.description = errors.text("description", body.description, MAX_DESCRIPTION_CHARS);
    }
    if let Some(settings) = body.settings {
        check_settings(&settings, &mut errors);
        updated.settings = settings;
    }
    errors.finish()?;
    updated.version = current.version + 1;
    updated.updated_at = state.clock.now();
    let slug_changed = updated.slug != current.slug;
    match state
        .store
        .update_project(&updated, current.version, &current.slug)
        .await
    {
        Ok(()) => Ok((updated, access.role)),
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

/// Deletes the project `id` (soft delete); afterwards it answers `404` and its creator may use
/// its slug again. Its API keys stop working, its unfinished runs are cancelled and its
/// secrets scheduled for deletion ([`teardown`]); what one request leaves undone, the
/// sweeper finishes.
pub async fn delete(state: &AppState, principal: &Principal, id: &str) -> ApiResult<()> {
    let access = authorize(state, principal, project_id(id)?, Action::DeleteProject).await?;
    let now = state.clock.now();
    let by = principal.actor_id();
    match state.store.delete_project(&access.project, by, now).await {
        Ok(()) => {}
        Err(err) if err.failed_at(0) => {
            return Err(ApiError::NotFound("project not found".to_owned()))
        }
        Err(err) => return Err(err.into()),
    }
    tracing::info!(project_id = %access.project.id, "project deleted");
    let deleted = Project {
        deleted_at: Some(now),
        deleted_by: Some(by),
        ..access.project
    };
    // The project is gone for its users either way: what fails here is the sweeper's to
    // finish.
    match teardown::tear_down(state, &deleted).await {
        Ok(Teardown::Done) => {}
        Ok(Teardown::RunsLeft) => {
            tracing::info!(project_id = %deleted.id, "the sweeper will cancel the deleted project's other runs");
        }
        Err(error) => {
            tracing::warn!(project_id = %deleted.id, error = ?error, "the deleted project's teardown stopped; the sweeper will finish it");
        }
    }
    Ok(())
}
