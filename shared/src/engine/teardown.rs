//! Winding down a deleted project: what deleting it starts and the sweeper finishes.
//!
//! Deleting a project hides it at once (`404`) and lists it for teardown (see
//! [`crate::store::schema`]). A teardown pass then, in order:
//!
//! 1. revokes its API keys that still work;
//! 2. cancels its unfinished runs (`queued`, `awaiting_approval`, `running`,
//!    `awaiting_input`) with the same [`Move::cancel`] the API's cancel applies, in the name
//!    of whoever deleted the project, and ends each one's execution ([`lifecycle::end`]);
//!    a worker mid-step stops at the next step boundary. At most [`RUNS_PER_PASS`] runs per
//!    pass, so the request that deletes a project stays short: if more are left, the
//!    sweeper's next passes cancel them;
//! 3. once no unfinished run is left, schedules the project's secrets for deletion
//!    (recoverable for [`DELETION_RECOVERY_DAYS`] days): tool credentials, agents' LLM keys,
//!    project credentials and the webhook signing secret;
//! 4. takes the project off the teardown list.
//!
//! Every step is safe to repeat, so a pass that fails halfway is simply run again. A failed
//! run that waits for a retry keeps its execution until the retry window closes (the run
//! cannot be retried: its project answers `404`).
//!
//! [`DELETION_RECOVERY_DAYS`]: crate::store::secrets::DELETION_RECOVERY_DAYS

use anyhow::Context;
use uuid::Uuid;

use super::lifecycle;
use crate::events;
use crate::run::{Move, RunStatus};
use crate::state::AppState;
use crate::store::agents::AgentFilter;
use crate::store::projects::Project;
use crate::store::runs::RunFilter;
use crate::store::secrets::path;
use crate::store::StoreError;

/// Most runs one teardown pass cancels.
pub const RUNS_PER_PASS: usize = 25;

/// The statuses of a run that has not ended.
const UNFINISHED: [RunStatus; 4] = [
    RunStatus::Queued,
    RunStatus::AwaitingApproval,
    RunStatus::Running,
    RunStatus::AwaitingInput,
];

/// Page size of the lists a pass reads.
const PAGE: i32 = 100;

/// Whether a pass finished the teardown or left runs for the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// Everything is done; the project left the teardown list.
    Done,
    /// Unfinished runs are left for the next pass.
    RunsLeft,
}

/// One teardown pass over the deleted `project`.
#[tracing::instrument(name = "teardown", skip_all, fields(project_id = %project.id))]
pub async fn tear_down(state: &AppState, project: &Project) -> anyhow::Result<Teardown> {
    let by = project.deleted_by.unwrap_or(project.owner_user_id);
    revoke_keys(state, project.id).await?;
    if cancel_runs(state, project.id, by).await? == Teardown::RunsLeft {
        return Ok(Teardown::RunsLeft);
    }
    discard_secrets(state, project.id).await?;
    state.store.torn_down(project.id).await?;
    tracing::info!("the deleted project is torn down");
    Ok(Teardown::Done)
}

/// Whether project `project_id` is deleted (or gone): a worker ends such a run when a slice
/// starts, before the teardown gets to it. One consistent read.
pub async fn project_gone(state: &AppState, project_id: Uuid) -> anyhow::Result<bool> {
    Ok(state
        .store
        .get_project(project_id)
        .await?
        .is_none_or(|p| p.deleted_at.is_some()))
}

async fn revoke_keys(state: &AppState, project_id: Uuid) -> anyhow::Result<()> {
    let now = state.clock.now();
    let mut start = None;
    loop {
        let page = state.store.list_api_keys(project_id, PAGE, start).await?;
        for key in page.items.iter().filter(|k| k.is_usable(now)) {
            match state.store.revoke_api_key(project_id, key.id, now).await {
                // Revoked meanwhile.
                Ok(()) | Err(StoreError::ConditionFailed) => {}
                Err(err) => return Err(err).context("Failed to revoke a deleted project's key"),
            }
        }
        match page.next {
            Some(next) => start = Some(next),
            None => return Ok(()),
        }
    }
}

/// Cancels up to [`RUNS_PER_PASS`] unfinished runs.
async fn cancel_runs(state: &AppState, project_id: Uuid, by: Uuid) -> anyhow::Result<Teardown> {
    let mut budget = RUNS_PER_PASS;
    for status in UNFINISHED {
        let filter = RunFilter {
            status: Some(status),
            ..RunFilter::default()
        };
        loop {
            if budget == 0 {
                return Ok(Teardown::RunsLeft);
            }
            let limit = i32::try_from(budget).unwrap_or(PAGE).min(PAGE);
            let page = state
                .store
                .list_runs(project_id, &filter, limit, None)
                .await?;
            if page.items.is_empty() {
                break;
            }
            for listed in page.items {
                budget = budget.saturating_sub(1);
                // The index lags; the run as it is now decides.
                let Some(run) = state.store.get_run(listed.id).await? else {
                    continue;
                };
                let at = state.clock.now();
                match state
                    .store
                    .move_run(&run, Move::cancel(&run, by, at), at)
                    .await
                {
                    Ok(cancelled) => {
                        events::publish_run(state, &cancelled).await;
                        lifecycle::end(state, &cancelled, "the project was deleted").await;
                    }
                    // It ended meanwhile.
                    Err(StoreError::ConditionFailed) => {}
                    Err(err) => {
                        return Err(err).context("Failed to cancel a deleted project's run")
                    }
                }
            }
        }
    }
    Ok(Teardown::Done)
}

async fn discard_secrets(state: &AppState, project_id: Uuid) -> anyhow::Result<()> {
    let mut paths = vec![path::project_webhook_secret(project_id)];
    let mut start = None;
    loop {
        let page = state
            .store
            .list_tools(project_id, None, None, PAGE, start)
            .await?;
        paths.extend(page.items.iter().map(|t| t.credentials_path()));
        match page.next {
            Some(next) => start = Some(next),
            None => break,
        }
    }
    let now = state.clock.now();
    let mut start = None;
    loop {
        let page = state
            .store
            .list_agents(project_id, &AgentFilter::All, now, PAGE, start)
            .await?;
        paths.extend(page.items.iter().map(|a| path::agent_llm_key(a.id)));
        match page.next {
            Some(next) => start = Some(next),
            None => break,
        }
    }
    let mut start = None;
    loop {
        let page = state
            .store
            .list_credentials(project_id, PAGE, start)
            .await?;
        paths.extend(page.items.iter().map(|c| c.secret_path()));
        match page.next {
            Some(next) => start = Some(next),
            None => break,
        }
    }
    for path in paths {
        state.secrets.schedule_deletion(&path).await?;
    }
    Ok(())
}
