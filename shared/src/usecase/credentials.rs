//! Credentials: a project's named secrets for webhook steps.
//!
//! A workflow version is immutable and readable by every viewer, so a secret header of a
//! webhook step cannot live in it. It lives here instead: the value goes to Secrets Manager
//! (`credentials/<id>`) and is never shown again; a webhook step names the credential
//! (`config.credentials.id`). Each credential is bound to one **origin**
//! (`scheme://host[:port]`): a webhook step may use it only when its URL has that origin,
//! checked when the workflow is saved and again when the step runs, and moving it to another
//! origin needs the secret sent again. Reading needs `viewer`; writing needs `developer`.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::access::{check_version, record_id, visible};
use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::domain::Name;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::credentials::Credential;
use crate::store::secrets::path;
use crate::store::StoreError;
use crate::validate::{required_project_id, FieldErrors};

const WHAT: &str = "credential";

/// Longest accepted secret value.
const MAX_SECRET_CHARS: usize = 8192;

/// A new credential.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    /// The project it belongs to.
    pub project_id: Option<String>,
    /// A name people recognise it by.
    pub name: String,
    /// The origin its secret may be sent to, e.g. `https://hooks.example.com` (a path is
    /// ignored).
    pub origin: String,
    /// The secret, write-only: e.g. the token a webhook receiver expects.
    #[schema(value_type = String, format = Password)]
    pub value: SecretString,
}

/// A change to a credential; what is left out stays.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCredential {
    /// The version the change is based on (or send `If-Match`).
    pub version: Option<u64>,
    /// A new name.
    pub name: Option<String>,
    /// Another origin; the secret must then be sent again in `value`.
    pub origin: Option<String>,
    /// A new secret, replacing the stored one.
    #[schema(value_type = Option<String>, format = Password)]
    pub value: Option<SecretString>,
}

/// Parses an origin: an absolute `http(s)` URL without user info, reduced to
/// `scheme://host[:port]`.
pub fn parse_origin(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .filter(|_| raw.len() <= 2048)
        .ok_or_else(|| {
            "must be an absolute http or https URL such as https://hooks.example.com".to_owned()
        })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold user info".to_owned());
    }
    Ok(url.origin().ascii_serialization())
}

fn parse_value(value: &SecretString) -> Result<(), String> {
    let text = value.expose_secret();
    if text.trim().is_empty() || text.chars().count() > MAX_SECRET_CHARS {
        return Err(format!(
            "must be a non-empty string of at most {MAX_SECRET_CHARS} characters"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("must not hold control characters: it is sent in a header".to_owned());
    }
    Ok(())
}

fn conflict() -> ApiError {
    ApiError::Conflict(
        "the credential was changed or deleted concurrently; read it again and retry".to_owned(),
    )
}

/// Creates a credential in the body's project; its value goes to Secrets Manager before the
/// record is written.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    body: CreateCredential,
) -> ApiResult<Credential> {
    let project_id = required_project_id(body.project_id.as_deref())?;
    let access = authorize(state, principal, project_id, Action::WriteRegistry).await?;
    let mut errors = Vec::new();
    let name = errors.check("name", Name::parse(&body.name));
    let origin = errors.check("origin", parse_origin(&body.origin));
    errors.check("value", parse_value(&body.value));
    let (Some(name), Some(origin), true) = (name, origin, errors.is_empty()) else {
        return Err(ApiError::invalid_fields(errors));
    };
    let now = state.clock.now();
    let credential = Credential {
        id: Uuid::now_v7(),
        project_id: access.project.id,
        name: name.into_inner(),
        origin,
        created_by: principal.actor_id(),
        created_at: now,
        updated_at: now,
        version: 1,
    };
    state
        .secrets
        .put(&credential.secret_path(), &body.value)
        .await?;
    if let Err(err) = state.store.put_credential(&credential, None).await {
        state
            .secrets
            .discard(&path::credential(credential.id))
            .await;
        return Err(err.into());
    }
    tracing::info!(project_id = %credential.project_id, credential_id = %credential.id, "credential created");
    Ok(credential)
}

/// The credential at `raw_id` if the caller may perform `action` on it; `404` otherwise.
pub async fn visible_credential(
    state: &AppState,
    principal: &Principal,
    raw_id: &str,
    action: Action,
) -> ApiResult<Credential> {
    let found = state.store.get_credential(record_id(raw_id, WHAT)?).await?;
    visible(state, principal, found, action, WHAT).await
}

/// Renames the credential `id`, replaces its value, or moves it to another origin (with its
/// value sent again), if it is still at `expected` (when given).
pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
    body: UpdateCredential,
) -> ApiResult<Credential> {
    let current = visible_credential(state, principal, id, Action::WriteRegistry).await?;
    check_version(expected, current.version)?;
    let mut errors = Vec::new();
    let mut updated = current.clone();
    errors.rename(body.name.as_deref(), &mut updated.name);
    if let Some(origin) = &body.origin {
        if let Some(origin) = errors.check("origin", parse_origin(origin)) {
            updated.origin = origin;
        }
    }
    if let Some(value) = &body.value {
        errors.check("value", parse_value(value));
    }
    if updated.origin != current.origin && body.value.is_none() {
        errors.fail(
            "value",
            format!(
                "the origin changes from {} to {}: send `value` again, so the stored secret \
                 never goes where it was not meant to",
                current.origin, updated.origin
            ),
        );
    }
    errors.finish()?;
    updated.version = current.version + 1;
    updated.updated_at = state.clock.now();
    // The value is written first, the old one kept to put back should the record lose a race.
    let previous = match &body.value {
        Some(value) => {
            let previous = state.secrets.get(&current.secret_path()).await?;
            state.secrets.put(&current.secret_path(), value).await?;
            previous
        }
        None => None,
    };
    if let Err(err) = state
        .store
        .put_credential(&updated, Some(current.version))
        .await
    {
        if let Some(previous) = previous {
            if let Err(restore) = state.secrets.put(&current.secret_path(), &previous).await {
                tracing::error!(credential_id = %current.id, error = ?restore, "failed to restore a credential's value after a lost race");
            }
        }
        return Err(match err {
            StoreError::ConditionFailed => conflict(),
            other => other.into(),
        });
    }
    tracing::info!(credential_id = %updated.id, version = updated.version, "credential updated");
    Ok(updated)
}

/// Deletes the credential `id` (if still at `expected`, when given) and schedules its value's
/// deletion (recoverable for 7 days).
pub async fn delete(
    state: &AppState,
    principal: &Principal,
    id: &str,
    expected: Option<u64>,
) -> ApiResult<()> {
    let credential = visible_credential(state, principal, id, Action::WriteRegistry).await?;
    check_version(expected, credential.version)?;
    match state
        .store
        .delete_credential(credential.id, credential.version)
        .await
    {
        Ok(()) => {}
        Err(StoreError::ConditionFailed) => return Err(conflict()),
        Err(err) => return Err(err.into()),
    }
    state
        .secrets
        .discard(&path::credential(credential.id))
        .await;
    tracing::info!(credential_id = %credential.id, "credential deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_reduced_to_scheme_host_and_port() {
        assert_eq!(
            parse_origin("https://Hooks.example.com/in?x=1").as_deref(),
            Ok("https://hooks.example.com")
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:9000").as_deref(),
            Ok("http://127.0.0.1:9000")
        );
        assert!(parse_origin("ftp://hooks.example.com").is_err());
        assert!(parse_origin("https://u:p@hooks.example.com").is_err());
        assert!(parse_origin("hooks.example.com").is_err());
    }
}
