//! Users and their unique emails, in the auth table.

use anyhow::Context;
use aws_sdk_dynamodb::types::{
    ConditionCheck, Delete, Put, ReturnValue, TransactWriteItem, Update,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::expr::{Apply, Changes};
use super::{item, key, n, record, s, Store, StoreResult};
use crate::domain::Email;

/// A registered user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub id: Uuid,
    /// Normalised email.
    pub email: Email,
    /// Display name.
    pub name: String,
    /// Argon2id PHC string. Never leaves the store layer in a response.
    pub password_hash: String,
    /// Creation time.
    #[serde(with = "crate::domain::ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "crate::domain::ts")]
    pub updated_at: DateTime<Utc>,
    /// Last successful login.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::domain::ts::option"
    )]
    pub last_login_at: Option<DateTime<Utc>>,
    /// Set when the account was deleted; such a user cannot authenticate.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::domain::ts::option"
    )]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Bumped by a password change or "log out everywhere": access and refresh tokens carry
    /// the epoch they were issued in, and those of an older epoch stop working.
    #[serde(default)]
    pub session_epoch: u64,
}

fn user_pk(id: Uuid) -> String {
    format!("USER#{id}")
}

fn email_pk(email: &Email) -> String {
    format!("EMAIL#{email}")
}

#[derive(Serialize, Deserialize)]
struct EmailClaim {
    user_id: Uuid,
}

impl Store {
    /// Stores a new user and claims its email in one transaction.
    /// Fails with `Cancelled` (item 0 failing) if the email is taken.
    pub async fn create_user(&self, user: &User) -> StoreResult<()> {
        let claim = item(
            &EmailClaim { user_id: user.id },
            &[("pk", email_pk(&user.email)), ("sk", "EMAIL".into())],
        )?;
        let record = item(user, &[("pk", user_pk(user.id)), ("sk", "USER".into())])?;
        let put = |item, what| -> anyhow::Result<TransactWriteItem> {
            Ok(TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.auth_table)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .context(what)?,
                )
                .build())
        };
        self.transact(
            vec![
                put(claim, "Failed to build the email claim")?,
                put(record, "Failed to build the user record")?,
            ],
            "store a new user",
        )
        .await
    }

    /// The user with `id`, including deleted ones.
    pub async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        self.get_record(&self.auth_table, key(user_pk(id), "USER"), "a user")
            .await
    }

    /// The id of the live user who owns `email`, from the email claim alone (one read; a
    /// deleted user's claim is released with the deletion).
    pub async fn find_user_id_by_email(&self, email: &Email) -> StoreResult<Option<Uuid>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.auth_table)
            .set_key(Some(key(email_pk(email), "EMAIL")))
            .consistent_read(true)
            .send()
            .await
            .context("Failed to read an email claim")?;
        Ok(out
            .item
            .map(record::<EmailClaim>)
            .transpose()?
            .map(|claim| claim.user_id))
    }

    /// The live user who owns `email`.
    pub async fn find_user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        let Some(user_id) = self.find_user_id_by_email(email).await? else {
            return Ok(None);
        };
        Ok(self
            .get_user(user_id)
            .await?
            .filter(|u| u.deleted_at.is_none()))
    }

    /// A transaction item that holds only while the user is live and at session `epoch`.
    pub(super) fn session_epoch_check(
        &self,
        user_id: Uuid,
        epoch: u64,
    ) -> anyhow::Result<TransactWriteItem> {
        // Users stored before epochs existed have no attribute, which means epoch 0.
        let condition = if epoch == 0 {
            "attribute_exists(pk) AND attribute_not_exists(deleted_at) AND (attribute_not_exists(session_epoch) OR session_epoch = :epoch)"
        } else {
            "attribute_exists(pk) AND attribute_not_exists(deleted_at) AND session_epoch = :epoch"
        };
        Ok(TransactWriteItem::builder()
            .condition_check(
                ConditionCheck::builder()
                    .table_name(&self.auth_table)
                    .set_key(Some(key(user_pk(user_id), "USER")))
                    .condition_expression(condition)
                    .expression_attribute_values(":epoch", n(epoch))
                    .build()
                    .context("Failed to build the session epoch check")?,
            )
            .build())
    }

    /// Ends every session of `user` by moving them to the next session epoch, and with
    /// `new_password_hash` also replaces their password, provided it is still the one they
    /// proved. Returns the new epoch; `ConditionFailed` if the user is gone or the password
    /// changed meanwhile.
    pub async fn end_sessions(
        &self,
        user: &User,
        new_password_hash: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let mut changes = Changes::new()
            .set_with(
                "session_epoch",
                "if_not_exists(#session_epoch, :zero) + :one",
            )
            .value(":zero", n(0))
            .value(":one", n(1))
            .set("updated_at", s(crate::domain::ts::format(&now)));
        let mut condition = "attribute_exists(pk) AND attribute_not_exists(deleted_at)".to_owned();
        if let Some(hash) = new_password_hash {
            changes = changes
                .set("password_hash", s(hash))
                .value(":proved", s(&user.password_hash));
            condition.push_str(" AND #password_hash = :proved");
        }
        let out = self
            .ddb
            .update_item()
            .table_name(&self.auth_table)
            .set_key(Some(key(user_pk(user.id), "USER")))
            .return_values(ReturnValue::UpdatedNew)
            .apply(changes.only_if(&condition))
            .send()
            .await
            .map_err(|e| super::write_error(e, "end a user's sessions"))?;
        let epoch = out
            .attributes
            .as_ref()
            .and_then(|a| a.get("session_epoch"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .context("DynamoDB did not return the new session epoch")?;
        Ok(epoch)
    }

    /// Records a successful login.
    pub async fn record_login(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
        let changes = Changes::new()
            .set("last_login_at", s(crate::domain::ts::format(&now)))
            .only_if("attribute_exists(pk)");
        self.ddb
            .update_item()
            .table_name(&self.auth_table)
            .set_key(Some(key(user_pk(id), "USER")))
            .apply(changes)
            .send()
            .await
            .map_err(|e| super::write_error(e, "record a login"))?;
        Ok(())
    }

    /// Marks the user deleted and frees their email, in one transaction.
    pub async fn delete_user(&self, user: &User, now: DateTime<Utc>) -> StoreResult<()> {
        let stamp = s(crate::domain::ts::format(&now));
        let changes = Changes::new()
            .set("deleted_at", stamp.clone())
            .set("updated_at", stamp)
            .only_if("attribute_exists(pk) AND attribute_not_exists(#deleted_at)");
        let mark = Update::builder()
            .table_name(&self.auth_table)
            .set_key(Some(key(user_pk(user.id), "USER")))
            .apply(changes)
            .build()
            .context("Failed to build the user deletion")?;
        let release = Delete::builder()
            .table_name(&self.auth_table)
            .set_key(Some(key(email_pk(&user.email), "EMAIL")))
            .condition_expression("user_id = :id")
            .expression_attribute_values(":id", s(user.id.to_string()))
            .build()
            .context("Failed to build the email release")?;
        self.transact(
            vec![
                TransactWriteItem::builder().update(mark).build(),
                TransactWriteItem::builder().delete(release).build(),
            ],
            "delete a user",
        )
        .await
    }
}
