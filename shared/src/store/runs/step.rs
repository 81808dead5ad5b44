//! Step records: claiming, retaking, renewing, finishing and skipping them, and resuming a
//! `human` step.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{
    active_pk, active_sk, exact_item, exact_page, put, run_pk, running_check, status_gsi, Claim,
    StepEnd, RUN_SK,
};
use crate::domain::ts;
use crate::run::{Run, RunStatus, StepRecord, StepStatus};
use crate::store::schema::{GSI2, GSI6};
use crate::store::{cursor, key, n, s, write_error, Page, Store, StoreError, StoreResult};

impl Store {
    /// Every step record of a run, in execution order.
    pub async fn all_steps(&self, run_id: Uuid) -> StoreResult<Vec<StepRecord>> {
        let mut steps = Vec::new();
        let mut start = None;
        loop {
            let page = self.list_steps(run_id, 1000, start).await?;
            steps.extend(page.items);
            match page.next {
                Some(next) => start = Some(next),
                None => return Ok(steps),
            }
        }
    }

    /// A page of a run's step records, in execution order.
    pub async fn list_steps(
        &self,
        run_id: Uuid,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<StepRecord>> {
        let out = self
            .run_items(run_id, "STEP#", limit, start)
            .consistent_read(true)
            .send()
            .await
            .context("Failed to list run steps")?;
        Ok(exact_page(out.items, out.last_evaluated_key)?)
    }

    /// Creates a step record while the run is `running`.
    pub async fn claim_step(&self, record: &StepRecord) -> StoreResult<Claim> {
        let item = exact_item(
            record,
            &[("pk", run_pk(record.run_id)), ("sk", record.sk())],
        )?;
        let items = vec![
            running_check(&self.runs_table, record.run_id)?,
            put(&self.runs_table, item, "attribute_not_exists(sk)")?,
        ];
        match self.transact(items, "claim a run step").await {
            Ok(()) => Ok(Claim::Claimed),
            Err(err) if err.failed_at(0) => Ok(Claim::RunNotRunning),
            Err(err) if err.failed_at(1) => match self.get_step(record.run_id, &record.sk()).await?
            {
                Some(existing) => Ok(Claim::Exists(Box::new(existing))),
                None => Err(anyhow::anyhow!("a step record vanished while being claimed").into()),
            },
            Err(err) => Err(err),
        }
    }

    /// Takes over an existing step record (a failed step of a retried run, or one whose
    /// worker died): if it still has `attempts` and `status`, starts attempt `attempts + 1`
    /// under a new lease. The run must be `running`. Returns `false` if someone else moved
    /// it first.
    pub async fn retake_step(
        &self,
        current: &StepRecord,
        at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        round: u32,
    ) -> StoreResult<bool> {
        let update = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(current.run_id), current.sk())))
            .update_expression(
                "SET #status = :running, started_at = :at, lease_until = :lease, #round = :round, \
                 #attempts = :next REMOVE ended_at, duration_ms, error_message",
            )
            .condition_expression("#attempts = :attempts AND #status = :current")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#round", "round")
            .expression_attribute_names("#attempts", "attempts")
            .expression_attribute_values(":running", s(StepStatus::Running.as_str()))
            .expression_attribute_values(":current", s(current.status.as_str()))
            .expression_attribute_values(":at", s(ts::format(&at)))
            .expression_attribute_values(":lease", s(ts::format(&lease_until)))
            .expression_attribute_values(":round", n(round))
            .expression_attribute_values(":attempts", n(current.attempts))
            .expression_attribute_values(":next", n(current.attempts + 1))
            .build()
            .context("Failed to build a step update")?;
        let items = vec![
            running_check(&self.runs_table, current.run_id)?,
            TransactWriteItem::builder().update(update).build(),
        ];
        match self.transact(items, "retake a run step").await {
            Ok(()) => Ok(true),
            Err(err) if err.failed_at(0) || err.failed_at(1) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Extends the lease of a step attempt still held.
    pub async fn renew_step_lease(
        &self,
        record: &StepRecord,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.ddb
            .update_item()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(record.run_id), record.sk())))
            .update_expression("SET lease_until = :lease")
            .condition_expression("#attempts = :attempts AND #status = :running")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#attempts", "attempts")
            .expression_attribute_values(":lease", s(ts::format(&lease_until)))
            .expression_attribute_values(":attempts", n(record.attempts))
            .expression_attribute_values(":running", s(StepStatus::Running.as_str()))
            .send()
            .await
            .map_err(|e| write_error(e, "renew a step lease"))?;
        Ok(())
    }

    /// Ends attempt `record.attempts` of a step and adds its tokens and cost to the step and
    /// the run, in one transaction. `false` if the attempt is no longer the step's current
    /// one (another worker took it over): nothing is written then.
    pub async fn finish_step(&self, record: &StepRecord, end: &StepEnd) -> StoreResult<bool> {
        let mut set = vec!["#status = :status"];
        let mut remove = vec!["lease_until"];
        let mut values: HashMap<String, AttributeValue> = [
            (":status", s(end.status.as_str())),
            (":attempts", n(record.attempts)),
            (":running", s(StepStatus::Running.as_str())),
            (":tp", n(end.usage.tokens_prompt)),
            (":tc", n(end.usage.tokens_completion)),
            (":cost", n(end.usage.usd_cost)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        if end.status == StepStatus::Waiting {
            // A waiting step has not ended yet; its wait starts now.
            set.push("started_at = :at");
            values.insert(":at".into(), s(ts::format(&end.at)));
        } else {
            set.extend(["ended_at = :ended", "duration_ms = :duration"]);
            values.insert(":ended".into(), s(ts::format(&end.at)));
            values.insert(":duration".into(), n(end.duration_ms));
        }
        match &end.error_message {
            Some(message) => {
                set.push("error_message = :error");
                values.insert(":error".into(), s(message));
            }
            None => remove.push("error_message"),
        }
        if let Some(request) = &end.request {
            set.push("#request = :request");
            values.insert(":request".into(), s(request.to_string()));
        }
        if let Some(response) = &end.response {
            set.push("#response = :response");
            values.insert(":response".into(), s(response.to_string()));
        }
        let step = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(record.run_id), record.sk())))
            .condition_expression("#attempts = :attempts AND #status = :running")
            .set_expression_attribute_names(Some(
                [("#status", "status")]
                    .into_iter()
                    .chain(end.response.as_ref().map(|_| ("#response", "response")))
                    .chain(end.request.as_ref().map(|_| ("#request", "request")))
                    .chain([("#attempts", "attempts")])
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .collect(),
            ))
            .set_expression_attribute_values(Some(values))
            .update_expression(format!(
                "SET {} ADD tokens_prompt :tp, tokens_completion :tc, usd_cost :cost REMOVE {}",
                set.join(", "),
                remove.join(", ")
            ))
            .build()
            .context("Failed to build a step update")?;
        let mut items = vec![TransactWriteItem::builder().update(step).build()];
        let spent = !end.usage.is_zero();
        if spent {
            let run = Update::builder()
                .table_name(&self.runs_table)
                .set_key(Some(key(run_pk(record.run_id), RUN_SK)))
                .update_expression(
                    "ADD tokens_prompt :tp, tokens_completion :tc, usd_cost :cost, version :one",
                )
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":tp", n(end.usage.tokens_prompt))
                .expression_attribute_values(":tc", n(end.usage.tokens_completion))
                .expression_attribute_values(":cost", n(end.usage.usd_cost))
                .expression_attribute_values(":one", n(1))
                .build()
                .context("Failed to build a run update")?;
            items.push(TransactWriteItem::builder().update(run).build());
        }
        match self.transact(items, "finish a run step").await {
            Ok(()) => Ok(true),
            Err(err) if err.failed_at(0) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Records a skipped step, unless it already has a record.
    pub async fn skip_step(&self, record: &StepRecord) -> StoreResult<()> {
        let item = exact_item(
            record,
            &[("pk", run_pk(record.run_id)), ("sk", record.sk())],
        )?;
        match self
            .ddb
            .put_item()
            .table_name(&self.runs_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(sk)")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => match write_error(err, "record a skipped step") {
                StoreError::ConditionFailed => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Completes the waiting `human` step `step_sk` with `input` and moves the run from
    /// `awaiting_input` to `running`, in one transaction. `ConditionFailed` if the run is not
    /// waiting on that step.
    pub async fn resume_human_step(
        &self,
        run: &Run,
        step_sk: &str,
        input: &Value,
        at: DateTime<Utc>,
        waited_ms: u64,
    ) -> StoreResult<()> {
        let step = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run.id), step_sk)))
            .update_expression(
                "SET #status = :succeeded, #response = :response, ended_at = :at, \
                 duration_ms = :duration",
            )
            .condition_expression("#status = :waiting")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#response", "response")
            .expression_attribute_values(":succeeded", s(StepStatus::Succeeded.as_str()))
            .expression_attribute_values(":waiting", s(StepStatus::Waiting.as_str()))
            .expression_attribute_values(":response", s(input.to_string()))
            .expression_attribute_values(":at", s(ts::format(&at)))
            .expression_attribute_values(":duration", n(waited_ms))
            .build()
            .context("Failed to build a step update")?;
        let update = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run.id), RUN_SK)))
            .update_expression(
                "SET #status = :running, updated_at = :now, #gsi = :status_gsi, \
                 #active = :active, #active_sk = :active_sk \
                 ADD version :one REMOVE waiting_step",
            )
            .condition_expression("#status = :awaiting AND waiting_step = :step")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#gsi", GSI2.pk)
            .expression_attribute_names("#active", GSI6.pk)
            .expression_attribute_names("#active_sk", GSI6.sk)
            .expression_attribute_values(":active", s(active_pk(run.id)))
            .expression_attribute_values(":active_sk", s(active_sk(run.id, &at)))
            .expression_attribute_values(":running", s(RunStatus::Running.as_str()))
            .expression_attribute_values(":awaiting", s(RunStatus::AwaitingInput.as_str()))
            .expression_attribute_values(
                ":status_gsi",
                s(status_gsi(run.project_id, RunStatus::Running)),
            )
            .expression_attribute_values(":now", s(ts::format(&at)))
            .expression_attribute_values(":step", s(step_sk))
            .expression_attribute_values(":one", n(1))
            .build()
            .context("Failed to build a run update")?;
        let items = vec![
            TransactWriteItem::builder().update(update).build(),
            TransactWriteItem::builder().update(step).build(),
        ];
        match self.transact(items, "resume a run").await {
            Err(err) if err.failed_at(0) || err.failed_at(1) => Err(StoreError::ConditionFailed),
            other => other,
        }
    }

    /// One step record, read consistently.
    pub async fn get_step(&self, run_id: Uuid, sk: &str) -> StoreResult<Option<StepRecord>> {
        self.get_exact(run_id, sk, "a run step").await
    }
}
