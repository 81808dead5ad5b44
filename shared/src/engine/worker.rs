//! The run worker: consumes the run queue, where the lifecycle state machine sends its tasks.
//!
//! Every message is `{kind, run_id, task_token?, error?}`:
//!
//! - `execute`: runs the run's ready steps for one slice ([`Engine::execute`]) and answers the
//!   task with `{status}` (`continue`, `awaiting_input`, `succeeded`, `failed`, `cancelled`);
//! - `approval`, `await_human`, `await_retry`: parks the task token on the run, which waits in
//!   `awaiting_approval`, `awaiting_input` or `failed`. The API call that ends the wait
//!   (approve, resume, retry) moves the run first and then answers the token if it is parked;
//!   if the run had already moved when the worker tried to park, the worker answers it. One of
//!   the two always sees both the token and the new status;
//! - `finalize`: the lifecycle broke (a wait or heartbeat timed out): the run ends unless it
//!   already has.
//!
//! Delivery is at least once: messages of one run in a batch are handled one after the other,
//! step records make a duplicate harmless, and answering a task twice is refused by Step
//! Functions, which the worker treats as done. A message the worker cannot handle is
//! reported failed and comes back after [`Config::run_retry_delay`]; after the queue's
//! `maxReceiveCount` it lands in the dead-letter queue. A message that is no run task at all
//! goes there at once, after one log line: retrying it cannot help.
//!
//! A batch mixes tenants, so runs are isolated from each other: each run's messages are
//! handled in a task of their own, under the invocation's [`Deadline`] (steps get their
//! budgets from it, see [`super::budget`]). A task that panics, or is still running
//! [`OVERRUN_GRACE`] after the deadline (then it is aborted), fails its own messages only.
//!
//! The same [`Worker`] serves the Lambda function (an SQS event, partial batch failures) and
//! the dev server ([`Worker::run`], a long-polling loop).
//!
//! [`Config::run_retry_delay`]: crate::config::Config::run_retry_delay

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::budget::{Deadline, SAFETY_MARGIN};
use super::lifecycle;
use super::run::{Engine, Heartbeat};
use crate::events;
use crate::run::{Move, Run, RunStatus};
use crate::state::AppState;
use crate::store::StoreError;

/// A message as the queue delivered it.
#[derive(Clone, Debug)]
pub struct QueueMessage {
    /// SQS message id.
    pub message_id: String,
    /// Receipt handle, to delay a failed message's next delivery; `None` leaves that to
    /// the queue's visibility timeout.
    pub receipt_handle: Option<String>,
    /// The body.
    pub body: String,
}

impl From<aws_lambda_events::event::sqs::SqsMessage> for QueueMessage {
    fn from(record: aws_lambda_events::event::sqs::SqsMessage) -> Self {
        Self {
            message_id: record.message_id.unwrap_or_default(),
            receipt_handle: record.receipt_handle,
            body: record.body.unwrap_or_default(),
        }
    }
}

impl From<aws_sdk_sqs::types::Message> for QueueMessage {
    fn from(message: aws_sdk_sqs::types::Message) -> Self {
        Self {
            message_id: message.message_id.unwrap_or_default(),
            receipt_handle: message.receipt_handle,
            body: message.body.unwrap_or_default(),
        }
    }
}

/// A task the lifecycle sent.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Task {
    Approval {
        run_id: Uuid,
        task_token: String,
    },
    Execute {
        run_id: Uuid,
        task_token: String,
    },
    AwaitHuman {
        run_id: Uuid,
        task_token: String,
    },
    AwaitRetry {
        run_id: Uuid,
        task_token: String,
    },
    Finalize {
        run_id: Uuid,
        #[serde(default)]
        error: Value,
    },
}

impl Task {
    fn run_id(&self) -> Uuid {
        match self {
            Self::Approval { run_id, .. }
            | Self::Execute { run_id, .. }
            | Self::AwaitHuman { run_id, .. }
            | Self::AwaitRetry { run_id, .. }
            | Self::Finalize { run_id, .. } => *run_id,
        }
    }
}

/// How handling a message went.
enum Handled {
    /// Done: delete it.
    Done,
    /// Try again after this long.
    Later(Duration),
}

/// How long past its deadline a run's task may go on before it is aborted: time to record a
/// step that ended at the deadline.
pub const OVERRUN_GRACE: Duration = Duration::from_secs(SAFETY_MARGIN.as_secs() / 2);

/// Runs each run's future (giving the ids of its failed messages) in a task of its own and
/// gathers what failed. A task that panics, or is still running at `abort_at` (it is then
/// aborted), fails all its own messages and nobody else's.
async fn isolated<F>(
    groups: Vec<(Uuid, Vec<String>, F)>,
    abort_at: tokio::time::Instant,
) -> Vec<String>
where
    F: Future<Output = Vec<String>> + Send + 'static,
{
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|(run_id, ids, future)| (run_id, ids, tokio::spawn(future)))
        .collect();
    let mut failed = Vec::new();
    for (run_id, ids, mut task) in tasks {
        match tokio::time::timeout_at(abort_at, &mut task).await {
            Ok(Ok(group_failed)) => failed.extend(group_failed),
            Ok(Err(error)) => {
                tracing::error!(%run_id, error = %error, "a run's task panicked; its messages failed alone");
                failed.extend(ids);
            }
            Err(_) => {
                task.abort();
                tracing::error!(%run_id, "a run's task ran past the invocation deadline and was stopped");
                failed.extend(ids);
            }
        }
    }
    failed
}

/// Consumes the run queue.
pub struct Worker {
    inner: Arc<Inner>,
}

/// What the per-run tasks of a batch share.
struct Inner {
    engine: Engine,
    state: AppState,
}

impl Worker {
    /// A worker on `state`.
    pub async fn new(state: AppState) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                engine: Engine::new(state.clone())?,
                state,
            }),
        })
    }

    /// Handles a batch within an invocation of the configured length
    /// ([`Config::run_worker_invocation`]); returns the ids of the messages that failed.
    ///
    /// [`Config::run_worker_invocation`]: crate::config::Config::run_worker_invocation
    pub async fn handle_batch(&self, messages: Vec<QueueMessage>) -> Vec<String> {
        let deadline = Deadline::after(self.inner.state.config.run_worker_invocation);
        self.handle_batch_until(messages, deadline).await
    }

    /// Handles a batch by `deadline`; returns the ids of the messages that failed. Messages of
    /// the same run are handled in order, each run in a task of its own.
    pub async fn handle_batch_until(
        &self,
        messages: Vec<QueueMessage>,
        deadline: Deadline,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        let mut groups: BTreeMap<Uuid, Vec<(QueueMessage, Task)>> = BTreeMap::new();
        for message in messages {
            match serde_json::from_str::<Task>(&message.body) {
                Ok(task) => groups
                    .entry(task.run_id())
                    .or_default()
                    .push((message, task)),
                Err(error) => {
                    if !self.inner.dead_letter(&message, &error).await {
                        failed.push(message.message_id);
                    }
                }
            }
        }
        let groups = groups
            .into_iter()
            .map(|(run_id, group)| {
                let ids = group.iter().map(|(m, _)| m.message_id.clone()).collect();
                let inner = Arc::clone(&self.inner);
                (run_id, ids, async move {
                    inner.handle_group(group, deadline).await
                })
            })
            .collect();
        let abort_at = tokio::time::Instant::from_std(deadline.instant() + OVERRUN_GRACE);
        failed.extend(isolated(groups, abort_at).await);
        failed
    }

    /// Long-polls the run queue until `shutdown` resolves, handling what arrives. Handled
    /// messages are deleted; failed ones come back after the retry delay.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.inner.run(self, shutdown).await
    }

    /// Handles an SQS event of the Lambda function by `deadline` (the invocation's, see
    /// [`Deadline::of_lambda`]): the ids of failed messages, for `ReportBatchItemFailures`.
    pub async fn handle_event_until(
        &self,
        event: aws_lambda_events::event::sqs::SqsEvent,
        deadline: Deadline,
    ) -> aws_lambda_events::event::sqs::SqsBatchResponse {
        let batch = event.records.into_iter().map(QueueMessage::from).collect();
        let failed = self.handle_batch_until(batch, deadline).await;
        aws_lambda_events::event::sqs::SqsBatchResponse {
            batch_item_failures: failed
                .into_iter()
                .map(
                    |item_identifier| aws_lambda_events::event::sqs::BatchItemFailure {
                        item_identifier,
                    },
                )
                .collect(),
        }
    }
}

impl Inner {
    /// Handles one run's messages in order; the ids of those that failed.
    async fn handle_group(
        &self,
        group: Vec<(QueueMessage, Task)>,
        deadline: Deadline,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        for (message, task) in group {
            match self.handle(task, deadline).await {
                Ok(Handled::Done) => {}
                Ok(Handled::Later(delay)) => {
                    self.delay(&message, delay).await;
                    failed.push(message.message_id);
                }
                Err(error) => {
                    tracing::error!(message_id = %message.message_id, error = ?error, "a run message failed");
                    self.delay(&message, self.state.config.run_retry_delay)
                        .await;
                    failed.push(message.message_id);
                }
            }
        }
        failed
    }

    /// Moves a message that is no run task to the dead-letter queue, with one log line;
    /// whether it is there (else it is reported failed and comes back).
    async fn dead_letter(&self, message: &QueueMessage, error: &serde_json::Error) -> bool {
        let sent = async {
            let name = self.state.config.run_dlq_name();
            let url = super::redrive::queue_url(&self.state.clients.sqs, &name).await?;
            self.state
                .clients
                .sqs
                .send_message()
                .queue_url(url)
                .message_body(&message.body)
                .send()
                .await
                .with_context(|| format!("Failed to send to queue {name}"))
        }
        .await;
        match sent {
            Ok(_) => {
                tracing::warn!(message_id = %message.message_id, error = %error, "the message is not a run task: moved to the dead-letter queue");
                true
            }
            Err(dlq_error) => {
                tracing::warn!(message_id = %message.message_id, error = %error, dlq_error = %dlq_error, "the message is not a run task, and the dead-letter queue refused it");
                false
            }
        }
    }

    /// Handles one task.
    async fn handle(&self, task: Task, deadline: Deadline) -> anyhow::Result<Handled> {
        let run_id = task.run_id();
        let run = self.state.store.get_run(run_id).await?;
        let Some(run) = run else {
            if let Some(token) = token(&task) {
                self.fail_task(
                    token,
                    "RunNotFound",
                    &format!("run {run_id} does not exist"),
                )
                .await;
                return Ok(Handled::Done);
            }
            anyhow::bail!("run {run_id} does not exist");
        };
        let span = tracing::info_span!("run_task", %run_id, project_id = %run.project_id);
        let _entered = span.enter();
        match task {
            Task::Execute { task_token, .. } => {
                let beat = TaskHeartbeat {
                    sfn: &self.state.clients.sfn,
                    token: &task_token,
                };
                let outcome = self.engine.execute_within(run, &beat, deadline).await?;
                match outcome.status() {
                    Some(status) => {
                        self.answer(&task_token, json!({ "status": status }))
                            .await?;
                        Ok(Handled::Done)
                    }
                    None => Ok(Handled::Later(self.state.config.step_lease / 5)),
                }
            }
            Task::Approval { task_token, .. } => {
                self.park(
                    run,
                    RunStatus::AwaitingApproval,
                    RunStatus::Queued,
                    &task_token,
                    json!({"decision": "approved"}),
                )
                .await
            }
            Task::AwaitHuman { task_token, .. } => {
                self.park(
                    run,
                    RunStatus::AwaitingInput,
                    RunStatus::Running,
                    &task_token,
                    json!({"resumed": true}),
                )
                .await
            }
            Task::AwaitRetry { task_token, .. } => {
                self.park(
                    run,
                    RunStatus::Failed,
                    RunStatus::Queued,
                    &task_token,
                    json!({"retried": true}),
                )
                .await
            }
            Task::Finalize { error, .. } => {
                self.finalize(run, &error).await?;
                Ok(Handled::Done)
            }
        }
    }

    /// Parks `token` on a run waiting in `waiting`; if it already moved on to `released`,
    /// answers the token with `output` instead.
    async fn park(
        &self,
        run: Run,
        waiting: RunStatus,
        released: RunStatus,
        token: &str,
        output: Value,
    ) -> anyhow::Result<Handled> {
        match self
            .state
            .store
            .park_task_token(run.id, waiting, token)
            .await
        {
            Ok(()) => return Ok(Handled::Done),
            Err(StoreError::ConditionFailed) => {}
            Err(err) => return Err(err.into()),
        }
        match self.state.store.get_run(run.id).await? {
            Some(current) if current.status == released => self.answer(token, output).await?,
            // Cancelled or rejected before the token was parked: end the wait here.
            Some(current) if current.status == RunStatus::Cancelled => {
                self.fail_task(token, lifecycle::CANCELLED_ERROR, "the run was cancelled")
                    .await;
            }
            _ => {}
        }
        Ok(Handled::Done)
    }

    /// Ends a run whose lifecycle broke, unless it already ended.
    async fn finalize(&self, run: Run, error: &Value) -> anyhow::Result<()> {
        let at = self.state.clock.now();
        let Some(step) = Move::lifecycle_broke(&run, error, at) else {
            return Ok(());
        };
        match self.state.store.move_run(&run, step, at).await {
            Ok(ended) => {
                events::publish_run(&self.state, &ended).await;
                Ok(())
            }
            // Someone else moved it meanwhile; the lifecycle has ended either way.
            Err(StoreError::ConditionFailed) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn answer(&self, token: &str, output: Value) -> anyhow::Result<()> {
        lifecycle::answer(&self.state, token, output).await
    }

    async fn fail_task(&self, token: &str, error: &str, cause: &str) {
        if let Err(err) = lifecycle::fail(&self.state, token, error, cause).await {
            tracing::warn!(error = ?err, "could not fail a lifecycle task");
        }
    }

    /// Delays a failed message's next delivery.
    async fn delay(&self, message: &QueueMessage, delay: Duration) {
        let Some(receipt) = &message.receipt_handle else {
            return;
        };
        let queue_url = match self.queue_url().await {
            Ok(url) => url,
            Err(error) => {
                tracing::warn!(error = ?error, "could not find the run queue");
                return;
            }
        };
        let seconds = i32::try_from(delay.as_secs())
            .unwrap_or(i32::MAX)
            .min(43_200);
        if let Err(error) = self
            .state
            .clients
            .sqs
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .send()
            .await
        {
            tracing::warn!(error = ?error, "could not delay a failed run message");
        }
    }

    async fn queue_url(&self) -> anyhow::Result<String> {
        lifecycle::run_queue_url(&self.state).await
    }

    async fn run(&self, worker: &Worker, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let queue_url = self.queue_url().await?;
        tokio::pin!(shutdown);
        loop {
            let received = tokio::select! {
                () = &mut shutdown => return Ok(()),
                received = self
                    .state
                    .clients
                    .sqs
                    .receive_message()
                    .queue_url(&queue_url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(10)
                    .send() => received,
            };
            let messages = match received {
                Ok(out) => out.messages.unwrap_or_default(),
                Err(error) => {
                    tracing::warn!(error = ?error, "could not receive run messages");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            let batch: Vec<QueueMessage> = messages
                .iter()
                .map(|m| QueueMessage {
                    message_id: m.message_id.clone().unwrap_or_default(),
                    receipt_handle: m.receipt_handle.clone(),
                    body: m.body.clone().unwrap_or_default(),
                })
                .collect();
            let failed = worker.handle_batch(batch.clone()).await;
            for message in batch.iter().filter(|m| !failed.contains(&m.message_id)) {
                let Some(receipt) = &message.receipt_handle else {
                    continue;
                };
                if let Err(error) = self
                    .state
                    .clients
                    .sqs
                    .delete_message()
                    .queue_url(&queue_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                {
                    tracing::warn!(error = ?error, "could not delete a handled run message");
                }
            }
        }
    }
}

fn token(task: &Task) -> Option<&str> {
    match task {
        Task::Approval { task_token, .. }
        | Task::Execute { task_token, .. }
        | Task::AwaitHuman { task_token, .. }
        | Task::AwaitRetry { task_token, .. } => Some(task_token),
        Task::Finalize { .. } => None,
    }
}

/// Heartbeats an `execute` task while a long step runs.
struct TaskHeartbeat<'a> {
    sfn: &'a aws_sdk_sfn::Client,
    token: &'a str,
}

#[async_trait]
impl Heartbeat for TaskHeartbeat<'_> {
    async fn beat(&self) {
        if let Err(error) = self
            .sfn
            .send_task_heartbeat()
            .task_token(self.token)
            .send()
            .await
        {
            tracing::warn!(error = ?error, "could not heartbeat the run task");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use uuid::Uuid;

    use super::isolated;

    type Group = (
        Uuid,
        Vec<String>,
        Pin<Box<dyn Future<Output = Vec<String>> + Send>>,
    );

    fn group(ids: &[&str], future: impl Future<Output = Vec<String>> + Send + 'static) -> Group {
        let ids = ids.iter().map(|id| (*id).to_owned()).collect();
        (Uuid::now_v7(), ids, Box::pin(future))
    }

    #[tokio::test]
    async fn a_panicking_or_overrunning_run_fails_only_its_own_messages() {
        let abort_at = tokio::time::Instant::now() + Duration::from_millis(200);
        let groups = vec![
            group(&["ok-1", "ok-2"], async { Vec::new() }),
            group(&["panics-1", "panics-2"], async {
                panic!("a bug in one run")
            }),
            group(&["slow-1"], async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Vec::new()
            }),
            group(&["partly-1", "partly-2"], async {
                vec!["partly-2".to_owned()]
            }),
        ];
        let mut failed = isolated(groups, abort_at).await;
        failed.sort();
        assert_eq!(failed, ["panics-1", "panics-2", "partly-2", "slow-1"]);
    }
}
