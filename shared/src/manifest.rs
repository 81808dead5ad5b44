//! Signed registry manifests (the seed's YAML format for agents and tools).
//!
//! **Canonical form.** A manifest is serialised as compact JSON (no insignificant whitespace,
//! UTF-8) with object keys sorted by code point at every level and numbers printed as
//! `serde_json` prints them, leaving out `checksum_sha256`, `signature` and `created_at`
//! (`created_at` says when the asset was made, not what it contains).
//!
//! - `checksum_sha256` is the lower-case hex SHA-256 of the canonical form *also without*
//!   `publisher`: it names the content, so an asset keeps its checksum wherever it is
//!   exported from and imported to. YAML and JSON manifests with the same content have the
//!   same checksum.
//! - `signature` is `ed25519:<base64 of the Ed25519 signature>` over the canonical form *with*
//!   `publisher`, so the signature vouches for who published the content as well as for the
//!   content.
//! - `publisher` is `{key_id, project_id, exported_by, exported_at}`: the signing key's
//!   [`KeyId`], the project the asset was exported from, the user or API key that exported it,
//!   and when. A signature only says which deployment signed; in a deployment where anyone can
//!   sign up, the publisher says which of its projects did. A signed manifest from before
//!   publishers were signed has none; its signature covers the same bytes as before, so it
//!   still verifies.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::ts;

/// Field holding the checksum.
pub const CHECKSUM_FIELD: &str = "checksum_sha256";
/// Field holding the signature.
pub const SIGNATURE_FIELD: &str = "signature";
/// Field holding the asset's creation time, outside the canonical form.
pub const CREATED_AT_FIELD: &str = "created_at";
/// Field naming the publisher: signed, but outside the checksum.
pub const PUBLISHER_FIELD: &str = "publisher";
const SIGNATURE_SCHEME: &str = "ed25519:";
/// Bytes of a key's SHA-256 that make its [`KeyId`].
const KEY_ID_BYTES: usize = 16;

/// Names a signing key without spelling it out: the first 16 bytes of the SHA-256 of its 32
/// public-key bytes, as 32 lower-case hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "3f9c0a1b2c3d4e5f60718293a4b5c6d7")]
pub struct KeyId(String);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        Self(
            Sha256::digest(key.as_bytes())[..KEY_ID_BYTES]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// Parses a key id as [`KeyId::of`] writes it.
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 2 * KEY_ID_BYTES
            && raw
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for KeyId {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(&raw).ok_or_else(|| "must be a key id: 32 lower-case hex digits".to_owned())
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> Self {
        id.0
    }
}

/// Who published a manifest; part of what its signature covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Publisher {
    /// The key that signed the manifest.
    pub key_id: KeyId,
    /// The project the asset was exported from.
    pub project_id: Uuid,
    /// The user or API key that exported it.
    pub exported_by: Uuid,
    /// When it was exported.
    #[serde(with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub exported_at: DateTime<Utc>,
}

/// What checking an imported manifest established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The checksum of its content.
    pub checksum: String,
    /// The trusted key whose signature verified, if the manifest was signed.
    pub signed_by: Option<KeyId>,
    /// The publisher its signature vouches for; `None` if unsigned, or signed before
    /// publishers were.
    pub publisher: Option<Publisher>,
}

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
    /// The signed publisher is not `{key_id, project_id, exported_by, exported_at}`.
    #[error("publisher must be {{key_id, project_id, exported_by, exported_at}}: {0}")]
    MalformedPublisher(String),
    /// The signed publisher names another key than the one that signed.
    #[error("publisher.key_id is {claimed}, but the manifest was signed by key {signer}")]
    PublisherKeyMismatch {
        /// The key id the publisher names.
        claimed: KeyId,
        /// The key that made the signature.
        signer: KeyId,
    },
}

impl ManifestError {
    /// The manifest field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "body",
            Self::ChecksumMismatch { .. } => CHECKSUM_FIELD,
            Self::UntrustedSignature => SIGNATURE_FIELD,
            Self::MalformedPublisher(_) => PUBLISHER_FIELD,
            Self::PublisherKeyMismatch { .. } => "publisher.key_id",
        }
    }
}

/// Parses a YAML or JSON manifest into a JSON mapping. Text is read as JSON first: not every
/// JSON document is one a YAML parser accepts (a string holding U+0085 or another control
/// character, for one), and a manifest exported as JSON must import with the same content
/// and checksum.
pub fn parse(text: &str) -> Result<Map<String, Value>, ManifestError> {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) => {
            serde_yaml::from_str(text).map_err(|e| ManifestError::Malformed(e.to_string()))?
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ManifestError::Malformed(
            "the top level must be a mapping".into(),
        )),
    }
}

/// The canonical bytes of a manifest's content, which the checksum covers: everything except
/// the checksum, signature, creation time and publisher.
pub fn canonical_bytes(manifest: &Map<String, Value>) -> Vec<u8> {
    canonical_without(
        manifest,
        &[
            CHECKSUM_FIELD,
            SIGNATURE_FIELD,
            CREATED_AT_FIELD,
            PUBLISHER_FIELD,
        ],
    )
}

/// The canonical bytes the signature covers: the content and the publisher.
pub fn signed_bytes(manifest: &Map<String, Value>) -> Vec<u8> {
    canonical_without(
        manifest,
        &[CHECKSUM_FIELD, SIGNATURE_FIELD, CREATED_AT_FIELD],
    )
}

fn canonical_without(manifest: &Map<String, Value>, left_out: &[&str]) -> Vec<u8> {
    let body: Map<String, Value> = manifest
        .iter()
        .filter(|(key, _)| !left_out.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
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

    /// The public key's id, which every manifest this key signs names as its publisher's.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(&self.key.verifying_key())
    }

    /// Names this key and `project_id` as the publisher, then sets `checksum_sha256` and
    /// `signature` on a manifest.
    pub fn seal(
        &self,
        manifest: &mut Map<String, Value>,
        project_id: Uuid,
        exported_by: Uuid,
        exported_at: DateTime<Utc>,
    ) {
        let publisher = Map::from_iter([
            ("key_id".to_owned(), Value::String(self.key_id().0)),
            (
                "project_id".to_owned(),
                Value::String(project_id.to_string()),
            ),
            (
                "exported_by".to_owned(),
                Value::String(exported_by.to_string()),
            ),
            (
                "exported_at".to_owned(),
                Value::String(ts::format(&exported_at)),
            ),
        ]);
        manifest.insert(PUBLISHER_FIELD.into(), Value::Object(publisher));
        self.sign(manifest);
    }

    /// Sets `checksum_sha256` and `signature` on a manifest as it is, whatever it names as its
    /// publisher (or nothing).
    pub fn sign(&self, manifest: &mut Map<String, Value>) {
        let signature = self.key.sign(&signed_bytes(manifest));
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
/// verify under one of `trusted` keys; a publisher it signs must name that key. An unsigned
/// manifest's `publisher` vouches for nothing and is not returned.
pub fn verify(
    manifest: &Map<String, Value>,
    trusted: &[VerifyingKey],
) -> Result<Verified, ManifestError> {
    let expected = checksum(manifest);
    if let Some(given) = manifest.get(CHECKSUM_FIELD) {
        if given.as_str() != Some(expected.as_str()) {
            return Err(ManifestError::ChecksumMismatch { expected });
        }
    }
    let Some(signature) = manifest.get(SIGNATURE_FIELD) else {
        return Ok(Verified {
            checksum: expected,
            signed_by: None,
            publisher: None,
        });
    };
    let signature = signature
        .as_str()
        .and_then(|s| s.strip_prefix(SIGNATURE_SCHEME))
        .and_then(|s| STANDARD.decode(s).ok())
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or(ManifestError::UntrustedSignature)?;
    let bytes = signed_bytes(manifest);
    let signer = trusted
        .iter()
        .find(|key| key.verify(&bytes, &signature).is_ok())
        .map(KeyId::of)
        .ok_or(ManifestError::UntrustedSignature)?;
    let publisher = match manifest.get(PUBLISHER_FIELD) {
        None => None,
        Some(value) => {
            let publisher = Publisher::deserialize(value)
                .map_err(|e| ManifestError::MalformedPublisher(e.to_string()))?;
            if publisher.key_id != signer {
                return Err(ManifestError::PublisherKeyMismatch {
                    claimed: publisher.key_id,
                    signer,
                });
            }
            Some(publisher)
        }
    };
    Ok(Verified {
        checksum: expected,
        signed_by: Some(signer),
        publisher,
    })
}

/// Renders a manifest as YAML with its fields in the seed's order.
pub fn to_yaml(manifest: &Map<String, Value>) -> anyhow::Result<String> {
    const ORDER: [&str; 10] = [
        "name",
        "version",
        CHECKSUM_FIELD,
        CREATED_AT_FIELD,
        "owner",
        "changelog",
        "deprecated",
        "metadata",
        PUBLISHER_FIELD,
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

    fn stranger() -> ManifestSigner {
        ManifestSigner::from_secret(&SecretString::from("another-random-secret-string-xxxxxx"))
            .unwrap()
    }

    fn manifest() -> Map<String, Value> {
        json!({"name": "crm_tool", "version": "1.2.0", "deprecated": false,
               "metadata": {"timeout_ms": 5000, "inputs_schema": {"type": "object", "required": ["a", "b"]}}})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn sealed_by(signer: &ManifestSigner, project_id: Uuid) -> Map<String, Value> {
        let mut m = manifest();
        signer.seal(&mut m, project_id, Uuid::now_v7(), Utc::now());
        m
    }

    #[test]
    fn the_canonical_form_sorts_keys_and_drops_checksum_signature_export_time_and_publisher() {
        let mut m = manifest();
        m.insert(CHECKSUM_FIELD.into(), json!("x"));
        m.insert(SIGNATURE_FIELD.into(), json!("y"));
        m.insert(CREATED_AT_FIELD.into(), json!("2024-01-01T00:00:00Z"));
        m.insert(PUBLISHER_FIELD.into(), json!({"project_id": "p"}));
        assert_eq!(
            String::from_utf8(canonical_bytes(&m)).unwrap(),
            r#"{"deprecated":false,"metadata":{"inputs_schema":{"required":["a","b"],"type":"object"},"timeout_ms":5000},"name":"crm_tool","version":"1.2.0"}"#
        );
        assert!(String::from_utf8(signed_bytes(&m))
            .unwrap()
            .contains(r#""publisher":{"project_id":"p"}"#));
    }

    #[test]
    fn yaml_and_json_of_the_same_manifest_have_the_same_checksum() {
        let yaml = "name: crm_tool\nversion: 1.2.0\ndeprecated: false\nmetadata:\n  timeout_ms: 5000\n  inputs_schema:\n    type: object\n    required: [a, b]\n";
        let from_yaml = parse(yaml).unwrap();
        let from_json = parse(&Value::Object(manifest()).to_string()).unwrap();
        assert_eq!(checksum(&from_yaml), checksum(&from_json));
    }

    #[test]
    fn a_sealed_manifest_verifies_with_its_publisher_and_survives_a_yaml_round_trip() {
        let signer = signer();
        let project = Uuid::now_v7();
        let m = sealed_by(&signer, project);
        let reparsed = parse(&to_yaml(&m).unwrap()).unwrap();
        assert_eq!(reparsed, m);
        let verified = verify(&reparsed, &[signer.verifying_key()]).unwrap();
        assert_eq!(verified.checksum, checksum(&manifest()));
        assert_eq!(verified.signed_by, Some(signer.key_id()));
        let publisher = verified.publisher.unwrap();
        assert_eq!(publisher.project_id, project);
        assert_eq!(publisher.key_id, signer.key_id());
    }

    #[test]
    fn the_checksum_names_the_content_whoever_publishes_it() {
        let a = sealed_by(&signer(), Uuid::now_v7());
        let b = sealed_by(&stranger(), Uuid::now_v7());
        assert_eq!(a[CHECKSUM_FIELD], b[CHECKSUM_FIELD]);
        assert_ne!(a[SIGNATURE_FIELD], b[SIGNATURE_FIELD]);
    }

    #[test]
    fn a_changed_field_breaks_the_checksum() {
        let signer = signer();
        let mut m = sealed_by(&signer, Uuid::now_v7());
        m.insert("version".into(), json!("9.9.9"));
        assert!(matches!(
            verify(&m, &[signer.verifying_key()]),
            Err(ManifestError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn a_changed_or_removed_publisher_breaks_the_signature() {
        let signer = signer();
        let m = sealed_by(&signer, Uuid::now_v7());
        let mut moved = m.clone();
        moved[PUBLISHER_FIELD]["project_id"] = json!(Uuid::now_v7());
        let mut stripped = m.clone();
        stripped.remove(PUBLISHER_FIELD);
        for forged in [moved, stripped] {
            assert_eq!(
                verify(&forged, &[signer.verifying_key()]),
                Err(ManifestError::UntrustedSignature)
            );
        }
    }

    #[test]
    fn a_publisher_naming_another_key_than_the_signers_is_refused() {
        // A trusted key signs a manifest that claims this deployment's key as its publisher.
        let own = signer();
        let other = stranger();
        let mut m = sealed_by(&own, Uuid::now_v7());
        other.sign(&mut m);
        let err = verify(&m, &[own.verifying_key(), other.verifying_key()]).unwrap_err();
        assert_eq!(
            err,
            ManifestError::PublisherKeyMismatch {
                claimed: own.key_id(),
                signer: other.key_id()
            }
        );
        assert_eq!(err.field(), "publisher.key_id");
        m[PUBLISHER_FIELD] = json!({"key_id": own.key_id()});
        other.sign(&mut m);
        assert!(matches!(
            verify(&m, &[other.verifying_key()]),
            Err(ManifestError::MalformedPublisher(_))
        ));
    }

    #[test]
    fn a_manifest_signed_before_publishers_verifies_without_one() {
        let signer = signer();
        let mut m = manifest();
        signer.sign(&mut m);
        let verified = verify(&m, &[signer.verifying_key()]).unwrap();
        assert_eq!(verified.signed_by, Some(signer.key_id()));
        assert_eq!(verified.publisher, None);
    }

    #[test]
    fn a_signature_by_an_untrusted_key_is_refused() {
        let mut m = sealed_by(&signer(), Uuid::now_v7());
        assert_eq!(
            verify(&m, &[stranger().verifying_key()]),
            Err(ManifestError::UntrustedSignature)
        );
        m.insert(SIGNATURE_FIELD.into(), json!("ed25519:not-base64!"));
        assert_eq!(
            verify(&m, &[signer().verifying_key()]),
            Err(ManifestError::UntrustedSignature)
        );
    }

    #[test]
    fn an_unsigned_manifest_is_accepted_and_vouches_for_no_publisher() {
        let mut m = manifest();
        m.insert(
            PUBLISHER_FIELD.into(),
            json!({"key_id": signer().key_id(), "project_id": Uuid::now_v7(),
                   "exported_by": Uuid::now_v7(), "exported_at": "2026-01-01T00:00:00Z"}),
        );
        let verified = verify(&m, &[]).unwrap();
        assert_eq!((verified.signed_by, verified.publisher), (None, None));
    }

    #[test]
    fn public_keys_and_key_ids_parse() {
        let signer = signer();
        assert_eq!(
            parse_public_key(&signer.public_key_base64()),
            Some(signer.verifying_key())
        );
        assert!(parse_public_key("short").is_none());
        assert_eq!(
            KeyId::parse(signer.key_id().as_str()),
            Some(signer.key_id())
        );
        assert_eq!(signer.key_id().as_str().len(), 32);
        assert_ne!(signer.key_id(), stranger().key_id());
        for bad in [
            "",
            "ABCDEF0123456789abcdef0123456789",
            "abc",
            &"0".repeat(64),
        ] {
            assert_eq!(KeyId::parse(bad), None, "{bad}");
        }
    }
}
