//! Refresh-token families and the failed-login throttle, in the auth table.
//!
//! A login starts a family. Each refresh rotates the token inside its family; presenting a
//! rotated token again is reuse, which revokes the whole family.

use anyhow::Context;
use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{item, key, n, s, Store, StoreError, StoreResult};
use crate::domain::Email;

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
    /// Issue time.
    #[serde(with = "crate::domain::ts")]
    pub created_at: DateTime<Utc>,
    /// Expiry.
    #[serde(with = "crate::domain::ts")]
    pub expires_at: DateTime<Utc>,
}

/// A family of refresh tokens descending from one login.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Family {
    /// Family id.
    pub family_id: Uuid,
    /// The session's user.
    pub user_id: Uuid,
    /// Start of the session.
    #[serde(with = "crate::domain::ts")]
    pub created_at: DateTime<Utc>,
    /// Set once the family is revoked (logout or reuse).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::domain::ts::option"
    )]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Failed logins for one email within the current window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginWindow {
    /// Failures so far.
    pub failures: u32,
    /// When the window opened.
    #[serde(with = "crate::domain::ts")]
    pub window_start: DateTime<Utc>,
}

const ACTIVE: &str = "active";
const ROTATED: &str = "rotated";

fn refresh_pk(digest: &str) -> String {
    format!("REFRESH#{digest}")
}

fn family_pk(id: Uuid) -> String {
    format!("FAMILY#{id}")
}

fn login_pk(email: &Email) -> String {
    format!("LOGIN#{email}")
}

fn stamp(at: DateTime<Utc>) -> String {
    crate::domain::ts::format(&at)
}

/// The new token written by a login or a rotation.
pub struct NewRefresh<'a> {
    /// Digest of the new token.
    pub digest: &'a str,
    /// Its user.
    pub user_id: Uuid,
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
            created_at: new.now,
            expires_at: new.expires_at,
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

    /// Starts a session: a new family and its first refresh token.
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

    /// Exchanges `old` for `new` in one transaction: `old` must still be active and its
    /// family unrevoked. Item 0 failing means `old` was already rotated (reuse); item 2
    /// failing means the family is revoked.
    pub async fn rotate_refresh(
        &self,
        old: &RefreshToken,
        new: &NewRefresh<'_>,
    ) -> StoreResult<()> {
        let retire = Update::builder()
            .table_name(&self.auth_table)
            .set_key(Some(key(refresh_pk(&old.digest), "REFRESH")))
            .update_expression("SET #status = :rotated, rotated_at = :now")
            .condition_expression("#status = :active")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":rotated", s(ROTATED))
            .expression_attribute_values(":active", s(ACTIVE))
            .expression_attribute_values(":now", s(stamp(new.now)))
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
            .expression_attribute_values(":now", s(stamp(now)))
            .send()
            .await
            .map_err(|e| super::write_error(e, "revoke a token family"))?;
        Ok(())
    }

    /// The current failed-login window for `email`, if any.
    pub async fn login_window(&self, email: &Email) -> StoreResult<Option<LoginWindow>> {
        self.get_record(
            &self.auth_table,
            key(login_pk(email), "THROTTLE"),
            "the login throttle",
        )
        .await
    }

    /// Counts a failed login: inside an open window the counter grows atomically,
    /// otherwise a new window opens with one failure.
    pub async fn record_login_failure(
        &self,
        email: &Email,
        now: DateTime<Utc>,
        window: std::time::Duration,
    ) -> StoreResult<()> {
        let window = chrono::Duration::from_std(window).context("login window out of range")?;
        let expires = (now + window).timestamp();
        let counted = self
            .ddb
            .update_item()
            .table_name(&self.auth_table)
            .set_key(Some(key(login_pk(email), "THROTTLE")))
            .update_expression("ADD failures :one")
            .condition_expression("window_start > :cutoff")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":cutoff", s(stamp(now - window)))
            .send()
            .await;
        match counted.map_err(|e| super::write_error(e, "count a failed login")) {
            Ok(_) => Ok(()),
            Err(StoreError::ConditionFailed) => {
                let fresh = LoginWindow {
                    failures: 1,
                    window_start: now,
                };
                let mut window_item = item(
                    &fresh,
                    &[("pk", login_pk(email)), ("sk", "THROTTLE".into())],
                )?;
                window_item.insert("ttl".into(), n(expires));
                self.ddb
                    .put_item()
                    .table_name(&self.auth_table)
                    .set_item(Some(window_item))
                    .send()
                    .await
                    .context("Failed to open a login window")?;
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    /// Forgets failed logins after a success.
    pub async fn clear_login_failures(&self, email: &Email) -> StoreResult<()> {
        self.ddb
            .delete_item()
            .table_name(&self.auth_table)
            .set_key(Some(key(login_pk(email), "THROTTLE")))
            .send()
            .await
            .context("Failed to clear the login throttle")?;
        Ok(())
    }
}
