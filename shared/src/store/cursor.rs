//! Opaque, tamper-evident pagination cursors.
//!
//! A cursor is `base64url(json(scope, last_evaluated_key)) . base64url(hmac)`. The MAC covers
//! the list's scope too, so a cursor cannot be replayed against another list or tenant.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// A key as DynamoDB returns it in `LastEvaluatedKey`.
pub type Key = HashMap<String, AttributeValue>;

#[derive(Serialize, Deserialize)]
struct Payload {
    scope: String,
    key: HashMap<String, String>,
}

/// Encodes `key` for the list named `scope`. Only string key attributes are supported,
/// which is all this schema uses.
pub fn encode(mac_key: &[u8], scope: &str, key: &Key) -> anyhow::Result<String> {
    let key = key
        .iter()
        .map(|(name, value)| match value {
            AttributeValue::S(s) => Ok((name.clone(), s.clone())),
            other => anyhow::bail!("key attribute {name} is not a string: {other:?}"),
        })
        .collect::<anyhow::Result<_>>()?;
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Payload {
        scope: scope.to_owned(),
        key,
    })?);
    Ok(format!(
        "{body}.{}",
        URL_SAFE_NO_PAD.encode(sign(mac_key, &body))
    ))
}

/// Decodes a cursor for the list named `scope`; `None` if it was forged, altered or
/// belongs to another list.
pub fn decode(mac_key: &[u8], scope: &str, cursor: &str) -> Option<Key> {
    let (body, tag) = cursor.split_once('.')?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(mac_key).ok()?;
    mac.update(body.as_bytes());
    mac.verify_slice(&tag).ok()?;
    let payload: Payload = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
    (payload.scope == scope).then(|| {
        payload
            .key
            .into_iter()
            .map(|(name, value)| (name, AttributeValue::S(value)))
            .collect()
    })
}

fn sign(mac_key: &[u8], body: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(mac_key).expect("HMAC accepts keys of any length");
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S("PROJECT#1".into())),
            ("sk".to_owned(), AttributeValue::S("MEMBER#2".into())),
        ])
    }

    #[test]
    fn a_cursor_round_trips_within_its_scope() {
        let cursor = encode(b"k", "members:1", &key()).unwrap();
        assert_eq!(decode(b"k", "members:1", &cursor), Some(key()));
    }

    #[test]
    fn a_cursor_is_refused_in_another_scope_or_under_another_key() {
        let cursor = encode(b"k", "members:1", &key()).unwrap();
        assert_eq!(decode(b"k", "members:2", &cursor), None);
        assert_eq!(decode(b"other", "members:1", &cursor), None);
    }

    #[test]
    fn an_altered_cursor_is_refused() {
        let cursor = encode(b"k", "s", &key()).unwrap();
        let (body, tag) = cursor.split_once('.').unwrap();
        let forged_body =
            URL_SAFE_NO_PAD.encode(br#"{"scope":"s","key":{"pk":"PROJECT#9","sk":"MEMBER#2"}}"#);
        assert_eq!(decode(b"k", "s", &format!("{forged_body}.{tag}")), None);
        assert_eq!(decode(b"k", "s", body), None);
        assert_eq!(decode(b"k", "s", "garbage"), None);
    }
}
