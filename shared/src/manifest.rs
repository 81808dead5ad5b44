//! Signed registry manifests (the seed's YAML format for agents and tools).
//!
//! **Canonical form.** The checksum covers the manifest *without* its `checksum_sha256`,
//! `signature` and `created_at` fields (`created_at` says when a copy was exported, not what
//! it contains, so an asset keeps its checksum wherever it is imported), serialised as compact JSON (no insignificant whitespace, UTF-8) with
//! object keys sorted by code point at every level and numbers printed as `serde_json` prints
//! them. `checksum_sha256` is the lower-case hex SHA-256 of those bytes, and `signature` is
//! `ed25519:<base64 of the Ed25519 signature over the same bytes>`. YAML and JSON manifests
//! with the same content therefore have the same checksum.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Field holding the checksum.
pub const CHECKSUM_FIELD: &str = "checksum_sha256";
/// Field holding the signature.
pub const SIGNATURE_FIELD: &str = "signature";
/// Field holding the export time, outside the canonical form.
pub const CREATED_AT_FIELD: &str = "created_at";
const SIGNATURE_SCHEME: &str = "ed25519:";

/// Why a manifest was refused; each names the field at fault.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML or JSON, or not a mapping at the top.
    #[error("the manifest is not a YAML or JSON mapping: {0}")]
    Malformed(String),
    /// The checksum does not match the content.
    #[error("checksum_sha256 does not match the manifest's canonical form (expected {expected})")]
    ChecksumMismatch {
        /// The checksum of the content received.
        expected: String,
    },
    /// The signature is malformed or not made by a trusted key.
    #[error("signature is not a valid Ed25519 signature by a trusted key")]
    UntrustedSignature,
}

/// Parses a YAML or JSON manifest into a JSON mapping.
pub fn parse(text: &str) -> Result<Map<String, Value>, ManifestError> {
    let value: Value =
        serde_yaml::from_str(text).map_err(|e| ManifestError::Malformed(e.to_string()))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ManifestError::Malformed(
            "the top level must be a mapping".into(),
        )),
    }
}

/// The canonical bytes of a manifest: everything except the checksum, signature and
/// export time.
pub fn canonical_bytes(manifest: &Map<String, Value>) -> Vec<u8> {
    let mut body = manifest.clone();
    body.remove(CHECKSUM_FIELD);
    body.remove(SIGNATURE_FIELD);
    body.remove(CREATED_AT_FIELD);
    let mut out = Vec::new();
    write_canonical(&Value::Object(body), &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(scalar.to_string().as_bytes()),
    }
}

/// The hex SHA-256 of the canonical form.
pub fn checksum(manifest: &Map<String, Value>) -> String {
    Sha256::digest(canonical_bytes(manifest))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Ed25519 key that signs exported manifests, derived from a Secrets Manager secret.
pub struct ManifestSigner {
    key: SigningKey,
}

impl std::fmt::Debug for ManifestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestSigner")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl ManifestSigner {
    /// Derives the key: its seed is the SHA-256 of the secret's text, so any random secret
    /// string (as CloudFormation generates) makes a key.
    pub fn from_secret(secret: &SecretString) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.expose_secret().len() >= 32,
            "the registry signing secret must be at least 32 characters"
        );
        let seed: [u8; 32] = Sha256::digest(secret.expose_secret().as_bytes()).into();
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The public key, base64 (32 raw bytes).
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Sets `checksum_sha256` and `signature` on a manifest.
    pub fn seal(&self, manifest: &mut Map<String, Value>) {
        let bytes = canonical_bytes(manifest);
        let signature = self.key.sign(&bytes);
        manifest.insert(CHECKSUM_FIELD.into(), Value::String(checksum(manifest)));
        manifest.insert(
            SIGNATURE_FIELD.into(),
            Value::String(format!(
                "{SIGNATURE_SCHEME}{}",
                STANDARD.encode(signature.to_bytes())
            )),
        );
    }
}

/// Parses a base64 Ed25519 public key.
pub fn parse_public_key(encoded: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = STANDARD.decode(encoded.trim()).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Checks an imported manifest: a present checksum must match, and a present signature must
/// verify under one of `trusted` keys. Returns the manifest's checksum.
pub fn verify(
    manifest: &Map<String, Value>,
    trusted: &[VerifyingKey],
) -> Result<String, ManifestError> {
    let expected = checksum(manifest);
    if let Some(given) = manifest.get(CHECKSUM_FIELD) {
        if given.as_str() != Some(expected.as_str()) {
            return Err(ManifestError::ChecksumMismatch { expected });
        }
    }
    if let Some(signature) = manifest.get(SIGNATURE_FIELD) {
        let signature = signature
            .as_str()
            .and_then(|s| s.strip_prefix(SIGNATURE_SCHEME))
            .and_then(|s| STANDARD.decode(s).ok())
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or(ManifestError::UntrustedSignature)?;
        let bytes = canonical_bytes(manifest);
        if !trusted
            .iter()
            .any(|key| key.verify(&bytes, &signature).is_ok())
        {
            return Err(ManifestError::UntrustedSignature);
        }
    }
    Ok(expected)
}

/// Renders a manifest as YAML with its fields in the seed's order.
pub fn to_yaml(manifest: &Map<String, Value>) -> anyhow::Result<String> {
    const ORDER: [&str; 9] = [
        "name",
        "version",
        CHECKSUM_FIELD,
        CREATED_AT_FIELD,
        "owner",
        "changelog",
        "deprecated",
        "metadata",
        SIGNATURE_FIELD,
    ];
    let mut ordered = serde_yaml::Mapping::new();
    let rest = manifest
        .iter()
        .filter(|(k, _)| !ORDER.contains(&k.as_str()));
    let known = ORDER.iter().filter_map(|k| manifest.get_key_value(*k));
    for (key, value) in known.chain(rest) {
        ordered.insert(
            serde_yaml::Value::String(key.clone()),
            serde_yaml::to_value(value)?,
        );
    }
    Ok(serde_yaml::to_string(&ordered)?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn signer() -> ManifestSigner {
        ManifestSigner::from_secret(&SecretString::from(
            "a-random-secret-string-of-enough-length",
        ))
        .unwrap()
    }

    fn manifest() -> Map<String, Value> {
        json!({"name": "crm_tool", "version": "1.2.0", "deprecated": false,
               "metadata": {"timeout_ms": 5000, "inputs_schema": {"type": "object", "required": ["a", "b"]}}})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn the_canonical_form_sorts_keys_and_drops_checksum_signature_and_export_time() {
        let mut m = manifest();
        m.insert(CHECKSUM_FIELD.into(), json!("x"));
        m.insert(SIGNATURE_FIELD.into(), json!("y"));
        m.insert(CREATED_AT_FIELD.into(), json!("2024-01-01T00:00:00Z"));
        assert_eq!(
            String::from_utf8(canonical_bytes(&m)).unwrap(),
            r#"{"deprecated":false,"metadata":{"inputs_schema":{"required":["a","b"],"type":"object"},"timeout_ms":5000},"name":"crm_tool","version":"1.2.0"}"#
        );
    }

    #[test]
    fn yaml_and_json_of_the_same_manifest_have_the_same_checksum() {
        let yaml = "name: crm_tool\nversion: 1.2.0\ndeprecated: false\nmetadata:\n  timeout_ms: 5000\n  inputs_schema:\n    type: object\n    required: [a, b]\n";
        let from_yaml = parse(yaml).unwrap();
        let from_json = parse(&Value::Object(manifest()).to_string()).unwrap();
        assert_eq!(checksum(&from_yaml), checksum(&from_json));
    }

    #[test]
    fn a_sealed_manifest_verifies_and_survives_a_yaml_round_trip() {
        let signer = signer();
        let mut m = manifest();
        signer.seal(&mut m);
        let reparsed = parse(&to_yaml(&m).unwrap()).unwrap();
        assert_eq!(reparsed, m);
        assert_eq!(
            verify(&reparsed, &[signer.verifying_key()]).unwrap(),
            checksum(&m)
        );
    }

    #[test]
    fn a_changed_field_breaks_the_checksum() {
        let signer = signer();
        let mut m = manifest();
        signer.seal(&mut m);
        m.insert("version".into(), json!("9.9.9"));
        assert!(matches!(
            verify(&m, &[signer.verifying_key()]),
            Err(ManifestError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn a_signature_by_an_untrusted_key_is_refused() {
        let mut m = manifest();
        signer().seal(&mut m);
        let other =
            ManifestSigner::from_secret(&SecretString::from("another-random-secret-string-xxxxxx"))
                .unwrap();
        assert_eq!(
            verify(&m, &[other.verifying_key()]),
            Err(ManifestError::UntrustedSignature)
        );
        m.insert(SIGNATURE_FIELD.into(), json!("ed25519:not-base64!"));
        assert_eq!(
            verify(&m, &[signer().verifying_key()]),
            Err(ManifestError::UntrustedSignature)
        );
    }

    #[test]
    fn an_unsigned_manifest_without_checksum_is_accepted_and_public_keys_parse() {
        assert!(verify(&manifest(), &[]).is_ok());
        let signer = signer();
        assert_eq!(
            parse_public_key(&signer.public_key_base64()),
            Some(signer.verifying_key())
        );
        assert!(parse_public_key("short").is_none());
    }
}
