//! The control plane's query protocol: what `aegisctl` asks over NATS request-reply and what it
//! gets back. Requests go to `aegis.query.<tenant>.<op>` (see [`QueryRequest::op`]); the body is
//! the request as JSON and the reply is a [`QueryReply`].

use crate::events::{
    ChecksCompleted, EventType, RequiredApprovals, Role, RolloutReadinessMeasured, RolloutStage,
    chain::ChainEntry,
};
use crate::ids::{ActorId, AgentId, ChangeId, EventId, PolicyName, TenantId};
use crate::keys::KeyId;
use crate::policy::model::RiskTier;
use crate::readiness::{ReadinessThresholds, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A question for the control plane about one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum QueryRequest {
    /// The tenant at a glance.
    Status,
    /// Changes, newest first, optionally only those in one state.
    Changes {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<ChangeState>,
    },
    /// One change with its checks, approvals and outcome.
    Change { change_id: ChangeId },
    /// Every published bundle version, oldest first.
    History,
    /// Events the control plane folded for the tenant (accepted and rejected), by chain position.
    Events {
        /// First position to return (1-based); default 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_position: Option<u64>,
        /// At most this many; default and cap 1000.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// What became of one event: pending (not folded yet), accepted or rejected and why.
    Outcome { event_id: EventId },
    /// Registered actors, their keys and roles.
    Actors,
    /// The current draft of each policy, with the revision an edit must be based on.
    Drafts,
    /// The live policy documents and test vectors (what the next change is checked against).
    Live,
    /// The tenant's token issuer keys, by key id: registered ones (shipped in every bundle's
    /// `trust.json`) and revoked ones.
    Issuers,
    /// The candidate policy set of an open change: the live set with the change applied.
    Candidate { change_id: ChangeId },
}

impl QueryRequest {
    /// The last subject token: `aegis.query.<tenant>.<op>`.
    pub fn op(&self) -> &'static str {
        match self {
            QueryRequest::Status => "status",
            QueryRequest::Changes { .. } => "changes",
            QueryRequest::Change { .. } => "change",
            QueryRequest::History => "history",
            QueryRequest::Events { .. } => "events",
            QueryRequest::Outcome { .. } => "outcome",
            QueryRequest::Actors => "actors",
            QueryRequest::Drafts => "drafts",
            QueryRequest::Live => "live",
            QueryRequest::Issuers => "issuers",
            QueryRequest::Candidate { .. } => "candidate",
        }
    }

    /// Every op, for registering service endpoints.
    pub const OPS: [&'static str; 11] = [
        "status",
        "changes",
        "change",
        "history",
        "events",
        "outcome",
        "actors",
        "drafts",
        "live",
        "issuers",
        "candidate",
    ];
}

/// The reply: `{"ok": …}` or `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // answers are built once and serialized
pub enum QueryReply {
    Ok(QueryAnswer),
    Error(QueryError),
}

/// A refused or failed query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct QueryError {
    /// `bad_request`, `not_found` or `internal`.
    pub code: String,
    pub message: String,
}

impl QueryError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: "bad_request".into(),
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: "not_found".into(),
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: "internal".into(),
            message: message.into(),
        }
    }
}

/// One answer per request kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum QueryAnswer {
    Status(TenantStatus),
    Changes(Vec<ChangeView>),
    Change(Box<ChangeView>),
    History(Vec<VersionView>),
    Events(Vec<EventRecord>),
    Outcome(EventOutcome),
    Actors(Vec<ActorView>),
    Drafts(Vec<DraftView>),
    Live(LiveView),
    Issuers(Vec<IssuerView>),
    Candidate(Box<ChangeCandidate>),
}

/// A tenant at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStatus {
    pub tenant: TenantId,
    /// Set while the tenant is frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<FreezeView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<VersionView>,
    pub open_changes: u64,
    pub required_approvals: RequiredApprovals,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_expiry_days: Option<u32>,
    /// Changes at this risk tier or above need a shadow report before approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_report_required: Option<RiskTier>,
    pub live_policies: Vec<LivePolicyView>,
    /// Length and head of the tenant's audit hash chain.
    pub chain_position: u64,
    pub chain_head: String,
    /// The last `AEGIS_CHANGES` stream sequence the control plane applied (all tenants).
    pub applied_seq: u64,
    /// The version every agent outside a partial cohort runs (None before the first publish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<u64>,
    /// The version being rolled out, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateView>,
    /// Kill switch: agents every gateway denies, by agent id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocked_agents: BTreeMap<String, BlockView>,
    /// Kill switch: tools every gateway denies, by tool id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocked_tools: BTreeMap<String, BlockView>,
    /// Set while the data plane is frozen (gateways keep the bundles they run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane_frozen: Option<FreezeView>,
    /// When a publisher alone may promote a rollout candidate (`tenant_configured`).
    #[serde(default)]
    pub rollout_readiness: ReadinessThresholds,
    /// The candidate's readiness for promotion, while there is a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessView>,
}

/// A rollout candidate's readiness for promotion to global.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessView {
    pub version: u64,
    /// When it became the candidate: the time of the event that published it.
    pub since: String,
    pub thresholds: ReadinessThresholds,
    /// The latest `rollout_readiness_measured` the control plane folded for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<RolloutReadinessMeasured>,
    /// `rollout_promotion_approved` events for it (each counts for any promoter but its signer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ActView>,
    /// The verdict as of `as_of` (the control plane's clock when it answered). The fold judges
    /// a promotion as of the promoting event's time instead.
    pub verdict: Verdict,
    pub as_of: String,
}

/// The candidate version of a rollout: its stage and, for `partial`, its cohort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateView {
    pub version: u64,
    /// `shadow` or `partial`.
    pub stage: RolloutStage,
    /// For `partial`: agents that run the candidate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentId>,
    /// For `partial`: percentage of agents (hashed on agent id) that run the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

/// Who blocked an agent or tool, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockView {
    pub reason: String,
    pub by: ActorId,
    pub at: String,
}

/// Who froze a tenant, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeView {
    pub by: ActorId,
    pub at: String,
    pub reason: String,
}

/// A live policy: its revision is the bundle version that last changed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePolicyView {
    pub name: PolicyName,
    pub revision: u64,
    pub risk_tier: RiskTier,
}

/// Where a change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    /// Proposed; needs passing checks and approvals.
    Open,
    /// Checks passed and enough approvals: a publisher may publish it.
    Approved,
    Rejected,
    Published,
}

impl std::fmt::Display for ChangeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChangeState::Open => "open",
            ChangeState::Approved => "approved",
            ChangeState::Rejected => "rejected",
            ChangeState::Published => "published",
        })
    }
}

/// Who did something to a change, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActView {
    pub actor: ActorId,
    pub at: String,
    pub event_id: EventId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A change with everything a reviewer needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    pub change_id: ChangeId,
    pub state: ChangeState,
    pub intent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    pub proposed: ActView,
    /// Policies the change writes, with their documents.
    pub documents: Vec<crate::events::ProposedDocument>,
    pub deleted: Vec<crate::events::DeletedDocument>,
    pub vectors: Vec<crate::events::VectorDocument>,
    /// The control plane's checks, once run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<ChecksCompleted>,
    pub risk_tier: RiskTier,
    /// Distinct approvals needed (never the proposer's own).
    pub required_approvals: u32,
    pub approvals: Vec<ActView>,
    /// Shadow reports attached (`aegisctl replay --change`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_reports: Vec<ShadowReportView>,
    /// Whether the tenant requires a shadow report before this change may be approved (its
    /// risk tier is at or above the tenant's `shadow_report_required`).
    #[serde(default)]
    pub shadow_report_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<ActView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<PublishedView>,
}

impl ChangeView {
    /// The change as proposed (what the checks apply to the live set).
    pub fn proposal(&self) -> crate::events::ChangeProposed {
        crate::events::ChangeProposed {
            change_id: self.change_id.clone(),
            intent: self.intent.clone(),
            ticket: self.ticket.clone(),
            documents: self.documents.clone(),
            deleted: self.deleted.clone(),
            vectors: self.vectors.clone(),
        }
    }
}

/// A shadow report attached to a change: who attached it, and its signed summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowReportView {
    pub attached: ActView,
    pub report: crate::events::ShadowReportAttached,
}

/// The candidate policy set of a proposed change: the live documents and vectors with the
/// change applied, as the control plane's checks compile them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCandidate {
    pub change_id: ChangeId,
    pub policies: Vec<LiveDocument>,
    pub vectors: Vec<crate::events::VectorDocument>,
    /// `checks_completed.candidate_digest`, once the checks compiled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_digest: Option<String>,
}

/// The publish of a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedView {
    pub by: ActView,
    pub version: u64,
    pub digest: String,
    pub stage: RolloutStage,
}

/// One published bundle version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    pub version: u64,
    pub digest: String,
    pub size: u64,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<ChangeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    #[serde(default)]
    pub emergency: bool,
    pub stage: RolloutStage,
    /// Who asked for it (the publisher, or whoever requested the rollback).
    pub published_by: ActorId,
    /// Approvers of the change it carries (empty for a rollback).
    pub approved_by: Vec<ActorId>,
    pub signer: KeyId,
    /// Whether the bundle is in the object store and announced on `aegis.bundles.<tenant>`.
    pub announced: bool,
}

/// What the fold made of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    Rejected { reason: String },
}

/// One folded event of a tenant, in chain order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// 1-based position in the tenant's audit chain.
    pub position: u64,
    /// `AEGIS_CHANGES` stream sequence.
    pub seq: u64,
    /// The envelope id, or `-` when the message was not an envelope.
    pub id: String,
    /// Absent when the message was not an envelope (it is still in the chain, rejected).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ActorId>,
    /// The envelope's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub subject: String,
    pub outcome: Outcome,
    /// One line a human reads: "proposed chg-… (2 policies)", "approved chg-…".
    pub summary: String,
    /// The chain entry (event hash) at this position.
    pub chain: ChainEntry,
}

/// The answer to [`QueryRequest::Outcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventOutcome {
    /// Not folded yet (or never published).
    Pending {
        applied_seq: u64,
    },
    Applied {
        record: Box<EventRecord>,
    },
}

/// A registered actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorView {
    pub actor: ActorId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub roles: Vec<Role>,
    pub keys: Vec<KeyView>,
    /// Configured on the control plane (`--root-admin`), admin of every tenant.
    #[serde(default)]
    pub root: bool,
}

/// One of an actor's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub key_id: KeyId,
    pub public_key: String,
    pub revoked: bool,
}

/// A token issuer key of a tenant (`token_issuer_registered`, `token_issuer_revoked`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerView {
    /// The `iss` its tokens carry.
    pub issuer: String,
    pub key_id: KeyId,
    /// base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// Who registered it, and when.
    pub registered: ActView,
    /// Who revoked it, when and why (`note`); a revoked key is no longer in `trust.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<ActView>,
}

impl IssuerView {
    /// The `trust.json` entry of a key that is not revoked.
    pub fn trusted(&self) -> Option<crate::bundle::TokenIssuer> {
        self.revoked.is_none().then(|| crate::bundle::TokenIssuer {
            issuer: self.issuer.clone(),
            key_id: self.key_id.clone(),
            public_key: self.public_key.clone(),
        })
    }
}

/// A policy's current draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftView {
    pub name: PolicyName,
    /// The stream sequence of the last message on the policy's subject (accepted or rejected);
    /// the next edit's `base_revision` and `Nats-Expected-Last-Subject-Sequence`.
    pub revision: u64,
    pub deleted: bool,
    pub by: ActorId,
    pub at: String,
}

/// The live documents of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveView {
    pub policies: Vec<LiveDocument>,
    pub vectors: Vec<crate::events::VectorDocument>,
}

/// One live policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveDocument {
    pub name: PolicyName,
    pub revision: u64,
    pub risk_tier: RiskTier,
    pub format: crate::events::DocumentFormat,
    pub document: String,
}

impl LiveDocument {
    /// The file name the document is parsed and reported under: `<name>.<yaml|json>`.
    pub fn path(&self) -> std::path::PathBuf {
        format!("{}.{}", self.name, self.format.extension()).into()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn requests_round_trip_and_name_their_op() {
        let r = QueryRequest::Changes {
            state: Some(ChangeState::Open),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"op":"changes","state":"open"}"#);
        assert_eq!(serde_json::from_str::<QueryRequest>(&json).unwrap(), r);
        for op in QueryRequest::OPS {
            assert!(
                serde_json::from_str::<QueryRequest>(&format!(r#"{{"op":"{op}"}}"#)).is_ok()
                    || matches!(op, "change" | "outcome" | "candidate"),
                "{op}"
            );
        }
        let reply = QueryReply::Error(QueryError::not_found("no change chg-1"));
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            json,
            r#"{"error":{"code":"not_found","message":"no change chg-1"}}"#
        );
    }
}
