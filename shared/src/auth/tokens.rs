//! Opaque secrets: refresh tokens and API keys. Only their SHA-256 digests are stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Prefix that marks an API key, so it is never mistaken for a JWT.
pub const API_KEY_PREFIX: &str = "sok_";

/// 32 random bytes, base64url-encoded.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256 digest of a secret, the only form in which secrets are stored.
pub fn digest(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A freshly minted API key: the full key (shown once) and its parts.
pub struct NewApiKey {
    /// The key id, which is also embedded in the key.
    pub id: Uuid,
    /// The whole key, `sok_<id>_<secret>`.
    pub key: String,
    /// Digest of the secret part.
    pub secret_digest: String,
}

/// Mints a new API key.
pub fn new_api_key() -> NewApiKey {
    let id = Uuid::now_v7();
    let secret = random_secret();
    NewApiKey {
        key: format!("{API_KEY_PREFIX}{}_{secret}", id.simple()),
        secret_digest: digest(&secret),
        id,
    }
}

/// Splits a presented API key into its id and the digest of its secret.
pub fn parse_api_key(presented: &str) -> Option<(Uuid, String)> {
    let rest = presented.strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.is_empty() {
        return None;
    }
    Some((Uuid::try_parse(id).ok()?, digest(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_parses_back_to_its_id_and_digest() {
        let minted = new_api_key();
        let (id, digest) = parse_api_key(&minted.key).unwrap();
        assert_eq!(id, minted.id);
        assert_eq!(digest, minted.secret_digest);
        assert!(!minted.key.contains(&minted.secret_digest));
    }

    #[test]
    fn malformed_api_keys_are_refused() {
        for bad in ["", "sok_", "sok_abc_def", "eyJhbGciOi.x.y", "sok_0190_"] {
            assert!(parse_api_key(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_random_and_digests_stable() {
        assert_ne!(random_secret(), random_secret());
        assert_eq!(digest("a"), digest("a"));
        assert_eq!(digest("a").len(), 64);
    }
}
