//! What the fold stores, and under which keys. Values are JSON of typed records; keys are
//! `t/<tenant>#<kind>/<id>` so one tenant's keys never share a prefix with another's
//! (`#` cannot occur in an id).

use crate::store::pad;
use aegis_core::events::{
    DocumentFormat, ReadinessThresholds, RequiredApprovals, Role, RolloutReadinessMeasured,
    VectorDocument,
};
use aegis_core::ids::{ActorId, ChangeId, EventId, PolicyName, TenantId};
use aegis_core::keys::KeyId;
use aegis_core::query::{
    ActView, BlockView, CandidateView, FreezeView, KeyView, LiveDocument, LiveView,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Per-tenant settings and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub tenant: TenantId,
    pub required_approvals: RequiredApprovals,
    pub bundle_expiry_days: Option<u32>,
    /// Changes at this risk tier or above need a shadow report before approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_report_required: Option<aegis_core::policy::model::RiskTier>,
    pub frozen: Option<FreezeView>,
    pub last_version: u64,
    pub chain_position: u64,
    pub chain_head: String,
    /// The version every agent outside a partial cohort runs (see [`TenantRecord::stable`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<u64>,
    /// The version being rolled out (published in shadow, not yet promoted or aborted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateView>,
    /// Kill switch, by agent id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocked_agents: BTreeMap<String, BlockView>,
    /// Kill switch, by tool id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocked_tools: BTreeMap<String, BlockView>,
    /// The data-plane freeze in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane_frozen: Option<FreezeView>,
    /// When a publisher alone may promote a candidate (`tenant_configured`).
    #[serde(default)]
    pub rollout_readiness: ReadinessThresholds,
    /// The candidate's measurement and promotion approvals; only while `version` is the
    /// candidate (not part of the gateway controls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessRecord>,
}

/// What the fold knows about the candidate's readiness for promotion.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReadinessRecord {
    pub version: u64,
    /// The latest accepted `rollout_readiness_measured` for `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<RolloutReadinessMeasured>,
    /// Accepted `rollout_promotion_approved` events for `version`, in stream order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ActView>,
}

impl TenantRecord {
    pub fn new(tenant: TenantId) -> Self {
        let chain_head = aegis_core::events::chain::genesis(&tenant);
        TenantRecord {
            tenant,
            required_approvals: RequiredApprovals::default(),
            bundle_expiry_days: None,
            shadow_report_required: None,
            frozen: None,
            last_version: 0,
            chain_position: 0,
            chain_head,
            stable: None,
            candidate: None,
            blocked_agents: BTreeMap::new(),
            blocked_tools: BTreeMap::new(),
            data_plane_frozen: None,
            rollout_readiness: ReadinessThresholds::default(),
            readiness: None,
        }
    }

    /// The stable version. A record written before rollouts existed has no `stable` but a
    /// published version: every version was global then, so the latest one is stable.
    pub fn stable(&self) -> Option<u64> {
        self.stable
            .or((self.last_version > 0 && self.candidate.is_none()).then_some(self.last_version))
    }

    /// What gateways enforce besides the bundle bytes, to compare before and after an event.
    pub fn controls_key(&self) -> ControlsKey {
        (
            self.stable(),
            self.candidate.clone(),
            self.blocked_agents.clone(),
            self.blocked_tools.clone(),
            self.data_plane_frozen.clone(),
        )
    }
}

/// [`TenantRecord::controls_key`].
pub type ControlsKey = (
    Option<u64>,
    Option<CandidateView>,
    BTreeMap<String, BlockView>,
    BTreeMap<String, BlockView>,
    Option<FreezeView>,
);

/// A runtime approval request an approver decided (`runtime_approval_granted` / `_denied`):
/// one decision per approval id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalDecisionRecord {
    pub approval_id: String,
    pub call_digest: String,
    pub granted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub by: ActorId,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub event_id: EventId,
}

/// An outbox entry: the tenant's gateway controls after the event at chain position `epoch`,
/// to be signed and published with the event's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlsOutbox {
    pub time: String,
    pub controls: aegis_core::events::TenantControls,
}

/// An actor of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRecord {
    pub actor: ActorId,
    pub display_name: Option<String>,
    pub roles: BTreeSet<Role>,
    pub keys: Vec<KeyView>,
}

/// A policy's draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftRecord {
    pub view: aegis_core::query::DraftView,
    pub format: DocumentFormat,
    /// None when the draft is a deletion.
    pub document: Option<String>,
}

/// The live documents of a tenant, in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveSet {
    pub policies: BTreeMap<PolicyName, LiveDocument>,
    pub vectors: BTreeMap<String, VectorDocument>,
}

impl LiveSet {
    pub fn to_view(&self) -> LiveView {
        LiveView {
            policies: self.policies.values().cloned().collect(),
            vectors: self.vectors.values().cloned().collect(),
        }
    }

    pub fn from_view(view: LiveView) -> Self {
        LiveSet {
            policies: view
                .policies
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            vectors: view
                .vectors
                .into_iter()
                .map(|v| (v.name.clone(), v))
                .collect(),
        }
    }
}

/// Key builders.
pub mod keys {
    use super::*;

    pub fn tenants_prefix() -> &'static str {
        "tenants/"
    }
    pub fn tenant_marker(t: &TenantId) -> String {
        format!("tenants/{t}")
    }
    pub fn tenant(t: &TenantId) -> String {
        format!("t/{t}#tenant")
    }
    pub fn actor(t: &TenantId, a: &ActorId) -> String {
        format!("t/{t}#actor/{a}")
    }
    pub fn actors(t: &TenantId) -> String {
        format!("t/{t}#actor/")
    }
    pub fn event_id(t: &TenantId, id: &str) -> String {
        format!("t/{t}#id/{id}")
    }
    pub fn event(t: &TenantId, position: u64) -> String {
        format!("t/{t}#ev/{}", pad(position))
    }
    pub fn events(t: &TenantId) -> String {
        format!("t/{t}#ev/")
    }
    pub fn head(t: &TenantId, position: u64) -> String {
        format!("t/{t}#head/{}", pad(position))
    }
    pub fn subject_seq(t: &TenantId, name: &PolicyName) -> String {
        format!("t/{t}#subj/{name}")
    }
    pub fn draft(t: &TenantId, name: &PolicyName) -> String {
        format!("t/{t}#draft/{name}")
    }
    pub fn drafts(t: &TenantId) -> String {
        format!("t/{t}#draft/")
    }
    pub fn change(t: &TenantId, c: &ChangeId) -> String {
        format!("t/{t}#change/{c}")
    }
    pub fn changes(t: &TenantId) -> String {
        format!("t/{t}#change/")
    }
    pub fn live_policy(t: &TenantId, name: &PolicyName) -> String {
        format!("t/{t}#live/p/{name}")
    }
    pub fn live_policies(t: &TenantId) -> String {
        format!("t/{t}#live/p/")
    }
    pub fn live_vectors(t: &TenantId, name: &str) -> String {
        format!("t/{t}#live/v/{name}")
    }
    pub fn live_vectors_all(t: &TenantId) -> String {
        format!("t/{t}#live/v/")
    }
    pub fn version(t: &TenantId, v: u64) -> String {
        format!("t/{t}#version/{}", pad(v))
    }
    pub fn versions(t: &TenantId) -> String {
        format!("t/{t}#version/")
    }
    pub fn bundle(t: &TenantId, v: u64) -> String {
        format!("t/{t}#bundle/{}", pad(v))
    }
    pub fn snapshot(t: &TenantId, v: u64) -> String {
        format!("t/{t}#snapshot/{}", pad(v))
    }
    pub fn issuer(t: &TenantId, k: &KeyId) -> String {
        format!("t/{t}#issuer/{k}")
    }
    pub fn issuers(t: &TenantId) -> String {
        format!("t/{t}#issuer/")
    }

    pub fn approval(t: &TenantId, approval_id: &str) -> String {
        format!("t/{t}#approval/{approval_id}")
    }

    // Local family.
    pub fn outbox_checks(t: &TenantId, c: &ChangeId) -> String {
        format!("outbox/checks/{t}#{c}")
    }
    pub fn outbox_checks_all() -> &'static str {
        "outbox/checks/"
    }
    pub fn outbox_bundle(t: &TenantId, v: u64) -> String {
        format!("outbox/bundle/{t}#{}", pad(v))
    }
    pub fn outbox_bundle_all() -> &'static str {
        "outbox/bundle/"
    }
    pub fn outbox_bundle_all_of(t: &TenantId) -> String {
        format!("outbox/bundle/{t}#")
    }
    /// The tenant's gateway controls as of chain position `epoch` ([`super::ControlsOutbox`]).
    pub fn outbox_controls(t: &TenantId, epoch: u64) -> String {
        format!("outbox/controls/{t}#{}", pad(epoch))
    }
    pub fn outbox_controls_all() -> &'static str {
        "outbox/controls/"
    }
    /// A runtime approval decision to relay ([`super::ApprovalDecisionRecord`]).
    pub fn outbox_approval(t: &TenantId, approval_id: &str) -> String {
        format!("outbox/approval/{t}#{approval_id}")
    }
    pub fn outbox_approval_all() -> &'static str {
        "outbox/approval/"
    }
    pub fn announced(t: &TenantId, v: u64) -> String {
        format!("announced/{t}#{}", pad(v))
    }
    pub fn audit_checkpointed(t: &TenantId) -> String {
        format!("audit/{t}")
    }
}

/// Every tenant the store knows (an unreadable store reads as none: callers retry later).
pub fn tenant_ids(store: &crate::store::Store) -> Vec<TenantId> {
    store
        .scan::<bool>(crate::store::Family::State, keys::tenants_prefix())
        .map(|v| {
            v.into_iter()
                .filter_map(|(k, _)| {
                    TenantId::new(k.trim_start_matches(keys::tenants_prefix())).ok()
                })
                .collect()
        })
        .unwrap_or_default()
}
