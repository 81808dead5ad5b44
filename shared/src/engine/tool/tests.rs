//! Unit tests of request planning, errors and small helpers of the tool executor.

use std::collections::BTreeSet;

use secrecy::SecretString;
use serde_json::json;

use super::credentials::Resolved;
use super::plan::Plan;
use super::*;
use crate::tool::template::CredentialField;

fn http_config(value: Value) -> HttpConfig {
    serde_json::from_value(value).unwrap()
}

#[test]
fn a_plan_fills_input_into_the_url_and_headers_and_leaves_credentials_for_later() {
    let config = http_config(json!({
        "url": "https://crm.example.com/customers/{{ input.id }}",
        "method": "GET",
        "headers": {"Authorization": "Bearer {{ credentials.api_key }}", "X-Action": "{{ input.action }}"},
        "timeout_ms": 1000, "retry_attempts": 0, "circuit_breaker_threshold": 5
    }));
    let plan = Plan::new(
        &config,
        &json!({"id": "a b/c", "action": "search", "tags": ["x", "y"], "limit": 5, "skip": null}),
    )
    .unwrap();
    assert_eq!(
        plan.credential_fields,
        BTreeSet::from([CredentialField::ApiKey])
    );
    let mut resolved = Resolved::default();
    resolved.values.insert(
        CredentialField::ApiKey,
        SecretString::from("sk-plan-secret".to_owned()),
    );
    resolved
        .scrubbed
        .push(SecretString::from("sk-plan-secret".to_owned()));
    let prepared = plan.finish(&resolved).unwrap();
    assert_eq!(
        prepared.url.as_str(),
        "https://crm.example.com/customers/a%20b%2Fc?action=search&id=a+b%2Fc&limit=5&tags=x&tags=y"
    );
    assert_eq!(
        prepared.headers["authorization"].to_str().unwrap(),
        "Bearer sk-plan-secret"
    );
    assert!(prepared.headers["authorization"].is_sensitive());
    assert_eq!(
        prepared.record["headers"],
        json!({"Authorization": REDACTED, "X-Action": "search"})
    );
    assert!(!prepared.record.to_string().contains("sk-plan-secret"));
}

#[test]
fn a_plan_refuses_missing_input_fields_and_nested_get_parameters() {
    let config = http_config(json!({
        "url": "https://x.example.com/{{ input.id }}", "method": "GET",
        "timeout_ms": 1000, "retry_attempts": 0, "circuit_breaker_threshold": 5
    }));
    let missing = Plan::new(&config, &json!({})).err().unwrap();
    assert!(
        matches!(&missing, ToolError::InvalidInput { pointer, .. } if pointer == "/id"),
        "{missing}"
    );
    let nested = Plan::new(&config, &json!({"id": 1, "filter": {"a": 1}}))
        .err()
        .unwrap();
    assert!(
        matches!(&nested, ToolError::InvalidInput { pointer, .. } if pointer == "/filter"),
        "{nested}"
    );
    let leaky = http_config(json!({
        "url": "https://x.example.com/?key={{ credentials.api_key }}", "method": "POST",
        "timeout_ms": 1000, "retry_attempts": 0, "circuit_breaker_threshold": 5
    }));
    assert!(matches!(
        Plan::new(&leaky, &json!({})),
        Err(ToolError::Config(_))
    ));
}

#[test]
fn errors_say_whether_to_retry() {
    let status = |status| ToolError::Status {
        status,
        attempts: 1,
        retry_after_secs: None,
        detail: String::new(),
    };
    assert!(status(503).is_retryable());
    assert!(status(429).is_retryable());
    assert!(!status(400).is_retryable());
    assert!(!ToolError::Unsupported("db".into()).is_retryable());
    assert!(ToolError::CircuitOpen {
        retry_after_secs: 3
    }
    .is_retryable());
    assert_eq!(
        ToolError::RateLimited {
            limit: 2,
            retry_after_secs: 7
        }
        .retry_after(),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        ToolError::InvalidInput {
            pointer: String::new(),
            message: "x".into()
        }
        .to_string(),
        "the tool input is invalid at `(root)`: x"
    );
}

#[test]
fn seconds_until_rounds_up() {
    let now = Utc::now();
    assert_eq!(
        seconds_until(now, now + chrono::Duration::milliseconds(1500)),
        2
    );
    assert_eq!(seconds_until(now, now), 1);
}
