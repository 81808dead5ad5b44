//! Access tokens: HS256 JWTs signed with the key held in Secrets Manager.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// Claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Token id.
    pub jti: Uuid,
    /// The user's session epoch at issue; the token stops working once the epoch moves on
    /// (password change, "log out everywhere"). Absent in tokens issued before epochs existed.
    #[serde(default)]
    pub sep: u64,
}

/// Why a token was refused. The API answers every one of these with the same `401`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Bad signature, unexpected algorithm, wrong issuer or audience, or unparseable.
    #[error("invalid access token")]
    Invalid,
    /// Past its expiry.
    #[error("access token has expired")]
    Expired,
}

/// Keys derived from the signing secret: JWT signing and verification, the cursor MAC key and
/// the key that derives refresh-token successors.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    cursor_key: Vec<u8>,
    refresh_mac: Hmac<Sha256>,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// The only algorithm accepted; anything else in a token header is refused.
const ALGORITHM: Algorithm = Algorithm::HS256;

impl Keys {
    /// Builds the keys from the signing secret, which must hold at least 32 bytes.
    pub fn new(secret: &SecretString, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let bytes = secret.expose_secret().as_bytes();
        anyhow::ensure!(
            bytes.len() >= 32,
            "the JWT signing key must be at least 32 bytes, it has {}",
            bytes.len()
        );
        let mut validation = Validation::new(ALGORITHM);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Expiry is checked against the injected clock in `verify`.
        validation.validate_exp = false;
        let derive = |label: &[u8]| -> anyhow::Result<Vec<u8>> {
            let mut mac = Hmac::<Sha256>::new_from_slice(bytes)?;
            mac.update(label);
            Ok(mac.finalize().into_bytes().to_vec())
        };
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            cursor_key: derive(b"spark-ops/cursor/v1")?,
            refresh_mac: Hmac::<Sha256>::new_from_slice(&derive(
                b"spark-ops/refresh-successor/v1",
            )?)?,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// Issues an access token for `user_id` in session epoch `epoch`, valid from `now` for
    /// `ttl`.
    pub fn issue(
        &self,
        user_id: Uuid,
        epoch: u64,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> anyhow::Result<String> {
        let ttl = chrono::Duration::from_std(ttl)?;
        let claims = Claims {
            sub: user_id,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now.timestamp(),
            exp: (now + ttl).timestamp(),
            jti: Uuid::now_v7(),
            sep: epoch,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims; `issue` is the normal way in.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(ALGORITHM),
            claims,
            &self.encoding,
        )?)
    }

    /// Verifies a token's algorithm, signature, issuer, audience and expiry at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != ALGORITHM {
            return Err(TokenError::Invalid);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        if data.claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(data.claims)
    }

    /// The key that authenticates pagination cursors.
    pub fn cursor_key(&self) -> &[u8] {
        &self.cursor_key
    }

    /// The refresh token that replaces `refresh_token`: an HMAC of it under a server-side key.
    /// Deriving it (rather than drawing it at random) lets a retried exchange answer the same
    /// successor without the plaintext ever being stored; only whoever holds the old token can
    /// compute it.
    pub fn refresh_successor(&self, refresh_token: &str) -> String {
        use base64::Engine;
        let mut mac = self.refresh_mac.clone();
        mac.update(refresh_token.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use chrono::TimeZone;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-key";

    fn keys() -> Keys {
        Keys::new(&SecretString::from(SECRET), "spark-ops", "spark-ops-api").unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn ttl() -> std::time::Duration {
        std::time::Duration::from_secs(900)
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let keys = keys();
        let user = Uuid::now_v7();
        let token = keys.issue(user, 0, now(), ttl()).unwrap();
        assert_eq!(keys.verify(&token, now()).unwrap().sub, user);
        let later = now() + chrono::Duration::seconds(900);
        assert_eq!(keys.verify(&token, later), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_signed_with_another_key_is_invalid() {
        let other = Keys::new(
            &SecretString::from("another-key-another-key-another-key!!"),
            "spark-ops",
            "spark-ops-api",
        )
        .unwrap();
        let token = other.issue(Uuid::now_v7(), 0, now(), ttl()).unwrap();
        assert_eq!(keys().verify(&token, now()), Err(TokenError::Invalid));
    }

    #[test]
    fn alg_none_is_invalid() {
        let keys = keys();
        let token = keys.issue(Uuid::now_v7(), 0, now(), ttl()).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        for forged in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert_eq!(keys.verify(&forged, now()), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn an_unexpected_algorithm_is_invalid_even_with_the_right_key() {
        let keys = keys();
        let claims = keys
            .verify(&keys.issue(Uuid::now_v7(), 0, now(), ttl()).unwrap(), now())
            .unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(keys.verify(&token, now()), Err(TokenError::Invalid));
    }

    #[test]
    fn a_wrong_issuer_or_audience_is_invalid() {
        let keys = keys();
        let good = keys
            .verify(&keys.issue(Uuid::now_v7(), 0, now(), ttl()).unwrap(), now())
            .unwrap();
        let wrong_iss = Claims {
            iss: "someone-else".into(),
            ..good.clone()
        };
        let wrong_aud = Claims {
            aud: "another-api".into(),
            ..good
        };
        for claims in [wrong_iss, wrong_aud] {
            let token = keys.sign(&claims).unwrap();
            assert_eq!(keys.verify(&token, now()), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn a_tampered_payload_is_invalid() {
        let keys = keys();
        let token = keys.issue(Uuid::now_v7(), 0, now(), ttl()).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged_claims = format!(
            r#"{{"sub":"{}","iss":"spark-ops","aud":"spark-ops-api","iat":0,"exp":9999999999,"jti":"{}"}}"#,
            Uuid::now_v7(),
            Uuid::now_v7()
        );
        parts[1] = URL_SAFE_NO_PAD.encode(forged_claims);
        assert_eq!(
            keys.verify(&parts.join("."), now()),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn a_refresh_successor_is_stable_and_bound_to_its_token_and_key() {
        let keys = keys();
        assert_eq!(keys.refresh_successor("a"), keys.refresh_successor("a"));
        assert_ne!(keys.refresh_successor("a"), keys.refresh_successor("b"));
        assert_ne!(keys.refresh_successor("a"), "a");
        let other = Keys::new(
            &SecretString::from("another-key-another-key-another-key!!"),
            "spark-ops",
            "spark-ops-api",
        )
        .unwrap();
        assert_ne!(keys.refresh_successor("a"), other.refresh_successor("a"));
    }

    #[test]
    fn a_short_signing_key_is_refused() {
        assert!(Keys::new(&SecretString::from("short"), "i", "a").is_err());
    }
}
