//! Password policy and Argon2id hashing.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use secrecy::{ExposeSecret, SecretString};

/// Minimum password length in characters.
pub const MIN_LENGTH: usize = 10;
/// Maximum password length, which bounds the hashing cost an attacker can ask for.
pub const MAX_LENGTH: usize = 256;

/// Checks length and strength (zxcvbn score of at least 3, taking the user's own
/// email and name into account).
pub fn check_strength(password: &str, user_inputs: &[&str]) -> Result<(), String> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(format!("must be at least {MIN_LENGTH} characters"));
    }
    if length > MAX_LENGTH {
        return Err(format!("must be at most {MAX_LENGTH} characters"));
    }
    // The user's own words (from their email and name) count as guessable.
    let mut words: Vec<&str> = user_inputs.to_vec();
    words.extend(
        user_inputs
            .iter()
            .flat_map(|input| input.split(|c: char| !c.is_alphanumeric()))
            .filter(|w| w.len() >= 3),
    );
    let estimate = zxcvbn::zxcvbn(password, &words);
    if (estimate.score() as u8) < 3 {
        let hint = estimate
            .feedback()
            .and_then(|f| f.warning().map(|w| w.to_string()))
            .unwrap_or_else(|| "add more words or characters".to_owned());
        return Err(format!("is too easy to guess: {hint}"));
    }
    Ok(())
}

/// Hashes a password with Argon2id and a random salt; returns the PHC string.
pub fn hash(password: &SecretString) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("failed to hash password: {err}"))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify(password: &SecretString, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the email is unknown, so both paths cost the same.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash(&SecretString::from("dummy password for timing equality")).unwrap_or_default()
    })
}

/// Runs a CPU-heavy password operation off the async executor.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(work).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_own_password() {
        let hashed = hash(&SecretString::from("correct horse battery staple")).unwrap();
        assert!(hashed.starts_with("$argon2id$"));
        assert!(verify(
            &SecretString::from("correct horse battery staple"),
            &hashed
        ));
        assert!(!verify(
            &SecretString::from("Correct horse battery staple"),
            &hashed
        ));
        assert!(!verify(&SecretString::from("anything"), "not a phc string"));
    }

    #[test]
    fn weak_and_short_passwords_are_refused() {
        assert!(check_strength("short1!", &[])
            .unwrap_err()
            .contains("at least"));
        assert!(check_strength("password123", &[]).is_err());
        assert!(check_strength("adalovelace1", &["adalovelace1@example.com"]).is_err());
        assert!(check_strength("violet-tundra-cascade-42", &[]).is_ok());
        // The README's tour changes Ada's password to this one.
        assert!(check_strength("copper-meadow-falcon-19", &["ada@example.com", "Ada"]).is_ok());
    }
}
