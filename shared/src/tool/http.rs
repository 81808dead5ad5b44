//! The `config` of an http tool: its URL and method, header templates and resilience
//! settings, validated when the tool is saved and read back typed by the engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::schema::check_json_schema;
use super::template::{self, origin, uses_credentials};
use crate::error::FieldError;

/// The HTTP method of an http tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl HttpMethod {
    /// Every method an http tool may use.
    pub const ALL: [HttpMethod; 5] = [Self::Get, Self::Post, Self::Put, Self::Patch, Self::Delete];

    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }
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
    pub(super) fn parse(&self, value: &Value, errors: &mut Vec<FieldError>) -> Option<u64> {
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

/// Most headers an http tool may send.
pub const MAX_HEADERS: usize = 50;

/// The `config` of an http tool, as stored (defaults filled in) and as the engine reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HttpConfig {
    /// The `http`/`https` URL called; it may hold `{{ input.… }}` templates in its path or query.
    pub url: String,
    /// The method.
    pub method: HttpMethod,
    /// Header templates, e.g. `"Authorization": "Bearer {{ credentials.api_key }}"`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time limit of one attempt, 1–300000 ms (default 10000).
    pub timeout_ms: u64,
    /// Retries after a failed attempt, 0–10 (default 0).
    pub retry_attempts: u64,
    /// Consecutive failures that open the circuit breaker, 1–1000 (default 5).
    pub circuit_breaker_threshold: u64,
    /// JSON Schema (draft 2020-12) of the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub inputs_schema: Option<Map<String, Value>>,
    /// JSON Schema (draft 2020-12) of the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub outputs_schema: Option<Map<String, Value>>,
}

impl HttpConfig {
    /// Reads the typed config back from a stored (already validated) `config` object.
    pub fn from_config(config: &Map<String, Value>) -> Result<Self, serde_json::Error> {
        serde_json::from_value(Value::Object(config.clone()))
    }
}

pub(super) fn parse_http_config(
    mut config: Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Map<String, Value> {
    let before = errors.len();
    let url = match config.remove("url") {
        None => {
            errors.push(FieldError::new(
                "config.url",
                "is required for an http tool",
            ));
            None
        }
        Some(value) => parse_url_template("config.url", &value, errors),
    };
    let method = match config.remove("method") {
        None => {
            errors.push(FieldError::new(
                "config.method",
                "is required for an http tool",
            ));
            None
        }
        Some(value) => {
            let method = value.as_str().and_then(|raw| {
                HttpMethod::ALL
                    .into_iter()
                    .find(|m| m.as_str().eq_ignore_ascii_case(raw))
            });
            if method.is_none() {
                let names: Vec<&str> = HttpMethod::ALL.iter().map(|m| m.as_str()).collect();
                errors.push(FieldError::new(
                    "config.method",
                    format!("must be one of {}", names.join(", ")),
                ));
            }
            method
        }
    };
    let headers = match config.remove("headers") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(value) => parse_headers(&value, errors),
    };
    let mut bounded = |spec: Bounded, errors: &mut Vec<FieldError>| match config.remove(spec.key) {
        None | Some(Value::Null) => spec.default,
        Some(value) => spec.parse(&value, errors).unwrap_or(spec.default),
    };
    let timeout_ms = bounded(TIMEOUT_MS, errors);
    let retry_attempts = bounded(RETRY_ATTEMPTS, errors);
    let circuit_breaker_threshold = bounded(CIRCUIT_BREAKER_THRESHOLD, errors);
    let mut schema = |key: &str, errors: &mut Vec<FieldError>| match config.remove(key) {
        None | Some(Value::Null) => None,
        Some(value) => {
            check_json_schema(&format!("config.{key}"), &value, errors);
            match value {
                Value::Object(schema) => Some(schema),
                _ => None,
            }
        }
    };
    let inputs_schema = schema("inputs_schema", errors);
    let outputs_schema = schema("outputs_schema", errors);
    for unknown in config.keys() {
        errors.push(FieldError::new(
            format!("config.{unknown}"),
            "is not a setting of an http tool; expected url, method, headers, timeout_ms, \
             retry_attempts, circuit_breaker_threshold, inputs_schema, outputs_schema",
        ));
    }
    let (Some(url), Some(method), true) = (url, method, errors.len() == before) else {
        return Map::new();
    };
    let typed = HttpConfig {
        url,
        method,
        headers,
        timeout_ms,
        retry_attempts,
        circuit_breaker_threshold,
        inputs_schema,
        outputs_schema,
    };
    match serde_json::to_value(typed) {
        Ok(Value::Object(normalised)) => normalised,
        _ => Map::new(),
    }
}

/// Checks that `value` is an absolute `http` or `https` URL with a host; returns it as given.
pub fn parse_url(field: &str, value: &Value, errors: &mut Vec<FieldError>) -> Option<String> {
    let parsed = value
        .as_str()
        .map(|raw| (raw, url::Url::parse(raw)))
        .filter(|(_, parsed)| {
            parsed.as_ref().is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty())
            })
        });
    match parsed {
        Some((raw, _)) if raw.len() <= 2048 => Some(raw.to_owned()),
        _ => {
            errors.push(FieldError::new(
                field,
                "must be an absolute http or https URL of at most 2048 characters",
            ));
            None
        }
    }
}

/// Checks an http tool's `url`: an absolute http(s) URL of at most 2048 characters whose
/// templates fill only its path and query (see [`template::check_url`]).
fn parse_url_template(field: &str, value: &Value, errors: &mut Vec<FieldError>) -> Option<String> {
    let checked = match value.as_str() {
        Some(raw) if raw.len() <= 2048 => template::check_url(raw).map(|()| raw.to_owned()),
        _ => Err("must be an absolute http or https URL of at most 2048 characters".to_owned()),
    };
    checked
        .map_err(|why| errors.push(FieldError::new(field, why)))
        .ok()
}

fn parse_headers(value: &Value, errors: &mut Vec<FieldError>) -> BTreeMap<String, String> {
    let Some(object) = value.as_object() else {
        errors.push(FieldError::new(
            "config.headers",
            "must be an object of header names to string templates",
        ));
        return BTreeMap::new();
    };
    if object.len() > MAX_HEADERS {
        errors.push(FieldError::new(
            "config.headers",
            format!("must have at most {MAX_HEADERS} headers"),
        ));
    }
    let mut headers = BTreeMap::new();
    for (name, template) in object {
        let field = format!("config.headers.{name}");
        let Some(template) = template.as_str() else {
            errors.push(FieldError::new(&field, "must be a string template"));
            continue;
        };
        if template.chars().any(char::is_control) || template.len() > 8192 {
            errors.push(FieldError::new(
                &field,
                "must be at most 8192 characters without control characters",
            ));
            continue;
        }
        if let Err(why) = template::check_header(name, template) {
            errors.push(FieldError::new(&field, why));
            continue;
        }
        headers.insert(name.clone(), template.to_owned());
    }
    headers
}

/// Why changing an http tool's config from `before` to `after` would send its stored
/// credentials somewhere new, if it would: another origin (scheme, host or port), or a header
/// that newly carries them; the message asks for the credentials again.
pub fn credentials_rebound(before: Option<&HttpConfig>, after: &HttpConfig) -> Option<String> {
    rebound(before, after).map(|why| {
        format!(
            "{why}: send `credentials` again, so the stored secret never goes where it was \
             not meant to"
        )
    })
}

fn rebound(before: Option<&HttpConfig>, after: &HttpConfig) -> Option<String> {
    let old_origin = before.and_then(|c| origin(&c.url));
    let new_origin = origin(&after.url);
    if old_origin != new_origin {
        return Some(format!(
            "the tool's origin changes from {} to {}",
            old_origin.as_deref().unwrap_or("none"),
            new_origin.as_deref().unwrap_or("none")
        ));
    }
    after
        .headers
        .iter()
        .find(|(name, template)| {
            uses_credentials(template)
                && before
                    .and_then(|c| c.headers.get(*name))
                    .is_none_or(|old| old != *template)
        })
        .map(|(name, _)| format!("header `{name}` now carries the credentials"))
}
