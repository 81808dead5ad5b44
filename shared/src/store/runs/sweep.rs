//! The list of runs in motion (gsi6), as the sweeper reads and tidies it.

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::{active_sk, exact_page, run_pk, RUN_SK};
use crate::domain::ts;
use crate::run::Run;
use crate::store::schema::GSI6;
use crate::store::{cursor, key, s, write_error, Page, Store, StoreError, StoreResult};

impl Store {
    /// Runs of shard `shard` of the list of runs in motion that last changed before
    /// `before`, least recently changed first. The index is read eventually consistently:
    /// read a run again before acting on it.
    pub async fn runs_in_motion(
        &self,
        shard: u32,
        before: DateTime<Utc>,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Run>> {
        let out = self
            .index_query(&self.runs_table, &GSI6, format!("ACTIVE#{shard}"))
            .key_condition_expression("#pk = :pk AND #sk < :before")
            .expression_attribute_names("#sk", GSI6.sk)
            .expression_attribute_values(":before", s(ts::format(&before)))
            .limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .context("Failed to list runs in motion")?;
        Ok(exact_page(out.items, out.last_evaluated_key)?)
    }

    /// Moves a run still in motion and still `run.status` to the back of its list, as if it
    /// changed `at`, so the next sweeps reach the runs behind it. `false` if it moved on.
    pub async fn revisit_later(&self, run: &Run, at: DateTime<Utc>) -> StoreResult<bool> {
        self.touch_motion(
            run,
            &format!("SET {} = :sk", GSI6.sk),
            Some(active_sk(run.id, &at)),
            "postpone a run's sweep",
        )
        .await
    }

    /// Takes a run still `run.status` off the list of runs in motion: nothing will move it
    /// any more (its lifecycle is over). `false` if it moved on.
    pub async fn leave_motion(&self, run: &Run) -> StoreResult<bool> {
        self.touch_motion(
            run,
            &format!("REMOVE {}, {}", GSI6.pk, GSI6.sk),
            None,
            "take a run off the runs in motion",
        )
        .await
    }

    async fn touch_motion(
        &self,
        run: &Run,
        expression: &str,
        sort_key: Option<String>,
        what: &str,
    ) -> StoreResult<bool> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run.id), RUN_SK)))
            .update_expression(expression)
            .condition_expression("attribute_exists(#active) AND #status = :status")
            .expression_attribute_names("#active", GSI6.pk)
            .expression_attribute_names("#status", "status")
            .set_expression_attribute_values(Some(
                [(":status".to_owned(), s(run.status.as_str()))]
                    .into_iter()
                    .chain(sort_key.map(|sk| (":sk".to_owned(), s(sk))))
                    .collect(),
            ))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) => match write_error(err, what) {
                StoreError::ConditionFailed => Ok(false),
                other => Err(other),
            },
        }
    }
}
