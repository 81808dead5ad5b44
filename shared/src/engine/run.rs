//! Executes a run's steps for one time slice of an `execute` task.
//!
//! Steps run one at a time, in the order [`execution_order`] gives the definition (a
//! topological order that keeps the author's order among independent steps); a step's place
//! in that order is its `idx`. For each step:
//!
//! 1. a record that already succeeded (or was skipped) is reused: its output feeds later
//!    templates, nothing runs again;
//! 2. a step on a decision's branch not taken, or after a skipped step, is recorded `skipped`;
//! 3. otherwise the step is *claimed*: its record is created only if absent, in a transaction
//!    that also checks the run is still `running` (so a cancelled run stops at the next step
//!    boundary). A record left `running` by a worker that died (its lease expired) is taken
//!    over only if the step is safe to run twice ([`Engine::safe_to_repeat`]); otherwise the
//!    step fails as interrupted, and a person decides with `retry`. A record whose lease is
//!    still held belongs to another worker: the slice stops ([`Outcome::Busy`]);
//! 4. the step executes, in the executor of its type (`engine::steps`, one module each);
//!    long steps renew their lease and send the task heartbeat;
//! 5. the attempt ends in one transaction that checks the claim is still ours and adds its
//!    tokens and cost to the run, so nothing is counted twice.
//!
//! A failed step fails the run; `retry` re-drives it: failed records of an earlier round
//! are taken over again, succeeded ones are kept.
//!
//! The run itself moves (started, waiting for input, ended) through [`Move`]s applied by
//! [`crate::store::Store::move_run`], as the API's moves are.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::budget::Deadline;
use super::llm::ChatClient;
use super::outputs::{output_view, step_outputs};
use super::steps::{self, clip, StepResult};
use super::tool::{self, ToolExecutor};
use super::webhook::WebhookSender;
use crate::events;
use crate::outbound::Egress;
use crate::payload::Payload;
use crate::run::{
    elapsed_ms, execution_order, step_sk, LogLevel, LogLine, Move, Run, RunStatus, StepRecord,
    StepStatus,
};
use crate::state::AppState;
use crate::store::runs::{Claim, StepEnd};
use crate::workflow::{Definition, Scope, Step, StepKind};

/// How long a worker keeps starting steps before handing the run back to the lifecycle.
pub const SLICE: Duration = Duration::from_secs(60);

/// How often a long step renews its lease and heartbeats the task, at most: a third of the
/// lease ([`Config::step_lease`](crate::config::Config::step_lease)) when that is shorter.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

/// How an `execute` slice ended: what the lifecycle does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// More steps to run: execute again.
    Continue,
    /// A `human` step waits for `resume`.
    AwaitingInput,
    /// Every step is done.
    Succeeded,
    /// A step failed.
    Failed,
    /// The run was cancelled.
    Cancelled,
    /// Another worker holds the run's current step; try this message again later.
    Busy,
}

impl Outcome {
    /// The `status` the state machine routes on; `None` for [`Outcome::Busy`].
    pub fn status(self) -> Option<&'static str> {
        match self {
            Self::Continue => Some("continue"),
            Self::AwaitingInput => Some("awaiting_input"),
            Self::Succeeded => Some("succeeded"),
            Self::Failed => Some("failed"),
            Self::Cancelled => Some("cancelled"),
            Self::Busy => None,
        }
    }

    fn of(status: RunStatus) -> Self {
        match status {
            RunStatus::AwaitingInput => Self::AwaitingInput,
            RunStatus::Succeeded => Self::Succeeded,
            RunStatus::Failed => Self::Failed,
            RunStatus::Cancelled => Self::Cancelled,
            RunStatus::Queued | RunStatus::Running => Self::Continue,
            // Never current while an `execute` task runs: let the message come back.
            RunStatus::AwaitingApproval => Self::Busy,
        }
    }
}

/// Something that keeps the lifecycle's task alive while a step runs.
#[async_trait]
pub trait Heartbeat: Send + Sync {
    /// Tells the lifecycle the worker is alive.
    async fn beat(&self);
}

/// Runs steps; one per process, shared by every message it handles.
pub struct Engine {
    pub(super) state: AppState,
    pub(super) tools: ToolExecutor,
    pub(super) webhooks: WebhookSender,
    pub(super) chat: ChatClient,
    definitions: Mutex<HashMap<(Uuid, u64), Arc<Definition>>>,
}

/// Everything one slice reads, loaded once.
pub(super) struct Slice<'a> {
    pub(super) run: Run,
    pub(super) definition: Arc<Definition>,
    pub(super) records: HashMap<String, StepRecord>,
    pub(super) outputs: Map<String, Value>,
    pub(super) run_view: Value,
    pub(super) heartbeat: &'a dyn Heartbeat,
    pub(super) started: Instant,
    pub(super) deadline: Deadline,
    /// Bytes of stored (S3) payloads the slice holds in memory, or would need to.
    pub(super) held: u64,
}

pub(super) enum StepFlow {
    /// Go on with the next step.
    Next,
    /// End the slice.
    Stop(Outcome),
}

impl Engine {
    /// An engine on `state`, with HTTP clients for tools, webhooks and models.
    pub fn new(state: AppState) -> anyhow::Result<Self> {
        let egress = Egress::new(state.config.egress.clone())?;
        Ok(Self {
            tools: ToolExecutor::new(
                egress.clone(),
                state.store.clone(),
                state.secrets.clone(),
                state.clock.clone(),
            ),
            webhooks: WebhookSender::new(
                egress.clone(),
                state.secrets.clone(),
                state.clock.clone(),
            ),
            chat: ChatClient::new(egress),
            definitions: Mutex::new(HashMap::new()),
            state,
        })
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.state.clock.now()
    }

    /// How long a claim holds without news from its worker.
    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.state.config.step_lease).unwrap_or_default()
    }

    /// Executes `run`'s ready steps for one slice of a worker invocation of the default
    /// length.
    pub async fn execute(&self, run: Run, heartbeat: &dyn Heartbeat) -> anyhow::Result<Outcome> {
        let deadline = Deadline::after(self.state.config.run_worker_invocation);
        self.execute_within(run, heartbeat, deadline).await
    }

    /// Executes `run`'s ready steps for one slice, starting none that cannot fit before
    /// `deadline` (see [`super::budget`]).
    #[tracing::instrument(name = "execute", skip_all, fields(run_id = %run.id))]
    pub async fn execute_within(
        &self,
        run: Run,
        heartbeat: &dyn Heartbeat,
        deadline: Deadline,
    ) -> anyhow::Result<Outcome> {
        let run = match run.status {
            RunStatus::Queued => {
                let now = self.now();
                match self.state.store.move_run(&run, Move::start(now), now).await {
                    Ok(run) => {
                        events::publish_run(&self.state, &run).await;
                        run
                    }
                    Err(crate::store::StoreError::ConditionFailed) => {
                        return match self.state.store.get_run(run.id).await? {
                            Some(current) if current.status == RunStatus::Running => {
                                Box::pin(self.execute_within(current, heartbeat, deadline)).await
                            }
                            Some(current) => Ok(Outcome::of(current.status)),
                            None => anyhow::bail!("run {} vanished", run.id),
                        };
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            RunStatus::Running => run,
            other => return Ok(Outcome::of(other)),
        };
        if super::teardown::project_gone(&self.state, run.project_id).await? {
            let error = "the run's project was deleted".to_owned();
            return self
                .finish_run(&run, RunStatus::Cancelled, Some(error))
                .await;
        }
        let Some(definition) = self.definition(&run).await? else {
            let error = format!(
                "workflow {} version {} no longer exists",
                run.workflow_id, run.workflow_version
            );
            return self.finish_run(&run, RunStatus::Failed, Some(error)).await;
        };
        let mut records: BTreeMap<String, StepRecord> = self
            .state
            .store
            .all_steps(run.id)
            .await?
            .into_iter()
            .map(|r| (r.sk(), r))
            .collect();
        let held = self.load_outputs(&mut records).await?;
        let run_view = json!({
            "id": run.id,
            "project_id": run.project_id,
            "workflow_id": run.workflow_id,
            "workflow_version": run.workflow_version,
            "agent_id": run.agent_id,
            "env": run.env,
            "trigger": run.trigger,
            "retries": run.retries,
        });
        let outputs = step_outputs(&records);
        let mut slice = Slice {
            run,
            definition: definition.clone(),
            records: records.into_iter().collect(),
            outputs,
            run_view,
            heartbeat,
            started: Instant::now(),
            deadline,
            held,
        };
        for (idx, &position) in execution_order(&definition).iter().enumerate() {
            let step = &definition.steps[position];
            let idx = u32::try_from(idx).context("too many steps")?;
            match self.step(&mut slice, idx, step).await? {
                StepFlow::Next => {}
                StepFlow::Stop(outcome) => return Ok(outcome),
            }
        }
        self.finish_run(&slice.run, RunStatus::Succeeded, None)
            .await
    }

    /// Handles one top-level step.
    async fn step(&self, slice: &mut Slice<'_>, idx: u32, step: &Step) -> anyhow::Result<StepFlow> {
        let sk = step_sk(idx, None);
        if let Some(existing) = slice.records.get(&sk).cloned() {
            match existing.status {
                StepStatus::Succeeded | StepStatus::Skipped => return Ok(StepFlow::Next),
                _ => {}
            }
        }
        if !slice.may_start_step() {
            return Ok(StepFlow::Stop(Outcome::Continue));
        }
        if let Some(reason) = self.skip_reason(slice, step) {
            let record = self.new_record(slice, idx, None, step.id.as_str(), step.kind.type_name());
            let record = StepRecord {
                status: StepStatus::Skipped,
                ended_at: Some(record.started_at),
                duration_ms: Some(0),
                lease_until: None,
                attempts: 0,
                ..record
            };
            self.state.store.skip_step(&record).await?;
            self.log(
                slice.run.id,
                Some(step.id.as_str()),
                LogLevel::Info,
                format!("skipped: {reason}"),
            )
            .await;
            slice.outputs.insert(
                step.id.as_str().to_owned(),
                output_view(Value::Null, StepStatus::Skipped),
            );
            return Ok(StepFlow::Next);
        }
        let record = self.new_record(slice, idx, None, step.id.as_str(), step.kind.type_name());
        let record = match self.acquire(slice, record, &step.kind).await? {
            Ok(record) => record,
            Err(flow) => return Ok(flow),
        };
        if let Some(error) = self.over_cap(slice) {
            return self
                .conclude(
                    slice,
                    step.id.as_str(),
                    record,
                    StepResult::failed(None, error),
                )
                .await;
        }
        if let StepKind::Loop(config) = &step.kind {
            return self.run_loop(slice, idx, step, config, record).await;
        }
        let result = self
            .with_heartbeat(
                slice.heartbeat,
                &record,
                self.execute_kind(slice, step.id.as_str(), &step.kind, None, &record),
            )
            .await;
        self.conclude(slice, step.id.as_str(), record, result).await
    }

    /// Claims a new record, or takes over an existing one when allowed. `Err(flow)` ends
    /// the step's handling with that flow.
    pub(super) async fn acquire(
        &self,
        slice: &mut Slice<'_>,
        record: StepRecord,
        kind: &StepKind,
    ) -> anyhow::Result<Result<StepRecord, StepFlow>> {
        let store = &self.state.store;
        let existing = match slice.records.get(&record.sk()).cloned() {
            Some(existing) => existing,
            None => match store.claim_step(&record).await? {
                Claim::Claimed => {
                    slice.records.insert(record.sk(), record.clone());
                    return Ok(Ok(record));
                }
                Claim::RunNotRunning => {
                    return Ok(Err(StepFlow::Stop(self.stopped(&slice.run).await?)))
                }
                Claim::Exists(existing) => *existing,
            },
        };
        let now = self.now();
        match existing.status {
            StepStatus::Succeeded | StepStatus::Skipped => {
                slice.records.insert(existing.sk(), existing);
                return Ok(Err(StepFlow::Next));
            }
            StepStatus::Waiting => {
                // A worker stopped between pausing the step and pausing the run.
                let run = self.pause_for_input(&slice.run, &existing).await?;
                return Ok(Err(StepFlow::Stop(Outcome::of(run))));
            }
            StepStatus::Failed if existing.round < slice.run.retries => {}
            StepStatus::Failed => {
                // A worker stopped between failing the step and failing the run.
                let message = step_failure(&existing.step_id, existing.error_message.as_deref());
                let outcome = self
                    .finish_run(&slice.run, RunStatus::Failed, Some(message))
                    .await?;
                return Ok(Err(StepFlow::Stop(outcome)));
            }
            StepStatus::Running if matches!(kind, StepKind::Loop(_)) => {
                // A loop's record only frames its iterations, which are claimed one by one.
                return Ok(Ok(existing));
            }
            StepStatus::Running => {
                if existing.lease_until.is_some_and(|lease| lease > now) {
                    return Ok(Err(StepFlow::Stop(Outcome::Busy)));
                }
                if !existing.yielded && !self.safe_to_repeat(kind).await {
                    let error = "the worker running this step stopped mid-call, and the step is \
                                 not safe to repeat automatically; retry the run to run it again";
                    let result = StepResult::failed(existing.request.clone(), error);
                    let step_id = existing.step_id.clone();
                    return Ok(Err(self
                        .conclude(slice, &step_id, existing, result)
                        .await?));
                }
            }
        }
        let lease = now + self.lease();
        if store
            .retake_step(&existing, now, lease, slice.run.retries)
            .await?
        {
            let record = StepRecord {
                status: StepStatus::Running,
                started_at: now,
                lease_until: Some(lease),
                round: slice.run.retries,
                attempts: existing.attempts + 1,
                ended_at: None,
                duration_ms: None,
                error_message: None,
                ..existing
            };
            self.log(
                slice.run.id,
                Some(&record.step_id),
                LogLevel::Info,
                format!("attempt {} started", record.attempts),
            )
            .await;
            slice.records.insert(record.sk(), record.clone());
            Ok(Ok(record))
        } else {
            // Someone else moved it, or the run stopped running.
            match store.get_run(slice.run.id).await? {
                Some(run) if run.status == RunStatus::Running => {
                    Ok(Err(StepFlow::Stop(Outcome::Busy)))
                }
                Some(run) => Ok(Err(StepFlow::Stop(Outcome::of(run.status)))),
                None => anyhow::bail!("run {} vanished", slice.run.id),
            }
        }
    }

    /// Why a step is skipped: a dependency was skipped, or a decision chose another branch.
    fn skip_reason(&self, slice: &Slice<'_>, step: &Step) -> Option<String> {
        for dependency in &step.depends_on {
            let view = slice.outputs.get(dependency.as_str());
            if view.and_then(|v| v.get("status")) == Some(&json!(StepStatus::Skipped)) {
                return Some(format!("it depends on `{dependency}`, which was skipped"));
            }
            let Some(StepKind::Decision(decision)) =
                slice.definition.step(dependency.as_str()).map(|s| &s.kind)
            else {
                continue;
            };
            let branch = view
                .and_then(|v| v.pointer("/output/branch"))
                .and_then(Value::as_str);
            let (taken, other) = match branch {
                Some("then") => (&decision.then, &decision.otherwise),
                Some("else") => (&decision.otherwise, &decision.then),
                _ => continue,
            };
            if other.contains(&step.id) && !taken.contains(&step.id) {
                return Some(format!(
                    "decision `{dependency}` took its `{}` branch",
                    branch.unwrap_or_default()
                ));
            }
        }
        None
    }

    pub(super) fn new_record(
        &self,
        slice: &Slice<'_>,
        idx: u32,
        iteration: Option<u32>,
        step_id: &str,
        kind: &str,
    ) -> StepRecord {
        let now = self.now();
        StepRecord::claim(
            slice.run.id,
            idx,
            iteration,
            step_id,
            kind,
            now,
            now + self.lease(),
            slice.run.retries,
        )
    }

    /// Records the end of an attempt and decides what happens next.
    pub(super) async fn conclude(
        &self,
        slice: &mut Slice<'_>,
        step_id: &str,
        record: StepRecord,
        result: StepResult,
    ) -> anyhow::Result<StepFlow> {
        if result.status == StepStatus::Running {
            return self.give_back(slice, record, result).await;
        }
        let at = self.now();
        let payloads = &self.state.payloads;
        let request = match result.request.clone() {
            Some(value) => Some(payloads.keep(slice.run.id, value).await?),
            None => None,
        };
        let response = match result.response.clone() {
            Some(value) => Some(payloads.keep(slice.run.id, value).await?),
            None => None,
        };
        let end = StepEnd {
            status: result.status,
            at,
            duration_ms: elapsed_ms(record.started_at, at),
            error_message: result.error.clone(),
            request,
            response,
            usage: result.usage,
        };
        if !self.state.store.finish_step(&record, &end).await? {
            tracing::warn!(step = %record.name, "another worker took the step over; its result is dropped");
            return Ok(StepFlow::Stop(Outcome::Busy));
        }
        let mut lines: Vec<LogLine> = result
            .logs
            .into_iter()
            .map(|(level, message)| LogLine {
                at,
                level,
                step_id: Some(step_id.to_owned()),
                message,
            })
            .collect();
        lines.push(LogLine {
            at,
            level: if result.status == StepStatus::Failed {
                LogLevel::Error
            } else {
                LogLevel::Info
            },
            step_id: Some(step_id.to_owned()),
            message: match (&result.status, &result.error) {
                (StepStatus::Failed, Some(error)) => format!("{} failed: {error}", record.name),
                (StepStatus::Waiting, _) => format!("{} waits for input", record.name),
                (status, _) => format!(
                    "{} {} in {} ms",
                    record.name,
                    status.as_str(),
                    end.duration_ms
                ),
            },
        });
        self.state.store.note(slice.run.id, &lines).await;
        // The output stays in memory for later steps' templates; a stored request does not.
        slice.held += end.response.as_ref().map_or(0, Payload::stored_bytes);
        let (request, request_ref) = match end.request {
            Some(Payload::Stored(stored)) => (None, Some(stored)),
            _ => (result.request, record.request_ref.clone()),
        };
        let finished = StepRecord {
            status: result.status,
            ended_at: Some(at),
            duration_ms: Some(end.duration_ms),
            error_message: result.error.clone(),
            request,
            request_ref,
            response: result.response.clone(),
            lease_until: None,
            ..record
        };
        slice.records.insert(finished.sk(), finished.clone());
        match result.status {
            StepStatus::Succeeded => {
                if finished.iteration.is_none() {
                    slice.outputs.insert(
                        step_id.to_owned(),
                        output_view(
                            result.response.unwrap_or(Value::Null),
                            StepStatus::Succeeded,
                        ),
                    );
                }
                Ok(StepFlow::Next)
            }
            StepStatus::Waiting => {
                let status = self.pause_for_input(&slice.run, &finished).await?;
                Ok(StepFlow::Stop(Outcome::of(status)))
            }
            StepStatus::Failed => {
                let message = step_failure(&finished.name, result.error.as_deref());
                Ok(StepFlow::Stop(
                    self.finish_run(&slice.run, RunStatus::Failed, Some(message))
                        .await?,
                ))
            }
            StepStatus::Running | StepStatus::Skipped => Ok(StepFlow::Next),
        }
    }

    /// Moves a running run to `awaiting_input` on `step`; returns the run's status after.
    async fn pause_for_input(&self, run: &Run, step: &StepRecord) -> anyhow::Result<RunStatus> {
        match self
            .state
            .store
            .move_run(
                run,
                Move::await_input(run, step.sk(), self.now()),
                self.now(),
            )
            .await
        {
            Ok(run) => {
                events::publish_run(&self.state, &run).await;
                Ok(run.status)
            }
            Err(crate::store::StoreError::ConditionFailed) => Ok(self
                .state
                .store
                .get_run(run.id)
                .await?
                .map_or(RunStatus::Cancelled, |r| r.status)),
            Err(err) => Err(err.into()),
        }
    }

    /// Ends a running run; returns the outcome it ended with (another writer may have ended
    /// it first, e.g. a cancel).
    async fn finish_run(
        &self,
        run: &Run,
        status: RunStatus,
        error: Option<String>,
    ) -> anyhow::Result<Outcome> {
        let at = self.now();
        let step = Move::finish(run, status, error, at);
        match self.state.store.move_run(run, step, at).await {
            Ok(ended) => {
                events::publish_run(&self.state, &ended).await;
                Ok(Outcome::of(status))
            }
            Err(crate::store::StoreError::ConditionFailed) => self.stopped(run).await,
            Err(err) => Err(err.into()),
        }
    }

    /// The outcome of a run that is no longer `running`.
    async fn stopped(&self, run: &Run) -> anyhow::Result<Outcome> {
        match self.state.store.get_run(run.id).await? {
            Some(current) if current.status == RunStatus::Running => Ok(Outcome::Busy),
            Some(current) => Ok(Outcome::of(current.status)),
            None => anyhow::bail!("run {} vanished", run.id),
        }
    }

    /// Runs `future` while renewing the step's lease and heartbeating the task.
    pub(super) async fn with_heartbeat(
        &self,
        heartbeat: &dyn Heartbeat,
        record: &StepRecord,
        future: impl std::future::Future<Output = StepResult>,
    ) -> StepResult {
        tokio::pin!(future);
        let every = HEARTBEAT_EVERY.min(self.state.config.step_lease / 3);
        let mut ticker = tokio::time::interval(every.max(Duration::from_millis(100)));
        ticker.tick().await;
        loop {
            tokio::select! {
                result = &mut future => return result,
                _ = ticker.tick() => {
                    heartbeat.beat().await;
                    let lease = self.now() + self.lease();
                    if let Err(err) = self.state.store.renew_step_lease(record, lease).await {
                        tracing::warn!(error = %err, "could not renew a step lease");
                    }
                }
            }
        }
    }

    /// Executes one step (or iteration) of `kind`.
    pub(super) async fn execute_kind(
        &self,
        slice: &Slice<'_>,
        step_id: &str,
        kind: &StepKind,
        item: Option<&Value>,
        record: &StepRecord,
    ) -> StepResult {
        let scope = slice.scope(item, None);
        match kind {
            StepKind::Decision(decision) => steps::decision::decide(decision, &scope).await,
            StepKind::Tool(config) => self.tool_step(slice, config, &scope, record).await,
            StepKind::Prompt(config) => self.prompt_step(slice, config, &scope, record).await,
            StepKind::Webhook(config) => self.webhook_step(slice, config, &scope, record).await,
            StepKind::Human(config) => steps::human::human_step(config, &scope),
            // Loops run through `run_loop`; a loop's own step is never a loop.
            StepKind::Loop(_) => {
                StepResult::failed(None, format!("step `{step_id}`: a loop cannot nest"))
            }
        }
    }

    /// Whether a step interrupted mid-call may run again without a person deciding: tools
    /// only when their method is idempotent; prompts only when all their tools are;
    /// webhooks yes, since their delivery id lets receivers drop the duplicate.
    async fn safe_to_repeat(&self, kind: &StepKind) -> bool {
        match kind {
            StepKind::Decision(_) | StepKind::Loop(_) => true,
            StepKind::Human(_) | StepKind::Webhook(_) => true,
            StepKind::Tool(config) => self.tool_is_idempotent(config.tool_id).await,
            StepKind::Prompt(config) => {
                for id in &config.tools {
                    if !self.tool_is_idempotent(*id).await {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// Whether tool `id` exists and calling it twice has the effect of calling it once.
    async fn tool_is_idempotent(&self, id: Uuid) -> bool {
        self.state
            .store
            .get_tool(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|t| tool::is_idempotent(&t))
    }

    /// The definition of a run's workflow version; versions are immutable, so it is cached.
    async fn definition(&self, run: &Run) -> anyhow::Result<Option<Arc<Definition>>> {
        let key = (run.workflow_id, run.workflow_version);
        if let Some(found) = self
            .definitions
            .lock()
            .ok()
            .and_then(|d| d.get(&key).cloned())
        {
            return Ok(Some(found));
        }
        let Some(version) = self
            .state
            .store
            .get_workflow_version(run.workflow_id, run.workflow_version)
            .await?
        else {
            return Ok(None);
        };
        let definition = Arc::new(version.definition);
        if let Ok(mut cache) = self.definitions.lock() {
            if cache.len() > 256 {
                cache.clear();
            }
            cache.insert(key, definition.clone());
        }
        Ok(Some(definition))
    }

    async fn log(&self, run_id: Uuid, step_id: Option<&str>, level: LogLevel, message: String) {
        let line = LogLine {
            at: self.now(),
            level,
            step_id: step_id.map(str::to_owned),
            message,
        };
        self.state.store.note(run_id, &[line]).await;
    }
}

impl Slice<'_> {
    pub(super) fn scope<'s>(
        &'s self,
        item: Option<&'s Value>,
        iteration: Option<u64>,
    ) -> Scope<'s> {
        Scope {
            input: &self.run.input,
            steps: &self.outputs,
            run: &self.run_view,
            item,
            iteration,
        }
    }
}

fn step_failure(name: &str, error: Option<&str>) -> String {
    clip(format!(
        "step `{name}` failed: {}",
        error.unwrap_or("no reason recorded")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifecycle_routes_on_the_outcome_and_busy_answers_nothing() {
        assert_eq!(Outcome::Continue.status(), Some("continue"));
        assert_eq!(Outcome::AwaitingInput.status(), Some("awaiting_input"));
        assert_eq!(Outcome::Failed.status(), Some("failed"));
        assert_eq!(Outcome::Busy.status(), None);
        assert_eq!(Outcome::of(RunStatus::AwaitingApproval), Outcome::Busy);
    }
}
