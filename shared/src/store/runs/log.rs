//! A run's log lines: bounded one by one, written in batches that retry what DynamoDB left
//! unprocessed or throttled.

use anyhow::Context;
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use uuid::Uuid;

use super::run_pk;
use crate::run::LogLine;
use crate::store::{cursor, item, Page, Store, StoreResult, STORE_BACKOFF};

/// Batch writes tried before the lines they still hold are given up.
const LOG_WRITE_ATTEMPTS: u32 = 8;

impl Store {
    /// Appends log lines to a run, 25 per request, each message bounded
    /// ([`LogLine::bounded`]).
    pub async fn append_logs(&self, run_id: Uuid, lines: &[LogLine]) -> StoreResult<()> {
        for chunk in lines.chunks(25) {
            let requests = chunk
                .iter()
                .map(|line| {
                    let item = item(
                        &line.clone().bounded(),
                        &[
                            ("pk", run_pk(run_id)),
                            ("sk", format!("LOG#{}", Uuid::now_v7())),
                        ],
                    )?;
                    let put = PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .context("Failed to build a log write")?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.write_log_batch(requests).await?;
        }
        Ok(())
    }

    /// Writes one batch, retrying the items left unprocessed and throttled requests with
    /// jittered exponential backoff, at most [`LOG_WRITE_ATTEMPTS`] times.
    async fn write_log_batch(&self, mut requests: Vec<WriteRequest>) -> StoreResult<()> {
        for attempt in 0..LOG_WRITE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(STORE_BACKOFF.delay(attempt - 1)).await;
            }
            let sent = self
                .ddb
                .batch_write_item()
                .request_items(&self.runs_table, requests.clone())
                .send()
                .await;
            match sent {
                Ok(out) => {
                    requests = out
                        .unprocessed_items
                        .and_then(|mut u| u.remove(&self.runs_table))
                        .unwrap_or_default();
                    if requests.is_empty() {
                        return Ok(());
                    }
                }
                Err(err)
                    if err.as_service_error().is_some_and(|e| {
                        e.is_provisioned_throughput_exceeded_exception()
                            || e.is_request_limit_exceeded()
                            || e.is_throttling_exception()
                            || e.is_internal_server_error()
                    }) => {}
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context("Failed to write run logs")
                        .into())
                }
            }
        }
        Err(anyhow::anyhow!(
            "DynamoDB kept leaving {} run log lines unwritten after {LOG_WRITE_ATTEMPTS} attempts",
            requests.len()
        )
        .into())
    }

    /// A page of a run's log lines, oldest first.
    pub async fn list_logs(
        &self,
        run_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<LogLine>> {
        let query = self.run_items(run_id, "LOG#", limit, start);
        self.query_page(query, "run logs").await
    }

    /// Appends log lines best effort: losing one must not fail the work it tells of.
    pub async fn note(&self, run_id: Uuid, lines: &[LogLine]) {
        if let Err(error) = self.append_logs(run_id, lines).await {
            tracing::warn!(%run_id, error = %error, "could not store run log lines");
        }
    }
}
