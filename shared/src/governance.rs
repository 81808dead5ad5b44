//! Governance settings a project keeps in its `settings` object:
//!
//! - `approvals.allow_self_approval` (default `false`): whether whoever started a run may
//!   also approve or reject it. Off, a run waiting for approval needs a second person.
//! - `trusted_publishers` (default empty): whose signed manifests the project imports. Each
//!   entry is a signing key id (`GET /registry/public-key` shows this deployment's), which
//!   trusts every project that key signs for, or `<key id>/<project id>`, which trusts one
//!   project. Empty accepts every manifest the deployment accepts. Anyone can sign up and
//!   export from a project of their own, so naming the project is what makes an entry for
//!   this deployment's own key mean something.
//!
//! The projects API parses them when a project is saved, so a bad value is a `422` naming its
//! path; the runs and manifests APIs parse them again where they apply.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::FieldError;
use crate::manifest::{KeyId, Publisher};

/// Path of the self-approval switch.
pub const SELF_APPROVAL_FIELD: &str = "settings.approvals.allow_self_approval";
/// Path of the trusted publishers.
pub const TRUSTED_PUBLISHERS_FIELD: &str = "settings.trusted_publishers";
/// Most entries `trusted_publishers` may hold.
pub const MAX_TRUSTED_PUBLISHERS: usize = 100;

/// A publisher a project trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedPublisher {
    /// Every project whose manifests this key signs.
    Key(KeyId),
    /// One project, as signed by this key.
    Project(KeyId, Uuid),
}

impl TrustedPublisher {
    /// Parses `<key id>` or `<key id>/<project id>`.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.split_once('/') {
            None => KeyId::parse(raw).map(Self::Key),
            Some((key, project)) => Some(Self::Project(
                KeyId::parse(key)?,
                Uuid::try_parse(project).ok()?,
            )),
        }
    }

    /// Whether this entry covers `publisher`.
    pub fn admits(&self, publisher: &Publisher) -> bool {
        match self {
            Self::Key(key) => *key == publisher.key_id,
            Self::Project(key, project) => {
                *key == publisher.key_id && *project == publisher.project_id
            }
        }
    }
}

/// The governance settings of a project.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Governance {
    /// Whether whoever started a run may decide its approval.
    pub allow_self_approval: bool,
    /// Whose manifests imports accept; empty accepts any the deployment accepts.
    pub trusted_publishers: Vec<TrustedPublisher>,
}

impl Governance {
    /// Parses the governance settings out of a project's `settings`, naming every invalid
    /// one. Other settings are left alone.
    pub fn parse(settings: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let allow_self_approval = allow_self_approval(settings)
            .map_err(|e| errors.push(e))
            .unwrap_or_default();
        let trusted_publishers = trusted_publishers(settings)
            .map_err(|e| errors.extend(e))
            .unwrap_or_default();
        if errors.is_empty() {
            Ok(Self {
                allow_self_approval,
                trusted_publishers,
            })
        } else {
            Err(errors)
        }
    }
}

/// `approvals.allow_self_approval`: absent or `null` is `false`.
pub fn allow_self_approval(settings: &Map<String, Value>) -> Result<bool, FieldError> {
    let approvals = match settings.get("approvals") {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Object(approvals)) => approvals,
        Some(_) => {
            return Err(FieldError::new(
                "settings.approvals",
                "must be an object such as {\"allow_self_approval\": false}",
            ))
        }
    };
    if let Some(unknown) = approvals.keys().find(|k| *k != "allow_self_approval") {
        return Err(FieldError::new(
            format!("settings.approvals.{unknown}"),
            "is not an approvals setting (the only one is allow_self_approval)",
        ));
    }
    match approvals.get("allow_self_approval") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(allowed)) => Ok(*allowed),
        Some(_) => Err(FieldError::new(
            SELF_APPROVAL_FIELD,
            "must be true or false",
        )),
    }
}

/// `trusted_publishers`: absent or `null` is empty.
pub fn trusted_publishers(
    settings: &Map<String, Value>,
) -> Result<Vec<TrustedPublisher>, Vec<FieldError>> {
    let entries = match settings.get("trusted_publishers") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) if entries.len() <= MAX_TRUSTED_PUBLISHERS => entries,
        Some(_) => {
            return Err(vec![FieldError::new(
                TRUSTED_PUBLISHERS_FIELD,
                format!("must be a list of at most {MAX_TRUSTED_PUBLISHERS} key ids"),
            )])
        }
    };
    let mut errors = Vec::new();
    let mut publishers = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match entry.as_str().and_then(TrustedPublisher::parse) {
            Some(publisher) => publishers.push(publisher),
            None => errors.push(FieldError::new(
                format!("{TRUSTED_PUBLISHERS_FIELD}[{i}]"),
                "must be a key id (32 lower-case hex digits, as GET /registry/public-key \
                 shows), optionally followed by /<project id>",
            )),
        }
    }
    if errors.is_empty() {
        Ok(publishers)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff";
    const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100";

    fn settings(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn publisher(key: &str, project_id: Uuid) -> Publisher {
        Publisher {
            key_id: KeyId::parse(key).unwrap(),
            project_id,
            exported_by: Uuid::now_v7(),
            exported_at: Utc::now(),
        }
    }

    #[test]
    fn without_governance_settings_nobody_approves_their_own_run_and_any_publisher_is_accepted() {
        let parsed = Governance::parse(&settings(json!({"model_prices": {}}))).unwrap();
        assert_eq!(parsed, Governance::default());
        assert!(!parsed.allow_self_approval);
    }

    #[test]
    fn trusted_publishers_name_a_key_or_one_project_of_a_key() {
        let project = Uuid::now_v7();
        let parsed = Governance::parse(&settings(json!({
            "approvals": {"allow_self_approval": true},
            "trusted_publishers": [KEY, format!("{OTHER_KEY}/{project}")],
        })))
        .unwrap();
        assert!(parsed.allow_self_approval);
        let admitted = |p: &Publisher| parsed.trusted_publishers.iter().any(|t| t.admits(p));
        assert!(admitted(&publisher(KEY, Uuid::now_v7())));
        assert!(admitted(&publisher(OTHER_KEY, project)));
        assert!(!admitted(&publisher(OTHER_KEY, Uuid::now_v7())));
    }

    #[test]
    fn invalid_governance_settings_are_named_by_path() {
        let err = Governance::parse(&settings(json!({
            "approvals": {"allow_self_approval": "yes"},
            "trusted_publishers": [KEY, "not-a-key", 7, format!("{KEY}/not-a-project")],
        })))
        .unwrap_err();
        let fields: Vec<&str> = err.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                SELF_APPROVAL_FIELD,
                "settings.trusted_publishers[1]",
                "settings.trusted_publishers[2]",
                "settings.trusted_publishers[3]",
            ]
        );
        for (value, field) in [
            (json!({"approvals": true}), "settings.approvals"),
            (
                json!({"approvals": {"allow_self_aproval": true}}),
                "settings.approvals.allow_self_aproval",
            ),
            (json!({"trusted_publishers": KEY}), TRUSTED_PUBLISHERS_FIELD),
        ] {
            let err = Governance::parse(&settings(value)).unwrap_err();
            assert_eq!(err[0].field, field);
        }
    }
}
