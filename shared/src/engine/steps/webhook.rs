//! The `webhook` step: renders its body and headers and delivers them, signed, with the
//! credential bound to the webhook's origin.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::json;

use super::{idempotency_key, StepResult};
use crate::engine::run::{Engine, Slice};
use crate::engine::webhook::{Delivery, SecretHeader};
use crate::outbound;
use crate::run::StepRecord;
use crate::workflow::{Scope, WebhookConfig, WebhookCredentials};

/// Retries of a webhook step after a retryable failure.
const WEBHOOK_RETRIES: u32 = 2;

impl Engine {
    pub(in crate::engine) async fn webhook_step(
        &self,
        slice: &Slice<'_>,
        config: &WebhookConfig,
        scope: &Scope<'_>,
        record: &StepRecord,
    ) -> StepResult {
        let body = match config.body.render(scope) {
            Ok(body) => body,
            Err(error) => {
                return StepResult::failed(None, format!("the body could not be rendered: {error}"))
            }
        };
        let mut headers = BTreeMap::new();
        for (name, template) in &config.headers {
            match template.render_text(scope) {
                Ok(value) => {
                    headers.insert(name.clone(), value);
                }
                Err(error) => {
                    return StepResult::failed(
                        None,
                        format!("header `{name}` could not be rendered: {error}"),
                    )
                }
            }
        }
        let mut names: Vec<&str> = headers.keys().map(String::as_str).collect();
        names.extend(config.credentials.as_ref().map(|c| c.header.as_str()));
        let mut request = json!({"url": config.url.as_str(), "body": body, "headers": names});
        let secret = match &config.credentials {
            None => None,
            Some(credentials) => {
                request["credentials"] = json!(credentials.id);
                match self.webhook_secret(slice, config, credentials).await {
                    Ok(secret) => Some(secret),
                    Err(error) => return StepResult::failed(Some(request), error),
                }
            }
        };
        let id = idempotency_key(record);
        let delivery =
            Delivery {
                project_id: slice.run.project_id,
                url: config.url.as_str(),
                body: &body,
                headers: &headers,
                retries: WEBHOOK_RETRIES,
                id: Some(&id),
                secret_header: config.credentials.as_ref().zip(secret.as_ref()).map(
                    |(c, value)| SecretHeader {
                        name: &c.header,
                        scheme: c.scheme.as_deref(),
                        value,
                    },
                ),
            };
        let budget = slice.deadline.step_budget();
        match self.webhooks.deliver_within(&delivery, budget).await {
            Ok(outcome) => StepResult::succeeded(
                request,
                json!({"status": outcome.status, "delivery_id": outcome.delivery_id, "response": outcome.response}),
            ),
            Err(error) => StepResult::failed(Some(request), error.to_string()),
        }
    }

    /// The value of a webhook step's credential, once it is found in the run's project, still
    /// bound to the webhook's origin.
    pub(in crate::engine) async fn webhook_secret(
        &self,
        slice: &Slice<'_>,
        config: &WebhookConfig,
        credentials: &WebhookCredentials,
    ) -> Result<SecretString, String> {
        let gone = || format!("credential `{}` no longer exists", credentials.id);
        let credential = self
            .state
            .store
            .get_credential(credentials.id)
            .await
            .map_err(|e| {
                tracing::error!(error = ?e, "failed to read a webhook credential");
                "the webhook's credential could not be read".to_owned()
            })?
            .filter(|c| c.project_id == slice.run.project_id)
            .ok_or_else(gone)?;
        if !outbound::same_origin(&credential.origin, config.url.as_str()) {
            return Err(format!(
                "credential `{}` is bound to {}, not to this webhook's origin",
                credential.id, credential.origin
            ));
        }
        let value = self
            .state
            .secrets
            .get(&credential.secret_path())
            .await
            .map_err(|e| {
                tracing::error!(error = ?e, "failed to read a webhook credential's value");
                "the webhook's credential could not be read".to_owned()
            })?
            .ok_or_else(gone)?;
        Ok(value)
    }
}
