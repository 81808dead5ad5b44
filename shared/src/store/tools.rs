//! Tools, in the registry table. Credentials live in Secrets Manager, never here: a record
//! only says which kind of credentials the tool holds.
//!
//! | pk | sk | gsi1pk / gsi1sk | gsi2pk / gsi2sk |
//! |---|---|---|---|
//! | `TOOL#<id>` | `TOOL` | `PROJECT#<p>#TOOLS` / `TOOL#<id>` | `PROJECT#<p>#TOOLS#ENV#<env>` / `TOOL#<id>` |

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::schema::{GSI1, GSI2};
use super::{cursor, item, key, n, s, Page, Store, StoreResult};
use crate::domain::{ts, Env};
use crate::tool::{AuthType, HttpConfig, ToolConfig, ToolKind};
use crate::validate::DEFAULT_RELEASE;

/// A registered tool.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tool {
    /// Tool id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Name.
    pub name: String,
    /// What the tool talks to.
    pub kind: ToolKind,
    /// Environment.
    pub env: Env,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Optimistic-concurrency version.
    pub version: u64,
    /// Who provides what the tool talks to, e.g. `salesforce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// How the tool authenticates.
    #[serde(default)]
    pub auth_type: AuthType,
    /// Scopes the tool needs.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Calls allowed per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_min: Option<u32>,
    /// Kind-specific configuration (validated; an http tool's has its defaults filled in).
    #[serde(default)]
    pub config: ToolConfig,
    /// What the tool does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The team or person responsible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Semantic version of the tool's contract, e.g. `1.2.0`.
    #[serde(default = "default_release")]
    pub release: String,
    /// What changed in this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changelog: Option<String>,
    /// Whether the tool should no longer be used.
    #[serde(default)]
    pub deprecated: bool,
    /// A free classification, e.g. `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The kind of credentials stored in Secrets Manager (`apikey` or `oauth`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_type: Option<AuthType>,
    /// When a call last failed; maintained by the engine.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub last_error_at: Option<DateTime<Utc>>,
}

fn default_release() -> String {
    DEFAULT_RELEASE.to_owned()
}

/// Attributes a tool update may remove (its optional fields).
const OPTIONAL_ATTRIBUTES: [&str; 7] = [
    "provider",
    "rate_limit_per_min",
    "description",
    "owner",
    "changelog",
    "category",
    "credential_type",
];

/// Attributes an update never writes: identity, and what other writers maintain.
const FIXED_ATTRIBUTES: [&str; 4] = ["id", "project_id", "created_at", "last_error_at"];

impl Tool {
    /// Whether credentials are stored for the tool.
    pub fn has_credentials(&self) -> bool {
        self.credential_type.is_some()
    }

    /// The typed config of an http tool; `None` for other kinds.
    pub fn http_config(&self) -> Option<&HttpConfig> {
        (self.kind == ToolKind::Http)
            .then(|| self.config.http())
            .flatten()
    }

    /// Path of the tool's credentials in the [`SecretStore`](super::secrets::SecretStore).
    pub fn credentials_path(&self) -> String {
        super::secrets::path::tool_credentials(self.id)
    }
}

/// Partition key of a tool.
pub fn tool_pk(id: Uuid) -> String {
    format!("TOOL#{id}")
}

fn project_tools_gsi(project_id: Uuid) -> String {
    format!("{}#TOOLS", super::projects::project_pk(project_id))
}

fn project_env_tools_gsi(project_id: Uuid, env: Env) -> String {
    format!("{}#ENV#{env}", project_tools_gsi(project_id))
}

impl Store {
    /// Stores a new tool with its index keys.
    pub async fn create_tool(&self, tool: &Tool) -> StoreResult<()> {
        let record = item(
            tool,
            &[
                ("pk", tool_pk(tool.id)),
                ("sk", "TOOL".into()),
                (GSI1.pk, project_tools_gsi(tool.project_id)),
                (GSI1.sk, tool_pk(tool.id)),
                (GSI2.pk, project_env_tools_gsi(tool.project_id, tool.env)),
                (GSI2.sk, tool_pk(tool.id)),
            ],
        )?;
        self.ddb
            .put_item()
            .table_name(&self.registry_table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| super::write_error(e, "store a tool"))?;
        Ok(())
    }

    /// The tool with `id`.
    pub async fn get_tool(&self, id: Uuid) -> StoreResult<Option<Tool>> {
        self.get_record(&self.registry_table, key(tool_pk(id), "TOOL"), "a tool")
            .await
    }

    /// The tools among `ids` that exist (in any project; callers check the project), in the
    /// order of `ids`.
    pub async fn get_tools(&self, ids: &[Uuid]) -> StoreResult<Vec<Tool>> {
        let keys = ids.iter().map(|id| key(tool_pk(*id), "TOOL")).collect();
        let mut found: HashMap<Uuid, Tool> = self
            .batch_get::<Tool>(&self.registry_table, keys, "tools")
            .await?
            .into_iter()
            .map(|tool| (tool.id, tool))
            .collect();
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// A page of a project's tools, oldest first: all of them through `gsi1`, or those of one
    /// environment through `gsi2`.
    ///
    /// `kind` is a `FilterExpression` on that `Query`: DynamoDB applies it after reading
    /// `limit` items, so a page may hold fewer items than `limit` (even none) while
    /// `next` still continues the list. Kinds are few and tools per project are not
    /// many, so an index per kind would cost more than it saves.
    pub async fn list_tools(
        &self,
        project_id: Uuid,
        env: Option<Env>,
        kind: Option<ToolKind>,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Tool>> {
        let (index, partition) = match env {
            Some(env) => (GSI2, project_env_tools_gsi(project_id, env)),
            None => (GSI1, project_tools_gsi(project_id)),
        };
        let mut query = self
            .index_query(&self.registry_table, &index, partition)
            .limit(limit)
            .set_exclusive_start_key(start);
        if let Some(kind) = kind {
            query = query
                .filter_expression("#kind = :kind")
                .expression_attribute_names("#kind", "kind")
                .expression_attribute_values(":kind", s(kind.as_str()));
        }
        self.query_page(query, "tools").await
    }

    /// Writes a changed tool if its version is still `expected_version`; `ConditionFailed`
    /// otherwise (changed or deleted meanwhile). Only the editable attributes are written
    /// (plus the environment index key), so what other writers maintain, such as
    /// `last_error_at`, survives.
    pub async fn update_tool(&self, updated: &Tool, expected_version: u64) -> StoreResult<()> {
        let mut attributes: super::Item =
            serde_dynamo::to_item(updated).context("Failed to serialise a tool into an item")?;
        for fixed in FIXED_ATTRIBUTES {
            attributes.remove(fixed);
        }
        attributes.insert(
            GSI2.pk.to_owned(),
            s(project_env_tools_gsi(updated.project_id, updated.env)),
        );
        let removed: Vec<&str> = OPTIONAL_ATTRIBUTES
            .into_iter()
            .filter(|name| !attributes.contains_key(*name))
            .collect();
        let mut names = HashMap::from([("#expected_version".to_owned(), "version".to_owned())]);
        let mut values: HashMap<String, AttributeValue> =
            HashMap::from([(":expected_version".to_owned(), n(expected_version))]);
        let mut sets = Vec::with_capacity(attributes.len());
        for (i, (name, value)) in attributes.into_iter().enumerate() {
            sets.push(format!("#s{i} = :s{i}"));
            names.insert(format!("#s{i}"), name);
            values.insert(format!(":s{i}"), value);
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !removed.is_empty() {
            let mut removes = Vec::with_capacity(removed.len());
            for (i, name) in removed.into_iter().enumerate() {
                removes.push(format!("#r{i}"));
                names.insert(format!("#r{i}"), name.to_owned());
            }
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        self.ddb
            .update_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(tool_pk(updated.id), "TOOL")))
            .update_expression(expression)
            .condition_expression("#expected_version = :expected_version")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|e| super::write_error(e, "update a tool"))?;
        Ok(())
    }

    /// Deletes a tool if its version is still `expected_version`; `ConditionFailed` otherwise.
    /// A tool is a single item, so this needs no transaction.
    pub async fn delete_tool(&self, id: Uuid, expected_version: u64) -> StoreResult<()> {
        self.ddb
            .delete_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(tool_pk(id), "TOOL")))
            .condition_expression("#version = :expected")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":expected", n(expected_version))
            .send()
            .await
            .map_err(|e| super::write_error(e, "delete a tool"))?;
        Ok(())
    }
}
