//! The permission matrix: the one place that decides which role may do what.

use crate::domain::Role;

/// Everything a principal can do inside a project.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the project record.
    ReadProject,
    /// Change the project's name, slug, description or settings.
    UpdateProject,
    /// Delete the project.
    DeleteProject,
    /// List members.
    ReadMembers,
    /// Add, change or remove members.
    ManageMembers,
    /// List API keys.
    ReadApiKeys,
    /// Create or revoke API keys.
    ManageApiKeys,
    /// Read agents, tools, workflows, versions and manifests.
    ReadRegistry,
    /// Create, change, import or delete agents, tools and workflows; release versions;
    /// report heartbeats.
    WriteRegistry,
    /// Read runs, their steps and logs.
    ReadRuns,
    /// Start, cancel, retry and resume runs.
    OperateRuns,
    /// Approve or reject runs waiting for approval.
    ApproveRuns,
}

impl Action {
    /// The least role that may perform this action.
    pub fn required_role(self) -> Role {
        match self {
            Self::ReadProject | Self::ReadMembers | Self::ReadRegistry | Self::ReadRuns => {
                Role::Viewer
            }
            Self::WriteRegistry | Self::OperateRuns => Role::Developer,
            Self::UpdateProject
            | Self::ManageMembers
            | Self::ReadApiKeys
            | Self::ManageApiKeys
            | Self::ApproveRuns => Role::Admin,
            Self::DeleteProject => Role::Owner,
        }
    }

    /// Whether `role` may perform this action.
    pub fn allowed_for(self, role: Role) -> bool {
        role.includes(self.required_role())
    }
}

/// Whether `actor` may give `target` to someone (or change someone who has `target`):
/// only an owner hands out or takes away ownership, and nobody grants more than they hold.
pub fn may_assign(actor: Role, target: Role) -> bool {
    actor.includes(target) && (target != Role::Owner || actor == Role::Owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_ACTIONS: [Action; 12] = [
        Action::ReadProject,
        Action::UpdateProject,
        Action::DeleteProject,
        Action::ReadMembers,
        Action::ManageMembers,
        Action::ReadApiKeys,
        Action::ManageApiKeys,
        Action::ReadRegistry,
        Action::WriteRegistry,
        Action::ReadRuns,
        Action::OperateRuns,
        Action::ApproveRuns,
    ];

    #[test]
    fn a_viewer_may_only_read() {
        let allowed: Vec<_> = ALL_ACTIONS
            .into_iter()
            .filter(|a| a.allowed_for(Role::Viewer))
            .collect();
        assert_eq!(
            allowed,
            vec![
                Action::ReadProject,
                Action::ReadMembers,
                Action::ReadRegistry,
                Action::ReadRuns
            ]
        );
    }

    #[test]
    fn only_an_owner_may_delete_and_an_owner_may_do_everything() {
        assert!(ALL_ACTIONS.into_iter().all(|a| a.allowed_for(Role::Owner)));
        assert!(!Action::DeleteProject.allowed_for(Role::Admin));
    }

    #[test]
    fn a_developer_builds_in_the_registry_but_manages_nothing() {
        let allowed: Vec<_> = ALL_ACTIONS
            .into_iter()
            .filter(|a| a.allowed_for(Role::Developer) && !a.allowed_for(Role::Viewer))
            .collect();
        assert_eq!(allowed, vec![Action::WriteRegistry, Action::OperateRuns]);
    }

    #[test]
    fn ownership_is_assigned_only_by_owners() {
        assert!(may_assign(Role::Owner, Role::Owner));
        assert!(!may_assign(Role::Admin, Role::Owner));
        assert!(may_assign(Role::Admin, Role::Admin));
        assert!(!may_assign(Role::Developer, Role::Admin));
    }
}
