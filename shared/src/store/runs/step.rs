//! Step records: claiming, retaking, renewing, finishing and skipping them, and resuming a
//! `human` step.

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    active_pk, active_sk, exact_item, exact_page, put, run_pk, running_check, status_gsi, Claim,
    StepEnd, RUN_SK,
};
use crate::domain::ts;
use crate::payload::Payload;
use crate::run::{is_iteration_sk, Run, RunStatus, StepCounts, StepRecord, StepStatus, Usage};
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
        // The run's check also counts a top-level record as running.
        let run = match record.iteration {
            None => RunUpdate::counting(&[(StepStatus::Running, 1)])
                .while_running()
                .build(&self.runs_table, record.run_id)?,
            Some(_) => running_check(&self.runs_table, record.run_id)?,
        };
        let items = vec![
            run,
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
                 #attempts = :next REMOVE ended_at, duration_ms, error_message, yielded",
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
        let run = if current.iteration.is_none() && current.status != StepStatus::Running {
            RunUpdate::counting(&[(current.status, -1), (StepStatus::Running, 1)])
                .while_running()
                .build(&self.runs_table, current.run_id)?
        } else {
            running_check(&self.runs_table, current.run_id)?
        };
        let items = vec![run, TransactWriteItem::builder().update(update).build()];
        match self.transact(items, "retake a run step").await {
            Ok(()) => Ok(true),
            Err(err) if err.failed_at(0) || err.failed_at(1) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives attempt `record.attempts` back unsent: its lease ends `at` and it is marked
    /// `yielded`, so the next slice takes it over. `false` if it is no longer ours.
    pub async fn yield_step(&self, record: &StepRecord, at: DateTime<Utc>) -> StoreResult<bool> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(record.run_id), record.sk())))
            .update_expression("SET lease_until = :at, yielded = :yes")
            .condition_expression("#attempts = :attempts AND #status = :running")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#attempts", "attempts")
            .expression_attribute_values(":at", s(ts::format(&at)))
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":attempts", n(record.attempts))
            .expression_attribute_values(":running", s(StepStatus::Running.as_str()))
            .send()
            .await
            .map_err(|e| write_error(e, "yield a run step"));
        match result {
            Ok(_) => Ok(true),
            Err(StoreError::ConditionFailed) => Ok(false),
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
        let mut set = vec!["#status = :status".to_owned()];
        let mut remove = vec!["lease_until".to_owned()];
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
            set.push("started_at = :at".to_owned());
            values.insert(":at".into(), s(ts::format(&end.at)));
        } else {
            set.extend([
                "ended_at = :ended".to_owned(),
                "duration_ms = :duration".to_owned(),
            ]);
            values.insert(":ended".into(), s(ts::format(&end.at)));
            values.insert(":duration".into(), n(end.duration_ms));
        }
        match &end.error_message {
            Some(message) => {
                set.push("error_message = :error".to_owned());
                values.insert(":error".into(), s(message));
            }
            None => remove.push("error_message".to_owned()),
        }
        let mut names: HashMap<String, String> = [("#status", "status"), ("#attempts", "attempts")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        for (attribute, payload) in [("request", &end.request), ("response", &end.response)] {
            if let Some(payload) = payload {
                let (set_one, remove_one, value) = payload_change(attribute, payload)?;
                names.insert(format!("#{attribute}"), attribute.to_owned());
                set.push(set_one);
                remove.push(remove_one);
                values.insert(format!(":{attribute}"), value);
            }
        }
        let step = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(record.run_id), record.sk())))
            .condition_expression("#attempts = :attempts AND #status = :running")
            .set_expression_attribute_names(Some(names))
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
        let counts: &[(StepStatus, i64)] = if record.iteration.is_none() {
            &[(StepStatus::Running, -1), (end.status, 1)]
        } else {
            &[]
        };
        if spent || !counts.is_empty() {
            let mut run = RunUpdate::counting(counts);
            if spent {
                run = run.spending(&end.usage);
            }
            items.push(run.build(&self.runs_table, record.run_id)?);
        }
        match self.transact(items, "finish a run step").await {
            Ok(()) => Ok(true),
            Err(err) if err.failed_at(0) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Records a skipped step, unless it already has a record, and counts it on the run.
    pub async fn skip_step(&self, record: &StepRecord) -> StoreResult<()> {
        let item = exact_item(
            record,
            &[("pk", run_pk(record.run_id)), ("sk", record.sk())],
        )?;
        let items = vec![
            put(&self.runs_table, item, "attribute_not_exists(sk)")?,
            RunUpdate::counting(&[(StepStatus::Skipped, 1)])
                .build(&self.runs_table, record.run_id)?,
        ];
        match self.transact(items, "record a skipped step").await {
            Err(err) if err.failed_at(0) => Ok(()),
            other => other,
        }
    }

    /// Completes the waiting `human` step `step_sk` with `input` and moves the run from
    /// `awaiting_input` to `running`, in one transaction. `ConditionFailed` if the run is not
    /// waiting on that step.
    pub async fn resume_human_step(
        &self,
        run: &Run,
        step_sk: &str,
        input: &Payload,
        at: DateTime<Utc>,
        waited_ms: u64,
    ) -> StoreResult<()> {
        let (set_response, remove_response, response) = payload_change("response", input)?;
        let step = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run.id), step_sk)))
            .update_expression(format!(
                "SET #status = :succeeded, {set_response}, ended_at = :at, \
                 duration_ms = :duration REMOVE {remove_response}"
            ))
            .condition_expression("#status = :waiting")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#response", "response")
            .expression_attribute_values(":succeeded", s(StepStatus::Succeeded.as_str()))
            .expression_attribute_values(":waiting", s(StepStatus::Waiting.as_str()))
            .expression_attribute_values(":response", response)
            .expression_attribute_values(":at", s(ts::format(&at)))
            .expression_attribute_values(":duration", n(waited_ms))
            .build()
            .context("Failed to build a step update")?;
        // An iteration's record is not counted on the run.
        let counted = !is_iteration_sk(step_sk);
        let counts = if counted {
            ", steps_waiting :minus_one, steps_succeeded :one"
        } else {
            ""
        };
        let mut update = Update::builder()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run.id), RUN_SK)))
            .update_expression(format!(
                "SET #status = :running, updated_at = :now, #gsi = :status_gsi, \
                 #active = :active, #active_sk = :active_sk \
                 ADD version :one{counts} REMOVE waiting_step"
            ))
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
            .expression_attribute_values(":one", n(1));
        if counted {
            update = update.expression_attribute_values(":minus_one", n(-1));
        }
        let update = update.build().context("Failed to build a run update")?;
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

/// How a step update writes `attribute` (`request` or `response`, aliased `#<attribute>`)
/// kept as `payload`: the `SET` clause, the `REMOVE` clause (the other form, so a retaken
/// step never keeps both), and the value of `:<attribute>`.
fn payload_change(
    attribute: &str,
    payload: &Payload,
) -> anyhow::Result<(String, String, AttributeValue)> {
    Ok(match payload {
        Payload::Inline(value) => (
            format!("#{attribute} = :{attribute}"),
            format!("{attribute}_ref"),
            s(value.to_string()),
        ),
        Payload::Stored(stored) => (
            format!("{attribute}_ref = :{attribute}"),
            format!("#{attribute}"),
            serde_dynamo::to_attribute_value(stored)
                .context("Failed to write a payload reference")?,
        ),
    })
}

/// An update of the run item made in a step's transaction: adds to the run's step counters
/// (and to its usage, when the step spent some) and bumps its version.
#[derive(Default)]
struct RunUpdate {
    add: Vec<String>,
    values: HashMap<String, AttributeValue>,
    while_running: bool,
}

impl RunUpdate {
    /// Adds each `(status, delta)` to the counter of `status`.
    fn counting(counts: &[(StepStatus, i64)]) -> Self {
        let mut update = Self::default();
        for (i, (status, delta)) in counts.iter().enumerate() {
            update
                .add
                .push(format!("{} :count{i}", StepCounts::attribute(*status)));
            update.values.insert(format!(":count{i}"), n(delta));
        }
        update
    }

    /// Also adds `usage` to the run's.
    fn spending(mut self, usage: &Usage) -> Self {
        for (attribute, value) in [
            ("tokens_prompt", n(usage.tokens_prompt)),
            ("tokens_completion", n(usage.tokens_completion)),
            ("usd_cost", n(usage.usd_cost)),
        ] {
            self.add.push(format!("{attribute} :{attribute}"));
            self.values.insert(format!(":{attribute}"), value);
        }
        self
    }

    /// Only while the run is `running` (otherwise the transaction fails on this item).
    fn while_running(mut self) -> Self {
        self.while_running = true;
        self
    }

    fn build(mut self, table: &str, run_id: Uuid) -> anyhow::Result<TransactWriteItem> {
        self.add.push("version :one".to_owned());
        self.values.insert(":one".to_owned(), n(1));
        let mut update = Update::builder()
            .table_name(table)
            .set_key(Some(key(run_pk(run_id), RUN_SK)))
            .update_expression(format!("ADD {}", self.add.join(", ")));
        update = if self.while_running {
            self.values
                .insert(":running".to_owned(), s(RunStatus::Running.as_str()));
            update
                .condition_expression("#status = :running")
                .expression_attribute_names("#status", "status")
        } else {
            update.condition_expression("attribute_exists(pk)")
        };
        let update = update
            .set_expression_attribute_values(Some(self.values))
            .build()
            .context("Failed to build a run update")?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}
