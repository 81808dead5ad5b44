//! What a tool is made of, parsed at the edge: its kind and auth type, its `config` (the http
//! contract in [`http`], resilience settings and JSON Schemas in [`schema`]), its URL and header
//! templates ([`template`]) and its write-only [`credentials`].
//!
//! Everything here is pure: no I/O. Every parser pushes [`FieldError`]s naming the exact path
//! (`config.inputs_schema.properties.action.type`, `credentials.oauth.token_url`) so a handler
//! can report every problem of a request at once.

pub mod credentials;
pub mod http;
pub mod schema;
pub mod template;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

pub use self::credentials::{
    Credentials, CredentialsInput, OAuthCredentials, OAuthInput, SecretJson,
};
use self::http::parse_http_config;
pub use self::http::{HttpConfig, HttpMethod};
use self::schema::check_json_schema;
use crate::error::FieldError;

/// What a tool talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    /// An HTTP API; `config` holds its contract.
    Http,
    /// A database.
    Db,
    /// A SaaS product's API.
    Saas,
    /// A browser.
    Browser,
    /// A search engine.
    Search,
    /// A storage service.
    Storage,
    /// Anything else.
    Custom,
}

impl ToolKind {
    /// Every kind, in documentation order.
    pub const ALL: [ToolKind; 7] = [
        Self::Http,
        Self::Db,
        Self::Saas,
        Self::Browser,
        Self::Search,
        Self::Storage,
        Self::Custom,
    ];

    /// The kind's name as used in the API and in stored records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Db => "db",
            Self::Saas => "saas",
            Self::Browser => "browser",
            Self::Search => "search",
            Self::Storage => "storage",
            Self::Custom => "custom",
        }
    }

    /// Parses a kind's name exactly as the API spells it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        one_of(raw, &Self::ALL, |k| k.as_str())
    }
}

impl fmt::Display for ToolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a tool authenticates to what it talks to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum AuthType {
    /// OAuth 2 client credentials (and optionally a refresh token).
    #[serde(rename = "oauth")]
    OAuth,
    /// A static API key.
    #[serde(rename = "apikey")]
    ApiKey,
    /// No authentication.
    #[default]
    #[serde(rename = "none")]
    NoAuth,
}

impl AuthType {
    /// Every auth type, in documentation order.
    pub const ALL: [AuthType; 3] = [Self::OAuth, Self::ApiKey, Self::NoAuth];

    /// The auth type's name as used in the API and in stored records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OAuth => "oauth",
            Self::ApiKey => "apikey",
            Self::NoAuth => "none",
        }
    }

    /// Parses an auth type's name exactly as the API spells it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        one_of(raw, &Self::ALL, |a| a.as_str())
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn one_of<T: Copy>(raw: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| name(*v) == raw)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            format!("must be one of {}", names.join(", "))
        })
}

/// Bounds and default of `config.timeout_ms`.
pub const TIMEOUT_MS: Bounded = Bounded {
    key: "timeout_ms",
    min: 1,
    max: 300_000,
    default: 10_000,
};

/// Bounds and default of `config.retry_attempts`.
pub const RETRY_ATTEMPTS: Bounded = Bounded {
    key: "retry_attempts",
    min: 0,
    max: 10,
    default: 0,
};

/// Bounds and default of `config.circuit_breaker_threshold` (consecutive failures that open it).
pub const CIRCUIT_BREAKER_THRESHOLD: Bounded = Bounded {
    key: "circuit_breaker_threshold",
    min: 1,
    max: 1000,
    default: 5,
};

/// A whole-number setting of `config` with its range and default.
#[derive(Clone, Copy, Debug)]
pub struct Bounded {
    /// Key under `config`.
    pub key: &'static str,
    /// Least accepted value.
    pub min: u64,
    /// Greatest accepted value.
    pub max: u64,
    /// Value when left out (http tools only).
    pub default: u64,
}

impl Bounded {
    fn parse(&self, value: &Value, errors: &mut Vec<FieldError>) -> Option<u64> {
        match value.as_u64().filter(|n| (self.min..=self.max).contains(n)) {
            Some(n) => Some(n),
            None => {
                errors.push(FieldError::new(
                    format!("config.{}", self.key),
                    format!("must be a whole number from {} to {}", self.min, self.max),
                ));
                None
            }
        }
    }
}

/// Keys of `config` holding JSON Schemas, for any kind of tool.
pub const SCHEMA_KEYS: [&str; 2] = ["inputs_schema", "outputs_schema"];

/// Validates a tool's `config` for `kind`, recording every problem under `config.…`, and
/// returns it normalised: an http tool's config gets its defaults filled in.
///
/// - **http**: `url` and `method` are required; `headers`, `timeout_ms`, `retry_attempts`,
///   `circuit_breaker_threshold`, `inputs_schema` and `outputs_schema` are optional; any other
///   key is refused (it is most likely a typo).
/// - **every other kind**: a free object, but the keys above are still checked when present.
///
/// In every kind, `inputs_schema` and `outputs_schema` must be valid JSON Schemas.
pub fn parse_config(
    kind: ToolKind,
    config: Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Map<String, Value> {
    match kind {
        ToolKind::Http => parse_http_config(config, errors),
        _ => {
            for bounded in [TIMEOUT_MS, RETRY_ATTEMPTS, CIRCUIT_BREAKER_THRESHOLD] {
                if let Some(value) = config.get(bounded.key) {
                    bounded.parse(value, errors);
                }
            }
            for key in SCHEMA_KEYS {
                if let Some(schema) = config.get(key) {
                    check_json_schema(&format!("config.{key}"), schema, errors);
                }
            }
            config
        }
    }
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
