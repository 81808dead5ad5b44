//! JSON Schemas of a tool's input and output: checked when saved, so the engine can always
//! compile them.

use serde_json::Value;

use crate::error::FieldError;

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
