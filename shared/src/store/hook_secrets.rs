//! The signing secrets of inbound webhook schedules, in Secrets Manager at
//! [`path::schedule_webhook_secret`]: the current secret and, for [`ROTATION_GRACE`] after a
//! rotation, the previous one, so senders can switch without dropping deliveries.

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::secrets::{path, SecretStore};
use crate::domain::ts;

/// How long the previous secret still signs after a rotation.
pub const ROTATION_GRACE: Duration = Duration::hours(1);

/// A webhook schedule's signing secrets, as stored (never printed: no `Debug`).
#[derive(Deserialize, Serialize)]
pub struct SigningKeys {
    current: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<String>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    previous_until: Option<DateTime<Utc>>,
}

impl SigningKeys {
    /// The HMAC keys a delivery may be signed with at `now`: the current secret, and the
    /// previous one until its grace ends.
    pub fn valid_at(&self, now: DateTime<Utc>) -> Vec<&[u8]> {
        let mut keys = vec![self.current.as_bytes()];
        if let (Some(previous), Some(until)) = (&self.previous, self.previous_until) {
            if now < until {
                keys.push(previous.as_bytes());
            }
        }
        keys
    }

    fn to_secret(&self) -> anyhow::Result<SecretString> {
        let text = serde_json::to_string(self).context("Failed to encode signing secrets")?;
        Ok(SecretString::from(text))
    }
}

impl SecretStore {
    /// Stores `fresh` as the first signing secret of the webhook schedule `id`.
    pub async fn create_hook_secret(&self, id: Uuid, fresh: &SecretString) -> anyhow::Result<()> {
        let keys = SigningKeys {
            current: fresh.expose_secret().to_owned(),
            previous: None,
            previous_until: None,
        };
        self.put(&path::schedule_webhook_secret(id), &keys.to_secret()?)
            .await
    }

    /// Makes `fresh` the current signing secret of the schedule `id`; the current one stays
    /// valid until `now` + [`ROTATION_GRACE`]. `false` when the schedule has no secret.
    pub async fn rotate_hook_secret(
        &self,
        id: Uuid,
        fresh: &SecretString,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let Some(old) = self.hook_keys(id).await? else {
            return Ok(false);
        };
        let keys = SigningKeys {
            current: fresh.expose_secret().to_owned(),
            previous: Some(old.current),
            previous_until: Some(now + ROTATION_GRACE),
        };
        self.put(&path::schedule_webhook_secret(id), &keys.to_secret()?)
            .await?;
        Ok(true)
    }

    /// The signing secrets of the schedule `id`, if it has any.
    pub async fn hook_keys(&self, id: Uuid) -> anyhow::Result<Option<SigningKeys>> {
        let Some(value) = self.get(&path::schedule_webhook_secret(id)).await? else {
            return Ok(None);
        };
        let keys = serde_json::from_str(value.expose_secret())
            .map_err(|_| anyhow::anyhow!("the signing secret of schedule {id} is malformed"))?;
        Ok(Some(keys))
    }

    /// Schedules the signing secrets of the deleted schedule `id` for deletion.
    pub async fn discard_hook_secret(&self, id: Uuid) {
        self.discard(&path::schedule_webhook_secret(id)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_secret_signs_only_during_its_grace() {
        let now = Utc::now();
        let keys = SigningKeys {
            current: "new".into(),
            previous: Some("old".into()),
            previous_until: Some(now + ROTATION_GRACE),
        };
        assert_eq!(keys.valid_at(now), [b"new".as_slice(), b"old".as_slice()]);
        assert_eq!(keys.valid_at(now + ROTATION_GRACE), [b"new".as_slice()]);
    }
}
