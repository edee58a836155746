//! One struct per event, and [`Event`], the enum that tags them. On the wire an event is the
//! envelope's `type` (snake_case, e.g. `change_proposed`) and `payload` (the struct).
//! Each type has a JSON Schema in `schemas/events/<type>.schema.json`.

use super::chain::ChainEntry;
use super::roles::Role;
use crate::ids::{ActorId, AgentId, ChangeId, EventId, PolicyName, ToolId};
use crate::keys::KeyId;
use crate::policy::model::RiskTier;
pub use crate::readiness::{ReadinessEntry, ReadinessThresholds};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How a document in an event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentFormat {
    #[default]
    Yaml,
    Json,
}

impl DocumentFormat {
    pub fn extension(self) -> &'static str {
        match self {
            DocumentFormat::Yaml => "yaml",
            DocumentFormat::Json => "json",
        }
    }
}

/// A rollout stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStage {
    /// Enforce the stable version; evaluate this one too and record both.
    Shadow,
    /// Enforce this version for a cohort, the stable one for everyone else.
    Partial,
    /// Enforce this version everywhere.
    #[default]
    Global,
}

impl fmt::Display for RolloutStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutStage::Shadow => "shadow",
            RolloutStage::Partial => "partial",
            RolloutStage::Global => "global",
        })
    }
}

/// An actor is registered, or gains an additional key. The key signs the actor's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorRegistered {
    pub actor: ActorId,
    /// ed25519 public key, standard base64 of the 32 bytes.
    pub public_key: String,
    /// Must equal the key id of `public_key`.
    pub key_id: KeyId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// One of an actor's keys is revoked: events it signs from now on are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRevoked {
    pub actor: ActorId,
    pub key_id: KeyId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An actor gains a role in the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleGranted {
    pub actor: ActorId,
    pub role: Role,
}

/// An actor loses a role in the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRevoked {
    pub actor: ActorId,
    pub role: Role,
}

/// How many distinct approvals (never the proposer's own) a change needs, by the highest risk
/// tier it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredApprovals {
    pub low: u32,
    pub medium: u32,
    pub high: u32,
}

impl Default for RequiredApprovals {
    fn default() -> Self {
        Self {
            low: 0,
            medium: 1,
            high: 2,
        }
    }
}

impl RequiredApprovals {
    pub fn for_tier(&self, tier: RiskTier) -> u32 {
        match tier {
            RiskTier::Low => self.low,
            RiskTier::Medium => self.medium,
            RiskTier::High => self.high,
        }
    }
}

/// Tenant settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfigured {
    pub required_approvals: RequiredApprovals,
    /// Days a published bundle stays valid; gateways refuse it afterwards. None: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_expiry_days: Option<u32>,
    /// Changes whose risk tier is this or higher need a shadow report
    /// ([`ShadowReportAttached`]) before anyone may approve them. None: never required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_report_required: Option<RiskTier>,
    /// When a publisher alone may promote a rollout candidate to global (below these
    /// thresholds another actor must approve the promotion). Defaults when absent.
    #[serde(default)]
    pub rollout_readiness: ReadinessThresholds,
}

/// An edit of one policy's draft: the newest text of the policy, before it is proposed.
/// Published on `aegis.changes.<tenant>.policy.<name>` with `Nats-Expected-Last-Subject-Sequence`,
/// so two operators editing the same policy from the same base cannot both land.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpserted {
    pub name: PolicyName,
    #[serde(default)]
    pub format: DocumentFormat,
    /// The whole policy document.
    pub document: String,
    /// The draft revision this edit was based on (0 for a new policy); stale otherwise.
    pub base_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<ChangeId>,
}

/// A policy's draft is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDeleted {
    pub name: PolicyName,
    pub base_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<ChangeId>,
}

/// A policy document carried by a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposedDocument {
    pub name: PolicyName,
    #[serde(default)]
    pub format: DocumentFormat,
    pub document: String,
    /// The published (live) revision of this policy the change was written against; 0 when
    /// the policy is new. A change is stale when the live revision has moved on.
    pub base_revision: u64,
}

/// A policy a change removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletedDocument {
    pub name: PolicyName,
    pub base_revision: u64,
}

/// A test-vector file carried by a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorDocument {
    /// A file name, e.g. `finance-vectors.yaml`; a later change with the same name replaces it.
    pub name: String,
    #[serde(default)]
    pub format: DocumentFormat,
    pub document: String,
}

/// A change is proposed: what it is for, and the documents it would put live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeProposed {
    pub change_id: ChangeId,
    /// Why: one or two sentences a reviewer reads first.
    pub intent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(default)]
    pub documents: Vec<ProposedDocument>,
    #[serde(default)]
    pub deleted: Vec<DeletedDocument>,
    #[serde(default)]
    pub vectors: Vec<VectorDocument>,
}

/// One check run on a proposed change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    /// `validate`, `compile` or `vectors`.
    pub check: String,
    pub passed: bool,
    /// What failed, one line each (file:line:col: field: what, or the vector and mismatch).
    #[serde(default)]
    pub details: Vec<String>,
}

/// The control plane's verdict on a proposed change. Signed by the control plane's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksCompleted {
    pub change_id: ChangeId,
    pub passed: bool,
    pub results: Vec<CheckResult>,
    /// The highest risk tier among the policies the change touches (old and new versions).
    pub risk_tier: RiskTier,
    pub vectors_run: u32,
    pub vectors_failed: u32,
    /// sha256 of the candidate's compiled `data.json`, when it compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_digest: Option<String>,
}

/// An approver approves someone else's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeApproved {
    pub change_id: ChangeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A shadow report on a proposed change: what its candidate policy set would have decided for
/// a slice of the tenant's recorded decisions (`aegisctl replay --change`). The summary is
/// signed by whoever ran the replay; `report_digest` ties it to the full report they keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowReportAttached {
    pub change_id: ChangeId,
    /// `sha256:<hex>` of the replayed candidate's compiled `data.json`; must be the change's
    /// checked candidate (`checks_completed.candidate_digest`).
    pub candidate_digest: String,
    /// The slice of `AEGIS_DECISIONS` replayed.
    pub slice: ShadowSlice,
    /// Recorded decisions in the slice (after filters).
    pub decisions: u64,
    /// Re-evaluated against the candidate.
    pub replayed: u64,
    /// Not re-evaluated (masked inputs, decided by the gateway outside the policy, ...).
    pub not_replayable: u64,
    /// Replayed decisions whose outcome the candidate changes.
    pub changed: u64,
    /// Replayed decisions the candidate denies.
    pub would_deny: u64,
    /// Counts by recorded → candidate outcome (unchanged ones included).
    pub transitions: Vec<ShadowTransition>,
    /// `sha256:<hex>` of the full JSON report (`schemas/replay-report.schema.json`).
    pub report_digest: String,
}

/// The slice a shadow report covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSlice {
    /// First and last stream sequence read (absent when the slice was empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// When NATS stored the first and last record read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<String>,
}

/// One recorded → candidate outcome pair of a shadow report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowTransition {
    pub from: crate::decision::DecisionKind,
    pub to: crate::decision::DecisionKind,
    pub count: u64,
}

/// An approver rejects a change; it can no longer be approved or published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRejected {
    pub change_id: ChangeId,
    pub reason: String,
}

/// A publisher puts an approved change live; the control plane builds, signs and publishes the
/// next bundle version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePublished {
    pub change_id: ChangeId,
    #[serde(default)]
    pub stage: RolloutStage,
}

/// Publish a new version whose content is that of an older one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequested {
    pub to_version: u64,
    pub reason: String,
    /// An incident rollback (issue 5 adds its stricter rules).
    #[serde(default)]
    pub emergency: bool,
}

/// Blocks every publish, rollback and rollout change for the tenant until unfrozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFrozen {
    pub reason: String,
}

/// Lifts a freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantUnfrozen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A published version moves to another rollout stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStageChanged {
    pub version: u64,
    pub stage: RolloutStage,
    /// For `partial`: agents that get this version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentId>,
    /// For `partial`: percentage of agents (hashed on agent id) that get this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

/// A token issuer key is registered for the tenant: agent tokens whose `kid` is `key_id` are
/// checked with `public_key`, must carry `iss` = `issuer`, and may only speak for this tenant.
/// The key travels to gateways in every bundle's `trust.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuerRegistered {
    /// The issuer's name: the `iss` its tokens carry.
    pub issuer: String,
    /// Must equal the key id of `public_key`.
    pub key_id: KeyId,
    /// ed25519 public key, standard base64 of the 32 bytes.
    pub public_key: String,
}

/// A token issuer key is revoked: it leaves the tenant's `trust.json`, so gateways refuse
/// tokens signed with it once they run the next bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuerRevoked {
    pub key_id: KeyId,
    pub reason: String,
}

/// A rollout is called off: the candidate version stops being evaluated anywhere, every agent
/// is back on the stable version, and the tenant's live policies are the stable version's
/// again (the next change is proposed against them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutAborted {
    /// The candidate version being aborted (must be the current candidate).
    pub version: u64,
    pub reason: String,
}

/// The control plane's measurement of a rollout candidate on live decisions (see
/// [`crate::readiness`]): of the tenant's decision events in the `AEGIS_DECISIONS` stream
/// sequences `from_sequence..=to_sequence`, how many carried both the candidate's and the
/// stable version's answer, how many of those disagreed, and how many the candidate would
/// deny where the stable version did not. Cumulative since the version became the candidate;
/// the latest one counts. Signed by the control plane's key; on `aegis.changes.<tenant>.readiness`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutReadinessMeasured {
    /// The candidate version measured.
    pub version: u64,
    /// First and last `AEGIS_DECISIONS` stream sequence read for the tenant.
    pub from_sequence: u64,
    pub to_sequence: u64,
    pub decisions: u64,
    pub disagreements: u64,
    pub would_deny: u64,
    /// When the control plane measured (RFC 3339, UTC); informational.
    pub measured_at: String,
    /// The agents with the most disagreements (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_agents: Vec<ReadinessEntry>,
    /// The tools with the most disagreements (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_tools: Vec<ReadinessEntry>,
}

impl RolloutReadinessMeasured {
    /// The counts a verdict weighs.
    pub fn counts(&self) -> crate::readiness::Counts {
        crate::readiness::Counts {
            decisions: self.decisions,
            disagreements: self.disagreements,
            would_deny: self.would_deny,
        }
    }
}

/// An actor approves promoting the rollout candidate `version` to global before it meets the
/// tenant's readiness thresholds. It counts for any promoter but its signer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPromotionApproved {
    /// The candidate version (must be the current candidate).
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Kill switch: every gateway denies every call by this agent (`agent_blocked`) until
/// `agent_unblocked`, whatever the policies say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBlocked {
    pub agent: AgentId,
    pub reason: String,
}

/// Lifts an [`AgentBlocked`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentUnblocked {
    pub agent: AgentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Kill switch: every gateway denies every call to this tool (`tool_blocked`) until
/// `tool_unblocked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolBlocked {
    pub tool: ToolId,
    pub reason: String,
}

/// Lifts a [`ToolBlocked`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolUnblocked {
    pub tool: ToolId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Data-plane freeze: every gateway stays on the bundles it runs now (stable and candidate),
/// whatever is published, until `data_plane_unfrozen`. Blocks still apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPlaneFrozen {
    pub reason: String,
}

/// Lifts a [`DataPlaneFrozen`]: gateways move to what the control plane says is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPlaneUnfrozen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An approver grants a runtime approval request (`approval_needed` at a gateway): the exact
/// call whose digest is `call_digest` may go through once, until `expires_at`. Published on
/// `aegis.changes.<tenant>.approval.<approval_id>`; the control plane checks the role and
/// relays it to gateways as a [`RuntimeApprovalDecided`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeApprovalGranted {
    /// `apr-<32 hex>`, from the gateway's `approval_needed` answer.
    pub approval_id: String,
    /// The request's `call_digest` (see [`crate::approvals::call_digest`]): the approver signs
    /// exactly the call they saw.
    pub call_digest: String,
    /// When the grant lapses unused (RFC 3339, UTC).
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// An approver turns a runtime approval request down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeApprovalDenied {
    pub approval_id: String,
    pub call_digest: String,
    pub reason: String,
}

/// The control plane's relay of a granted or denied runtime approval, on
/// `aegis.approvals.<tenant>.<approval_id>`, signed with the control plane's key (which
/// gateways trust) after it checked the approver's signature and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeApprovalDecided {
    pub approval_id: String,
    pub call_digest: String,
    pub granted: bool,
    /// For a grant: when it lapses unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The approver, and when they signed.
    pub by: ActorId,
    pub at: String,
    /// The grant's comment or the denial's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The approver's signed event on AEGIS_CHANGES.
    pub source_event: EventId,
}

/// One bundle version, as gateways fetch it: object `digest` in `aegis-bundles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    pub version: u64,
    pub digest: String,
    pub size: u64,
}

/// The candidate version of a rollout and who gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutCandidate {
    pub bundle: BundleRef,
    /// `shadow` or `partial` (a candidate that goes `global` becomes the stable version).
    pub stage: RolloutStage,
    /// For `partial`: agents that get the candidate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentId>,
    /// For `partial`: percentage of agents, by [`crate::rollout::in_cohort`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

/// One kill-switch entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockEntry {
    /// The agent or tool id.
    pub id: String,
    pub reason: String,
    pub by: ActorId,
    pub at: String,
}

/// A data-plane freeze in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPlaneFreeze {
    pub reason: String,
    pub by: ActorId,
    pub at: String,
}

/// Everything gateways enforce for a tenant besides the bundle bytes, as one state: the stable
/// and candidate versions, the kill switch and the data-plane freeze. The control plane signs
/// and publishes the whole state on `aegis.bundles.<tenant>.controls` after every change to
/// any of it (`Nats-Msg-Id` `controls:<tenant>:<epoch>`); a gateway applies the newest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantControls {
    /// Chain position of the change event that produced this state: strictly increasing per
    /// tenant, so an older state replayed on the subject is refused.
    pub epoch: u64,
    /// The version every agent outside a partial cohort runs. None before the first publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<BundleRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<RolloutCandidate>,
    /// Sorted by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_agents: Vec<BlockEntry>,
    /// Sorted by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_tools: Vec<BlockEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane_frozen: Option<DataPlaneFreeze>,
}

/// A signed bundle is in the object store; published on `aegis.bundles.<tenant>` by the
/// control plane with `Nats-Msg-Id` `bundle:<tenant>:<version>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlePublished {
    pub version: u64,
    /// `sha256:<hex>` of the bundle bytes; also the object's name in `aegis-bundles`.
    pub digest: String,
    pub size: u64,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<ChangeId>,
    /// Set when this version re-publishes an older version's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    pub stage: RolloutStage,
    /// The key that signed the bundle manifest.
    pub signer: KeyId,
}

/// A signed checkpoint of the tenant's hash chain, on `aegis.audit.<tenant>`. It lists every
/// event since the previous checkpoint, so `aegisctl audit verify` can say which position was
/// edited, dropped or moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoint {
    /// Position (1-based) of the first entry; the previous checkpoint ended just before it.
    pub from_position: u64,
    /// Position of the last entry: the chain length at this checkpoint.
    pub to_position: u64,
    /// Chain head before `from_position`.
    pub previous_head: String,
    /// Chain head after `to_position`.
    pub head: String,
    pub entries: Vec<ChainEntry>,
}

macro_rules! events {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Every event, tagged on the wire by `type` with its struct as `payload`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "payload", rename_all = "snake_case")]
        pub enum Event {
            $($variant($variant),)*
        }

        /// The type of an event without its payload.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum EventType {
            $($variant,)*
        }

        impl EventType {
            pub const ALL: [EventType; [$($name),*].len()] = [$(EventType::$variant),*];

            /// The wire name (`type` in the envelope).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }
        }

        impl Event {
            pub fn event_type(&self) -> EventType {
                match self {
                    $(Event::$variant(_) => EventType::$variant,)*
                }
            }
        }

        $(impl From<$variant> for Event {
            fn from(e: $variant) -> Self {
                Event::$variant(e)
            }
        })*
    };
}

/// Calls macro `$m` with every event: `Variant => "wire_name"`, in wire order. The one list
/// of event types: [`Event`] and [`EventType`] here and the embedded schemas in
/// [`super::schema`] are generated from it.
macro_rules! for_each_event {
    ($m:ident) => {
        $m! {
            ActorRegistered => "actor_registered",
            KeyRevoked => "key_revoked",
            RoleGranted => "role_granted",
            RoleRevoked => "role_revoked",
            TenantConfigured => "tenant_configured",
            PolicyUpserted => "policy_upserted",
            PolicyDeleted => "policy_deleted",
            ChangeProposed => "change_proposed",
            ChecksCompleted => "checks_completed",
            ChangeApproved => "change_approved",
            ShadowReportAttached => "shadow_report_attached",
            ChangeRejected => "change_rejected",
            ChangePublished => "change_published",
            RollbackRequested => "rollback_requested",
            TenantFrozen => "tenant_frozen",
            TenantUnfrozen => "tenant_unfrozen",
            RolloutStageChanged => "rollout_stage_changed",
            TokenIssuerRegistered => "token_issuer_registered",
            TokenIssuerRevoked => "token_issuer_revoked",
            RolloutAborted => "rollout_aborted",
            AgentBlocked => "agent_blocked",
            AgentUnblocked => "agent_unblocked",
            ToolBlocked => "tool_blocked",
            ToolUnblocked => "tool_unblocked",
            DataPlaneFrozen => "data_plane_frozen",
            DataPlaneUnfrozen => "data_plane_unfrozen",
            RuntimeApprovalGranted => "runtime_approval_granted",
            RuntimeApprovalDenied => "runtime_approval_denied",
            RolloutReadinessMeasured => "rollout_readiness_measured",
            RolloutPromotionApproved => "rollout_promotion_approved",
            BundlePublished => "bundle_published",
            TenantControls => "tenant_controls",
            RuntimeApprovalDecided => "runtime_approval_decided",
            AuditCheckpoint => "audit_checkpoint",
        }
    };
}
pub(crate) use for_each_event;

for_each_event!(events);

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EventType {
    /// Which stream carries this event: `changes`, `bundles` or `audit`.
    pub fn stream(self) -> &'static str {
        match self {
            EventType::BundlePublished | EventType::TenantControls => "bundles",
            EventType::RuntimeApprovalDecided => "approvals",
            EventType::AuditCheckpoint => "audit",
            _ => "changes",
        }
    }

    /// The subject suffix under `aegis.changes.<tenant>.` for a change event: `actors`,
    /// `config`, `policy.<name>`, `change.<id>`, `control`, `issuers`, `approval.<id>` or
    /// `readiness`. None for events on
    /// other streams.
    pub fn changes_subject_suffix(event: &Event) -> Option<String> {
        Some(match event {
            Event::ActorRegistered(_)
            | Event::KeyRevoked(_)
            | Event::RoleGranted(_)
            | Event::RoleRevoked(_) => "actors".to_owned(),
            Event::TenantConfigured(_) => "config".to_owned(),
            Event::PolicyUpserted(e) => format!("policy.{}", e.name),
            Event::PolicyDeleted(e) => format!("policy.{}", e.name),
            Event::ChangeProposed(e) => format!("change.{}", e.change_id),
            Event::ChecksCompleted(e) => format!("change.{}", e.change_id),
            Event::ChangeApproved(e) => format!("change.{}", e.change_id),
            Event::ShadowReportAttached(e) => format!("change.{}", e.change_id),
            Event::ChangeRejected(e) => format!("change.{}", e.change_id),
            Event::ChangePublished(e) => format!("change.{}", e.change_id),
            Event::RollbackRequested(_)
            | Event::TenantFrozen(_)
            | Event::TenantUnfrozen(_)
            | Event::RolloutStageChanged(_)
            | Event::RolloutAborted(_)
            | Event::RolloutPromotionApproved(_)
            | Event::AgentBlocked(_)
            | Event::AgentUnblocked(_)
            | Event::ToolBlocked(_)
            | Event::ToolUnblocked(_)
            | Event::DataPlaneFrozen(_)
            | Event::DataPlaneUnfrozen(_) => "control".to_owned(),
            Event::TokenIssuerRegistered(_) | Event::TokenIssuerRevoked(_) => "issuers".to_owned(),
            Event::RolloutReadinessMeasured(_) => "readiness".to_owned(),
            Event::RuntimeApprovalGranted(e) => format!("approval.{}", e.approval_id),
            Event::RuntimeApprovalDenied(e) => format!("approval.{}", e.approval_id),
            Event::BundlePublished(_)
            | Event::TenantControls(_)
            | Event::RuntimeApprovalDecided(_)
            | Event::AuditCheckpoint(_) => return None,
        })
    }
}
