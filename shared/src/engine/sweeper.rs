//! The sweeper: finds runs that stopped moving and repairs them, or ends them saying why;
//! and finishes the teardown of deleted projects ([`super::teardown`]). A Lambda function
//! runs [`sweep`] on a schedule; the dev server runs it in a loop.
//!
//! It never scans. It pages through the list of runs **in motion** (the sparse index gsi6,
//! see [`crate::store::schema`]), least recently changed first, taking only runs that have
//! not changed for [`QUIET`] and at most [`RUNS_PER_SWEEP`] of them. Each run is read again
//! (the index lags), then:
//!
//! 1. its project was deleted: the project's teardown cancels it;
//! 2. its execution does not exist (the lifecycle's start failed after the run was stored,
//!    or the Step Functions state was lost, as when a local LocalStack restarts): it is
//!    started now (starts are idempotent by name) and routes from where the run is — a
//!    queued or running run executes, one waiting for input or approval waits again, a
//!    failed one waits for a retry. If that start fails too, the run ends saying so;
//! 3. its execution ended: the run ends too, saying how the execution ended (`failed`
//!    leaves the list);
//! 4. its execution waits on a task whose token the run does not hold: the task's message
//!    (read back from the execution's history) was lost, e.g. dead-lettered. A wait
//!    (approval, human input, retry) is sent to the run queue again, and the worker parks
//!    its token, or answers it if the run moved on meanwhile: an approved run goes on,
//!    it is never cancelled for a lost message. An `execute` task sent more than
//!    [`STALLED`] ago is sent again too; a duplicate of a live one is harmless (the step's
//!    lease keeps a second worker out);
//! 5. otherwise (and after 4) it is revisited later: moved to the back of the list.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::lifecycle::{self, Execution};
use super::run::SLICE;
use super::teardown::{self, Teardown};
use crate::config::Config;
use crate::events;
use crate::run::{Move, Run, RunStatus};
use crate::state::AppState;
use crate::store::runs::ACTIVE_SHARDS;
use crate::store::StoreError;

/// How long an `execute` task may stay unanswered before its message is sent again: the
/// longest slice (a worker invocation may cut it shorter) plus a step's lease, which a live
/// worker renews. How long a run must stay unchanged before the sweeper looks at it at all
/// is [`Config::sweeper_quiet`].
pub fn stalled(config: &Config) -> Duration {
    SLICE.min(config.run_worker_invocation) + config.step_lease
}

/// Most runs one sweep examines.
pub const RUNS_PER_SWEEP: usize = 200;

/// Most deleted projects one sweep makes a teardown pass over.
pub const PROJECTS_PER_SWEEP: i32 = 10;

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Runs examined.
    pub examined: usize,
    /// Lifecycles started that had never started.
    pub started: usize,
    /// Lost lifecycle tasks sent to the run queue again.
    pub redelivered: usize,
    /// Runs ended because nothing could move them any more.
    pub ended: usize,
    /// Runs taken off the list of runs in motion.
    pub settled: usize,
    /// Deleted projects whose teardown finished.
    pub torn_down: usize,
}

/// What the sweeper did with one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repair {
    Started,
    Redelivered,
    Ended,
    Settled,
    Revisit,
    Nothing,
}

/// Where a run's project is, read once per sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Live,
    Deleted,
    Missing,
}

/// One sweep: deleted projects' teardowns, then the runs that stopped moving.
#[tracing::instrument(name = "sweep", skip_all)]
pub async fn sweep(state: &AppState) -> anyhow::Result<SweepReport> {
    let mut report = SweepReport::default();
    for project in state
        .store
        .projects_to_tear_down(PROJECTS_PER_SWEEP)
        .await?
    {
        match teardown::tear_down(state, &project).await {
            Ok(Teardown::Done) => report.torn_down += 1,
            Ok(Teardown::RunsLeft) => {}
            Err(error) => {
                tracing::warn!(project_id = %project.id, error = ?error, "a deleted project's teardown stopped");
            }
        }
    }
    let before = state.clock.now() - chrono::Duration::from_std(state.config.sweeper_quiet)?;
    let mut projects: HashMap<Uuid, Owner> = HashMap::new();
    'shards: for shard in 0..ACTIVE_SHARDS {
        let mut start = None;
        loop {
            let left = RUNS_PER_SWEEP.saturating_sub(report.examined);
            if left == 0 {
                break 'shards;
            }
            let page = state
                .store
                .runs_in_motion(
                    shard,
                    before,
                    i32::try_from(left).unwrap_or(100).min(100),
                    start,
                )
                .await?;
            for listed in page.items {
                report.examined += 1;
                let outcome = match repair(state, listed.id, &mut projects).await {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        tracing::warn!(run_id = %listed.id, error = ?error, "the sweeper could not repair a run");
                        // Behind the others, so one run that keeps failing blocks no sweep.
                        if let Err(error) =
                            state.store.revisit_later(&listed, state.clock.now()).await
                        {
                            tracing::warn!(run_id = %listed.id, error = ?error, "could not postpone a run's sweep");
                        }
                        Repair::Nothing
                    }
                };
                match outcome {
                    Repair::Started => report.started += 1,
                    Repair::Redelivered => report.redelivered += 1,
                    Repair::Ended => report.ended += 1,
                    Repair::Settled => report.settled += 1,
                    Repair::Revisit | Repair::Nothing => {}
                }
            }
            match page.next {
                Some(next) => start = Some(next),
                None => break,
            }
        }
    }
    if report != SweepReport::default() {
        tracing::info!(?report, "sweep done");
    }
    Ok(report)
}

/// Examines run `run_id` and repairs it.
#[tracing::instrument(name = "sweep_run", skip(state, projects))]
async fn repair(
    state: &AppState,
    run_id: Uuid,
    projects: &mut HashMap<Uuid, Owner>,
) -> anyhow::Result<Repair> {
    let Some(run) = state.store.get_run(run_id).await? else {
        return Ok(Repair::Nothing);
    };
    if run.status == RunStatus::Succeeded || run.status == RunStatus::Cancelled {
        return Ok(Repair::Nothing);
    }
    let project = match projects.get(&run.project_id) {
        Some(known) => *known,
        None => {
            let known = match state.store.get_project(run.project_id).await? {
                Some(project) if project.deleted_at.is_some() => Owner::Deleted,
                Some(_) => Owner::Live,
                None => Owner::Missing,
            };
            projects.insert(run.project_id, known);
            known
        }
    };
    match project {
        Owner::Live => {}
        // The project's teardown (above, or its next pass) cancels the run.
        Owner::Deleted => return revisit(state, &run).await,
        Owner::Missing => {
            return abandon(state, &run, "the run's project no longer exists").await;
        }
    }
    match lifecycle::execution(state, run.id).await? {
        Execution::Missing => {
            if let Err(error) = lifecycle::start(state, &run).await {
                tracing::warn!(error = ?error, "the run's lifecycle does not start");
                if run.status == RunStatus::Failed {
                    // Nothing can retry it without a lifecycle.
                    return settle(state, &run).await;
                }
                return abandon(
                    state,
                    &run,
                    "the run's lifecycle could not be started; start a new run",
                )
                .await;
            }
            tracing::info!(
                status = run.status.as_str(),
                "started the lifecycle of a run that had none"
            );
            revisit(state, &run).await?;
            Ok(Repair::Started)
        }
        Execution::Ended(how) => {
            if run.status == RunStatus::Failed {
                return settle(state, &run).await;
            }
            let reason = format!(
                "the run's lifecycle execution ended ({how}) while the run was {}; start a \
                 new run",
                run.status.as_str()
            );
            abandon(state, &run, &reason).await
        }
        Execution::Running => {
            let Some(task) = lifecycle::pending_task(state, run.id).await? else {
                return revisit(state, &run).await;
            };
            let kind = task.message["kind"].as_str().unwrap_or_default();
            let lost = if kind == "execute" {
                let waited = state.clock.now() - task.sent_at;
                waited > chrono::Duration::from_std(stalled(&state.config))?
            } else {
                run.task_token.as_deref() != Some(task.token.as_str())
            };
            if !lost {
                return revisit(state, &run).await;
            }
            lifecycle::redeliver(state, &task.message).await?;
            tracing::info!(kind, "sent a lost lifecycle task to the run queue again");
            revisit(state, &run).await?;
            Ok(Repair::Redelivered)
        }
    }
}

/// Ends a run nothing will move any more, saying why.
async fn abandon(state: &AppState, run: &Run, reason: &str) -> anyhow::Result<Repair> {
    let at = state.clock.now();
    let Some(step) = Move::abandoned(run, reason, at) else {
        return Ok(Repair::Nothing);
    };
    end_with(state, run, step).await
}

async fn end_with(state: &AppState, run: &Run, step: Move) -> anyhow::Result<Repair> {
    let at = state.clock.now();
    match state.store.move_run(run, step, at).await {
        Ok(ended) => {
            events::publish_run(state, &ended).await;
            tracing::warn!(
                status = ended.status.as_str(),
                reason = ended.error_message.as_deref().unwrap_or_default(),
                "the sweeper ended a run"
            );
            if ended.status == RunStatus::Failed {
                // A failed run waits for a retry only inside a running lifecycle.
                settle(state, &ended).await?;
            }
            Ok(Repair::Ended)
        }
        // Something moved it meanwhile: it is not stuck.
        Err(StoreError::ConditionFailed) => Ok(Repair::Nothing),
        Err(err) => Err(err.into()),
    }
}

async fn settle(state: &AppState, run: &Run) -> anyhow::Result<Repair> {
    Ok(if state.store.leave_motion(run).await? {
        Repair::Settled
    } else {
        Repair::Nothing
    })
}

async fn revisit(state: &AppState, run: &Run) -> anyhow::Result<Repair> {
    state.store.revisit_later(run, state.clock.now()).await?;
    Ok(Repair::Revisit)
}
