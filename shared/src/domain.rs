//! Values parsed at the edge: once built, an invalid one cannot exist.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A normalised (trimmed, lower-case) email address; compared case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Parses and normalises an email address.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let normalised = raw.trim().to_lowercase();
        if normalised.len() > 254 {
            return Err("must be at most 254 characters".into());
        }
        if !email_address::EmailAddress::is_valid(&normalised) {
            return Err("must be an email address".into());
        }
        Ok(Self(normalised))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: 1–255 characters after trimming, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Parses a display name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        line(raw, 255)?
            .map(Self)
            .ok_or_else(|| "must not be empty".into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Takes the inner text.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A project slug: 3–63 of `[a-z0-9-]`, starting and ending with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Slug(String);

impl Slug {
    /// Parses a slug exactly as given.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let edges_ok = !raw.starts_with('-') && !raw.ends_with('-');
        if !(3..=63).contains(&raw.len()) || !valid_chars || !edges_ok || raw.contains("--") {
            return Err(
                "must be 3-63 characters of lower-case letters, digits and single hyphens, \
                 starting and ending with a letter or digit"
                    .into(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    /// Derives a slug from a display name, e.g. `"Support Bots!"` → `support-bots`.
    pub fn from_name(name: &Name) -> Result<Self, String> {
        let mut slug = String::new();
        for c in name.as_str().chars() {
            if c.is_ascii_alphanumeric() {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.ends_with('-') && !slug.is_empty() {
                slug.push('-');
            }
        }
        let slug = slug.trim_end_matches('-');
        let slug: String = slug.chars().take(63).collect();
        Self::parse(slug.trim_end_matches('-'))
            .map_err(|_| "cannot be derived from the name; give a slug explicitly".to_owned())
    }

    /// The slug as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A role inside a project. Each role includes every right of the roles after it:
/// owner ⊃ admin ⊃ developer ⊃ viewer.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Can read.
    Viewer,
    /// Can read and build.
    Developer,
    /// Can manage members, keys and settings.
    Admin,
    /// Can do everything, including deleting the project.
    Owner,
}

impl Role {
    /// The role's name as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Developer => "developer",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    /// Whether this role includes every right of `other`.
    pub fn includes(self, other: Role) -> bool {
        self >= other
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Optional single-line text: trimmed, at most `max_chars` characters, no control
/// characters; empty means none.
pub fn line(raw: &str, max_chars: usize) -> Result<Option<String>, String> {
    bounded(raw, max_chars, false)
}

/// Optional multi-line text: trimmed, at most `max_chars` characters, no control characters
/// other than line breaks and tabs; empty means none.
pub fn text(raw: &str, max_chars: usize) -> Result<Option<String>, String> {
    bounded(raw, max_chars, true)
}

fn bounded(raw: &str, max_chars: usize, multiline: bool) -> Result<Option<String>, String> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    let allowed = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    if trimmed.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(if multiline {
            "must not contain control characters other than line breaks and tabs".into()
        } else {
            "must not contain control characters".into()
        });
    }
    Ok(Some(trimmed.to_owned()).filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_so_case_never_matters() {
        let a = Email::parse("  Ada@Example.COM ").unwrap();
        let b = Email::parse("ada@example.com").unwrap();
        assert_eq!(a, b);
        assert!(Email::parse("not-an-email").is_err());
    }

    #[test]
    fn slugs_accept_only_the_documented_alphabet() {
        assert!(Slug::parse("support-bots").is_ok());
        for bad in [
            "ab",
            "-lead",
            "trail-",
            "Upper",
            "two--dashes",
            "sp ace",
            &"x".repeat(64),
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn a_slug_is_derived_from_a_name() {
        let name = Name::parse("Support Bots! (EU)").unwrap();
        assert_eq!(Slug::from_name(&name).unwrap().as_str(), "support-bots-eu");
        assert!(Slug::from_name(&Name::parse("!!").unwrap()).is_err());
    }

    #[test]
    fn roles_are_ordered_owner_admin_developer_viewer() {
        assert!(Role::Owner.includes(Role::Admin));
        assert!(Role::Admin.includes(Role::Developer));
        assert!(Role::Developer.includes(Role::Viewer));
        assert!(!Role::Viewer.includes(Role::Developer));
    }

    #[test]
    fn names_reject_blank_and_control_characters() {
        assert!(Name::parse("   ").is_err());
        assert!(Name::parse("a\u{0}b").is_err());
        assert_eq!(Name::parse("  Ada  ").unwrap().as_str(), "Ada");
    }
}

/// Serde for values stored as JSON text: nesting DynamoDB could not store (over 32 levels)
/// is the client's to choose, up to [`json_text::MAX_DEPTH`], the most `serde_json` reads
/// back. A value nested deeper (a template that puts a deep input inside an object) is
/// refused when written rather than stored as a record that can no longer be read.
pub(crate) mod json_text {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Deepest nesting of arrays and objects `serde_json` reads.
    pub const MAX_DEPTH: usize = 127;

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&text(value).map_err(serde::ser::Error::custom)?)
    }

    /// `value` as JSON text, if it nests at most [`MAX_DEPTH`] levels.
    fn text<T: Serialize>(value: &T) -> Result<String, String> {
        let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
        match depth(&text) {
            depth if depth > MAX_DEPTH => Err(format!(
                "the value nests {depth} levels deep; at most {MAX_DEPTH} can be stored"
            )),
            _ => Ok(text),
        }
    }

    /// How deep arrays and objects nest in JSON text.
    fn depth(text: &str) -> usize {
        let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
        for byte in text.bytes() {
            match (in_string, byte) {
                (true, _) if escaped => escaped = false,
                (true, b'\\') => escaped = true,
                (true, b'"') | (false, b'"') => in_string = !in_string,
                (false, b'[' | b'{') => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                (false, b']' | b'}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }

    /// The same for optional values.
    pub mod option {
        use super::*;

        pub fn serialize<T: Serialize, S: Serializer>(
            value: &Option<T>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => {
                    serializer.serialize_some(&text(value).map_err(serde::ser::Error::custom)?)
                }
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<T>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| serde_json::from_str(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// Serde for timestamps as fixed-width RFC 3339 UTC with milliseconds
/// (`2026-01-02T03:04:05.678Z`), so stored values sort and compare as strings.
pub mod ts {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Formats a timestamp.
    pub fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Serialises a timestamp.
    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(at))
    }

    /// Deserialises any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_| serde::de::Error::custom("expected an RFC 3339 timestamp"))
    }

    /// The same for optional timestamps.
    pub mod option {
        use super::*;

        /// Serialises an optional timestamp.
        pub fn serialize<S: Serializer>(
            at: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => serializer.serialize_some(&format(at)),
                None => serializer.serialize_none(),
            }
        }

        /// Deserialises an optional RFC 3339 timestamp.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|raw| {
                    DateTime::parse_from_rfc3339(&raw)
                        .map(|at| at.with_timezone(&Utc))
                        .map_err(|_| serde::de::Error::custom("expected an RFC 3339 timestamp"))
                })
                .transpose()
        }
    }
}

/// A deployment environment of an agent, a tool or a run. Its JSON form parses with
/// [`Env::parse`], so every request names a bad one with the same message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    /// Development.
    Dev,
    /// Staging.
    Staging,
    /// Production.
    Prod,
}

impl Env {
    /// Parses an environment's name: `dev`, `staging` or `prod`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        [Self::Dev, Self::Staging, Self::Prod]
            .into_iter()
            .find(|env| env.as_str() == raw)
            .ok_or_else(|| "must be one of dev, staging, prod".to_owned())
    }

    /// The environment's name as used in the API and in index keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Staging => "staging",
            Self::Prod => "prod",
        }
    }
}

impl fmt::Display for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Env {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}
