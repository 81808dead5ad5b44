//! The governance rules of run decisions: who may approve or reject a run, and who may
//! resume its `human` steps.

use uuid::Uuid;

use crate::auth::{Principal, ProjectAccess};
use crate::error::{ApiError, ApiResult};
use crate::governance::{self, SELF_APPROVAL_FIELD};
use crate::run::{Run, RunStatus};
use crate::state::AppState;

/// How many API keys back (a key created by a key created by …) a principal is traced.
const MAX_KEY_CHAIN: usize = 3;

/// Refuses an API key: a `human` step waits for a person, not for a program holding a key.
pub(super) fn person_resumes(principal: &Principal) -> ApiResult<()> {
    match principal {
        Principal::User(_) => Ok(()),
        Principal::ApiKey(_) => Err(ApiError::Forbidden(
            "only a person can resume a human step: resume it with a user access token, \
             not an API key"
                .to_owned(),
        )),
    }
}

/// Refuses an approval decision by whoever started the run, unless the project's
/// `settings.approvals.allow_self_approval` is `true` (an unreadable setting counts as
/// `false`). Who started it is the run's creator and, when that is an API key of the
/// project, the key's creator (and theirs, up to [`MAX_KEY_CHAIN`] keys back); the decider
/// is traced the same way. A run no longer waiting for approval passes here and gets the
/// `409` of its status.
pub(super) async fn check_not_own_run(
    state: &AppState,
    access: &ProjectAccess,
    principal: &Principal,
    run: &Run,
) -> ApiResult<()> {
    if run.status != RunStatus::AwaitingApproval
        || governance::allow_self_approval(&access.project.settings).unwrap_or(false)
    {
        return Ok(());
    }
    let deciders = match principal {
        Principal::User(user) => vec![user.id],
        Principal::ApiKey(key) => acting_for(state, run.project_id, key.id).await?,
    };
    let starters = acting_for(state, run.project_id, run.created_by).await?;
    if starters.iter().any(|id| deciders.contains(id)) {
        return Err(ApiError::Forbidden(format!(
            "whoever started a run cannot approve or reject it, nor can an API key they created; \
             ask another admin (the project's {SELF_APPROVAL_FIELD} is false)"
        )));
    }
    Ok(())
}

/// `id`, and while it names an API key of the project, the key's creator, for at most
/// [`MAX_KEY_CHAIN`] keys.
async fn acting_for(state: &AppState, project_id: Uuid, id: Uuid) -> ApiResult<Vec<Uuid>> {
    let mut chain = vec![id];
    for _ in 0..MAX_KEY_CHAIN {
        let Some(last) = chain.last().copied() else {
            break;
        };
        match state.store.get_api_key(last).await? {
            Some(key) if key.project_id == project_id && !chain.contains(&key.created_by) => {
                chain.push(key.created_by);
            }
            _ => break,
        }
    }
    Ok(chain)
}
