//! DynamoDB store: one module per capability, all on the tables described in [`schema`].

pub mod agents;
pub mod api_keys;
pub mod credentials;
pub mod cursor;
mod expr;
pub mod hook_secrets;
pub mod invitations;
pub mod projects;
pub mod provision;
pub mod runs;
pub mod schedules;
pub mod schema;
pub mod secrets;
pub mod sessions;
pub mod throttle;
pub mod tool_runtime;
pub mod tools;
pub mod users;
pub mod workflows;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backoff::Backoff;
use crate::config::Config;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Failures the callers must tell apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write found the item in an unexpected state.
    #[error("conditional write failed")]
    ConditionFailed,
    /// A transaction was cancelled; `reasons[i]` is the code for its i-th item
    /// (`ConditionalCheckFailed`, `TransactionConflict`, …) or `None` if that item was fine.
    #[error("transaction cancelled: {0:?}")]
    Cancelled(Vec<Option<String>>),
    /// Anything else.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl StoreError {
    /// Whether item `index` of a cancelled transaction failed its condition.
    pub fn failed_at(&self, index: usize) -> bool {
        matches!(self, Self::Cancelled(reasons)
            if reasons.get(index).and_then(|r| r.as_deref()) == Some("ConditionalCheckFailed"))
    }

    /// Whether a transaction lost a race with another writer.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Cancelled(reasons)
            if reasons.iter().any(|r| r.as_deref() == Some("TransactionConflict")))
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A page of a `Query`: the items and the key to continue from.
#[derive(Debug)]
pub struct Page<T> {
    /// Items of this page.
    pub items: Vec<T>,
    /// `LastEvaluatedKey`, if there may be more.
    pub next: Option<cursor::Key>,
}

/// Handle on the deployment's tables.
#[derive(Clone, Debug)]
pub struct Store {
    ddb: Client,
    auth_table: String,
    projects_table: String,
    registry_table: String,
    runs_table: String,
}

impl Store {
    /// A store over the tables named by `config`.
    pub fn new(ddb: Client, config: &Config) -> Self {
        Self {
            auth_table: config.table_name(schema::AUTH.suffix),
            projects_table: config.table_name(schema::PROJECTS.suffix),
            registry_table: config.table_name(schema::REGISTRY.suffix),
            runs_table: config.table_name(schema::RUNS.suffix),
            ddb,
        }
    }

    /// The DynamoDB client.
    pub fn client(&self) -> &Client {
        &self.ddb
    }

    /// Names of every table, for health checks.
    pub fn table_names(&self) -> [&str; 4] {
        [
            &self.auth_table,
            &self.projects_table,
            &self.registry_table,
            &self.runs_table,
        ]
    }

    /// Reads one record with a strongly consistent `GetItem`.
    async fn get_record<T: DeserializeOwned>(
        &self,
        table: &str,
        key: Item,
        what: &str,
    ) -> StoreResult<Option<T>> {
        let out = self
            .ddb
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .with_context(|| format!("Failed to read {what}"))?;
        Ok(out.item.map(record).transpose()?)
    }

    /// Reads many records of one table by key with consistent `BatchGetItem`s, retrying
    /// unprocessed keys; missing records are left out, the rest come back in no set order.
    async fn batch_get<T: DeserializeOwned>(
        &self,
        table: &str,
        keys: Vec<Item>,
        what: &str,
    ) -> StoreResult<Vec<T>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut pending = chunk.to_vec();
            for _attempt in 0..5 {
                if pending.is_empty() {
                    break;
                }
                let request = aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .consistent_read(true)
                    .build()
                    .with_context(|| format!("Failed to build the read of {what}"))?;
                let mut out = self
                    .ddb
                    .batch_get_item()
                    .request_items(table, request)
                    .send()
                    .await
                    .with_context(|| format!("Failed to read {what}"))?;
                for item in out
                    .responses
                    .take()
                    .unwrap_or_default()
                    .remove(table)
                    .unwrap_or_default()
                {
                    found.push(record(item)?);
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut k| k.remove(table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
            if !pending.is_empty() {
                return Err(
                    anyhow::anyhow!("DynamoDB kept leaving keys of {what} unprocessed").into(),
                );
            }
        }
        Ok(found)
    }

    /// Writes a new item; `ConditionFailed` if an item with its key already exists.
    async fn put_new(&self, table: &str, item: Item, what: &str) -> StoreResult<()> {
        self.ddb
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| write_error(e, what))?;
        Ok(())
    }

    /// A `Query` of one partition of `index`, in sort-key order; callers add limits, a sort-key
    /// condition or filters.
    fn index_query(
        &self,
        table: &str,
        index: &schema::IndexDef,
        partition: impl Into<String>,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.ddb
            .query()
            .table_name(table)
            .index_name(index.name)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", index.pk)
            .expression_attribute_values(":pk", s(partition))
    }

    /// One page of one partition of `index`: at most `limit` records from `start` on.
    async fn index_page<T: DeserializeOwned>(
        &self,
        table: &str,
        index: &schema::IndexDef,
        partition: impl Into<String>,
        limit: i32,
        start: Option<cursor::Key>,
        what: &str,
    ) -> StoreResult<Page<T>> {
        let query = self
            .index_query(table, index, partition)
            .limit(limit)
            .set_exclusive_start_key(start);
        self.query_page(query, what).await
    }

    /// Runs a prepared `Query` (limit and start key already set) and reads one page.
    async fn query_page<T: DeserializeOwned>(
        &self,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        what: &str,
    ) -> StoreResult<Page<T>> {
        let out = query
            .send()
            .await
            .with_context(|| format!("Failed to list {what}"))?;
        Ok(Page {
            items: out
                .items
                .unwrap_or_default()
                .into_iter()
                .map(record)
                .collect::<anyhow::Result<_>>()?,
            next: out.last_evaluated_key,
        })
    }

    /// Runs a transaction, retrying it while it only lost a race ([`retryable`]): another
    /// transaction held one of its items, or DynamoDB throttled it. Each retry waits a
    /// jittered, doubling delay; after [`TRANSACT_ATTEMPTS`] the last error is returned. A
    /// failed condition is final at once.
    async fn transact(&self, items: Vec<TransactWriteItem>, what: &str) -> StoreResult<()> {
        let mut attempt = 1;
        loop {
            match self.transact_once(items.clone(), what).await {
                Err(failure) if failure.retry && attempt < TRANSACT_ATTEMPTS => {
                    tokio::time::sleep(STORE_BACKOFF.delay(attempt - 1)).await;
                    attempt += 1;
                }
                Err(failure) => return Err(failure.error),
                Ok(()) => return Ok(()),
            }
        }
    }

    async fn transact_once(
        &self,
        items: Vec<TransactWriteItem>,
        what: &str,
    ) -> Result<(), TransactFailure> {
        let error = match self
            .ddb
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(SdkError::ServiceError(service)) => match service.err() {
                TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                    let reasons: Vec<Option<String>> = cancelled
                        .cancellation_reasons()
                        .iter()
                        .map(|r| r.code().filter(|c| *c != "None").map(str::to_owned))
                        .collect();
                    return Err(TransactFailure {
                        retry: retryable(&reasons),
                        error: StoreError::Cancelled(reasons),
                    });
                }
                other => {
                    let code = other.code().unwrap_or("unknown");
                    let retry = RETRYABLE_CODES.contains(&code);
                    return Err(TransactFailure {
                        retry,
                        error: anyhow::anyhow!("{code}: {other:?}")
                            .context(format!("Failed to {what}"))
                            .into(),
                    });
                }
            },
            Err(other) => other,
        };
        Err(TransactFailure {
            retry: false,
            error: anyhow::Error::new(error)
                .context(format!("Failed to {what}"))
                .into(),
        })
    }
}

/// Attempts a transaction gets when it keeps losing races.
const TRANSACT_ATTEMPTS: u32 = 8;

/// How long a store write that lost a race or was throttled (a transaction, a batch of log
/// lines) waits before its next attempt: 25 ms for the first retry, doubling up to 1 s,
/// jittered so writes that collided do not collide again in step.
pub(crate) const STORE_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(25),
    cap: Duration::from_millis(1_000),
};

/// Codes of a transaction (or of one of its items) that lost a race or was throttled:
/// trying again later may succeed.
const RETRYABLE_CODES: &[&str] = &[
    "TransactionConflict",
    "TransactionInProgressException",
    "ThrottlingError",
    "ThrottlingException",
    "ProvisionedThroughputExceeded",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
];

/// A failed attempt of a transaction, and whether another attempt may succeed.
struct TransactFailure {
    retry: bool,
    error: StoreError,
}

/// Whether a cancelled transaction may succeed if tried again: some item lost a race and
/// none failed for good (a failed condition, a validation error).
fn retryable(reasons: &[Option<String>]) -> bool {
    let failed: Vec<&str> = reasons.iter().flatten().map(String::as_str).collect();
    !failed.is_empty() && failed.iter().all(|code| RETRYABLE_CODES.contains(code))
}

/// Maps an SDK error of a single-item write, separating a failed condition from the rest.
fn write_error<E>(err: SdkError<E>, what: &str) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if err.code() == Some("ConditionalCheckFailedException") {
        StoreError::ConditionFailed
    } else {
        StoreError::Unexpected(anyhow::Error::new(err).context(format!("Failed to {what}")))
    }
}

pub(crate) use crate::domain::json_text;

/// Serialises `record` and adds the key attributes.
fn item<T: Serialize>(record: &T, keys: &[(&str, String)]) -> anyhow::Result<Item> {
    let mut item: Item =
        serde_dynamo::to_item(record).context("Failed to serialise a record into an item")?;
    for (name, value) in keys {
        item.insert((*name).to_owned(), AttributeValue::S(value.clone()));
    }
    Ok(item)
}

/// Deserialises a record, ignoring key attributes.
fn record<T: DeserializeOwned>(item: Item) -> anyhow::Result<T> {
    serde_dynamo::from_item(item).context("Failed to read a record from an item")
}

/// A string attribute value.
fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute value.
fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The `pk`/`sk` key of an item.
fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(codes: &[Option<&str>]) -> Vec<Option<String>> {
        codes.iter().map(|c| c.map(str::to_owned)).collect()
    }

    #[test]
    fn only_a_lost_race_is_retried_never_a_failed_condition() {
        assert!(retryable(&reasons(&[None, Some("TransactionConflict")])));
        assert!(retryable(&reasons(&[Some("ThrottlingError"), None])));
        assert!(!retryable(&reasons(&[
            Some("TransactionConflict"),
            Some("ConditionalCheckFailed")
        ])));
        assert!(!retryable(&reasons(&[Some("ValidationError")])));
        assert!(!retryable(&reasons(&[None, None])));
    }
}

#[cfg(test)]
mod properties;
