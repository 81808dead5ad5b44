//! Unit tests of tool kinds, configs, schemas and credentials.

use secrecy::ExposeSecret;
use serde_json::json;

use super::schema::check_json_schema;
use super::*;
use crate::error::FieldError;

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
    let free = config(json!({"dsn_template": "postgres://{{ credentials.api_key }}", "pool": 4}));
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
    assert!(matches!(back, Credentials::ApiKey(k) if k.expose_secret() == "sk-live-very-secret"));

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
