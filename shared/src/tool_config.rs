//! What a tool is made of, parsed at the edge: its kind and auth type, its `config` (the http
//! contract, resilience settings and JSON Schemas) and its write-only credentials.
//!
//! Everything here is pure: no I/O. Every parser pushes [`FieldError`]s naming the exact path
//! (`config.inputs_schema.properties.action.type`, `credentials.oauth.token_url`) so a handler
//! can report every problem of a request at once.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::error::FieldError;
use crate::tool_template;

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

fn parse_http_config(
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
/// templates fill only its path and query (see [`tool_template::check_url`]).
fn parse_url_template(field: &str, value: &Value, errors: &mut Vec<FieldError>) -> Option<String> {
    let checked = match value.as_str() {
        Some(raw) if raw.len() <= 2048 => tool_template::check_url(raw).map(|()| raw.to_owned()),
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
        if let Err(why) = tool_template::check_header(name, template) {
            errors.push(FieldError::new(&field, why));
            continue;
        }
        headers.insert(name.clone(), template.to_owned());
    }
    headers
}

/// The only JSON Schema dialect accepted: draft 2020-12, which the engine validates with.
pub const JSON_SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Most errors reported for one schema.
const MAX_SCHEMA_ERRORS: usize = 10;
/// Longest error message reported for a schema.
const MAX_SCHEMA_MESSAGE_CHARS: usize = 300;

/// Checks that `schema` is a valid JSON Schema (draft 2020-12) object: it must satisfy the
/// draft's meta-schema and compile (references resolvable, patterns valid). Each problem is
/// recorded at its path inside the schema, e.g. `config.inputs_schema.properties.action.type`.
///
/// Nothing is fetched: references may only point inside the schema itself.
pub fn check_json_schema(field: &str, schema: &Value, errors: &mut Vec<FieldError>) {
    let Some(object) = schema.as_object() else {
        errors.push(FieldError::new(
            field,
            "must be a JSON Schema object (draft 2020-12)",
        ));
        return;
    };
    if let Some(dialect) = object.get("$schema") {
        if dialect.as_str().map(|d| d.trim_end_matches('#')) != Some(JSON_SCHEMA_DIALECT) {
            errors.push(FieldError::new(
                format!("{field}.$schema"),
                format!("must be `{JSON_SCHEMA_DIALECT}` or left out: schemas are draft 2020-12"),
            ));
            return;
        }
    }
    let meta = jsonschema::draft202012::meta::validator();
    let mut found: Vec<FieldError> = Vec::new();
    for error in meta.iter_errors(schema) {
        let problem = FieldError::new(
            field_path(field, schema, error.instance_path().segments()),
            clip(&error.to_string()),
        );
        if !found.contains(&problem) {
            found.push(problem);
        }
        if found.len() == MAX_SCHEMA_ERRORS {
            break;
        }
    }
    if found.is_empty() {
        if let Err(error) = jsonschema::draft202012::options().build(schema) {
            let message = match error.kind() {
                jsonschema::error::ValidationErrorKind::Referencing(_) => {
                    "has a `$ref` that does not resolve inside the schema; only local \
                     references such as `#/$defs/name` are allowed"
                        .to_owned()
                }
                _ => format!("does not compile: {error}"),
            };
            found.push(FieldError::new(
                field_path(field, schema, error.instance_path().segments()),
                clip(&message),
            ));
        }
    }
    errors.extend(found);
}

/// Joins a JSON Pointer inside `root` to `field` in the API's path style: `.key` for object
/// members and `[i]` for array items.
fn field_path<'a>(
    field: &str,
    root: &Value,
    segments: impl Iterator<Item = jsonschema::paths::LocationSegment<'a>>,
) -> String {
    let mut path = field.to_owned();
    let mut at = Some(root);
    for segment in segments {
        let name = segment.to_string();
        match at {
            Some(Value::Array(items)) => {
                let index = name.parse::<usize>().ok();
                path.push_str(&format!("[{name}]"));
                at = index.and_then(|i| items.get(i));
            }
            Some(Value::Object(members)) => {
                path.push('.');
                path.push_str(&name);
                at = members.get(&name);
            }
            _ => {
                path.push('.');
                path.push_str(&name);
                at = None;
            }
        }
    }
    path
}

fn clip(message: &str) -> String {
    if message.chars().count() <= MAX_SCHEMA_MESSAGE_CHARS {
        return message.to_owned();
    }
    let mut clipped: String = message.chars().take(MAX_SCHEMA_MESSAGE_CHARS).collect();
    clipped.push('…');
    clipped
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    fn config(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn kinds_and_auth_types_parse_only_their_documented_names() {
        assert_eq!(ToolKind::parse("http"), Ok(ToolKind::Http));
        assert_eq!(
            ToolKind::parse("HTTP").unwrap_err(),
            "must be one of http, db, saas, browser, search, storage, custom"
        );
        assert_eq!(AuthType::parse("apikey"), Ok(AuthType::ApiKey));
        assert_eq!(AuthType::parse("none"), Ok(AuthType::NoAuth));
        assert!(AuthType::parse("basic").is_err());
        assert_eq!(
            serde_json::to_value(AuthType::OAuth).unwrap(),
            json!("oauth")
        );
    }

    #[test]
    fn an_http_config_gets_its_defaults() {
        let mut errors = Vec::new();
        let parsed = parse_config(
            ToolKind::Http,
            config(json!({"url": "https://crm.example.com/api", "method": "post"})),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let typed = HttpConfig::from_config(&parsed).unwrap();
        assert_eq!(typed.method, HttpMethod::Post);
        assert_eq!(typed.timeout_ms, 10_000);
        assert_eq!(typed.retry_attempts, 0);
        assert_eq!(typed.circuit_breaker_threshold, 5);
        assert!(typed.headers.is_empty());
    }

    #[test]
    fn an_http_config_reports_every_bad_setting() {
        let mut errors = Vec::new();
        parse_config(
            ToolKind::Http,
            config(json!({
                "url": "ftp://files.example.com",
                "method": "FETCH",
                "headers": {"bad name": "x", "Authorization": "Bearer sk-live-123", "X-Ok": "{{ input.id }}"},
                "timeout_ms": 0,
                "retry_attempts": 11,
                "circuit_breaker_threshold": 2.5,
                "timeout": 5,
            })),
            &mut errors,
        );
        assert_eq!(
            fields(&errors),
            vec![
                "config.url",
                "config.method",
                "config.headers.Authorization",
                "config.headers.bad name",
                "config.timeout_ms",
                "config.retry_attempts",
                "config.circuit_breaker_threshold",
                "config.timeout",
            ]
        );
    }

    #[test]
    fn an_http_config_needs_a_url_and_a_method() {
        let mut errors = Vec::new();
        parse_config(ToolKind::Http, Map::new(), &mut errors);
        assert_eq!(fields(&errors), vec!["config.url", "config.method"]);
    }

    #[test]
    fn other_kinds_keep_a_free_config_but_check_known_settings() {
        let mut errors = Vec::new();
        let free =
            config(json!({"dsn_template": "postgres://{{ credentials.api_key }}", "pool": 4}));
        assert_eq!(parse_config(ToolKind::Db, free.clone(), &mut errors), free);
        assert!(errors.is_empty());
        parse_config(
            ToolKind::Custom,
            config(json!({"timeout_ms": 999_999, "outputs_schema": {"type": 12}})),
            &mut errors,
        );
        assert_eq!(
            fields(&errors),
            vec!["config.timeout_ms", "config.outputs_schema.type"]
        );
    }

    #[test]
    fn the_seed_crm_schemas_are_valid() {
        let mut errors = Vec::new();
        check_json_schema(
            "config.inputs_schema",
            &json!({
                "type": "object",
                "properties": {
                    "action": {"type": "string", "enum": ["create_customer", "search_customers"]},
                    "data": {"type": "object"}
                },
                "required": ["action", "data"]
            }),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn an_invalid_schema_is_reported_at_its_path() {
        let mut errors = Vec::new();
        check_json_schema(
            "config.inputs_schema",
            &json!({"type": "object", "properties": {"action": {"type": "strin"}}}),
            &mut errors,
        );
        assert_eq!(
            fields(&errors),
            vec!["config.inputs_schema.properties.action.type"]
        );

        let mut errors = Vec::new();
        check_json_schema(
            "config.inputs_schema",
            &json!({"required": ["a", 7]}),
            &mut errors,
        );
        assert_eq!(fields(&errors), vec!["config.inputs_schema.required[1]"]);
    }

    #[test]
    fn a_schema_must_be_an_object_of_draft_2020_12_that_compiles() {
        let mut errors = Vec::new();
        check_json_schema("s", &json!(true), &mut errors);
        check_json_schema(
            "s",
            &json!({"$schema": "http://json-schema.org/draft-07/schema#"}),
            &mut errors,
        );
        check_json_schema("s", &json!({"$ref": "#/$defs/missing"}), &mut errors);
        check_json_schema(
            "s",
            &json!({"$ref": "https://schemas.example.com/remote.json"}),
            &mut errors,
        );
        check_json_schema(
            "s",
            &json!({"type": "string", "pattern": "(unclosed"}),
            &mut errors,
        );
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert_eq!(errors[1].field, "s.$schema");
        let mut errors = Vec::new();
        check_json_schema(
            "s",
            &json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"}),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn credentials_parse_without_quoting_secrets() {
        let mut errors = Vec::new();
        let parsed = Credentials::parse(
            "credentials",
            &json!({"api_key": "sk-live-very-secret"}),
            &mut errors,
        )
        .unwrap();
        assert_eq!(parsed.auth_type(), AuthType::ApiKey);
        assert!(!format!("{parsed:?}").contains("very-secret"));
        let back = Credentials::from_secret(&parsed.to_secret()).unwrap();
        assert!(
            matches!(back, Credentials::ApiKey(k) if k.expose_secret() == "sk-live-very-secret")
        );

        let mut errors = Vec::new();
        let oauth = Credentials::parse(
            "credentials",
            &json!({"oauth": {"client_id": "abc", "client_secret": "hush-hush", "token_url": "https://auth.example.com/token", "refresh_token": "rt-secret", "scopes": ["crm.read"]}}),
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty());
        let debug = format!("{oauth:?}");
        assert!(!debug.contains("hush-hush") && !debug.contains("rt-secret"));
        assert!(
            matches!(Credentials::from_secret(&oauth.to_secret()).unwrap(), Credentials::OAuth(o) if o.scopes == ["crm.read"])
        );
    }

    #[test]
    fn bad_credentials_are_named_field_by_field() {
        let mut errors = Vec::new();
        assert!(Credentials::parse("credentials", &json!("sk-bare-secret"), &mut errors).is_none());
        assert!(Credentials::parse(
            "credentials",
            &json!({"api_key": "a", "oauth": {}}),
            &mut errors
        )
        .is_none());
        assert!(Credentials::parse(
            "credentials",
            &json!({"oauth": {"client_secret": 5, "token_url": "nope", "extra": 1}}),
            &mut errors
        )
        .is_none());
        assert_eq!(
            fields(&errors),
            vec![
                "credentials",
                "credentials",
                "credentials.oauth.extra",
                "credentials.oauth.client_id",
                "credentials.oauth.client_secret",
                "credentials.oauth.token_url",
            ]
        );
        assert!(errors.iter().all(|e| !e.message.contains("sk-bare-secret")));
    }
}
