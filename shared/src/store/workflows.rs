//! Workflows and their immutable versions, in the registry table.
//!
//! A workflow is `WORKFLOW#<id>` / `WORKFLOW`, listed per project through gsi1; its versions
//! share its partition as `VERSION#<n, 10 digits>`, so they sort by number. The workflow item
//! carries `latest_version` (the highest number handed out) and `current_version` (the newest
//! released one). Every write to the workflow item bumps its `version`, so concurrent
//! changes serialise on it: version numbers come from one transaction that advances
//! `latest_version` only if it is still what the writer saw, and status changes recompute
//! `current_version` under the same kind of condition.
//!
//! Definitions are stored as JSON text: their nesting is the client's and could exceed
//! DynamoDB's 32 levels of nested attributes.

use anyhow::Context;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, TransactWriteItem, Update, WriteRequest,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::schema::GSI1;
use super::{cursor, item, key, n, record, s, Page, Store, StoreResult};
use crate::domain::ts;
use crate::workflow::Definition;

/// A workflow: a named, tagged DAG of steps in a project.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Workflow {
    /// Workflow id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The working definition.
    #[serde(with = "super::json_text")]
    pub definition: Definition,
    /// The newest released version, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// The highest version number created; 0 before the first.
    pub latest_version: u64,
    /// Who created it.
    pub created_by: Uuid,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Optimistic-concurrency version.
    pub version: u64,
}

/// Where a version is in its life: draft → released → deprecated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    /// Created, not yet usable by default.
    Draft,
    /// Usable; the newest released version is the workflow's `current_version`.
    Released,
    /// Retired.
    Deprecated,
}

impl VersionStatus {
    /// The status as the API and the store spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Released => "released",
            Self::Deprecated => "deprecated",
        }
    }
}

/// An immutable snapshot of a workflow's definition; only its status moves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkflowVersion {
    /// Version record id.
    pub id: Uuid,
    /// The workflow.
    pub workflow_id: Uuid,
    /// The workflow's project.
    pub project_id: Uuid,
    /// The version number: 1, 2, 3… without gaps.
    pub number: u64,
    /// Status.
    pub status: VersionStatus,
    /// The definition, frozen.
    #[serde(with = "super::json_text")]
    pub definition: Definition,
    /// Who created it (a user or an API key id).
    pub author_user_id: Uuid,
    /// Free-text note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// When it was released.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub released_at: Option<DateTime<Utc>>,
    /// When it was deprecated.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub deprecated_at: Option<DateTime<Utc>>,
}

/// Partition key of a workflow and its versions.
pub fn workflow_pk(id: Uuid) -> String {
    format!("WORKFLOW#{id}")
}

fn version_sk(number: u64) -> String {
    format!("VERSION#{number:010}")
}

fn project_workflows_gsi(project_id: Uuid) -> String {
    format!("{}#WORKFLOWS", super::projects::project_pk(project_id))
}

/// Most versions deleted per `BatchWriteItem`.
const BATCH_WRITE_MAX: usize = 25;

impl Store {
    /// Stores a new workflow.
    pub async fn create_workflow(&self, workflow: &Workflow) -> StoreResult<()> {
        let record = item(
            workflow,
            &[
                ("pk", workflow_pk(workflow.id)),
                ("sk", "WORKFLOW".into()),
                (GSI1.pk, project_workflows_gsi(workflow.project_id)),
                (GSI1.sk, workflow_pk(workflow.id)),
            ],
        )?;
        self.ddb
            .put_item()
            .table_name(&self.registry_table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| super::write_error(e, "store a workflow"))?;
        Ok(())
    }

    /// The workflow with `id`.
    pub async fn get_workflow(&self, id: Uuid) -> StoreResult<Option<Workflow>> {
        self.get_record(
            &self.registry_table,
            key(workflow_pk(id), "WORKFLOW"),
            "a workflow",
        )
        .await
    }

    /// A project's workflows, oldest first, optionally only those tagged `tag` (a filter:
    /// a page may hold fewer than `limit` items and still have a next one).
    pub async fn list_workflows(
        &self,
        project_id: Uuid,
        tag: Option<&str>,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Workflow>> {
        let mut query = self
            .index_query(
                &self.registry_table,
                &GSI1,
                project_workflows_gsi(project_id),
            )
            .limit(limit)
            .set_exclusive_start_key(start);
        if let Some(tag) = tag {
            query = query
                .filter_expression("contains(#tags, :tag)")
                .expression_attribute_names("#tags", "tags")
                .expression_attribute_values(":tag", s(tag));
        }
        self.query_page(query, "workflows").await
    }

    /// Writes the editable fields (name, description, tags, definition) of a workflow still
    /// at `expected_version`, and returns the stored result. `ConditionFailed` if it changed
    /// or is gone.
    pub async fn update_workflow(
        &self,
        updated: &Workflow,
        expected_version: u64,
    ) -> StoreResult<Workflow> {
        let definition = serde_json::to_string(&updated.definition)
            .context("Failed to serialise a definition")?;
        let tags = AttributeValue::L(updated.tags.iter().map(s).collect());
        let mut expression = "SET #name = :name, #tags = :tags, #definition = :definition, \
                              updated_at = :now, version = :version"
            .to_owned();
        let mut write = self
            .ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(workflow_pk(updated.id), "WORKFLOW")))
            .condition_expression("attribute_exists(pk) AND version = :expected")
            .expression_attribute_names("#name", "name")
            .expression_attribute_names("#tags", "tags")
            .expression_attribute_names("#definition", "definition")
            .expression_attribute_values(":name", s(&updated.name))
            .expression_attribute_values(":tags", tags)
            .expression_attribute_values(":definition", s(definition))
            .expression_attribute_values(":now", s(ts::format(&updated.updated_at)))
            .expression_attribute_values(":version", n(expected_version + 1))
            .expression_attribute_values(":expected", n(expected_version))
            .return_values(ReturnValue::AllNew);
        match &updated.description {
            Some(description) => {
                expression.push_str(", description = :description");
                write = write.expression_attribute_values(":description", s(description));
            }
            None => expression.push_str(" REMOVE description"),
        }
        let out = write
            .update_expression(expression)
            .send()
            .await
            .map_err(|e| super::write_error(e, "update a workflow"))?;
        let attributes = out
            .attributes
            .ok_or_else(|| anyhow::anyhow!("DynamoDB returned no attributes for an update"))?;
        Ok(record(attributes)?)
    }

    /// Deletes a workflow (if still at `expected_version`, when given) and then its versions
    /// in batches. `ConditionFailed` if it is gone or changed. The versions go after the
    /// workflow: a crash in between leaves versions of a missing workflow, which no route
    /// reaches.
    pub async fn delete_workflow(
        &self,
        workflow: &Workflow,
        expected_version: Option<u64>,
    ) -> StoreResult<()> {
        let mut delete = self
            .ddb
            .delete_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(workflow_pk(workflow.id), "WORKFLOW")))
            .condition_expression("attribute_exists(pk)");
        if let Some(expected) = expected_version {
            delete = delete
                .condition_expression("attribute_exists(pk) AND version = :expected")
                .expression_attribute_values(":expected", n(expected));
        }
        delete
            .send()
            .await
            .map_err(|e| super::write_error(e, "delete a workflow"))?;
        self.delete_versions(workflow.id).await
    }

    /// Deletes every version of a workflow, page by page.
    async fn delete_versions(&self, workflow_id: Uuid) -> StoreResult<()> {
        let mut start = None;
        loop {
            let out = self
                .ddb
                .query()
                .table_name(&self.registry_table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :version)")
                .expression_attribute_values(":pk", s(workflow_pk(workflow_id)))
                .expression_attribute_values(":version", s("VERSION#"))
                .projection_expression("pk, sk")
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .context("Failed to list the versions to delete")?;
            let keys = out.items.unwrap_or_default();
            for chunk in keys.chunks(BATCH_WRITE_MAX) {
                let mut pending = chunk
                    .iter()
                    .map(|k| {
                        let delete = aws_sdk_dynamodb::types::DeleteRequest::builder()
                            .set_key(Some(k.clone()))
                            .build()
                            .context("Failed to build a version deletion")?;
                        Ok(WriteRequest::builder().delete_request(delete).build())
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                for _attempt in 0..5 {
                    if pending.is_empty() {
                        break;
                    }
                    let out = self
                        .ddb
                        .batch_write_item()
                        .request_items(&self.registry_table, std::mem::take(&mut pending))
                        .send()
                        .await
                        .context("Failed to delete workflow versions")?;
                    pending = out
                        .unprocessed_items
                        .and_then(|mut u| u.remove(&self.registry_table))
                        .unwrap_or_default();
                }
                if !pending.is_empty() {
                    return Err(anyhow::anyhow!(
                        "DynamoDB kept leaving workflow versions undeleted"
                    )
                    .into());
                }
            }
            match out.last_evaluated_key {
                Some(next) => start = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Stores `version` as number `seen.latest_version + 1`, advancing the workflow's
    /// `latest_version` in the same transaction. With `same_definition`, the workflow must
    /// also still be at `seen.version`, so the copied definition is the current one.
    /// Item 0 failing (or a conflict) means another writer got there first.
    pub async fn create_workflow_version(
        &self,
        seen: &Workflow,
        version: &WorkflowVersion,
        same_definition: bool,
    ) -> StoreResult<()> {
        let mut condition = "latest_version = :seen".to_owned();
        if same_definition {
            condition.push_str(" AND version = :expected");
        }
        let mut advance = Update::builder()
            .table_name(&self.registry_table)
            .set_key(Some(key(workflow_pk(seen.id), "WORKFLOW")))
            .update_expression(
                "SET latest_version = latest_version + :one, updated_at = :now ADD version :one",
            )
            .condition_expression(condition)
            .expression_attribute_values(":seen", n(seen.latest_version))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", s(ts::format(&version.created_at)));
        if same_definition {
            advance = advance.expression_attribute_values(":expected", n(seen.version));
        }
        let record = item(
            version,
            &[
                ("pk", workflow_pk(version.workflow_id)),
                ("sk", version_sk(version.number)),
            ],
        )?;
        let put = Put::builder()
            .table_name(&self.registry_table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .context("Failed to build the version put")?;
        self.transact(
            vec![
                TransactWriteItem::builder()
                    .update(
                        advance
                            .build()
                            .context("Failed to build the version counter")?,
                    )
                    .build(),
                TransactWriteItem::builder().put(put).build(),
            ],
            "create a workflow version",
        )
        .await
    }

    /// Version `number` of a workflow.
    pub async fn get_workflow_version(
        &self,
        workflow_id: Uuid,
        number: u64,
    ) -> StoreResult<Option<WorkflowVersion>> {
        self.get_record(
            &self.registry_table,
            key(workflow_pk(workflow_id), version_sk(number)),
            "a workflow version",
        )
        .await
    }

    /// A workflow's versions, lowest number first.
    pub async fn list_workflow_versions(
        &self,
        workflow_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<WorkflowVersion>> {
        let query = self
            .ddb
            .query()
            .table_name(&self.registry_table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :version)")
            .expression_attribute_values(":pk", s(workflow_pk(workflow_id)))
            .expression_attribute_values(":version", s("VERSION#"))
            .consistent_read(true)
            .limit(limit)
            .set_exclusive_start_key(start);
        self.query_page(query, "workflow versions").await
    }

    /// The highest-numbered released version of a workflow other than `except`.
    pub async fn newest_released_version(
        &self,
        workflow_id: Uuid,
        except: u64,
    ) -> StoreResult<Option<u64>> {
        let mut start = None;
        loop {
            let out = self
                .ddb
                .query()
                .table_name(&self.registry_table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :version)")
                .filter_expression("#status = :released AND #number <> :except")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":pk", s(workflow_pk(workflow_id)))
                .expression_attribute_values(":version", s("VERSION#"))
                .expression_attribute_values(":released", s(VersionStatus::Released.as_str()))
                .expression_attribute_values(":except", n(except))
                .projection_expression("#number")
                .expression_attribute_names("#number", "number")
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(100)
                .set_exclusive_start_key(start)
                .send()
                .await
                .context("Failed to find the newest released version")?;
            let found = out.items.unwrap_or_default().into_iter().find_map(|item| {
                match item.get("number") {
                    Some(AttributeValue::N(number)) => number.parse::<u64>().ok(),
                    _ => None,
                }
            });
            match (found, out.last_evaluated_key) {
                (Some(number), _) => return Ok(Some(number)),
                (None, Some(next)) => start = Some(next),
                (None, None) => return Ok(None),
            }
        }
    }

    /// Moves `version` from its current status to `to` and sets the workflow's
    /// `current_version` to `current` (`None` removes it), if the workflow is still at
    /// `seen.version`. Item 0 failing means the version moved meanwhile; item 1 failing
    /// (or a conflict) means the workflow changed.
    pub async fn set_workflow_version_status(
        &self,
        seen: &Workflow,
        version: &WorkflowVersion,
        to: VersionStatus,
        current: Option<u64>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let stamp = match to {
            VersionStatus::Released => "released_at",
            VersionStatus::Deprecated => "deprecated_at",
            VersionStatus::Draft => {
                return Err(anyhow::anyhow!("a version never moves back to draft").into())
            }
        };
        let move_version = Update::builder()
            .table_name(&self.registry_table)
            .set_key(Some(key(workflow_pk(seen.id), version_sk(version.number))))
            .update_expression(format!("SET #status = :to, {stamp} = :now"))
            .condition_expression("#status = :from")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(":from", s(version.status.as_str()))
            .expression_attribute_values(":now", s(ts::format(&now)))
            .build()
            .context("Failed to build the version status change")?;
        let set_current = match current {
            Some(number) => (
                "SET current_version = :current, updated_at = :now ADD version :one",
                Some(number),
            ),
            None => (
                "SET updated_at = :now REMOVE current_version ADD version :one",
                None,
            ),
        };
        let mut point = Update::builder()
            .table_name(&self.registry_table)
            .set_key(Some(key(workflow_pk(seen.id), "WORKFLOW")))
            .update_expression(set_current.0)
            .condition_expression("version = :expected")
            .expression_attribute_values(":expected", n(seen.version))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", s(ts::format(&now)));
        if let Some(number) = set_current.1 {
            point = point.expression_attribute_values(":current", n(number));
        }
        self.transact(
            vec![
                TransactWriteItem::builder().update(move_version).build(),
                TransactWriteItem::builder()
                    .update(
                        point
                            .build()
                            .context("Failed to build the current version change")?,
                    )
                    .build(),
            ],
            "change a workflow version's status",
        )
        .await
    }
}
