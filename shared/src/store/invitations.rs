//! Pending invitations to join a project, in the projects table.
//!
//! Inviting an email never tells the inviter whether it has an account: every invitation is
//! stored the same way and becomes a membership when the email's owner registers or logs in.
//! An invitation expires through `ttl` (and is ignored once past it, before the sweep).

use anyhow::Context;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::projects::{project_pk, Membership};
use super::schema::GSI1;
use super::{cursor, item, key, n, s, Page, Store, StoreResult};
use crate::domain::{ts, Email, Role};

/// How long an invitation waits for its email's owner.
pub const INVITATION_TTL: chrono::Duration = chrono::Duration::days(14);

/// Most invitations accepted at one login; the rest wait for the next one, so nobody can
/// slow someone's login down by inviting them to many projects.
pub const ACCEPT_PER_LOGIN: i32 = 25;

/// An invitation of an email to a project.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invitation {
    /// The project.
    pub project_id: Uuid,
    /// The invited email.
    pub email: Email,
    /// The role the membership will have.
    pub role: Role,
    /// Who invited.
    pub invited_by: Uuid,
    /// When.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// When it lapses.
    #[serde(with = "ts")]
    pub expires_at: DateTime<Utc>,
}

fn invite_sk(email: &Email) -> String {
    format!("INVITE#{email}")
}

fn email_gsi(email: &Email) -> String {
    format!("INVITE#{email}")
}

/// What accepting one invitation did.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The user is now a member.
    Joined,
    /// Nothing to join (already a member, or the project is gone); the invitation is gone.
    Dropped,
}

impl Store {
    /// Stores an invitation. `ConditionFailed` if the email already has a live invitation to
    /// this project.
    pub async fn create_invitation(&self, invitation: &Invitation) -> StoreResult<()> {
        let mut record = item(
            invitation,
            &[
                ("pk", project_pk(invitation.project_id)),
                ("sk", invite_sk(&invitation.email)),
                (GSI1.pk, email_gsi(&invitation.email)),
                (GSI1.sk, project_pk(invitation.project_id)),
            ],
        )?;
        record.insert("ttl".into(), n(invitation.expires_at.timestamp()));
        self.ddb
            .put_item()
            .table_name(&self.projects_table)
            .set_item(Some(record))
            // A lapsed invitation the TTL sweep has not removed yet may be replaced.
            .condition_expression("attribute_not_exists(pk) OR #ttl <= :now")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":now", n(invitation.created_at.timestamp()))
            .send()
            .await
            .map_err(|e| super::write_error(e, "store an invitation"))?;
        Ok(())
    }

    /// A project's live invitations, in email order.
    pub async fn list_invitations(
        &self,
        project_id: Uuid,
        now: DateTime<Utc>,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Invitation>> {
        let query = self
            .ddb
            .query()
            .table_name(&self.projects_table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :invite)")
            .filter_expression("#ttl > :now")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":pk", s(project_pk(project_id)))
            .expression_attribute_values(":invite", s("INVITE#"))
            .expression_attribute_values(":now", n(now.timestamp()))
            .limit(limit)
            .set_exclusive_start_key(start);
        self.query_page(query, "invitations").await
    }

    /// Withdraws an invitation. `ConditionFailed` if there is none.
    pub async fn delete_invitation(&self, project_id: Uuid, email: &Email) -> StoreResult<()> {
        self.ddb
            .delete_item()
            .table_name(&self.projects_table)
            .set_key(Some(key(project_pk(project_id), invite_sk(email))))
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .map_err(|e| super::write_error(e, "withdraw an invitation"))?;
        Ok(())
    }

    /// The live invitations of `email`, at most [`ACCEPT_PER_LOGIN`].
    pub async fn invitations_for(
        &self,
        email: &Email,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Invitation>> {
        let query = self
            .index_query(&self.projects_table, &GSI1, email_gsi(email))
            .limit(ACCEPT_PER_LOGIN);
        let page: Page<Invitation> = self.query_page(query, "an email's invitations").await?;
        Ok(page
            .items
            .into_iter()
            .filter(|invitation| invitation.expires_at > now)
            .collect())
    }

    /// Turns an invitation into `membership` in one transaction: the invitation goes, the
    /// membership is added and the project's owner count follows. If the user is already a
    /// member or the project is gone, only the invitation goes.
    pub async fn accept_invitation(
        &self,
        invitation: &Invitation,
        membership: &Membership,
    ) -> StoreResult<Accepted> {
        let remove = || -> anyhow::Result<TransactWriteItem> {
            Ok(TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.projects_table)
                        .set_key(Some(key(
                            project_pk(invitation.project_id),
                            invite_sk(&invitation.email),
                        )))
                        .condition_expression("attribute_exists(pk)")
                        .build()
                        .context("Failed to build the invitation removal")?,
                )
                .build())
        };
        let join = TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.projects_table)
                    .set_item(Some(self.membership_item(membership)?))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .context("Failed to build the membership put")?,
            )
            .build();
        let owners = self.owner_count_change(
            membership.project_id,
            i32::from(membership.role == Role::Owner),
        )?;
        match self
            .transact(vec![remove()?, join, owners], "accept an invitation")
            .await
        {
            Ok(()) => Ok(Accepted::Joined),
            // Already a member, or the project is gone: the invitation has nothing to do.
            Err(err) if err.failed_at(1) || err.failed_at(2) => {
                match self.transact(vec![remove()?], "drop an invitation").await {
                    Ok(()) => Ok(Accepted::Dropped),
                    Err(err) if err.failed_at(0) => Ok(Accepted::Dropped),
                    Err(err) => Err(err),
                }
            }
            // Someone else accepted or withdrew it meanwhile.
            Err(err) if err.failed_at(0) => Ok(Accepted::Dropped),
            Err(err) => Err(err),
        }
    }
}
