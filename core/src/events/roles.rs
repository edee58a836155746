//! Per-tenant roles and the events each may sign.

use super::kinds::EventType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// A role an actor holds in one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages actors, keys, roles, token issuer keys and tenant settings; may freeze and
    /// unfreeze. Implies every
    /// other role, but never lets anyone approve their own change.
    Admin,
    /// Edits policies and proposes changes.
    Editor,
    /// Approves or rejects other people's changes, grants or denies runtime approval
    /// requests from gateways, and approves promoting a rollout candidate below the
    /// tenant's readiness thresholds.
    Approver,
    /// Publishes approved changes, rolls back, changes rollout stages (and approves someone
    /// else's promotion), freezes, and works the kill switch (block and unblock agents and
    /// tools, freeze the data plane).
    Publisher,
    /// Reads everything, changes nothing.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Editor,
        Role::Approver,
        Role::Publisher,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Approver => "approver",
            Role::Publisher => "publisher",
            Role::Auditor => "auditor",
        }
    }

    /// The roles that may sign an event of type `ty` (any one of them suffices). Empty for events
    /// only the control plane signs (checks, bundles, checkpoints).
    pub fn allowed_for(ty: EventType) -> &'static [Role] {
        use EventType as T;
        match ty {
            T::ActorRegistered | T::KeyRevoked | T::RoleGranted | T::RoleRevoked => &[Role::Admin],
            T::TenantConfigured => &[Role::Admin],
            T::TokenIssuerRegistered | T::TokenIssuerRevoked => &[Role::Admin],
            T::PolicyUpserted | T::PolicyDeleted | T::ChangeProposed => {
                &[Role::Admin, Role::Editor]
            }
            T::ChangeApproved | T::ChangeRejected => &[Role::Admin, Role::Approver],
            T::ShadowReportAttached => {
                &[Role::Admin, Role::Editor, Role::Approver, Role::Publisher]
            }
            T::ChangePublished
            | T::RollbackRequested
            | T::RolloutStageChanged
            | T::RolloutAborted => &[Role::Admin, Role::Publisher],
            T::TenantFrozen | T::TenantUnfrozen => &[Role::Admin, Role::Publisher],
            T::AgentBlocked
            | T::AgentUnblocked
            | T::ToolBlocked
            | T::ToolUnblocked
            | T::DataPlaneFrozen
            | T::DataPlaneUnfrozen => &[Role::Admin, Role::Publisher],
            T::RuntimeApprovalGranted | T::RuntimeApprovalDenied => &[Role::Admin, Role::Approver],
            // Another pair of eyes on a promotion below the readiness thresholds: whoever may
            // approve changes or promote versions (never counted for its own signer).
            T::RolloutPromotionApproved => &[Role::Admin, Role::Approver, Role::Publisher],
            T::ChecksCompleted
            | T::RolloutReadinessMeasured
            | T::BundlePublished
            | T::TenantControls
            | T::RuntimeApprovalDecided
            | T::AuditCheckpoint => &[],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}; roles are admin, editor, approver, publisher, auditor")
            })
    }
}

/// The roles one actor holds in one tenant.
pub type RoleSet = BTreeSet<Role>;

/// Whether `roles` may sign an event of type `ty`.
pub fn may_sign(roles: &RoleSet, ty: EventType) -> bool {
    Role::allowed_for(ty).iter().any(|r| roles.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auditors_change_nothing_and_admins_do_everything_operators_do() {
        let auditor: RoleSet = [Role::Auditor].into();
        let admin: RoleSet = [Role::Admin].into();
        for ty in EventType::ALL {
            assert!(!may_sign(&auditor, ty), "{ty:?}");
            assert_eq!(
                may_sign(&admin, ty),
                !Role::allowed_for(ty).is_empty(),
                "{ty:?}"
            );
        }
        let editor: RoleSet = [Role::Editor].into();
        assert!(may_sign(&editor, EventType::ChangeProposed));
        assert!(!may_sign(&editor, EventType::ChangeApproved));
    }
}
