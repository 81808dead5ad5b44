//! What a tool is made of, parsed at the edge: its kind and auth type ([`kind`]), its `config`
//! (the http contract and resilience settings in [`http`], JSON Schemas in [`schema`]), its URL
//! and header templates ([`template`]) and its write-only [`credentials`].
//!
//! Everything here is pure: no I/O. Every parser pushes [`FieldError`]s naming the exact path
//! (`config.inputs_schema.properties.action.type`, `credentials.oauth.token_url`) so a handler
//! can report every problem of a request at once.

pub mod credentials;
pub mod http;
pub mod kind;
pub mod schema;
pub mod template;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

pub use self::credentials::{
    parse_string_list, Credentials, CredentialsInput, OAuthCredentials, OAuthInput, SecretJson,
};
use self::http::{parse_http_config, CIRCUIT_BREAKER_THRESHOLD, RETRY_ATTEMPTS, TIMEOUT_MS};
pub use self::http::{HttpConfig, HttpMethod};
pub use self::kind::{AuthType, ToolKind};
use self::schema::check_json_schema;
use crate::error::FieldError;

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

/// A tool's validated `config` as stored, with an http contract parsed once: when the record
/// is read or the config is set, never again on each call.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Map<String, Value>", into = "Map<String, Value>")]
pub struct ToolConfig {
    map: Map<String, Value>,
    http: Option<HttpConfig>,
}

impl ToolConfig {
    /// The config as the API shows it.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The http contract, if the config is one (whatever the tool's kind).
    pub fn http(&self) -> Option<&HttpConfig> {
        self.http.as_ref()
    }
}

impl From<Map<String, Value>> for ToolConfig {
    fn from(map: Map<String, Value>) -> Self {
        let http = HttpConfig::from_config(&map).ok();
        Self { map, http }
    }
}

impl From<ToolConfig> for Map<String, Value> {
    fn from(config: ToolConfig) -> Self {
        config.map
    }
}
