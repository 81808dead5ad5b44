//! Tenants' events: a project's developer (or one of its API keys) puts an event on the
//! Spark-Ops bus, where event schedules of the same project can match it. The server stamps
//! `detail.project_id` (whatever the tenant sent there) and `detail.chain_depth = 0`, so a
//! tenant can neither speak for another project nor fake a place in a chain; `source` may not
//! pass for Spark-Ops' own (`spark-ops…`) or AWS's (`aws.…`).

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::rbac::Action;
use crate::auth::{authorize, Principal};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, BusEvent};
use crate::state::AppState;
use crate::validate::{line, required_project_id, FieldErrors, MAX_JSON_DEPTH};

/// Longest `source` and `detail_type`.
pub const MAX_NAME_CHARS: usize = 128;
/// Largest `detail`, as JSON (EventBridge takes 256 KiB per event).
pub const MAX_DETAIL_BYTES: usize = 64 * 1024;

/// `POST /events`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    /// The project whose event it is.
    #[schema(value_type = Uuid)]
    pub project_id: Option<String>,
    /// Who says it happened, e.g. `com.example.orders`: 1-128 of `A-Z a-z 0-9 . - _ / :`, not
    /// starting with `spark-ops` or `aws.`.
    pub source: String,
    /// What happened, e.g. `order.placed`: 1-128 characters.
    pub detail_type: String,
    /// The event's content, an object of at most 64 KiB of JSON; `project_id` and
    /// `chain_depth` in it are set by the server.
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// An event `source` a tenant may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSource(String);

impl EventSource {
    /// Parses a tenant's `source`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let lower = raw.to_ascii_lowercase();
        if lower.starts_with(events::SOURCE) || lower.starts_with("aws.") {
            return Err(format!(
                "must not start with `{}` or `aws.`: those sources are Spark-Ops' and AWS's own",
                events::SOURCE
            ));
        }
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':');
        if raw.is_empty() || raw.chars().count() > MAX_NAME_CHARS || !raw.chars().all(allowed) {
            return Err(format!(
                "must be 1-{MAX_NAME_CHARS} characters of A-Z a-z 0-9 . - _ / :"
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

/// `principal` puts an event of project `body.project_id` on the bus; returns its event id.
/// `503` if EventBridge does not take it.
#[tracing::instrument(name = "publish_event", skip_all)]
pub async fn publish(
    state: &AppState,
    principal: &Principal,
    body: PublishEvent,
) -> ApiResult<String> {
    let project_id = required_project_id(body.project_id.as_deref())?;
    authorize(state, principal, project_id, Action::OperateRuns).await?;
    let mut errors = Vec::new();
    let source = errors.check("source", EventSource::parse(&body.source));
    let detail_type = match errors.check("detail_type", line(&body.detail_type, MAX_NAME_CHARS)) {
        Some(None) => {
            errors.fail("detail_type", "is required");
            None
        }
        other => other.flatten(),
    };
    let detail = errors.check("detail", stamped_detail(body.detail, project_id));
    let (Some(source), Some(detail_type), Some(detail), true) =
        (source, detail_type, detail, errors.is_empty())
    else {
        return Err(ApiError::invalid_fields(errors));
    };
    let event = BusEvent {
        source: source.0,
        detail_type,
        detail,
        time: state.clock.now(),
    };
    let event_id = events::put(state, &event).await.map_err(|err| {
        tracing::error!(error = ?err, "could not put a tenant's event on the bus");
        ApiError::Unavailable("the event bus did not take the event; retry it".into())
    })?;
    tracing::info!(%project_id, %event_id, source = event.source, detail_type = event.detail_type, "event published");
    Ok(event_id)
}

/// `detail` as published: an object of bounded size and depth, with the server's
/// `project_id` and `chain_depth` 0.
fn stamped_detail(detail: Value, project_id: Uuid) -> Result<Value, String> {
    let Value::Object(mut detail) = detail else {
        return Err("must be a JSON object".into());
    };
    if serde_json::to_vec(&detail).map_or(usize::MAX, |v| v.len()) > MAX_DETAIL_BYTES {
        return Err(format!("must be at most {MAX_DETAIL_BYTES} bytes of JSON"));
    }
    if depth(&detail) > MAX_JSON_DEPTH {
        return Err(format!("must not nest deeper than {MAX_JSON_DEPTH} levels"));
    }
    detail.insert("project_id".into(), Value::String(project_id.to_string()));
    detail.insert("chain_depth".into(), Value::from(0));
    Ok(Value::Object(detail))
}

/// Nesting depth of an object's members (the object itself is level 1).
fn depth(map: &Map<String, Value>) -> usize {
    fn of(value: &Value) -> usize {
        match value {
            Value::Object(map) => depth(map),
            Value::Array(items) => 1 + items.iter().map(of).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + map.values().map(of).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sources_that_pass_for_spark_ops_or_aws_are_refused() {
        for raw in ["spark-ops", "spark-ops.fake", "Spark-Ops", "aws.ec2"] {
            assert!(EventSource::parse(raw).is_err(), "{raw}");
        }
        for raw in ["", "a b", "x\u{7}", &"a".repeat(129)] {
            assert!(EventSource::parse(raw).is_err(), "{raw:?}");
        }
        assert!(EventSource::parse("com.example.orders").is_ok());
        assert!(EventSource::parse("my-spark-ops").is_ok());
    }

    #[test]
    fn the_server_stamps_the_project_and_depth_over_what_the_tenant_sent() {
        let project = Uuid::now_v7();
        let detail = stamped_detail(
            json!({"order": 7, "project_id": "someone-else", "chain_depth": 9}),
            project,
        )
        .unwrap();
        assert_eq!(
            detail,
            json!({"order": 7, "project_id": project.to_string(), "chain_depth": 0})
        );
    }

    #[test]
    fn a_detail_must_be_a_bounded_object() {
        let project = Uuid::now_v7();
        assert!(stamped_detail(json!([1]), project).is_err());
        let big = json!({"x": "a".repeat(MAX_DETAIL_BYTES)});
        assert!(stamped_detail(big, project).unwrap_err().contains("bytes"));
        let mut deep = json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            deep = json!({ "a": deep });
        }
        assert!(stamped_detail(deep.clone(), project).is_ok());
        assert!(stamped_detail(json!({ "a": deep }), project)
            .unwrap_err()
            .contains("nest"));
    }
}
