//! Refresh-token families, in the auth table.
//!
//! A login starts a family. Each refresh rotates the token inside its family; presenting a
//! rotated token again is reuse, which revokes the whole family. Every token carries its
//! user's session epoch when it was issued: bumping the user's epoch (password change, "log out
//! everywhere") ends every family at once, and each write here checks the epoch in the same
//! transaction, so no session can start or continue across a bump.

use anyhow::Context;
use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{item, key, n, s, Store, StoreResult};
use crate::domain::ts;

/// A stored refresh token: only the digest of the secret is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefreshToken {
    /// SHA-256 digest of the token.
    pub digest: String,
    /// The session's user.
    pub user_id: Uuid,
    /// The family the token belongs to.
    pub family_id: Uuid,
    /// `active`, or `rotated` once it has been exchanged.
    pub status: String,
    /// The user's session epoch when the family started; tokens of an older epoch are dead.
    #[serde(default)]
    pub session_epoch: u64,
    /// Issue time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Expiry.
    #[serde(with = "ts")]
    pub expires_at: DateTime<Utc>,
    /// When it was exchanged.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub rotated_at: Option<DateTime<Utc>>,
    /// Digest of the token it was exchanged for, so a retried exchange can be recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor_digest: Option<String>,
}

impl RefreshToken {
    /// Whether it has not been exchanged yet.
    pub fn is_active(&self) -> bool {
        self.status == ACTIVE
    }
}

/// A family of refresh tokens descending from one login.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Family {
    /// Family id.
    pub family_id: Uuid,
    /// The session's user.
    pub user_id: Uuid,
    /// Start of the session.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Set once the family is revoked (logout or reuse).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub revoked_at: Option<DateTime<Utc>>,
}

const ACTIVE: &str = "active";
const ROTATED: &str = "rotated";

fn refresh_pk(digest: &str) -> String {
    format!("REFRESH#{digest}")
}

fn family_pk(id: Uuid) -> String {
    format!("FAMILY#{id}")
}

/// The new token written by a login or a rotation.
pub struct NewRefresh<'a> {
    /// Digest of the new token.
    pub digest: &'a str,
    /// Its user.
    pub user_id: Uuid,
    /// The user's session epoch the token belongs to.
    pub session_epoch: u64,
    /// Its family.
    pub family_id: Uuid,
    /// Issue time.
    pub now: DateTime<Utc>,
    /// Expiry; also the item's TTL.
    pub expires_at: DateTime<Utc>,
}

impl Store {
    fn refresh_put(&self, new: &NewRefresh<'_>) -> anyhow::Result<TransactWriteItem> {
        let token = RefreshToken {
            digest: new.digest.to_owned(),
            user_id: new.user_id,
            family_id: new.family_id,
            status: ACTIVE.to_owned(),
            session_epoch: new.session_epoch,
            created_at: new.now,
            expires_at: new.expires_at,
            rotated_at: None,
            successor_digest: None,
        };
        let mut token_item = item(
            &token,
            &[("pk", refresh_pk(new.digest)), ("sk", "REFRESH".into())],
        )?;
        token_item.insert("ttl".into(), n(new.expires_at.timestamp()));
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.auth_table)
                    .set_item(Some(token_item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .context("Failed to build the refresh token put")?,
            )
            .build())
    }

    /// Starts a session: a new family and its first refresh token, if the user is still live
    /// and still at `new.session_epoch`. Item 2 failing means they are not.
    pub async fn start_session(&self, new: &NewRefresh<'_>) -> StoreResult<()> {
        let family = Family {
            family_id: new.family_id,
            user_id: new.user_id,
            created_at: new.now,
            revoked_at: None,
        };
        let mut family_item = item(
            &family,
            &[("pk", family_pk(new.family_id)), ("sk", "FAMILY".into())],
        )?;
        family_item.insert("ttl".into(), n(new.expires_at.timestamp()));
        let family_put = Put::builder()
            .table_name(&self.auth_table)
            .set_item(Some(family_item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .context("Failed to build the family put")?;
        self.transact(
            vec![
                TransactWriteItem::builder().put(family_put).build(),
                self.refresh_put(new)?,
                self.session_epoch_check(new.user_id, new.session_epoch)?,
            ],
            "start a session",
        )
        .await
    }

    /// The stored refresh token with this digest.
    pub async fn get_refresh(&self, digest: &str) -> StoreResult<Option<RefreshToken>> {
        self.get_record(
            &self.auth_table,
            key(refresh_pk(digest), "REFRESH"),
            "a refresh token",
        )
        .await
    }

    /// The family with this id.
    pub async fn get_family(&self, id: Uuid) -> StoreResult<Option<Family>> {
        self.get_record(
            &self.auth_table,
            key(family_pk(id), "FAMILY"),
            "a token family",
        )
        .await
    }

    /// Exchanges `old` for `new` in one transaction: `old` must still be active, its family
    /// unrevoked and its user live at the same session epoch. Item 0 failing means `old` was
    /// already rotated; item 2 failing means the family is revoked; item 3 failing means the
    /// user's sessions were ended.
    pub async fn rotate_refresh(
        &self,
        old: &RefreshToken,
        new: &NewRefresh<'_>,
    ) -> StoreResult<()> {
        let retire = Update::builder()
            .table_name(&self.auth_table)
            .set_key(Some(key(refresh_pk(&old.digest), "REFRESH")))
            .update_expression(
                "SET #status = :rotated, rotated_at = :now, successor_digest = :successor",
            )
            .condition_expression("#status = :active")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":rotated", s(ROTATED))
            .expression_attribute_values(":active", s(ACTIVE))
            .expression_attribute_values(":now", s(ts::format(&new.now)))
            .expression_attribute_values(":successor", s(new.digest))
            .build()
            .context("Failed to build the token retirement")?;
        let family_live = ConditionCheck::builder()
            .table_name(&self.auth_table)
            .set_key(Some(key(family_pk(old.family_id), "FAMILY")))
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(revoked_at)")
            .build()
            .context("Failed to build the family check")?;
        self.transact(
            vec![
                TransactWriteItem::builder().update(retire).build(),
                self.refresh_put(new)?,
                TransactWriteItem::builder()
                    .condition_check(family_live)
                    .build(),
                self.session_epoch_check(old.user_id, old.session_epoch)?,
            ],
            "rotate a refresh token",
        )
        .await
    }

    /// Revokes a family; every token in it stops working. Revoking twice is harmless.
    pub async fn revoke_family(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
        self.ddb
            .update_item()
            .table_name(&self.auth_table)
            .set_key(Some(key(family_pk(id), "FAMILY")))
            .update_expression("SET revoked_at = if_not_exists(revoked_at, :now)")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":now", s(ts::format(&now)))
            .send()
            .await
            .map_err(|e| super::write_error(e, "revoke a token family"))?;
        Ok(())
    }
}
