//! The one validation vocabulary of request bodies.
//!
//! - Field errors are collected in a `Vec<FieldError>` through [`FieldErrors`], so one request
//!   reports every bad field at once, and the collection ends in one `422`.
//! - Every resource parses the common values here, with one rule and one message each:
//!   bounded text ([`line`], [`text`]), whole numbers in a range ([`in_range`]), releases
//!   ([`release`], the `semver` crate), free-form JSON objects ([`check_json_object`]) and the
//!   `project_id` a list or create is scoped to; [`nullable`] tells a field sent as `null`
//!   from one left out. Environments parse with
//!   [`crate::domain::Env::parse`], which their JSON form uses too.

use std::ops::RangeInclusive;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::Name;
pub use crate::domain::{line, text};
use crate::error::{ApiError, ApiResult, FieldError};

/// Collects the field errors of one request.
pub trait FieldErrors {
    /// Records that `field` is invalid.
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>);

    /// The value if it parsed; otherwise its message is recorded against `field`.
    fn check<T>(&mut self, field: &str, value: Result<T, String>) -> Option<T>;

    /// `Ok` if nothing was recorded, else the `422` naming every field.
    fn finish(self) -> ApiResult<()>;

    /// An optional [`line`]; `None` if absent, empty or invalid (then recorded).
    fn line(&mut self, field: &str, raw: Option<String>, max_chars: usize) -> Option<String> {
        raw.and_then(|raw| self.check(field, line(&raw, max_chars)))
            .flatten()
    }

    /// Replaces `current` with the display name in `raw` when a change gives a valid one;
    /// an invalid one is recorded against `name` and leaves `current` as it is.
    fn rename(&mut self, raw: Option<&str>, current: &mut String) {
        if let Some(name) = raw.and_then(|raw| self.check("name", Name::parse(raw))) {
            *current = name.into_inner();
        }
    }

    /// An optional [`text`]; `None` if absent, empty or invalid (then recorded).
    fn text(&mut self, field: &str, raw: Option<String>, max_chars: usize) -> Option<String> {
        raw.and_then(|raw| self.check(field, text(&raw, max_chars)))
            .flatten()
    }
}

impl FieldErrors for Vec<FieldError> {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(FieldError::new(field, message));
    }

    fn check<T>(&mut self, field: &str, value: Result<T, String>) -> Option<T> {
        value.map_err(|m| self.fail(field, m)).ok()
    }

    fn finish(self) -> ApiResult<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_fields(self))
        }
    }
}

/// A whole number within `range`.
pub fn in_range(value: i64, range: RangeInclusive<u32>) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            )
        })
}

/// Deserialises a field that may be sent as `null`: `None` when left out, `Some(None)` when
/// `null`, so a change can clear it.
pub fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The release an agent or a tool gets when none is given.
pub const DEFAULT_RELEASE: &str = "1.0.0";
/// Longest accepted release.
const MAX_RELEASE_CHARS: usize = 64;

/// A release: a semantic version such as `1.2.0` (`MAJOR.MINOR.PATCH[-pre][+build]`), at most
/// 64 characters; returned normalised.
pub fn release(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    semver::Version::parse(raw)
        .ok()
        .filter(|_| raw.chars().count() <= MAX_RELEASE_CHARS)
        .map(|v| v.to_string())
        .ok_or_else(|| "must be a semantic version such as 1.2.0".to_owned())
}

/// The `project_id` a list or create is scoped to: required, and a UUID (`400` otherwise).
pub fn required_project_id(raw: Option<&str>) -> ApiResult<Uuid> {
    let raw = raw.ok_or_else(|| ApiError::bad_request("project_id", "is required"))?;
    Uuid::try_parse(raw)
        .map_err(|_| ApiError::bad_request("project_id", "must be a project id (UUID)"))
}

/// Largest accepted free-form JSON object (`metadata`, `settings`, `config`), serialised.
pub const MAX_JSON_OBJECT_BYTES: usize = 32 * 1024;
/// Deepest nesting accepted in free-form JSON (DynamoDB itself stops at 32 levels).
pub const MAX_JSON_DEPTH: usize = 16;

/// Records errors for a free-form JSON object that is too large (over
/// [`MAX_JSON_OBJECT_BYTES`]) or that DynamoDB cannot store.
pub fn check_json_object(field: &str, value: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_JSON_OBJECT_BYTES {
        errors.fail(
            field,
            format!("must be at most {MAX_JSON_OBJECT_BYTES} bytes of JSON"),
        );
    } else {
        check_storable_object(field, value, 1, errors);
    }
}

/// Records errors for JSON that DynamoDB cannot store: empty keys, numbers out of its range
/// (magnitudes from 1e-130 to below 1e126) and nesting deeper than [`MAX_JSON_DEPTH`].
pub fn check_storable(field: &str, value: &Value, depth: usize, errors: &mut Vec<FieldError>) {
    if errors.len() >= 10 {
        return;
    }
    match value {
        Value::Number(number) => {
            let magnitude = number.as_f64().map(f64::abs).unwrap_or(f64::INFINITY);
            if !(magnitude == 0.0 || (1e-130..1e126).contains(&magnitude)) {
                errors.fail(
                    field,
                    "numbers must be 0 or have a magnitude from 1e-130 to below 1e126",
                );
            }
        }
        Value::Array(_) | Value::Object(_) if depth >= MAX_JSON_DEPTH => {
            errors.fail(
                field,
                format!("must not nest deeper than {MAX_JSON_DEPTH} levels"),
            );
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_storable(&format!("{field}[{i}]"), item, depth + 1, errors);
            }
        }
        Value::Object(map) => check_storable_object(field, map, depth, errors),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// [`check_storable`] for the members of an object at `depth`.
pub fn check_storable_object(
    field: &str,
    map: &Map<String, Value>,
    depth: usize,
    errors: &mut Vec<FieldError>,
) {
    for (key, value) in map {
        if key.is_empty() {
            errors.fail(field, "keys must not be empty");
        } else {
            check_storable(&format!("{field}.{key}"), value, depth + 1, errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_error_is_collected_into_one_problem() {
        let mut errors = Vec::new();
        assert_eq!(errors.check("a", Ok::<_, String>(1)), Some(1));
        assert_eq!(errors.check::<u8>("b", Err("is bad".into())), None);
        errors.fail("c", "is worse");
        let problem = errors.finish().unwrap_err().problem();
        assert_eq!(problem.status, 422);
        assert_eq!(problem.errors.len(), 2);
        assert!(Vec::<FieldError>::new().finish().is_ok());
    }

    #[test]
    fn text_is_trimmed_counted_in_characters_and_free_of_control_characters() {
        assert_eq!(line("  ops team ", 8).unwrap().as_deref(), Some("ops team"));
        assert_eq!(line("   ", 8).unwrap(), None);
        assert!(line("ééééé", 5).is_ok(), "characters, not bytes");
        assert!(line("éééééé", 5).is_err());
        assert!(line("a\nb", 5).is_err());
        assert_eq!(text("a\n\tb\n", 5).unwrap().as_deref(), Some("a\n\tb"));
        assert!(text("a\u{0}b", 5).is_err());
    }

    #[test]
    fn releases_are_semantic_versions() {
        for ok in [
            "1.0.0",
            "0.1.2",
            "1.2.3-rc.1",
            "1.2.3+build.5",
            "10.20.30-alpha-1",
        ] {
            assert_eq!(release(ok).unwrap(), ok);
        }
        for bad in [
            "1.0", "01.0.0", "1.0.0-", "1.0.0-01", "v1.0.0", "1.0.0+", "a.b.c",
        ] {
            assert!(release(bad).is_err(), "{bad}");
        }
        assert!(release(&format!("1.0.0-{}", "a".repeat(64))).is_err());
        assert_eq!(release(" 1.2.0 ").unwrap(), "1.2.0");
        assert!(release("latest").is_err());
    }

    #[test]
    fn ranges_name_their_bounds() {
        assert_eq!(in_range(5, 1..=10), Ok(5));
        assert_eq!(
            in_range(0, 1..=10),
            Err("must be a whole number from 1 to 10".into())
        );
        assert!(in_range(-1, 0..=10).is_err());
    }

    #[test]
    fn json_dynamodb_cannot_store_is_named_by_path() {
        let value = serde_json::json!({"a": {"b": [1, 1e200]}, "": 1, "ok": 0.5});
        let mut errors = Vec::new();
        check_json_object("metadata", value.as_object().unwrap(), &mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"metadata.a.b[1]"), "{fields:?}");
        assert!(fields.contains(&"metadata"), "{fields:?}");
        assert_eq!(fields.len(), 2);
        let mut deep = serde_json::json!(1);
        for _ in 0..20 {
            deep = serde_json::json!({ "x": deep });
        }
        let mut errors = Vec::new();
        check_json_object("settings", deep.as_object().unwrap(), &mut errors);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn an_oversized_object_is_refused_before_its_content_is_walked() {
        let big = serde_json::json!({"blob": "x".repeat(MAX_JSON_OBJECT_BYTES)});
        let mut errors = Vec::new();
        check_json_object("config", big.as_object().unwrap(), &mut errors);
        assert_eq!(
            errors,
            vec![FieldError::new(
                "config",
                format!("must be at most {MAX_JSON_OBJECT_BYTES} bytes of JSON")
            )]
        );
    }
}
