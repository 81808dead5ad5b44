//! Tool credentials: read from Secrets Manager, cached per tool version, and for OAuth an
//! access token fetched from the token endpoint (through the one outbound policy).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use reqwest::header::ACCEPT;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use uuid::Uuid;

use super::{ToolError, ToolExecutor};
use crate::outbound::scrub;
use crate::outbound::send::{retryable_status, send_once, Failure};
use crate::store::tools::Tool;
use crate::tool::template::CredentialField;
use crate::tool::{Credentials, HttpConfig, OAuthCredentials};

/// Credentials of one tool version, with the OAuth access token once fetched.
pub(super) struct CachedCredentials {
    version: u64,
    loaded_at: Instant,
    credentials: Credentials,
    token: Option<AccessToken>,
}

#[derive(Clone)]
struct AccessToken {
    value: SecretString,
    expires: Instant,
}

impl ToolExecutor {
    /// The credential values the templates use, reading (and caching) the secret and
    /// fetching an OAuth token when needed.
    pub(super) async fn resolve_credentials(
        &self,
        tool: &Tool,
        fields: &BTreeSet<CredentialField>,
        config: &HttpConfig,
    ) -> Result<Resolved, ToolError> {
        if fields.is_empty() {
            return Ok(Resolved::default());
        }
        let cached = self.cached(tool);
        let (credentials, mut token) = match cached {
            Some(found) => found,
            None => (self.load_credentials(tool).await?, None),
        };
        let mut resolved = Resolved::default();
        for secret in secret_values(&credentials) {
            resolved.scrubbed.push(secret);
        }
        for field in fields {
            let value = match (field, &credentials) {
                (CredentialField::ApiKey, Credentials::ApiKey(key)) => key.clone(),
                (CredentialField::ClientId, Credentials::OAuth(oauth)) => {
                    SecretString::from(oauth.client_id.clone())
                }
                (CredentialField::ClientSecret, Credentials::OAuth(oauth)) => {
                    oauth.client_secret.clone()
                }
                (CredentialField::AccessToken, Credentials::OAuth(oauth)) => {
                    let fresh = match &token {
                        Some(token) if token.expires > Instant::now() => token.clone(),
                        _ => {
                            let fetched = self.fetch_token(oauth, config).await?;
                            token = Some(fetched.clone());
                            fetched
                        }
                    };
                    resolved.scrubbed.push(fresh.value.clone());
                    fresh.value
                }
                (field, credentials) => {
                    return Err(ToolError::Config(format!(
                        "a header uses `credentials.{}`, which {} credentials do not have",
                        field.name(),
                        credentials.auth_type()
                    )))
                }
            };
            resolved.values.insert(*field, value);
        }
        self.remember(tool, credentials, token);
        Ok(resolved)
    }

    fn cached(&self, tool: &Tool) -> Option<(Credentials, Option<AccessToken>)> {
        let cache = self.credentials.lock().ok()?;
        cache
            .get(&tool.id)
            .filter(|c| c.version == tool.version && c.loaded_at.elapsed() < self.credentials_ttl)
            .map(|c| (c.credentials.clone(), c.token.clone()))
    }

    fn remember(&self, tool: &Tool, credentials: Credentials, token: Option<AccessToken>) {
        if self.credentials_ttl.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.credentials.lock() {
            let loaded_at = match cache.get(&tool.id) {
                Some(c) if c.version == tool.version => c.loaded_at,
                _ => Instant::now(),
            };
            cache.retain(|_, c| c.loaded_at.elapsed() < self.credentials_ttl);
            cache.insert(
                tool.id,
                CachedCredentials {
                    version: tool.version,
                    loaded_at,
                    credentials,
                    token,
                },
            );
        }
    }

    /// Drops a cached access token the tool refused, so the next call fetches a new one.
    pub(super) fn forget_token(&self, tool_id: Uuid) {
        if let Ok(mut cache) = self.credentials.lock() {
            if let Some(cached) = cache.get_mut(&tool_id) {
                cached.token = None;
            }
        }
    }

    async fn load_credentials(&self, tool: &Tool) -> Result<Credentials, ToolError> {
        let secret = self
            .secrets
            .get(&tool.credentials_path())
            .await
            .map_err(ToolError::Unexpected)?
            .ok_or_else(|| ToolError::Credentials {
                message: "the tool's headers use credentials, but none are stored; set them \
                          with `credentials` on the tool"
                    .to_owned(),
                retryable: false,
            })?;
        Credentials::from_secret(&secret).map_err(|message| ToolError::Credentials {
            message,
            retryable: false,
        })
    }

    /// Gets an access token with the refresh-token grant when the credentials hold a refresh
    /// token, the client-credentials grant otherwise.
    async fn fetch_token(
        &self,
        oauth: &OAuthCredentials,
        config: &HttpConfig,
    ) -> Result<AccessToken, ToolError> {
        let scrub = Resolved {
            scrubbed: secret_values(&Credentials::OAuth(oauth.clone())),
            ..Resolved::default()
        };
        let scope = oauth.scopes.join(" ");
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", oauth.client_id.as_str()),
            ("client_secret", oauth.client_secret.expose_secret()),
        ];
        match &oauth.refresh_token {
            Some(refresh) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", refresh.expose_secret()));
            }
            None => form.push(("grant_type", "client_credentials")),
        }
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        let asked = Instant::now();
        let token_url = url::Url::parse(&oauth.token_url).map_err(|_| ToolError::Credentials {
            message: "the OAuth token_url is not a valid URL".to_owned(),
            retryable: false,
        })?;
        let request = self
            .egress
            .request(Method::POST, token_url, true)
            .map_err(ToolError::Egress)?
            .header(ACCEPT, "application/json")
            .form(&form)
            .timeout(Duration::from_millis(config.timeout_ms));
        let reply = match send_once(request).await {
            Ok(reply) => reply,
            Err(Failure::Refused(refused)) => return Err(ToolError::Egress(refused)),
            Err(failure) => {
                return Err(ToolError::Credentials {
                    message: format!(
                        "the OAuth token endpoint failed: {}",
                        scrub.scrub(&failure.describe())
                    ),
                    retryable: true,
                })
            }
        };
        if !reply.status.is_success() {
            return Err(ToolError::Credentials {
                message: format!(
                    "the OAuth token endpoint answered HTTP {}",
                    reply.status.as_u16()
                ),
                retryable: retryable_status(reply.status.as_u16()),
            });
        }
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let Some(token) = body.get("access_token").and_then(Value::as_str) else {
            return Err(ToolError::Credentials {
                message: "the OAuth token endpoint's answer has no `access_token`".to_owned(),
                retryable: false,
            });
        };
        // Refresh a little early so a token does not expire in flight.
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(300)
            .saturating_sub(30);
        Ok(AccessToken {
            value: SecretString::from(token.to_owned()),
            expires: asked + Duration::from_secs(lifetime),
        })
    }
}

/// Every secret text of `credentials`, to scrub from what the tool echoes.
fn secret_values(credentials: &Credentials) -> Vec<SecretString> {
    match credentials {
        Credentials::ApiKey(key) => vec![key.clone()],
        Credentials::OAuth(oauth) => {
            let mut values = vec![oauth.client_secret.clone()];
            values.extend(oauth.refresh_token.clone());
            values
        }
    }
}

/// Credential values for one call, and every secret text to scrub.
#[derive(Default)]
pub(super) struct Resolved {
    pub(super) values: HashMap<CredentialField, SecretString>,
    pub(super) scrubbed: Vec<SecretString>,
}

impl Resolved {
    /// `text` with every credential value replaced by [`REDACTED`].
    pub(super) fn scrub(&self, text: &str) -> String {
        scrub::text(text, &self.scrubbed)
    }

    pub(super) fn scrub_value(&self, value: &Value) -> Value {
        scrub::value(value, &self.scrubbed)
    }
}
