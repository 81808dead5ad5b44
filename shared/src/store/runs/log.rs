//! A run's log lines.

use anyhow::Context;
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use uuid::Uuid;

use super::run_pk;
use crate::run::LogLine;
use crate::store::{cursor, item, Page, Store, StoreResult};

impl Store {
    /// Appends log lines to a run, 25 per request.
    pub async fn append_logs(&self, run_id: Uuid, lines: &[LogLine]) -> StoreResult<()> {
        for chunk in lines.chunks(25) {
            let mut requests = chunk
                .iter()
                .map(|line| {
                    let item = item(
                        line,
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
            for _attempt in 0..5 {
                let out = self
                    .ddb
                    .batch_write_item()
                    .request_items(&self.runs_table, requests)
                    .send()
                    .await
                    .context("Failed to write run logs")?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.runs_table))
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
            }
            if !requests.is_empty() {
                return Err(anyhow::anyhow!("DynamoDB kept leaving run logs unprocessed").into());
            }
        }
        Ok(())
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
