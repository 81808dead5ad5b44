//! A tool's write-only credentials: an API key or OAuth 2 client credentials, parsed from a
//! request and from the secret stored in Secrets Manager; values never print.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::http::parse_url;
use super::kind::AuthType;
use crate::error::FieldError;

/// A JSON value that may hold secrets (a request's `credentials`). Its `Debug` never prints
/// the value, and reading it can never fail, so no error message ever quotes it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretJson(pub Value);

impl fmt::Debug for SecretJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretJson([REDACTED])")
    }
}

/// A tool's credentials: write-only, kept only in Secrets Manager.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A static API key.
    ApiKey(SecretString),
    /// OAuth 2 client credentials.
    OAuth(OAuthCredentials),
}

/// OAuth 2 client credentials; the secrets print as `[REDACTED]`.
#[derive(Clone, Debug)]
pub struct OAuthCredentials {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Token endpoint.
    pub token_url: String,
    /// Refresh token, if the grant uses one.
    pub refresh_token: Option<SecretString>,
    /// Scopes to request.
    pub scopes: Vec<String>,
}

/// Longest accepted secret value.
const MAX_SECRET_CHARS: usize = 8192;

impl Credentials {
    /// Parses `credentials` (`{"api_key": "…"}` or `{"oauth": {…}}`) found at `field`.
    /// Error messages never quote the values.
    pub fn parse(field: &str, value: &Value, errors: &mut Vec<FieldError>) -> Option<Self> {
        let Some(object) = value.as_object() else {
            errors.push(FieldError::new(
                field,
                "must be an object with either `api_key` or `oauth`",
            ));
            return None;
        };
        let before = errors.len();
        for unknown in object
            .keys()
            .filter(|k| !["api_key", "oauth"].contains(&k.as_str()))
        {
            errors.push(FieldError::new(
                format!("{field}.{unknown}"),
                "is not a kind of credentials; expected `api_key` or `oauth`",
            ));
        }
        let parsed = match (object.get("api_key"), object.get("oauth")) {
            (Some(key), None) => secret(&format!("{field}.api_key"), key, errors).map(Self::ApiKey),
            (None, Some(oauth)) => {
                parse_oauth(&format!("{field}.oauth"), oauth, errors).map(Self::OAuth)
            }
            _ => {
                errors.push(FieldError::new(
                    field,
                    "must have exactly one of `api_key` or `oauth`",
                ));
                None
            }
        };
        parsed.filter(|_| errors.len() == before)
    }

    /// The auth type these credentials serve.
    pub fn auth_type(&self) -> AuthType {
        match self {
            Self::ApiKey(_) => AuthType::ApiKey,
            Self::OAuth(_) => AuthType::OAuth,
        }
    }

    /// The secret's value in Secrets Manager: the same JSON shape the API accepts.
    pub fn to_secret(&self) -> SecretString {
        let value = match self {
            Self::ApiKey(key) => json!({"api_key": key.expose_secret()}),
            Self::OAuth(oauth) => {
                let mut inner = json!({
                    "client_id": oauth.client_id,
                    "client_secret": oauth.client_secret.expose_secret(),
                    "token_url": oauth.token_url,
                    "scopes": oauth.scopes,
                });
                if let (Some(token), Some(map)) = (&oauth.refresh_token, inner.as_object_mut()) {
                    map.insert(
                        "refresh_token".to_owned(),
                        Value::String(token.expose_secret().to_owned()),
                    );
                }
                json!({"oauth": inner})
            }
        };
        SecretString::from(value.to_string())
    }

    /// Reads credentials back from a secret written by [`Credentials::to_secret`].
    pub fn from_secret(secret: &SecretString) -> Result<Self, String> {
        let value: Value = serde_json::from_str(secret.expose_secret())
            .map_err(|_| "the stored credentials are not JSON".to_owned())?;
        let mut errors = Vec::new();
        Self::parse("credentials", &value, &mut errors).ok_or_else(|| {
            let fields: Vec<String> = errors.into_iter().map(|e| e.field).collect();
            format!(
                "the stored credentials are invalid at {}",
                fields.join(", ")
            )
        })
    }
}

fn secret(field: &str, value: &Value, errors: &mut Vec<FieldError>) -> Option<SecretString> {
    match value.as_str() {
        Some(raw) if !raw.trim().is_empty() && raw.chars().count() <= MAX_SECRET_CHARS => {
            Some(SecretString::from(raw.to_owned()))
        }
        _ => {
            errors.push(FieldError::new(
                field,
                format!("must be a non-empty string of at most {MAX_SECRET_CHARS} characters"),
            ));
            None
        }
    }
}

fn parse_oauth(
    field: &str,
    value: &Value,
    errors: &mut Vec<FieldError>,
) -> Option<OAuthCredentials> {
    const KEYS: [&str; 5] = [
        "client_id",
        "client_secret",
        "token_url",
        "refresh_token",
        "scopes",
    ];
    let Some(object) = value.as_object() else {
        errors.push(FieldError::new(
            field,
            "must be an object with client_id, client_secret, token_url and optionally \
             refresh_token and scopes",
        ));
        return None;
    };
    for unknown in object.keys().filter(|k| !KEYS.contains(&k.as_str())) {
        errors.push(FieldError::new(
            format!("{field}.{unknown}"),
            format!(
                "is not an OAuth setting; expected one of {}",
                KEYS.join(", ")
            ),
        ));
    }
    let required = |key: &str, errors: &mut Vec<FieldError>| {
        let found = object.get(key);
        if found.is_none() {
            errors.push(FieldError::new(format!("{field}.{key}"), "is required"));
        }
        found
    };
    let client_id = required("client_id", errors).and_then(|v| {
        match v
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 512)
        {
            Some(id) => Some(id.to_owned()),
            None => {
                errors.push(FieldError::new(
                    format!("{field}.client_id"),
                    "must be a non-empty string of at most 512 characters",
                ));
                None
            }
        }
    });
    let client_secret = required("client_secret", errors)
        .and_then(|v| secret(&format!("{field}.client_secret"), v, errors));
    let token_url = required("token_url", errors)
        .and_then(|v| parse_url(&format!("{field}.token_url"), v, errors));
    let refresh_token = match object.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(v) => secret(&format!("{field}.refresh_token"), v, errors),
    };
    let scopes = match object.get("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_string_list(&format!("{field}.scopes"), v, errors),
    };
    Some(OAuthCredentials {
        client_id: client_id?,
        client_secret: client_secret?,
        token_url: token_url?,
        refresh_token,
        scopes,
    })
}

/// The documented shape of write-only `credentials`: exactly one of `api_key` or `oauth`.
#[derive(Debug, ToSchema)]
pub struct CredentialsInput {
    /// A static API key.
    pub api_key: Option<String>,
    /// OAuth 2 client credentials.
    pub oauth: Option<OAuthInput>,
}

/// The documented shape of `credentials.oauth`.
#[derive(Debug, ToSchema)]
pub struct OAuthInput {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Token endpoint (http or https URL).
    pub token_url: String,
    /// Refresh token.
    pub refresh_token: Option<String>,
    /// Scopes to request.
    pub scopes: Option<Vec<String>>,
}

/// Most entries of a list of scopes.
pub const MAX_SCOPES: usize = 100;

/// Parses a list of scopes: non-empty strings of at most 255 characters without whitespace.
pub fn parse_string_list(field: &str, value: &Value, errors: &mut Vec<FieldError>) -> Vec<String> {
    let Some(items) = value.as_array() else {
        errors.push(FieldError::new(field, "must be an array of strings"));
        return Vec::new();
    };
    if items.len() > MAX_SCOPES {
        errors.push(FieldError::new(
            field,
            format!("must have at most {MAX_SCOPES} entries"),
        ));
        return Vec::new();
    }
    let mut scopes = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(scope) if is_scope(scope) => scopes.push(scope.to_owned()),
            _ => errors.push(FieldError::new(
                format!("{field}[{i}]"),
                "must be a non-empty string of at most 255 characters without spaces",
            )),
        }
    }
    scopes
}

/// Whether `scope` is a non-empty token of at most 255 characters without whitespace.
pub fn is_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.chars().count() <= 255
        && !scope.chars().any(|c| c.is_whitespace() || c.is_control())
}
