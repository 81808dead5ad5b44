//! Removing secrets from what a remote party answers before it is stored or shown: a tool,
//! a webhook receiver or a model endpoint may echo the credentials it was sent.

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// What a removed secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not scrubbed: they would redact ordinary text and protect
/// nothing.
const MIN_SCRUBBED_CHARS: usize = 4;

/// `text` with every occurrence of every secret replaced by [`REDACTED`].
pub fn text(text: &str, secrets: &[SecretString]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        let secret = secret.expose_secret();
        if secret.len() >= MIN_SCRUBBED_CHARS {
            out = out.replace(secret, REDACTED);
        }
    }
    out
}

/// `value` with [`text`] applied to every string in it, object keys included.
pub fn value(value: &Value, secrets: &[SecretString]) -> Value {
    match value {
        Value::String(s) => Value::String(text(s, secrets)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| self::value(v, secrets)).collect())
        }
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (text(k, secrets), self::value(v, secrets)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_is_replaced_in_text_and_json_but_short_ones_are_left() {
        let secrets = [
            SecretString::from("sk-abc-123".to_owned()),
            SecretString::from("xy".to_owned()),
        ];
        assert_eq!(
            text("bad key sk-abc-123 (xy)", &secrets),
            "bad key [REDACTED] (xy)"
        );
        assert_eq!(
            value(
                &serde_json::json!({"echo": ["sk-abc-123"], "sk-abc-123": 1}),
                &secrets
            ),
            serde_json::json!({"echo": [REDACTED], REDACTED: 1})
        );
    }
}
