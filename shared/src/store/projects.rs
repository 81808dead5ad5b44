//! Projects, their slugs and their memberships, in the projects table.
//!
//! A slug is unique among the projects one user created, not across the deployment: a
//! deployment-wide claim would tell anyone who tries a slug that another tenant holds it.
//! The claim's key therefore carries the creator's id (`SLUG#<creator>#<slug>`). Slugs are
//! never used to find a project; projects are addressed by id.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, KeysAndAttributes, Put, TransactWriteItem, Update,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::schema::GSI1;
use super::{cursor, item, key, n, record, s, Item, Page, Store, StoreResult};
use crate::domain::{ts, Role};

/// A project: the tenant boundary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Project {
    /// Project id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Slug, unique among the projects of its creator.
    pub slug: String,
    /// Free-text description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The creator.
    pub owner_user_id: Uuid,
    /// Project settings (a JSON object).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Set when the project was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Who deleted it; its unfinished runs are cancelled in their name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<Uuid>,
    /// Optimistic-concurrency version, bumped by every change.
    pub version: u64,
    /// Number of owners; kept so the last owner can never be removed.
    pub owner_count: u32,
}

/// A user's membership of a project.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Membership {
    /// The project.
    pub project_id: Uuid,
    /// The member.
    pub user_id: Uuid,
    /// Their role.
    pub role: Role,
    /// Their email when they were added.
    pub email: String,
    /// Their name when they were added.
    pub name: String,
    /// When they joined.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Optimistic-concurrency version.
    pub version: u64,
}

/// Partition key of a project and its members.
pub fn project_pk(id: Uuid) -> String {
    format!("PROJECT#{id}")
}

/// The gsi1 partition of deleted projects whose teardown is not finished.
const TEARDOWN_GSI: &str = "TEARDOWN";

fn slug_pk(creator: Uuid, slug: &str) -> String {
    format!("SLUG#{creator}#{slug}")
}

fn member_sk(user_id: Uuid) -> String {
    format!("MEMBER#{user_id}")
}

fn user_gsi(user_id: Uuid) -> String {
    format!("USER#{user_id}")
}

#[derive(Serialize, Deserialize)]
struct SlugClaim {
    project_id: Uuid,
}

impl Store {
    fn put(&self, item: Item, condition: &str, what: &str) -> anyhow::Result<TransactWriteItem> {
        Ok(TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.projects_table)
                    .set_item(Some(item))
                    .condition_expression(condition)
                    .build()
                    .with_context(|| format!("Failed to build {what}"))?,
            )
            .build())
    }

    fn slug_claim(&self, project: &Project) -> anyhow::Result<TransactWriteItem> {
        let claim = item(
            &SlugClaim {
                project_id: project.id,
            },
            &[
                ("pk", slug_pk(project.owner_user_id, &project.slug)),
                ("sk", "SLUG".into()),
            ],
        )?;
        self.put(claim, "attribute_not_exists(pk)", "the slug claim")
    }

    /// Deletes the project's claim on `slug`. A claim that is missing is no error: projects
    /// created before slugs were scoped to their creator hold none under this key.
    fn slug_release(&self, project: &Project, slug: &str) -> anyhow::Result<TransactWriteItem> {
        Ok(TransactWriteItem::builder()
            .delete(
                Delete::builder()
                    .table_name(&self.projects_table)
                    .set_key(Some(key(slug_pk(project.owner_user_id, slug), "SLUG")))
                    .condition_expression("attribute_not_exists(pk) OR project_id = :id")
                    .expression_attribute_values(":id", s(project.id.to_string()))
                    .build()
                    .context("Failed to build the slug release")?,
            )
            .build())
    }

    pub(super) fn membership_item(&self, m: &Membership) -> anyhow::Result<Item> {
        item(
            m,
            &[
                ("pk", project_pk(m.project_id)),
                ("sk", member_sk(m.user_id)),
                (GSI1.pk, user_gsi(m.user_id)),
                (GSI1.sk, project_pk(m.project_id)),
            ],
        )
    }

    /// Adjusts the project's owner count; a decrement requires another owner to remain.
    pub(super) fn owner_count_change(
        &self,
        project_id: Uuid,
        delta: i32,
    ) -> anyhow::Result<TransactWriteItem> {
        let condition = if delta < 0 {
            "attribute_not_exists(deleted_at) AND owner_count > :one"
        } else {
            "attribute_not_exists(deleted_at) AND attribute_exists(pk)"
        };
        let mut update = Update::builder()
            .table_name(&self.projects_table)
            .set_key(Some(key(project_pk(project_id), "PROJECT")))
            .update_expression("ADD owner_count :delta")
            .condition_expression(condition)
            .expression_attribute_values(":delta", n(delta));
        if delta < 0 {
            update = update.expression_attribute_values(":one", n(1));
        }
        Ok(TransactWriteItem::builder()
            .update(
                update
                    .build()
                    .context("Failed to build the owner count change")?,
            )
            .build())
    }

    /// Creates a project, claims its slug and makes its creator the owner, in one
    /// transaction. Item 0 failing means the creator already has a project with this slug.
    pub async fn create_project(&self, project: &Project, owner: &Membership) -> StoreResult<()> {
        let project_item = item(
            project,
            &[("pk", project_pk(project.id)), ("sk", "PROJECT".into())],
        )?;
        self.transact(
            vec![
                self.slug_claim(project)?,
                self.put(project_item, "attribute_not_exists(pk)", "the project put")?,
                self.put(
                    self.membership_item(owner)?,
                    "attribute_not_exists(pk)",
                    "the owner membership",
                )?,
            ],
            "create a project",
        )
        .await
    }

    /// The project and the user's membership of it, read together in one request.
    pub async fn project_and_membership(
        &self,
        project_id: Uuid,
        user_id: Uuid,
    ) -> StoreResult<(Option<Project>, Option<Membership>)> {
        let keys = KeysAndAttributes::builder()
            .keys(key(project_pk(project_id), "PROJECT"))
            .keys(key(project_pk(project_id), member_sk(user_id)))
            .consistent_read(true)
            .build()
            .context("Failed to build the project read")?;
        let out = self
            .ddb
            .batch_get_item()
            .request_items(&self.projects_table, keys)
            .send()
            .await
            .context("Failed to read a project and membership")?;
        if out.unprocessed_keys().is_some_and(|k| !k.is_empty()) {
            return Err(
                anyhow::anyhow!("DynamoDB left keys unprocessed while reading a project").into(),
            );
        }
        let mut project = None;
        let mut membership = None;
        for found in out
            .responses
            .unwrap_or_default()
            .remove(&self.projects_table)
            .unwrap_or_default()
        {
            match found.get("sk") {
                Some(AttributeValue::S(sk)) if sk == "PROJECT" => project = Some(record(found)?),
                _ => membership = Some(record(found)?),
            }
        }
        Ok((project, membership))
    }

    /// The project with `id`, including deleted ones.
    pub async fn get_project(&self, id: Uuid) -> StoreResult<Option<Project>> {
        self.get_record(
            &self.projects_table,
            key(project_pk(id), "PROJECT"),
            "a project",
        )
        .await
    }

    /// Projects by id, in the order given; missing ones are left out.
    pub async fn get_projects(&self, ids: &[Uuid]) -> StoreResult<Vec<Project>> {
        let keys = ids
            .iter()
            .map(|id| key(project_pk(*id), "PROJECT"))
            .collect();
        let mut found: HashMap<Uuid, Project> = self
            .batch_get::<Project>(&self.projects_table, keys, "projects")
            .await?
            .into_iter()
            .map(|project| (project.id, project))
            .collect();
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// The user's memberships, oldest project first.
    pub async fn memberships_of_user(
        &self,
        user_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Membership>> {
        let query = self
            .index_query(&self.projects_table, &GSI1, user_gsi(user_id))
            .limit(limit)
            .set_exclusive_start_key(start);
        self.query_page(query, "a user's memberships").await
    }

    /// Writes a changed project if nobody changed it since `expected_version`, swapping its
    /// slug claim when the slug changed. With a slug change, item 0 failing means the
    /// project's creator already has a project with the new slug, and item 2 failing means a
    /// stale version.
    pub async fn update_project(
        &self,
        updated: &Project,
        expected_version: u64,
        old_slug: &str,
    ) -> StoreResult<()> {
        // Only the editable fields are written, so concurrent owner-count changes survive.
        let settings: AttributeValue = serde_dynamo::to_attribute_value(&updated.settings)
            .context("Failed to serialise project settings")?;
        let mut expression =
            "SET #name = :name, slug = :slug, settings = :settings, updated_at = :now, version = :version"
                .to_owned();
        let mut write = Update::builder()
            .table_name(&self.projects_table)
            .set_key(Some(key(project_pk(updated.id), "PROJECT")))
            .condition_expression("version = :expected AND attribute_not_exists(deleted_at)")
            .expression_attribute_names("#name", "name")
            .expression_attribute_values(":name", s(&updated.name))
            .expression_attribute_values(":slug", s(&updated.slug))
            .expression_attribute_values(":settings", settings)
            .expression_attribute_values(":now", s(ts::format(&updated.updated_at)))
            .expression_attribute_values(":version", n(updated.version))
            .expression_attribute_values(":expected", n(expected_version));
        match &updated.description {
            Some(description) => {
                expression.push_str(", description = :description");
                write = write.expression_attribute_values(":description", s(description));
            }
            None => expression.push_str(" REMOVE description"),
        }
        let write = write
            .update_expression(expression)
            .build()
            .context("Failed to build the project update")?;
        if updated.slug == old_slug {
            return self
                .transact(
                    vec![TransactWriteItem::builder().update(write).build()],
                    "update a project",
                )
                .await;
        }
        self.transact(
            vec![
                self.slug_claim(updated)?,
                self.slug_release(updated, old_slug)?,
                TransactWriteItem::builder().update(write).build(),
            ],
            "update a project and its slug",
        )
        .await
    }

    /// Soft-deletes a project, frees its slug and lists it for teardown
    /// ([`Store::projects_to_tear_down`]) until [`Store::torn_down`].
    pub async fn delete_project(
        &self,
        project: &Project,
        by: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mark = Update::builder()
            .table_name(&self.projects_table)
            .set_key(Some(key(project_pk(project.id), "PROJECT")))
            .update_expression(
                "SET deleted_at = :now, updated_at = :now, deleted_by = :by, \
                 #gsi1pk = :teardown, #gsi1sk = :teardown_sk ADD version :one",
            )
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(deleted_at)")
            .expression_attribute_names("#gsi1pk", GSI1.pk)
            .expression_attribute_names("#gsi1sk", GSI1.sk)
            .expression_attribute_values(":now", s(ts::format(&now)))
            .expression_attribute_values(":by", s(by.to_string()))
            .expression_attribute_values(":teardown", s(TEARDOWN_GSI))
            .expression_attribute_values(
                ":teardown_sk",
                s(format!("{}#{}", ts::format(&now), project.id)),
            )
            .expression_attribute_values(":one", n(1))
            .build()
            .context("Failed to build the project deletion")?;
        self.transact(
            vec![
                TransactWriteItem::builder().update(mark).build(),
                self.slug_release(project, &project.slug)?,
            ],
            "delete a project",
        )
        .await
    }

    /// Deleted projects whose teardown is not finished, longest deleted first.
    pub async fn projects_to_tear_down(&self, limit: i32) -> StoreResult<Vec<Project>> {
        let query = self
            .index_query(&self.projects_table, &GSI1, TEARDOWN_GSI)
            .limit(limit);
        Ok(self.query_page(query, "projects to tear down").await?.items)
    }

    /// Takes a deleted project off the teardown list: its runs, keys and secrets are done.
    pub async fn torn_down(&self, project_id: Uuid) -> StoreResult<()> {
        self.ddb
            .update_item()
            .table_name(&self.projects_table)
            .set_key(Some(key(project_pk(project_id), "PROJECT")))
            .update_expression("REMOVE #gsi1pk, #gsi1sk")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#gsi1pk", GSI1.pk)
            .expression_attribute_names("#gsi1sk", GSI1.sk)
            .send()
            .await
            .map_err(|e| super::write_error(e, "finish a project's teardown"))?;
        Ok(())
    }

    /// Members of a project, in user-id order.
    pub async fn list_members(
        &self,
        project_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Membership>> {
        let query = self
            .ddb
            .query()
            .table_name(&self.projects_table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :member)")
            .expression_attribute_values(":pk", s(project_pk(project_id)))
            .expression_attribute_values(":member", s("MEMBER#"))
            .limit(limit)
            .set_exclusive_start_key(start);
        self.query_page(query, "members").await
    }

    /// One membership.
    pub async fn get_member(
        &self,
        project_id: Uuid,
        user_id: Uuid,
    ) -> StoreResult<Option<Membership>> {
        self.get_record(
            &self.projects_table,
            key(project_pk(project_id), member_sk(user_id)),
            "a membership",
        )
        .await
    }

    /// Adds a member to a live project. Item 0 failing means they are already a member;
    /// item 1 failing means the project is gone.
    pub async fn add_member(&self, m: &Membership) -> StoreResult<()> {
        let delta = i32::from(m.role == Role::Owner);
        self.transact(
            vec![
                self.put(
                    self.membership_item(m)?,
                    "attribute_not_exists(pk)",
                    "the membership put",
                )?,
                self.owner_count_change(m.project_id, delta)?,
            ],
            "add a member",
        )
        .await
    }

    /// Changes a member's role if the membership is still at `old.version`, keeping the
    /// owner count right. Item 0 failing means a stale version; item 1 failing means the
    /// last owner would be demoted.
    pub async fn change_role(
        &self,
        old: &Membership,
        role: Role,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let update = Update::builder()
            .table_name(&self.projects_table)
            .set_key(Some(key(
                project_pk(old.project_id),
                member_sk(old.user_id),
            )))
            .update_expression("SET #role = :role, updated_at = :now ADD version :one")
            .condition_expression("version = :expected")
            .expression_attribute_names("#role", "role")
            .expression_attribute_values(":role", s(role.as_str()))
            .expression_attribute_values(":now", s(ts::format(&now)))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":expected", n(old.version))
            .build()
            .context("Failed to build the role change")?;
        let delta = i32::from(role == Role::Owner) - i32::from(old.role == Role::Owner);
        self.transact(
            vec![
                TransactWriteItem::builder().update(update).build(),
                self.owner_count_change(old.project_id, delta)?,
            ],
            "change a member's role",
        )
        .await
    }

    /// Removes a member still at `m.version`. Item 1 failing means they are the last owner.
    pub async fn remove_member(&self, m: &Membership) -> StoreResult<()> {
        let delete = Delete::builder()
            .table_name(&self.projects_table)
            .set_key(Some(key(project_pk(m.project_id), member_sk(m.user_id))))
            .condition_expression("version = :expected")
            .expression_attribute_values(":expected", n(m.version))
            .build()
            .context("Failed to build the membership removal")?;
        self.transact(
            vec![
                TransactWriteItem::builder().delete(delete).build(),
                self.owner_count_change(m.project_id, -i32::from(m.role == Role::Owner))?,
            ],
            "remove a member",
        )
        .await
    }
}
