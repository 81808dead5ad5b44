//! Run items and `Idempotency-Key`s: creating, reading, listing and moving runs.

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, TransactWriteItem};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    active_pk, active_sk, exact_item, exact_page, exact_record, idempotency_pk, in_motion,
    project_runs, put, run_pk, schedule_runs, status_gsi, status_list, RunFilter, RUN_SK,
};
use crate::domain::ts;
use crate::run::{IdempotencyRecord, LogLine, Move, Run, RunChange, RunStatus};
use crate::store::schema::{GSI1, GSI2, GSI3, GSI4, GSI5, GSI6, GSI7};
use crate::store::{cursor, item, key, n, s, write_error, Page, Store, StoreError, StoreResult};

impl Store {
    /// Stores a new run, and its idempotency record when given, in one transaction.
    /// `ConditionFailed` if the idempotency key is taken.
    pub async fn create_run(
        &self,
        run: &Run,
        idempotency: Option<&IdempotencyRecord>,
    ) -> StoreResult<()> {
        let created = format!("{}#{}", ts::format(&run.created_at), run.id);
        let project = project_runs(run.project_id);
        let mut keys = vec![
            ("pk", run_pk(run.id)),
            ("sk", RUN_SK.into()),
            (GSI1.pk, project.clone()),
            (GSI1.sk, created.clone()),
            (GSI2.pk, status_gsi(run.project_id, run.status)),
            (GSI2.sk, created.clone()),
            (GSI3.pk, format!("{project}#WORKFLOW#{}", run.workflow_id)),
            (GSI3.sk, created.clone()),
            (GSI4.pk, format!("{project}#AGENT#{}", run.agent_id)),
            (GSI4.sk, created.clone()),
            (
                GSI5.pk,
                format!("{project}#TRIGGER#{}", run.trigger.as_str()),
            ),
            (GSI5.sk, created.clone()),
            (GSI6.pk, active_pk(run.id)),
            (GSI6.sk, active_sk(run.id, &run.created_at)),
        ];
        if let Some(schedule_id) = run.schedule_id {
            keys.push((GSI7.pk, schedule_runs(run.project_id, schedule_id)));
            keys.push((GSI7.sk, created.clone()));
        }
        let record = exact_item(run, &keys)?;
        let mut items = vec![put(&self.runs_table, record, "attribute_not_exists(pk)")?];
        if let Some(idem) = idempotency {
            let record = item(
                idem,
                &[
                    ("pk", idempotency_pk(idem.project_id, &idem.key_digest)),
                    ("sk", "IDEMPOTENCY".into()),
                ],
            )?;
            // DynamoDB deletes expired items only eventually: an expired key is free again.
            let put = Put::builder()
                .table_name(&self.runs_table)
                .set_item(Some(record))
                .condition_expression("attribute_not_exists(pk) OR #ttl <= :now")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":now", n(idem.created_at.timestamp()))
                .build()
                .context("Failed to build a put")?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        match self.transact(items, "store a run").await {
            Err(err) if err.failed_at(1) => Err(StoreError::ConditionFailed),
            other => other,
        }
    }

    /// The idempotency record of `key_digest` in a project, if it has not expired.
    pub async fn get_idempotency(
        &self,
        project_id: Uuid,
        key_digest: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        let found: Option<IdempotencyRecord> = self
            .get_record(
                &self.runs_table,
                key(idempotency_pk(project_id, key_digest), "IDEMPOTENCY"),
                "an idempotency key",
            )
            .await?;
        // DynamoDB deletes expired items lazily; an expired key no longer counts.
        Ok(found.filter(|r| r.ttl > now.timestamp()))
    }

    /// The run with `id`, read consistently.
    pub async fn get_run(&self, id: Uuid) -> StoreResult<Option<Run>> {
        self.get_exact(id, RUN_SK, "a run").await
    }

    /// A project's runs, newest first, narrowed by `filter`.
    pub async fn list_runs(
        &self,
        project_id: Uuid,
        filter: &RunFilter,
        limit: i32,
        start: Option<cursor::Key>,
    ) -> StoreResult<Page<Run>> {
        let project = project_runs(project_id);
        let mut filters: Vec<(&str, String)> = Vec::new();
        let (index, pk) = if let Some(schedule_id) = filter.schedule_id {
            (GSI7, schedule_runs(project_id, schedule_id))
        } else if let Some(status) = filter.status {
            (GSI2, status_gsi(project_id, status))
        } else if let Some(workflow) = filter.workflow_id {
            (GSI3, format!("{project}#WORKFLOW#{workflow}"))
        } else if let Some(agent) = filter.agent_id {
            (GSI4, format!("{project}#AGENT#{agent}"))
        } else if let Some(trigger) = filter.trigger {
            (GSI5, format!("{project}#TRIGGER#{}", trigger.as_str()))
        } else {
            (GSI1, project)
        };
        // The schedule index is the most selective; every other filter narrows its pages.
        if index != GSI2 {
            if let Some(status) = filter.status {
                filters.push(("status", status.as_str().to_owned()));
            }
        }
        if index != GSI3 {
            if let Some(workflow) = filter.workflow_id {
                filters.push(("workflow_id", workflow.to_string()));
            }
        }
        if index != GSI4 {
            if let Some(agent) = filter.agent_id {
                filters.push(("agent_id", agent.to_string()));
            }
        }
        if index != GSI5 {
            if let Some(trigger) = filter.trigger {
                filters.push(("trigger", trigger.as_str().to_owned()));
            }
        }
        let mut condition = "#pk = :pk".to_owned();
        // The key condition is set last, once the created-at bounds are known.
        let mut query = self
            .index_query(&self.runs_table, &index, pk)
            .scan_index_forward(false)
            .limit(limit)
            .set_exclusive_start_key(start);
        if filter.created_after.is_some() || filter.created_before.is_some() {
            // `<at>#<id>` sorts after `<at>`: the lower bound is inclusive, the upper one not.
            let from = filter.created_after.map(|at| ts::format(&at));
            let to = filter.created_before.map(|at| ts::format(&at));
            query = query.expression_attribute_names("#sk", index.sk);
            match (from, to) {
                (Some(from), Some(to)) => {
                    condition.push_str(" AND #sk BETWEEN :from AND :to");
                    query = query
                        .expression_attribute_values(":from", s(from))
                        .expression_attribute_values(":to", s(to));
                }
                (Some(from), None) => {
                    condition.push_str(" AND #sk >= :from");
                    query = query.expression_attribute_values(":from", s(from));
                }
                (None, Some(to)) => {
                    condition.push_str(" AND #sk < :to");
                    query = query.expression_attribute_values(":to", s(to));
                }
                (None, None) => {}
            }
        }
        if !filters.is_empty() {
            let mut parts = Vec::new();
            for (i, (name, value)) in filters.into_iter().enumerate() {
                parts.push(format!("#f{i} = :f{i}"));
                query = query
                    .expression_attribute_names(format!("#f{i}"), name)
                    .expression_attribute_values(format!(":f{i}"), s(value));
            }
            query = query.filter_expression(parts.join(" AND "));
        }
        let out = query
            .key_condition_expression(condition)
            .send()
            .await
            .context("Failed to list runs")?;
        Ok(exact_page(out.items, out.last_evaluated_key)?)
    }

    /// Moves run `id` to `to` if its status is one it may leave for `to`, applying
    /// `change` in the same write; returns the run as stored. `ConditionFailed` if the run
    /// was in another status (or is gone).
    pub async fn transition_run(
        &self,
        run: &Run,
        to: RunStatus,
        at: DateTime<Utc>,
        change: RunChange,
    ) -> StoreResult<Run> {
        let mut sources = RunStatus::sources_of(to);
        if !change.from.is_empty() {
            sources.retain(|status| change.from.contains(status));
        }
        if sources.is_empty() {
            return Err(StoreError::ConditionFailed);
        }
        let (condition, from_values) = status_list(&sources);
        let mut set = vec![
            "#status = :to".to_owned(),
            format!("{} = :status_gsi", GSI2.pk),
            "updated_at = :now".to_owned(),
        ];
        let mut remove = Vec::new();
        let mut add = vec!["version :one".to_owned()];
        let mut values: Vec<(String, AttributeValue)> = vec![
            (":to".into(), s(to.as_str())),
            (":status_gsi".into(), s(status_gsi(run.project_id, to))),
            (":now".into(), s(ts::format(&at))),
            (":one".into(), n(1)),
        ];
        if in_motion(to) {
            set.push(format!("{} = :active, {} = :active_sk", GSI6.pk, GSI6.sk));
            values.push((":active".into(), s(active_pk(run.id))));
            values.push((":active_sk".into(), s(active_sk(run.id, &at))));
        } else {
            remove.extend([GSI6.pk, GSI6.sk]);
        }
        if let Some(started) = change.started_at {
            set.push("started_at = if_not_exists(started_at, :started)".into());
            values.push((":started".into(), s(ts::format(&started))));
        }
        if let Some((ended, duration)) = change.ended {
            set.push("ended_at = :ended".into());
            set.push("duration_ms = :duration".into());
            values.push((":ended".into(), s(ts::format(&ended))));
            values.push((":duration".into(), n(duration)));
        }
        match change.error_message {
            Some(Some(message)) => {
                set.push("error_message = :error".into());
                values.push((":error".into(), s(message)));
            }
            Some(None) => remove.push("error_message"),
            None => {}
        }
        if let Some(approval) = &change.approval {
            set.push("#approval = :approval".into());
            let value = serde_dynamo::to_attribute_value(approval)
                .context("Failed to serialise an approval")?;
            values.push((":approval".into(), value));
        }
        if change.waited {
            add.push("waits :one".into());
        }
        if change.retried {
            add.push("#retries :one".into());
            remove.extend(["ended_at", "duration_ms", "error_message"]);
        }
        match change.waiting_step {
            Some(Some(step)) => {
                set.push("waiting_step = :waiting".into());
                values.push((":waiting".into(), s(step)));
            }
            Some(None) => remove.push("waiting_step"),
            None => {}
        }
        let mut names = vec![("#status", "status")];
        if change.approval.is_some() {
            names.push(("#approval", "approval"));
        }
        if change.retried {
            names.push(("#retries", "retries"));
        }
        let mut expression = format!("SET {} ADD {}", set.join(", "), add.join(", "));
        if !remove.is_empty() {
            remove.sort_unstable();
            remove.dedup();
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let out = self
            .ddb
            .update_item()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run.id), RUN_SK)))
            .update_expression(expression)
            .condition_expression(format!("attribute_exists(pk) AND {condition}"))
            .set_expression_attribute_names(Some(
                names
                    .into_iter()
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .collect(),
            ))
            .set_expression_attribute_values(Some(values.into_iter().chain(from_values).collect()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| write_error(e, "change a run's status"))?;
        let attributes = out
            .attributes
            .context("DynamoDB returned no attributes for an update")?;
        Ok(exact_record(attributes)?)
    }

    /// Parks the lifecycle's task token on a run that is still `status`, which takes it off
    /// the list of runs in motion: it waits on a person now. `ConditionFailed` if it moved
    /// on meanwhile.
    pub async fn park_task_token(
        &self,
        run_id: Uuid,
        status: RunStatus,
        token: &str,
    ) -> StoreResult<()> {
        self.ddb
            .update_item()
            .table_name(&self.runs_table)
            .set_key(Some(key(run_pk(run_id), RUN_SK)))
            .update_expression(format!(
                "SET task_token = :token REMOVE {}, {}",
                GSI6.pk, GSI6.sk
            ))
            .condition_expression("attribute_exists(pk) AND #status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":status", s(status.as_str()))
            .send()
            .await
            .map_err(|e| write_error(e, "park a task token"))?;
        Ok(())
    }

    /// Applies `step` to `run` at `at` ([`Store::transition_run`]), then writes the move's
    /// log line; returns the run as stored. `ConditionFailed` if the run was in a status the
    /// move may not leave.
    pub async fn move_run(&self, run: &Run, step: Move, at: DateTime<Utc>) -> StoreResult<Run> {
        let moved = self.transition_run(run, step.to, at, step.change).await?;
        if let Some((level, message)) = step.line {
            self.note(
                run.id,
                &[LogLine {
                    at,
                    level,
                    step_id: None,
                    message,
                }],
            )
            .await;
        }
        Ok(moved)
    }
}
