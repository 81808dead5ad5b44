//! The EventBridge rules behind event schedules: one rule per schedule on the bus,
//! `sched-<schedule id>`, matching the tenant's pattern AND `detail.project_id` = the
//! schedule's project, with one target: the trigger queue, fed
//! `{"schedule_id": …, "event": <the matched event>}` ([`TriggerMessage`]).
//!
//! EventBridge does the matching, so patterns keep its semantics (`prefix`, `anything-but`,
//! `numeric`, `exists`, …), and it validates them (`TestEventPattern`, then `PutRule`): a
//! pattern it refuses is a `422` on `expression`. LocalStack 4.7 still delivers to a
//! disabled rule, so whatever consumes the trigger queue checks the schedule's status too. Rule names need no deployment prefix, as the bus is the deployment's own.
//!
//! A bus holds 300 rules unless its quota is raised; the deployment keeps at most
//! `EVENT_RULES_MAX` (default 250) schedule rules and refuses more with `409`. Raise the
//! quota (Service Quotas, "Rules per event bus") before raising `EVENT_RULES_MAX`. Two
//! schedules created at once may both pass the count: the cap is a guard, not a fence.

use anyhow::Context;
use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_eventbridge::types::{InputTransformer, RuleState, Target};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Longest tenant pattern, as JSON text: EventBridge takes 4096 characters per rule pattern,
/// and the project condition needs some.
pub const MAX_PATTERN_BYTES: usize = 2048;
/// Deepest nesting of a tenant pattern.
pub const MAX_PATTERN_DEPTH: usize = 8;
/// The one target of a schedule's rule.
const TARGET_ID: &str = "trigger";
/// What every schedule rule's name starts with.
const RULE_PREFIX: &str = "sched-";

/// A tenant's event pattern, parsed: a JSON object, bounded, that says nothing about
/// `detail.project_id` (the server adds that condition).
#[derive(Clone, Debug, PartialEq)]
pub struct EventPattern(Map<String, Value>);

impl EventPattern {
    /// Parses an `expression`: JSON text of an event pattern. EventBridge checks the rest
    /// when the rule is put.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() > MAX_PATTERN_BYTES {
            return Err(format!("must be at most {MAX_PATTERN_BYTES} bytes of JSON"));
        }
        let Ok(Value::Object(pattern)) = serde_json::from_str::<Value>(raw) else {
            return Err("must be an EventBridge event pattern: a JSON object, as a string".into());
        };
        if pattern.is_empty() {
            return Err("must match on at least one field".into());
        }
        if depth(&Value::Object(pattern.clone())) > MAX_PATTERN_DEPTH {
            return Err(format!(
                "must not nest deeper than {MAX_PATTERN_DEPTH} levels"
            ));
        }
        if !matches!(pattern.get("detail"), None | Some(Value::Object(_))) {
            return Err("`detail` must be an object of conditions".into());
        }
        if mentions_project(&pattern, false) {
            return Err(
                "must not match on `detail.project_id`: a schedule matches its own project's \
                 events only, and the server adds that condition"
                    .into(),
            );
        }
        Ok(Self(pattern))
    }

    /// The rule's pattern: this one AND `detail.project_id` = `project_id`.
    pub fn for_project(&self, project_id: Uuid) -> Value {
        let mut pattern = self.0.clone();
        let detail = pattern
            .entry("detail")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(detail) = detail {
            detail.insert(
                "project_id".into(),
                Value::Array(vec![Value::String(project_id.to_string())]),
            );
        }
        Value::Object(pattern)
    }
}

/// Whether `pattern` has a condition on `detail.project_id`, also inside `$or` branches.
fn mentions_project(pattern: &Map<String, Value>, in_detail: bool) -> bool {
    pattern.iter().any(|(key, value)| {
        if in_detail && key == "project_id" {
            return true;
        }
        match value {
            Value::Object(inner) => mentions_project(inner, in_detail || key == "detail"),
            Value::Array(branches) if key == "$or" => branches.iter().any(|branch| {
                branch
                    .as_object()
                    .is_some_and(|branch| mentions_project(branch, in_detail))
            }),
            _ => false,
        }
    })
}

/// Nesting depth of a JSON value (a scalar is 0).
fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What a schedule rule delivers to the trigger queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerMessage {
    /// The schedule whose rule matched.
    pub schedule_id: Uuid,
    /// The matched event, as EventBridge delivers it (`source`, `detail-type`, `detail`, …).
    pub event: Value,
}

/// Why a rule could not be put.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// EventBridge refused the pattern.
    #[error("EventBridge refused the pattern: {0}")]
    InvalidPattern(String),
    /// The deployment holds as many schedule rules as it may.
    #[error("the event bus holds {max} event schedules, the most this deployment allows")]
    Full {
        /// `EVENT_RULES_MAX`.
        max: u32,
    },
    /// Anything else.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<RuleError> for ApiError {
    fn from(err: RuleError) -> Self {
        match err {
            RuleError::InvalidPattern(why) => ApiError::invalid(
                "expression",
                format!("is not a valid EventBridge event pattern: {why}"),
            ),
            RuleError::Full { max } => ApiError::Conflict(format!(
                "this deployment holds {max} event schedules, the most it allows \
                 (EVENT_RULES_MAX); delete one, or raise the bus's rule quota and the limit"
            )),
            RuleError::Unexpected(err) => ApiError::Internal(err),
        }
    }
}

/// The name of schedule `schedule_id`'s rule.
pub fn rule_name(schedule_id: Uuid) -> String {
    format!("{RULE_PREFIX}{schedule_id}")
}

/// Creates or updates schedule `schedule_id`'s rule (enabled or not) and its target.
#[tracing::instrument(skip(state, pattern), fields(%schedule_id))]
pub async fn put_rule(
    state: &AppState,
    schedule_id: Uuid,
    project_id: Uuid,
    pattern: &EventPattern,
    enabled: bool,
) -> Result<(), RuleError> {
    let name = rule_name(schedule_id);
    let events = &state.clients.events;
    let bus = &state.config.event_bus_name;
    if !exists(state, &name).await? {
        let max = state.config.event_rules_max;
        if count(state).await? >= max {
            return Err(RuleError::Full { max });
        }
    }
    let queue_arn = state
        .config
        .trigger_queue_arn
        .as_deref()
        .context("TRIGGER_QUEUE_ARN is not set: event schedules cannot deliver")?;
    let rule_pattern = pattern.for_project(project_id).to_string();
    check_pattern(state, &rule_pattern, queue_arn).await?;
    let put = events
        .put_rule()
        .event_bus_name(bus)
        .name(&name)
        .description(format!(
            "Event schedule {schedule_id} of project {project_id}"
        ))
        .event_pattern(rule_pattern)
        .state(if enabled {
            RuleState::Enabled
        } else {
            RuleState::Disabled
        })
        .send()
        .await;
    if let Err(err) = put {
        if err
            .as_service_error()
            .is_some_and(|e| e.is_invalid_event_pattern_exception())
        {
            let why = err.message().unwrap_or("no reason given").to_owned();
            return Err(RuleError::InvalidPattern(why));
        }
        return Err(anyhow::Error::new(err)
            .context("Failed to put an event schedule's rule")
            .into());
    }
    let transformer = InputTransformer::builder()
        .input_template(format!(
            r#"{{"schedule_id": "{schedule_id}", "event": <aws.events.event.json>}}"#
        ))
        .build()
        .context("Failed to build an input transformer")?;
    let target = Target::builder()
        .id(TARGET_ID)
        .arn(queue_arn)
        .input_transformer(transformer)
        .build()
        .context("Failed to build a rule target")?;
    let output = events
        .put_targets()
        .event_bus_name(bus)
        .rule(&name)
        .targets(target)
        .send()
        .await
        .context("Failed to point an event schedule's rule at the trigger queue")?;
    if output.failed_entry_count() > 0 {
        let why = output
            .failed_entries()
            .first()
            .and_then(|e| e.error_message())
            .unwrap_or("no reason given");
        return Err(anyhow::anyhow!("EventBridge refused the rule's target: {why}").into());
    }
    Ok(())
}

/// Has EventBridge check `rule_pattern` against a sample event: `PutRule` checks patterns
/// too, but LocalStack's does not, and this way both refuse the same patterns. The sample
/// is of the trigger queue's account and the deployment's region, which AWS requires.
async fn check_pattern(
    state: &AppState,
    rule_pattern: &str,
    queue_arn: &str,
) -> Result<(), RuleError> {
    let account = queue_arn.split(':').nth(4).unwrap_or_default();
    let sample = serde_json::json!({
        "id": Uuid::nil(),
        "account": account,
        "source": "spark-ops.pattern-check",
        "time": "2026-01-01T00:00:00Z",
        "region": state.config.region,
        "resources": [],
        "detail-type": "pattern-check",
        "detail": {},
    });
    let tested = state
        .clients
        .events
        .test_event_pattern()
        .event_pattern(rule_pattern)
        .event(sample.to_string())
        .send()
        .await;
    match tested {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_invalid_event_pattern_exception()) =>
        {
            Err(RuleError::InvalidPattern(
                err.message().unwrap_or("no reason given").to_owned(),
            ))
        }
        Err(err) => Err(anyhow::Error::new(err)
            .context("Failed to have EventBridge check a pattern")
            .into()),
    }
}

/// Turns schedule `schedule_id`'s rule on or off; a missing rule is an error.
pub async fn set_enabled(state: &AppState, schedule_id: Uuid, enabled: bool) -> anyhow::Result<()> {
    let events = &state.clients.events;
    let (bus, name) = (&state.config.event_bus_name, rule_name(schedule_id));
    let switched = if enabled {
        let call = events.enable_rule().event_bus_name(bus).name(&name);
        call.send().await.map(drop).map_err(anyhow::Error::new)
    } else {
        let call = events.disable_rule().event_bus_name(bus).name(&name);
        call.send().await.map(drop).map_err(anyhow::Error::new)
    };
    switched.with_context(|| format!("Failed to switch rule {name} on ({enabled})"))
}

/// Deletes schedule `schedule_id`'s rule and its target; deleting it again is harmless.
pub async fn delete_rule(state: &AppState, schedule_id: Uuid) -> anyhow::Result<()> {
    let events = &state.clients.events;
    let (bus, name) = (&state.config.event_bus_name, rule_name(schedule_id));
    let removed = events
        .remove_targets()
        .event_bus_name(bus)
        .rule(&name)
        .ids(TARGET_ID)
        .send()
        .await;
    match removed {
        Err(err) if err.code() != Some("ResourceNotFoundException") => {
            return Err(anyhow::Error::new(err).context("Failed to remove a rule's target"))
        }
        _ => {}
    }
    match events
        .delete_rule()
        .event_bus_name(bus)
        .name(&name)
        .send()
        .await
    {
        Err(err) if err.code() != Some("ResourceNotFoundException") => {
            Err(anyhow::Error::new(err).context("Failed to delete an event schedule's rule"))
        }
        _ => Ok(()),
    }
}

/// Whether rule `name` exists on the bus.
async fn exists(state: &AppState, name: &str) -> anyhow::Result<bool> {
    let described = state
        .clients
        .events
        .describe_rule()
        .event_bus_name(&state.config.event_bus_name)
        .name(name)
        .send()
        .await;
    match described {
        Ok(_) => Ok(true),
        Err(err) if err.code() == Some("ResourceNotFoundException") => Ok(false),
        Err(err) => Err(anyhow::Error::new(err).context("Failed to look up a rule")),
    }
}

/// How many schedule rules the bus holds.
async fn count(state: &AppState) -> anyhow::Result<u32> {
    let mut total = 0usize;
    let mut next: Option<String> = None;
    loop {
        let page = state
            .clients
            .events
            .list_rules()
            .event_bus_name(&state.config.event_bus_name)
            .name_prefix(RULE_PREFIX)
            .set_next_token(next)
            .send()
            .await
            .context("Failed to list the bus's rules")?;
        total += page.rules().len();
        next = page.next_token().map(str::to_owned);
        if next.is_none() {
            return Ok(u32::try_from(total).unwrap_or(u32::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_project_condition_is_added_to_the_tenants_pattern() {
        let project = Uuid::now_v7();
        let pattern = EventPattern::parse(
            r#"{"source": ["spark-ops"], "detail": {"status": ["succeeded"]}}"#,
        )
        .unwrap();
        assert_eq!(
            pattern.for_project(project),
            json!({
                "source": ["spark-ops"],
                "detail": {"status": ["succeeded"], "project_id": [project.to_string()]},
            })
        );
        let bare = EventPattern::parse(r#"{"detail-type": ["order.placed"]}"#).unwrap();
        assert_eq!(
            bare.for_project(project)["detail"],
            json!({"project_id": [project.to_string()]})
        );
    }

    #[test]
    fn a_pattern_naming_the_project_is_refused_wherever_it_does() {
        for raw in [
            r#"{"detail": {"project_id": ["x"]}}"#,
            r#"{"detail": {"$or": [{"a": [1]}, {"project_id": [{"exists": true}]}]}}"#,
            r#"{"$or": [{"detail": {"project_id": ["x"]}}, {"source": ["a"]}]}"#,
        ] {
            let err = EventPattern::parse(raw).unwrap_err();
            assert!(err.contains("detail.project_id"), "{raw}: {err}");
        }
        assert!(EventPattern::parse(r#"{"source": ["project_id"], "project_id": ["x"]}"#).is_ok());
    }

    #[test]
    fn a_pattern_must_be_a_small_shallow_object_with_an_object_detail() {
        for raw in ["[]", "\"x\"", "{}", "not json", r#"{"detail": ["x"]}"#] {
            assert!(EventPattern::parse(raw).is_err(), "{raw}");
        }
        let long = format!(r#"{{"source": ["{}"]}}"#, "a".repeat(MAX_PATTERN_BYTES));
        assert!(EventPattern::parse(&long).unwrap_err().contains("bytes"));
        let deep = format!(
            r#"{{"detail": {}["x"]{}}}"#,
            r#"{"a": "#.repeat(8),
            "}".repeat(8)
        );
        assert!(EventPattern::parse(&deep).unwrap_err().contains("nest"));
    }

    #[test]
    fn a_rule_is_named_after_its_schedule_within_eventbridges_limit() {
        let name = rule_name(Uuid::now_v7());
        assert!(name.starts_with("sched-") && name.len() <= 64);
    }
}
