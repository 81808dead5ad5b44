//! Who may touch a project-scoped record, and whether a write is based on its current version:
//! the checks every registry use case starts with.
//!
//! A caller who cannot see a record's project gets the same `404` as for a missing record, so
//! record ids disclose nothing.

use uuid::Uuid;

use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal, ProjectAccess};
use crate::error::{ApiError, ApiResult};
use crate::schedule::Schedule;
use crate::state::AppState;
use crate::store::agents::Agent;
use crate::store::credentials::Credential;
use crate::store::tools::Tool;
use crate::store::workflows::Workflow;

/// Authorises `action` on a record of `project_id`, answering a project the caller cannot see
/// with the record's own `404`.
pub async fn authorize_record(
    state: &AppState,
    principal: &Principal,
    project_id: Uuid,
    action: Action,
    what: &str,
) -> ApiResult<ProjectAccess> {
    authorize(state, principal, project_id, action)
        .await
        .map_err(|err| match err {
            ApiError::NotFound(_) => not_found(what),
            other => other,
        })
}

/// A record that belongs to one project.
pub trait ProjectScoped {
    /// The project it belongs to.
    fn project_id(&self) -> Uuid;
}

macro_rules! project_scoped {
    ($($record:ty),*) => {$(
        impl ProjectScoped for $record {
            fn project_id(&self) -> Uuid {
                self.project_id
            }
        }
    )*};
}

project_scoped!(Agent, Credential, Schedule, Tool, Workflow);

/// The record `found` by id, if it exists and the caller may do `action` on its project;
/// otherwise the record's `404`.
pub async fn visible<T: ProjectScoped>(
    state: &AppState,
    principal: &Principal,
    found: Option<T>,
    action: Action,
    what: &str,
) -> ApiResult<T> {
    let record = found.ok_or_else(|| not_found(what))?;
    authorize_record(state, principal, record.project_id(), action, what).await?;
    Ok(record)
}

/// `404` for a record of kind `what`.
pub fn not_found(what: &str) -> ApiError {
    ApiError::NotFound(format!("{what} not found"))
}

/// Parses a record id from the path; a malformed one cannot name a record, so `404`.
pub fn record_id(raw: &str, what: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(raw).map_err(|_| not_found(what))
}

/// Fails with `409` when the caller's expected version is not the current one.
pub fn check_version(expected: Option<u64>, current: u64) -> ApiResult<()> {
    match expected {
        Some(expected) if expected != current => Err(ApiError::Conflict(format!(
            "version {expected} is stale; the current version is {current}"
        ))),
        _ => Ok(()),
    }
}
