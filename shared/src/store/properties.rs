//! JSON storability: whatever a run's input or a step's request and response hold comes back
//! from the store's item conversion ([`super::item`] → [`super::record`]) exactly as it went
//! in, whatever its numbers, strings and nesting; what is nested too deep to be read back is
//! refused when written.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{item, record};
use crate::properties::{config, json, nested, text, MAX_DEPTH};
use crate::run::{LogLevel, LogLine, StepRecord, StepStatus, Usage};

fn usage() -> impl Strategy<Value = Usage> {
    (any::<u64>(), any::<u64>(), any::<i64>(), 0u32..=28).prop_map(
        |(tokens_prompt, tokens_completion, mantissa, scale)| Usage {
            tokens_prompt,
            tokens_completion,
            usd_cost: Decimal::new(mantissa, scale),
        },
    )
}

fn step(request: Value, response: Value, usage: Usage, error: String) -> StepRecord {
    let at = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
    let mut step = StepRecord::claim(Uuid::nil(), 3, Some(7), "fetch", "tool", at, at, 1);
    step.status = StepStatus::Succeeded;
    step.request = Some(request);
    step.response = Some(response);
    step.usage = usage;
    step.error_message = Some(error);
    step
}

/// Stores `step` as an item with its keys and reads it back.
fn round_trip(step: &StepRecord) -> StepRecord {
    let stored = item(
        step,
        &[("pk", "RUN#x".to_owned()), ("sk", "STEP#1".to_owned())],
    )
    .expect("a step record converts to an item");
    record(stored).expect("the item converts back to a step record")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_step_payload_survives_the_store_exactly(
        request in json(),
        response in json(),
        usage in usage(),
        error in text(),
    ) {
        let written = step(request, response, usage, error);
        let read = round_trip(&written);
        prop_assert_eq!(read.request, written.request);
        prop_assert_eq!(read.response, written.response);
        prop_assert_eq!(read.usage, written.usage);
        prop_assert_eq!(read.error_message, written.error_message);
    }

    #[test]
    fn payloads_nested_as_deep_as_json_allows_survive_the_store(value in nested(1..=MAX_DEPTH)) {
        let written = step(value.clone(), value, Usage::default(), String::new());
        let read = round_trip(&written);
        prop_assert_eq!(read.response, written.response);
    }

    #[test]
    fn payloads_nested_deeper_than_can_be_read_back_are_refused_when_written(
        value in nested(MAX_DEPTH + 1..=MAX_DEPTH + 64),
    ) {
        let written = step(json!({"wrapped": value}), json!(null), Usage::default(), String::new());
        let refused = item(&written, &[("pk", "RUN#x".to_owned())]);
        let error = format!("{:#}", refused.expect_err("an unreadable payload is not stored"));
        prop_assert!(error.contains("can be stored"), "{}", error);
    }

    #[test]
    fn any_log_line_survives_the_store(message in text(), step_id in text()) {
        let line = LogLine {
            at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
            level: LogLevel::Warn,
            step_id: Some(step_id),
            message,
        };
        let stored = item(&line, &[("pk", "RUN#x".to_owned()), ("sk", "LOG#1".to_owned())])
            .expect("a log line converts to an item");
        let read: LogLine = record(stored).expect("the item converts back to a log line");
        prop_assert_eq!(read, line);
    }
}
