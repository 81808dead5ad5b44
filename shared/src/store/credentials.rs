//! Project credentials: named secrets that webhook steps send, each bound to one origin. The
//! secret itself lives in Secrets Manager (`credentials/<id>`), never here; a record holds
//! its name and the origin (`scheme://host:port`) it may be sent to.
//!
//! | pk | sk | gsi1pk / gsi1sk |
//! |---|---|---|
//! | `CREDENTIAL#<id>` | `CREDENTIAL` | `PROJECT#<p>#CREDENTIALS` / `CREDENTIAL#<id>` |

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::schema::GSI1;
use super::{cursor, item, key, n, Page, Store, StoreResult};
use crate::domain::ts;

/// A project credential (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credential {
    /// Credential id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// A name people recognise it by.
    pub name: String,
    /// The only origin the secret is sent to, `scheme://host[:port]`.
    pub origin: String,
    /// Who created it (a user or an API key).
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

impl Credential {
    /// Path of the secret in the [`SecretStore`](super::secrets::SecretStore).
    pub fn secret_path(&self) -> String {
        super::secrets::path::credential(self.id)
    }
}

fn credential_pk(id: Uuid) -> String {
    format!("CREDENTIAL#{id}")
}

fn project_credentials_gsi(project_id: Uuid) -> String {
    format!("{}#CREDENTIALS", super::projects::project_pk(project_id))
}

impl Store {
    /// Stores a credential, new (`expected_version` `None`) or replacing version
    /// `expected_version`; `ConditionFailed` if it exists, or changed or went meanwhile.
    pub async fn put_credential(
        &self,
        credential: &Credential,
        expected_version: Option<u64>,
    ) -> StoreResult<()> {
        let record = item(
            credential,
            &[
                ("pk", credential_pk(credential.id)),
                ("sk", "CREDENTIAL".into()),
                (GSI1.pk, project_credentials_gsi(credential.project_id)),
                (GSI1.sk, credential_pk(credential.id)),
            ],
        )?;
        let put = self
            .ddb
            .put_item()
            .table_name(&self.registry_table)
            .set_item(Some(record));
        let put = match expected_version {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(version) => put
                .condition_expression("#version = :expected")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":expected", n(version)),
        };
        put.send()
            .await
            .map_err(|e| super::write_error(e, "store a credential"))?;
        Ok(())
    }

    /// The credential with `id`.
    pub async fn get_credential(&self, id: Uuid) -> StoreResult<Option<Credential>> {
        self.get_record(
            &self.registry_table,
            key(credential_pk(id), "CREDENTIAL"),
            "a credential",
        )
        .await
    }

    /// The credentials among `ids` that exist (in any project; callers check the project).
    pub async fn get_credentials(&self, ids: &[Uuid]) -> StoreResult<Vec<Credential>> {
        let keys = ids
            .iter()
            .map(|id| key(credential_pk(*id), "CREDENTIAL"))
            .collect();
        let mut found: HashMap<Uuid, Credential> = self
            .batch_get::<Credential>(&self.registry_table, keys, "credentials")
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// A page of a project's credentials, oldest first.
    pub async fn list_credentials(
        &self,
        project_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Credential>> {
        let query = self
            .index_query(
                &self.registry_table,
                &GSI1,
                project_credentials_gsi(project_id),
            )
            .limit(limit)
            .set_exclusive_start_key(start);
        self.query_page(query, "credentials").await
    }

    /// Deletes a credential if its version is still `expected_version`.
    pub async fn delete_credential(&self, id: Uuid, expected_version: u64) -> StoreResult<()> {
        self.ddb
            .delete_item()
            .table_name(&self.registry_table)
            .set_key(Some(key(credential_pk(id), "CREDENTIAL")))
            .condition_expression("#version = :expected")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":expected", n(expected_version))
            .send()
            .await
            .map_err(|e| super::write_error(e, "delete a credential"))?;
        Ok(())
    }
}
