//! Secrets Manager entries that hold user-supplied secrets (tool credentials, LLM API keys).
//! Values are write-only to the API: they are stored here and read back only by the engine.

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};

use uuid::Uuid;

use crate::config::Config;

/// Where each kind of user-supplied secret lives under the deployment's prefix: the one place
/// these paths are spelled.
pub mod path {
    use super::Uuid;

    /// An agent's LLM API key.
    pub fn agent_llm_key(agent_id: Uuid) -> String {
        format!("agents/{agent_id}/llm-api-key")
    }

    /// A tool's stored credentials.
    pub fn tool_credentials(tool_id: Uuid) -> String {
        format!("tools/{tool_id}/credentials")
    }

    /// A project credential's value.
    pub fn credential(credential_id: Uuid) -> String {
        format!("credentials/{credential_id}")
    }

    /// The secret a project signs its outgoing webhook calls with.
    pub fn project_webhook_secret(project_id: Uuid) -> String {
        format!("projects/{project_id}/webhook-secret")
    }

    /// The secrets an inbound webhook schedule's deliveries are signed with.
    pub fn schedule_webhook_secret(schedule_id: Uuid) -> String {
        format!("schedules/{schedule_id}/webhook-secret")
    }
}

/// Days a deleted secret can still be restored.
pub const DELETION_RECOVERY_DAYS: i64 = 7;

/// Secrets under the deployment's prefix.
#[derive(Clone, Debug)]
pub struct SecretStore {
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
}

impl SecretStore {
    /// A store for the deployment named by `config`.
    pub fn new(client: aws_sdk_secretsmanager::Client, config: &Config) -> Self {
        Self {
            client,
            prefix: config.prefix.clone(),
        }
    }

    /// The full name of the secret at `path`, e.g. `tools/<id>/credentials`.
    pub fn name(&self, path: &str) -> String {
        format!("{}/{path}", self.prefix)
    }

    /// Creates the secret at `path` or replaces its value; a secret scheduled for deletion
    /// is restored first, since its name stays taken until it is gone.
    pub async fn put(&self, path: &str, value: &SecretString) -> anyhow::Result<()> {
        let name = self.name(path);
        let created = self
            .client
            .create_secret()
            .name(&name)
            .secret_string(value.expose_secret())
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(err)
                if err.as_service_error().is_some_and(|e| {
                    e.is_resource_exists_exception() || e.is_invalid_request_exception()
                }) =>
            {
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_invalid_request_exception())
                {
                    self.client
                        .restore_secret()
                        .secret_id(&name)
                        .send()
                        .await
                        .with_context(|| format!("Failed to restore secret {name}"))?;
                }
                self.client
                    .put_secret_value()
                    .secret_id(&name)
                    .secret_string(value.expose_secret())
                    .send()
                    .await
                    .with_context(|| format!("Failed to update secret {name}"))?;
                Ok(())
            }
            Err(err) => Err(err).with_context(|| format!("Failed to create secret {name}")),
        }
    }

    /// Creates the secret at `path` with `value` unless it exists; returns whether this call
    /// created it. An existing secret is never overwritten (one scheduled for deletion is
    /// restored as it was), so concurrent callers all end up reading the same value.
    pub async fn create_if_absent(&self, path: &str, value: &SecretString) -> anyhow::Result<bool> {
        let name = self.name(path);
        let created = self
            .client
            .create_secret()
            .name(&name)
            .secret_string(value.expose_secret())
            .send()
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_exists_exception()) =>
            {
                Ok(false)
            }
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_invalid_request_exception()) =>
            {
                self.client
                    .restore_secret()
                    .secret_id(&name)
                    .send()
                    .await
                    .with_context(|| format!("Failed to restore secret {name}"))?;
                Ok(false)
            }
            Err(err) => Err(err).with_context(|| format!("Failed to create secret {name}")),
        }
    }

    /// The value of the secret at `path`, if it exists.
    pub async fn get(&self, path: &str) -> anyhow::Result<Option<SecretString>> {
        let name = self.name(path);
        match self.client.get_secret_value().secret_id(&name).send().await {
            Ok(out) => Ok(out.secret_string.map(SecretString::from)),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(err) => Err(err).with_context(|| format!("Failed to read secret {name}")),
        }
    }

    /// Schedules the secret at `path` for deletion after a record change that already
    /// happened (or a write that failed): a failure only leaves an unreachable secret behind, so
    /// it is logged, not returned.
    pub async fn discard(&self, path: &str) {
        if let Err(err) = self.schedule_deletion(path).await {
            tracing::error!(secret = %path, error = ?err, "failed to schedule the deletion of a secret");
        }
    }

    /// Schedules the secret at `path` for deletion; a missing secret, or one already
    /// scheduled, is fine.
    pub async fn schedule_deletion(&self, path: &str) -> anyhow::Result<()> {
        let name = self.name(path);
        match self
            .client
            .delete_secret()
            .secret_id(&name)
            .recovery_window_in_days(DELETION_RECOVERY_DAYS)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // This request is always well-formed: `InvalidRequest` here means the secret
            // is already scheduled for deletion.
            Err(err)
                if err.as_service_error().is_some_and(|e| {
                    e.is_resource_not_found_exception() || e.is_invalid_request_exception()
                }) =>
            {
                Ok(())
            }
            Err(err) => {
                Err(err).with_context(|| format!("Failed to schedule deletion of secret {name}"))
            }
        }
    }
}
