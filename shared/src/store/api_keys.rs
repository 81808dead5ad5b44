//! Project API keys, in the projects table. Only the digest of a key's secret is stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::expr::{Apply, Changes};
use super::schema::GSI1;
use super::{cursor, item, key, s, Page, Store, StoreResult};
use crate::domain::{ts, Role};

/// What a key may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyKind {
    /// Acts in its project with its role (capped at its creator's current role).
    #[default]
    Project,
    /// Only reports heartbeats for the agents it names: what an agent's runtime needs.
    AgentRuntime,
}

/// A project API key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKey {
    /// Key id, embedded in the key itself.
    pub id: Uuid,
    /// The only project the key acts in.
    pub project_id: Uuid,
    /// A label.
    pub name: String,
    /// The role the key was given. Once authenticated, the key acts with no more than its
    /// creator's current role; see [`crate::auth::Principal`].
    pub role: Role,
    /// What the key may do; keys stored before kinds existed are project keys.
    #[serde(default)]
    pub kind: ApiKeyKind,
    /// The agents an agent-runtime key reports for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_ids: Vec<Uuid>,
    /// SHA-256 digest of the key's secret part.
    pub secret_digest: String,
    /// Who created it.
    pub created_by: Uuid,
    /// Creation time.
    #[serde(with = "ts")]
    pub created_at: DateTime<Utc>,
    /// Optional expiry.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Set when revoked.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Whether the key may authenticate at `now`.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

fn api_key_pk(id: Uuid) -> String {
    format!("APIKEY#{id}")
}

fn project_keys_gsi(project_id: Uuid) -> String {
    format!("{}#APIKEYS", super::projects::project_pk(project_id))
}

impl Store {
    /// Stores a new key.
    pub async fn create_api_key(&self, api_key: &ApiKey) -> StoreResult<()> {
        let record = item(
            api_key,
            &[
                ("pk", api_key_pk(api_key.id)),
                ("sk", "APIKEY".into()),
                (GSI1.pk, project_keys_gsi(api_key.project_id)),
                (GSI1.sk, api_key_pk(api_key.id)),
            ],
        )?;
        self.put_new(&self.projects_table, record, "store an API key")
            .await
    }

    /// The key with `id`.
    pub async fn get_api_key(&self, id: Uuid) -> StoreResult<Option<ApiKey>> {
        self.get_record(
            &self.projects_table,
            key(api_key_pk(id), "APIKEY"),
            "an API key",
        )
        .await
    }

    /// A project's keys, oldest first.
    pub async fn list_api_keys(
        &self,
        project_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<ApiKey>> {
        self.index_page(
            &self.projects_table,
            &GSI1,
            project_keys_gsi(project_id),
            limit,
            start,
            "API keys",
        )
        .await
    }

    /// Revokes a key of `project_id`. `ConditionFailed` if there is no such live key there.
    pub async fn revoke_api_key(
        &self,
        project_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let changes = Changes::new()
            .set("revoked_at", s(ts::format(&now)))
            .only_if("project_id = :project AND attribute_not_exists(#revoked_at)")
            .value(":project", s(project_id.to_string()));
        self.ddb
            .update_item()
            .table_name(&self.projects_table)
            .set_key(Some(key(api_key_pk(id), "APIKEY")))
            .apply(changes)
            .send()
            .await
            .map_err(|e| super::write_error(e, "revoke an API key"))?;
        Ok(())
    }
}
