//! The fold: one `AEGIS_CHANGES` message in, one atomic state transition out.
//!
//! For each message, in stream order:
//! 1. at or below the checkpoint: skipped (a redelivery after restart);
//! 2. an envelope id the tenant has already seen: ignored (a publish retried after the duplicate
//!    window) — it gets no chain position;
//! 3. otherwise it takes the tenant's next chain position, and is either **accepted** (its effect
//!    applied) or **rejected** with a reason (bad envelope, failing schema, unknown actor or key,
//!    bad signature, missing role, stale base revision, self-approval, frozen tenant, …).
//!
//! Every decision depends only on the state and the message — never on the clock, the
//! environment or the order of hash maps — so a rebuild rejects the same messages for the same
//! reasons and ends in byte-identical state. The state writes, the chain head and the applied
//! sequence go into one RocksDB `WriteBatch`.

use crate::bundles::{BundleInput, build_bundle, expiry};
use crate::checks;
use crate::records::{
    ActorRecord, ApprovalDecisionRecord, ControlsOutbox, DraftRecord, LiveSet, ReadinessRecord,
    TenantRecord, keys,
};
use crate::store::{Store, StoreError, Txn};
use aegis_core::bundle::TrustData;
use aegis_core::events::chain::{ChainEntry, event_hash, link, raw_event_id};
use aegis_core::events::roles::may_sign;
use aegis_core::events::{
    BundleRef, ChangeProposed, ChecksCompleted, DataPlaneFreeze, Envelope, Event, ReceivedEnvelope,
    Role, RoleSet, RolloutAborted, RolloutCandidate, RolloutPromotionApproved,
    RolloutReadinessMeasured, RolloutStage, RolloutStageChanged, ShadowReportAttached,
    TenantControls, TokenIssuerRegistered, TokenIssuerRevoked,
};
use aegis_core::ids::{ActorId, ChangeId, EventId, TenantId};
use aegis_core::keys::{KeyId, Keypair, PublicKey};
use aegis_core::query::{
    ActView, BlockView, CandidateView, ChangeState, ChangeView, DraftView, EventRecord, FreezeView,
    IssuerView, KeyView, LiveDocument, LiveView, Outcome, PublishedView, ShadowReportView,
    VersionView,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Who the fold trusts beyond what the stream itself registers.
#[derive(Clone, Debug)]
pub struct FoldConfig {
    /// Root administrators: admin of every tenant, configured on the control plane (the way the
    /// first actors of a tenant get registered).
    pub root_admins: BTreeMap<ActorId, Vec<PublicKey>>,
    /// The actor name the control plane signs as.
    pub control_plane_actor: ActorId,
    /// The key this control plane signs bundles, checks and checkpoints with. Control planes
    /// that share a stream share this key, so they build identical bundles.
    pub signing_key: Keypair,
}

impl FoldConfig {
    fn is_control_plane_key(&self, key_id: &KeyId) -> bool {
        self.signing_key.key_id() == key_id
    }
}

/// A message from `AEGIS_CHANGES`.
#[derive(Debug, Clone)]
pub struct InMessage {
    pub seq: u64,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// What applying one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// At or below the checkpoint.
    Skipped,
    /// Not on a tenant's change subject; only the sequence advanced.
    Unroutable,
    /// A repeated envelope id; only the sequence advanced.
    Duplicate { tenant: TenantId, id: String },
    /// Took a chain position, accepted or rejected.
    Folded {
        tenant: TenantId,
        record: Box<EventRecord>,
        /// Something for the reactor (a bundle to announce, checks to publish).
        effect: Option<Effect>,
    },
}

/// Work for the reactor after a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The tenant's chain grew (every folded event): time to consider a checkpoint.
    ChainAdvanced,
    AnnounceChecks {
        change: ChangeId,
    },
    AnnounceBundle {
        version: u64,
    },
    /// The tenant's gateway controls changed (stable, candidate, kill switch, data-plane
    /// freeze): a `tenant_controls` state is in the outbox. An event that also cut a version
    /// reports [`Effect::AnnounceBundle`] instead; the reactor drains every outbox either way,
    /// bundles before controls.
    AnnounceControls {
        epoch: u64,
    },
    /// A runtime approval decision is in the outbox, to relay to gateways.
    RelayApproval {
        approval_id: String,
    },
}

/// A fatal store problem (never a property of the event).
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies messages to a store.
#[derive(Debug)]
pub struct Folder<'a> {
    pub store: &'a Store,
    pub config: &'a FoldConfig,
}

/// A rejection reason.
type Reject = String;

impl Folder<'_> {
    /// Applies one message and commits.
    pub fn apply(&self, msg: &InMessage) -> Result<Applied, FoldError> {
        let applied = self.store.applied_seq()?;
        if msg.seq <= applied {
            return Ok(Applied::Skipped);
        }
        let mut txn = self.store.txn();
        let result = self.apply_in(&mut txn, msg)?;
        txn.commit(msg.seq)?;
        Ok(result)
    }

    fn apply_in(&self, txn: &mut Txn<'_>, msg: &InMessage) -> Result<Applied, FoldError> {
        let Some(tenant) = subject_tenant(&msg.subject) else {
            return Ok(Applied::Unroutable);
        };
        let raw_id = raw_event_id(&msg.payload);
        if raw_id != "-" && txn.get::<u64>(&keys::event_id(&tenant, &raw_id))?.is_some() {
            return Ok(Applied::Duplicate { tenant, id: raw_id });
        }
        let mut t: TenantRecord = match txn.get(&keys::tenant(&tenant))? {
            Some(t) => t,
            None => {
                txn.put(keys::tenant_marker(&tenant), &true)?;
                TenantRecord::new(tenant.clone())
            }
        };
        // The chain position and head.
        let position = t.chain_position + 1;
        let hash = event_hash(&msg.payload);
        t.chain_position = position;
        t.chain_head = link(&t.chain_head, &hash);
        let entry = ChainEntry {
            position,
            seq: msg.seq,
            id: raw_id.clone(),
            hash,
        };
        txn.put(keys::head(&tenant, position), &t.chain_head)?;
        if raw_id != "-" {
            txn.put(keys::event_id(&tenant, &raw_id), &position)?;
        }

        // Policy subjects track their last sequence for optimistic concurrency, whatever the
        // outcome (that is what Nats-Expected-Last-Subject-Sequence compares against).
        let policy_subject = msg
            .subject
            .split('.')
            .collect::<Vec<_>>()
            .get(3..)
            .and_then(|rest| match rest {
                ["policy", name] => aegis_core::ids::PolicyName::new(*name).ok(),
                _ => None,
            });
        let previous_subject_seq = match &policy_subject {
            Some(name) => {
                let key = keys::subject_seq(&tenant, name);
                let prev = txn.get::<u64>(&key)?.unwrap_or_default();
                txn.put(key, &msg.seq)?;
                prev
            }
            None => 0,
        };

        let parsed = ReceivedEnvelope::parse(&msg.payload);
        let (outcome, effect, envelope) = match parsed {
            Err(e) => (Err(format!("not a valid event envelope: {e}")), None, None),
            Ok(received) => {
                let mut ctx = Ctx {
                    txn,
                    config: self.config,
                    tenant: &mut t,
                    seq: msg.seq,
                    position,
                    roles: RoleSet::new(),
                    effect: None,
                    previous_subject_seq,
                };
                let outcome = ctx.check_and_apply(&received, &msg.subject, &msg.payload);
                let effect = ctx.effect.take();
                (outcome?, effect, Some(received.envelope))
            }
        };
        let (outcome, effect) = match outcome {
            Ok(()) => (Outcome::Accepted, effect),
            Err(reason) => (Outcome::Rejected { reason }, None),
        };
        let record = EventRecord {
            position,
            seq: msg.seq,
            id: raw_id,
            event_type: envelope.as_ref().map(Envelope::event_type),
            actor: envelope.as_ref().map(|e| e.actor.clone()),
            time: envelope.as_ref().map(|e| e.time.clone()),
            subject: msg.subject.clone(),
            outcome,
            summary: envelope
                .as_ref()
                .map(summary)
                .unwrap_or_else(|| "unreadable message".into()),
            chain: entry,
        };
        txn.put(keys::event(&tenant, position), &record)?;
        txn.put(keys::tenant(&tenant), &t)?;
        Ok(Applied::Folded {
            tenant,
            record: Box::new(record),
            effect,
        })
    }
}

/// Validates the envelope against `schemas/events/<type>.schema.json`.
fn schema_check(raw: &[u8]) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    aegis_core::events::schema::validate(&value).map_err(|e| e.to_string())
}

/// `aegis.changes.<tenant>.…` → the tenant.
pub fn subject_tenant(subject: &str) -> Option<TenantId> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("aegis"), Some("changes"), Some(t), Some(_)) => TenantId::new(t).ok(),
        _ => None,
    }
}

struct Ctx<'t, 'a> {
    txn: &'t mut Txn<'a>,
    config: &'t FoldConfig,
    tenant: &'t mut TenantRecord,
    seq: u64,
    /// The event's chain position (the epoch of a `tenant_controls` state it produces).
    position: u64,
    /// The signer's roles in the tenant (set once the signature and role are checked).
    roles: RoleSet,
    effect: Option<Effect>,
    previous_subject_seq: u64,
}

/// `Ok(Ok(()))` accepted, `Ok(Err(reason))` rejected, `Err` fatal.
type Step = Result<Result<(), Reject>, FoldError>;

macro_rules! reject {
    ($($arg:tt)*) => {
        return Ok(Err(format!($($arg)*)))
    };
}

/// Which kill-switch list an event names.
#[derive(Debug, Clone, Copy)]
enum Blocked {
    Agent,
    Tool,
}
use Blocked::{Agent, Tool};

impl Ctx<'_, '_> {
    fn tid(&self) -> TenantId {
        self.tenant.tenant.clone()
    }

    fn check_and_apply(&mut self, received: &ReceivedEnvelope, subject: &str, raw: &[u8]) -> Step {
        let env = &received.envelope;
        let tenant = self.tid();
        if let Err(e) = schema_check(raw) {
            reject!("fails its schema: {e}");
        }
        if env.tenant != tenant {
            reject!(
                "envelope says tenant `{}` but was published on tenant `{tenant}`'s subject",
                env.tenant
            );
        }
        let expected_subject = match aegis_nats::topology::change_event_subject(&tenant, &env.event)
        {
            Ok(s) => s,
            Err(e) => reject!("{e}"),
        };
        if subject != expected_subject {
            reject!(
                "a `{}` event must be published on {expected_subject}, not {subject}",
                env.event_type()
            );
        }
        // Who signed it, and may they?
        let ty = env.event_type();
        let roles: RoleSet = if Role::allowed_for(ty).is_empty() {
            if env.actor != self.config.control_plane_actor
                || !self.config.is_control_plane_key(&env.key_id)
            {
                reject!(
                    "`{ty}` events are signed by the control plane only; {} with key {} is not it",
                    env.actor,
                    env.key_id
                );
            }
            if received
                .verify(self.config.signing_key.verifying_key())
                .is_err()
            {
                reject!("bad signature: not signed by key {}", env.key_id);
            }
            RoleSet::new()
        } else if let Some(keys) = self.config.root_admins.get(&env.actor) {
            let Some(key) = keys.iter().find(|k| k.key_id() == &env.key_id) else {
                reject!("unknown key {} for root admin {}", env.key_id, env.actor);
            };
            if received.verify(key.verifying_key()).is_err() {
                reject!(
                    "bad signature: the event was not signed by key {} or was altered after signing",
                    env.key_id
                );
            }
            [Role::Admin].into()
        } else {
            let Some(actor) = self
                .txn
                .get::<ActorRecord>(&keys::actor(&tenant, &env.actor))?
            else {
                reject!("unknown actor `{}` in tenant `{tenant}`", env.actor);
            };
            let Some(key) = actor.keys.iter().find(|k| k.key_id == env.key_id) else {
                reject!("unknown key {} for actor `{}`", env.key_id, env.actor);
            };
            if key.revoked {
                reject!("key {} of actor `{}` is revoked", env.key_id, env.actor);
            }
            let Ok(public) = PublicKey::from_parts(&key.key_id, &key.public_key) else {
                reject!("key {} of actor `{}` is unusable", env.key_id, env.actor);
            };
            if received.verify(public.verifying_key()).is_err() {
                reject!(
                    "bad signature: the event was not signed by key {} or was altered after signing",
                    env.key_id
                );
            }
            actor.roles
        };
        if !Role::allowed_for(ty).is_empty() && !may_sign(&roles, ty) {
            let need: Vec<&str> = Role::allowed_for(ty).iter().map(|r| r.as_str()).collect();
            reject!(
                "`{}` may not `{ty}`: needs role {} in tenant `{tenant}`",
                env.actor,
                need.join(" or ")
            );
        }
        self.roles = roles;
        let before = self.tenant.controls_key();
        let outcome = self.apply_event(env)?;
        if outcome.is_ok() && self.tenant.controls_key() != before {
            self.queue_controls(env)?;
        }
        // Readiness belongs to one candidate: it goes when the candidate does.
        let current = self.tenant.candidate.as_ref().map(|c| c.version);
        if self.tenant.readiness.as_ref().map(|r| r.version) != current {
            self.tenant.readiness = None;
        }
        Ok(outcome)
    }

    /// Puts the tenant's whole gateway controls state, as of this event, in the outbox.
    fn queue_controls(&mut self, env: &Envelope) -> Result<(), FoldError> {
        let tenant = self.tid();
        let stable = match self.tenant.stable() {
            Some(v) => Some(self.bundle_ref(v)?),
            None => None,
        };
        let candidate = match &self.tenant.candidate {
            Some(c) => Some(RolloutCandidate {
                bundle: self.bundle_ref(c.version)?,
                stage: c.stage,
                agents: c.agents.clone(),
                percent: c.percent,
            }),
            None => None,
        };
        let entries = |m: &BTreeMap<String, BlockView>| {
            m.iter()
                .map(|(id, b)| aegis_core::events::BlockEntry {
                    id: id.clone(),
                    reason: b.reason.clone(),
                    by: b.by.clone(),
                    at: b.at.clone(),
                })
                .collect::<Vec<_>>()
        };
        let controls =
            TenantControls {
                epoch: self.position,
                stable,
                candidate,
                blocked_agents: entries(&self.tenant.blocked_agents),
                blocked_tools: entries(&self.tenant.blocked_tools),
                data_plane_frozen: self.tenant.data_plane_frozen.as_ref().map(|f| {
                    DataPlaneFreeze {
                        reason: f.reason.clone(),
                        by: f.by.clone(),
                        at: f.at.clone(),
                    }
                }),
            };
        self.txn.put_local(
            keys::outbox_controls(&tenant, self.position),
            &ControlsOutbox {
                time: env.time.clone(),
                controls,
            },
        )?;
        self.effect.get_or_insert(Effect::AnnounceControls {
            epoch: self.position,
        });
        Ok(())
    }

    /// Version `v` as gateways fetch it. The tenant record only names stored versions, so a
    /// missing one is a corrupt store.
    fn bundle_ref(&self, v: u64) -> Result<BundleRef, FoldError> {
        let key = keys::version(&self.tenant.tenant, v);
        match self.txn.get::<VersionView>(&key)? {
            Some(view) => Ok(BundleRef {
                version: v,
                digest: view.digest,
                size: view.size,
            }),
            None => Err(FoldError::Store(StoreError::Corrupt {
                key,
                reason: "the tenant's stable or candidate version is not stored".into(),
            })),
        }
    }

    fn act(env: &Envelope, note: Option<String>) -> ActView {
        ActView {
            actor: env.actor.clone(),
            at: env.time.clone(),
            event_id: env.id.clone(),
            note,
        }
    }

    fn apply_event(&mut self, env: &Envelope) -> Step {
        let tenant = self.tid();
        match &env.event {
            Event::ActorRegistered(e) => {
                let Ok(key) = PublicKey::from_parts(&e.key_id, &e.public_key) else {
                    reject!(
                        "public key does not match key id {} (or is not a valid ed25519 key)",
                        e.key_id
                    );
                };
                if self.config.root_admins.contains_key(&e.actor) {
                    reject!("`{}` is a root admin of the control plane", e.actor);
                }
                let k = keys::actor(&tenant, &e.actor);
                let mut actor = self.txn.get::<ActorRecord>(&k)?.unwrap_or(ActorRecord {
                    actor: e.actor.clone(),
                    display_name: None,
                    roles: RoleSet::new(),
                    keys: Vec::new(),
                });
                if actor.keys.iter().any(|k| &k.key_id == key.key_id()) {
                    reject!("key {} is already registered for `{}`", e.key_id, e.actor);
                }
                if e.display_name.is_some() {
                    actor.display_name = e.display_name.clone();
                }
                actor.keys.push(KeyView {
                    key_id: e.key_id.clone(),
                    public_key: e.public_key.clone(),
                    revoked: false,
                });
                self.txn.put(k, &actor)?;
            }
            Event::KeyRevoked(e) => {
                let k = keys::actor(&tenant, &e.actor);
                let Some(mut actor) = self.txn.get::<ActorRecord>(&k)? else {
                    reject!("unknown actor `{}`", e.actor);
                };
                let Some(key) = actor.keys.iter_mut().find(|x| x.key_id == e.key_id) else {
                    reject!("actor `{}` has no key {}", e.actor, e.key_id);
                };
                if key.revoked {
                    reject!("key {} is already revoked", e.key_id);
                }
                key.revoked = true;
                self.txn.put(k, &actor)?;
            }
            Event::RoleGranted(e) => {
                let k = keys::actor(&tenant, &e.actor);
                let Some(mut actor) = self.txn.get::<ActorRecord>(&k)? else {
                    reject!(
                        "unknown actor `{}`: register it first (`aegisctl actor add`)",
                        e.actor
                    );
                };
                if !actor.roles.insert(e.role) {
                    reject!("`{}` already has role {}", e.actor, e.role);
                }
                self.txn.put(k, &actor)?;
            }
            Event::RoleRevoked(e) => {
                let k = keys::actor(&tenant, &e.actor);
                let Some(mut actor) = self.txn.get::<ActorRecord>(&k)? else {
                    reject!("unknown actor `{}`", e.actor);
                };
                if !actor.roles.remove(&e.role) {
                    reject!("`{}` does not have role {}", e.actor, e.role);
                }
                self.txn.put(k, &actor)?;
            }
            Event::TenantConfigured(e) => {
                self.tenant.required_approvals = e.required_approvals;
                self.tenant.bundle_expiry_days = e.bundle_expiry_days;
                self.tenant.shadow_report_required = e.shadow_report_required;
                self.tenant.rollout_readiness = e.rollout_readiness;
            }
            Event::PolicyUpserted(e) => {
                if e.base_revision != self.previous_subject_seq {
                    reject!(
                        "stale edit of policy `{}`: based on revision {}, but the policy is at revision {} (someone else edited it; re-read and retry)",
                        e.name,
                        e.base_revision,
                        self.previous_subject_seq
                    );
                }
                match aegis_core::policy::set::parse_document(
                    &checks::doc_path(e.name.as_str(), e.format),
                    e.document.clone(),
                ) {
                    Err(d) => reject!("invalid policy document: {d}"),
                    Ok(doc) if doc.metadata.tenant != tenant => reject!(
                        "policy `{}` is for tenant `{}`, not `{tenant}`",
                        e.name,
                        doc.metadata.tenant
                    ),
                    Ok(doc) if doc.metadata.name != e.name => reject!(
                        "document metadata.name `{}` does not match the edited policy `{}`",
                        doc.metadata.name,
                        e.name
                    ),
                    Ok(_) => {}
                }
                self.put_draft(env, &e.name, e.format, Some(e.document.clone()))?;
            }
            Event::PolicyDeleted(e) => {
                if e.base_revision != self.previous_subject_seq {
                    reject!(
                        "stale delete of policy `{}`: based on revision {}, but the policy is at revision {}",
                        e.name,
                        e.base_revision,
                        self.previous_subject_seq
                    );
                }
                if self.previous_subject_seq == 0 {
                    reject!("policy `{}` has no draft to delete", e.name);
                }
                self.put_draft(env, &e.name, Default::default(), None)?;
            }
            Event::ChangeProposed(e) => return self.propose(env, e),
            Event::ChecksCompleted(e) => return self.checks_completed(e),
            Event::ChangeApproved(e) => {
                let mut change = match self.open_change(&e.change_id)? {
                    Ok(c) => c,
                    Err(reason) => reject!("{reason}"),
                };
                if change.proposed.actor == env.actor {
                    reject!(
                        "four eyes: `{}` proposed change {} and cannot approve it",
                        env.actor,
                        e.change_id
                    );
                }
                if change.approvals.iter().any(|a| a.actor == env.actor) {
                    reject!("`{}` already approved change {}", env.actor, e.change_id);
                }
                if let Some(tier) = self.tenant.shadow_report_required
                    && change.risk_tier >= tier
                    && change.shadow_reports.is_empty()
                {
                    reject!(
                        "tenant `{tenant}` requires a shadow report before a {}-risk change is approved, and change {} has none: run `aegisctl replay --change {}` first",
                        change.risk_tier.as_str(),
                        e.change_id,
                        e.change_id
                    );
                }
                change.approvals.push(Self::act(env, e.comment.clone()));
                self.put_change(&change)?;
            }
            Event::ShadowReportAttached(e) => return self.attach_shadow_report(env, e),
            Event::ChangeRejected(e) => {
                let Some(mut change) = self.change(&e.change_id)? else {
                    reject!("no change {} in tenant `{tenant}`", e.change_id);
                };
                match change.state {
                    ChangeState::Rejected => reject!("change {} is already rejected", e.change_id),
                    ChangeState::Published => {
                        reject!("change {} is already published", e.change_id)
                    }
                    _ => {}
                }
                change.state = ChangeState::Rejected;
                change.rejected = Some(Self::act(env, Some(e.reason.clone())));
                self.put_change(&change)?;
            }
            Event::ChangePublished(e) => return self.publish(env, e),
            Event::RollbackRequested(e) => return self.rollback(env, e),
            Event::TenantFrozen(e) => {
                if let Some(f) = &self.tenant.frozen {
                    reject!(
                        "tenant `{tenant}` is already frozen by {} since {}",
                        f.by,
                        f.at
                    );
                }
                self.tenant.frozen = Some(Self::freeze(env, &e.reason));
            }
            Event::TenantUnfrozen(_) => {
                if self.tenant.frozen.is_none() {
                    reject!("tenant `{tenant}` is not frozen");
                }
                self.tenant.frozen = None;
            }
            Event::RolloutStageChanged(e) => return self.stage_change(env, e),
            Event::RolloutReadinessMeasured(e) => return self.readiness_measured(e),
            Event::RolloutPromotionApproved(e) => return self.promotion_approved(env, e),
            Event::RolloutAborted(e) => return self.abort(e),
            Event::TokenIssuerRegistered(e) => return self.register_issuer(env, e),
            Event::TokenIssuerRevoked(e) => return self.revoke_issuer(env, e),
            // The kill switch and the data-plane freeze: accepted while the tenant is frozen
            // (they stop things; they publish no policy).
            Event::AgentBlocked(e) => return self.block(Agent, e.agent.as_str(), env, &e.reason),
            Event::AgentUnblocked(e) => return self.unblock(Agent, e.agent.as_str()),
            Event::ToolBlocked(e) => return self.block(Tool, e.tool.as_str(), env, &e.reason),
            Event::ToolUnblocked(e) => return self.unblock(Tool, e.tool.as_str()),
            Event::DataPlaneFrozen(e) => {
                if let Some(f) = &self.tenant.data_plane_frozen {
                    reject!(
                        "the data plane of tenant `{tenant}` is already frozen (by {} at {}: {})",
                        f.by,
                        f.at,
                        f.reason
                    );
                }
                self.tenant.data_plane_frozen = Some(Self::freeze(env, &e.reason));
            }
            Event::DataPlaneUnfrozen(_) => {
                if self.tenant.data_plane_frozen.is_none() {
                    reject!("the data plane of tenant `{tenant}` is not frozen");
                }
                self.tenant.data_plane_frozen = None;
            }
            Event::RuntimeApprovalGranted(e) => {
                return self.decide_approval(
                    env,
                    &e.approval_id,
                    &e.call_digest,
                    Some(&e.expires_at),
                    e.comment.clone(),
                );
            }
            Event::RuntimeApprovalDenied(e) => {
                return self.decide_approval(
                    env,
                    &e.approval_id,
                    &e.call_digest,
                    None,
                    Some(e.reason.clone()),
                );
            }
            Event::BundlePublished(_)
            | Event::TenantControls(_)
            | Event::RuntimeApprovalDecided(_)
            | Event::AuditCheckpoint(_) => {
                reject!(
                    "`{}` events do not belong on AEGIS_CHANGES",
                    env.event_type()
                )
            }
        }
        Ok(Ok(()))
    }

    /// `token_issuer_registered`: not frozen, the key matches its id, and the key id is new to
    /// the tenant (a revoked key id is never registered again). Publishes the new trust data
    /// (see [`Ctx::publish_trust`]) before the key is stored, so a bundle that cannot be built
    /// leaves no trace but the rejection.
    fn register_issuer(&mut self, env: &Envelope, e: &TokenIssuerRegistered) -> Step {
        let tenant = self.tid();
        if let Some(reason) = self.frozen_reason("register a token issuer key") {
            reject!("{reason}");
        }
        if let Some(c) = &self.tenant.candidate {
            reject!(
                "tenant `{tenant}` has a rollout in progress (version {} in {}): finish or abort the rollout first (`aegisctl rollout global` or `aegisctl rollout abort`), then register the key",
                c.version,
                c.stage
            );
        }
        if e.issuer.trim().is_empty() || e.issuer.trim() != e.issuer {
            reject!(
                "issuer name {:?} is empty or has leading or trailing whitespace; it must be exactly the `iss` of the tokens",
                e.issuer
            );
        }
        if PublicKey::from_parts(&e.key_id, &e.public_key).is_err() {
            reject!(
                "public key does not match key id {} (or is not a valid ed25519 key)",
                e.key_id
            );
        }
        let k = keys::issuer(&tenant, &e.key_id);
        if let Some(existing) = self.txn.get::<IssuerView>(&k)? {
            match &existing.revoked {
                Some(r) => reject!(
                    "token issuer key {} was revoked in tenant `{tenant}` by {} at {}; a revoked key is never trusted again: register a new key",
                    e.key_id,
                    r.actor,
                    r.at
                ),
                None => reject!(
                    "token issuer key {} is already registered in tenant `{tenant}` (issuer `{}`)",
                    e.key_id,
                    existing.issuer
                ),
            }
        }
        let view = IssuerView {
            issuer: e.issuer.clone(),
            key_id: e.key_id.clone(),
            public_key: e.public_key.clone(),
            registered: Self::act(env, None),
            revoked: None,
        };
        let mut issuers = self.issuers()?;
        issuers.push(view.clone());
        if let Err(reason) = self.publish_trust(env, &trust_of(&issuers), None)? {
            reject!("{reason}");
        }
        self.txn.put(k, &view)?;
        Ok(Ok(()))
    }

    /// `token_issuer_revoked`: the key id is registered and not revoked yet. Allowed while
    /// frozen: it is a security action, and its new trust data is published like any other.
    fn revoke_issuer(&mut self, env: &Envelope, e: &TokenIssuerRevoked) -> Step {
        let tenant = self.tid();
        let k = keys::issuer(&tenant, &e.key_id);
        let Some(mut view) = self.txn.get::<IssuerView>(&k)? else {
            reject!(
                "no token issuer key {} in tenant `{tenant}` (`aegisctl issuer list` shows the registered ones)",
                e.key_id
            );
        };
        if let Some(r) = &view.revoked {
            reject!(
                "token issuer key {} is already revoked (by {} at {})",
                e.key_id,
                r.actor,
                r.at
            );
        }
        view.revoked = Some(Self::act(env, Some(e.reason.clone())));
        let issuers: Vec<IssuerView> = self
            .issuers()?
            .into_iter()
            .filter(|i| i.key_id != e.key_id)
            .collect();
        // Security first: a rollout in progress is dropped (the live policies are the stable
        // version's again) and the new stable version carries the revised trust at once.
        let live = if self.tenant.candidate.is_some() {
            match self.stable_live()? {
                Ok(live) => Some(live),
                Err(reason) => reject!("{reason}"),
            }
        } else {
            None
        };
        if let Err(reason) = self.publish_trust(env, &trust_of(&issuers), live)? {
            reject!("{reason}");
        }
        self.txn.put(k, &view)?;
        Ok(Ok(()))
    }

    /// Puts new trust data live without waiting for a policy change: once the tenant has a
    /// published version, the next version carries the live policies (or `live`, when given)
    /// with `trust` and becomes the stable version (like a rollback to the live version:
    /// `created_at` is the event's time, no change, no `rollback_of`, stage global; a rollout in
    /// progress is over). Before the first publish there is nothing to do: the first bundle
    /// carries the keys.
    fn publish_trust(&mut self, env: &Envelope, trust: &TrustData, live: Option<LiveSet>) -> Step {
        let tenant = self.tid();
        let current = self.tenant.last_version;
        if current == 0 {
            return Ok(Ok(()));
        }
        if self
            .txn
            .get::<VersionView>(&keys::version(&tenant, current))?
            .is_none()
        {
            reject!("tenant `{tenant}` is at version {current}, but that version is not stored");
        }
        let live = match live {
            Some(live) => live,
            None => self.live()?,
        };
        let version = current + 1;
        match self.cut_version(
            env,
            version,
            &live,
            trust,
            None,
            None,
            false,
            RolloutStage::Global,
            Vec::new(),
        )? {
            Ok(_) => {}
            Err(reason) => reject!("{reason}"),
        }
        self.tenant.stable = Some(version);
        self.tenant.candidate = None;
        Ok(Ok(()))
    }

    /// Every token issuer key of the tenant (revoked ones too), by key id.
    fn issuers(&self) -> Result<Vec<IssuerView>, FoldError> {
        Ok(self
            .txn
            .scan::<IssuerView>(&keys::issuers(&self.tenant.tenant))?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// The tenant's current `trust.json`.
    fn trust(&self) -> Result<TrustData, FoldError> {
        Ok(trust_of(&self.issuers()?))
    }

    fn frozen_reason(&self, what: &str) -> Option<String> {
        self.tenant.frozen.as_ref().map(|f| {
            format!(
                "tenant `{}` is frozen (by {} at {}: {}); cannot {what} until `aegisctl unfreeze`",
                self.tenant.tenant, f.by, f.at, f.reason
            )
        })
    }

    /// Who froze (the tenant or its data plane), when and why.
    fn freeze(env: &Envelope, reason: &str) -> FreezeView {
        FreezeView {
            by: env.actor.clone(),
            at: env.time.clone(),
            reason: reason.to_owned(),
        }
    }

    /// The kill-switch list of `kind`, and its noun for messages.
    fn blocked(&mut self, kind: Blocked) -> (&mut BTreeMap<String, BlockView>, &'static str) {
        match kind {
            Blocked::Agent => (&mut self.tenant.blocked_agents, "agent"),
            Blocked::Tool => (&mut self.tenant.blocked_tools, "tool"),
        }
    }

    /// The kill switch for one agent or tool: `id` goes on the list with who blocked it, when
    /// and why, unless it is already there.
    fn block(&mut self, kind: Blocked, id: &str, env: &Envelope, reason: &str) -> Step {
        let tenant = self.tid();
        let (blocked, what) = self.blocked(kind);
        if let Some(b) = blocked.get(id) {
            reject!(
                "{what} `{id}` is already blocked in tenant `{tenant}` (by {} at {}: {})",
                b.by,
                b.at,
                b.reason
            );
        }
        let block = BlockView {
            reason: reason.to_owned(),
            by: env.actor.clone(),
            at: env.time.clone(),
        };
        blocked.insert(id.to_owned(), block);
        Ok(Ok(()))
    }

    /// Lifts the kill switch for one agent or tool: `id` must be on the list.
    fn unblock(&mut self, kind: Blocked, id: &str) -> Step {
        let tenant = self.tid();
        let (blocked, what) = self.blocked(kind);
        if blocked.remove(id).is_none() {
            reject!("{what} `{id}` is not blocked in tenant `{tenant}`");
        }
        Ok(Ok(()))
    }

    /// Why `version` is not the candidate a rollout event may name, if it is not.
    fn not_the_candidate(&self, version: u64) -> Option<String> {
        let tenant = &self.tenant.tenant;
        match &self.tenant.candidate {
            None => Some(format!(
                "version {version} is not the candidate of tenant `{tenant}`: no rollout is in progress (publish a change with stage shadow to start one)"
            )),
            Some(c) if c.version != version => Some(format!(
                "version {version} is not the candidate of tenant `{tenant}`: the rollout in progress is version {} ({})",
                c.version, c.stage
            )),
            Some(_) => None,
        }
    }

    /// The readiness record of candidate `version` (a fresh one when none is kept for it).
    fn readiness_of(&self, version: u64) -> ReadinessRecord {
        self.tenant
            .readiness
            .clone()
            .filter(|r| r.version == version)
            .unwrap_or(ReadinessRecord {
                version,
                ..ReadinessRecord::default()
            })
    }

    /// `rollout_readiness_measured` (control plane only): the version is the candidate, the
    /// counts are consistent, and it covers at least as much of the decision stream as the
    /// measurement it replaces (an older one, e.g. from a control plane that lags, is stale).
    /// Accepted while frozen: it only records.
    fn readiness_measured(&mut self, e: &RolloutReadinessMeasured) -> Step {
        if let Some(reason) = self.not_the_candidate(e.version) {
            reject!("{reason}");
        }
        if e.from_sequence > e.to_sequence {
            reject!(
                "the measurement covers decision-stream sequences {}..={}: from after to",
                e.from_sequence,
                e.to_sequence
            );
        }
        if e.disagreements > e.decisions || e.would_deny > e.disagreements {
            reject!(
                "inconsistent counts: {} decisions, {} disagreements, {} would-deny (each at most the one before)",
                e.decisions,
                e.disagreements,
                e.would_deny
            );
        }
        let mut record = self.readiness_of(e.version);
        if let Some(m) = &record.measurement
            && e.to_sequence < m.to_sequence
        {
            reject!(
                "stale measurement of version {}: it reads the decision stream up to sequence {}, the one recorded up to {}",
                e.version,
                e.to_sequence,
                m.to_sequence
            );
        }
        record.measurement = Some(e.clone());
        self.tenant.readiness = Some(record);
        Ok(Ok(()))
    }

    /// `rollout_promotion_approved`: the version is the candidate, and the signer has not
    /// approved it yet. Accepted while frozen: it changes nothing live.
    fn promotion_approved(&mut self, env: &Envelope, e: &RolloutPromotionApproved) -> Step {
        if let Some(reason) = self.not_the_candidate(e.version) {
            reject!("{reason}");
        }
        let mut record = self.readiness_of(e.version);
        if let Some(a) = record.approvals.iter().find(|a| a.actor == env.actor) {
            reject!(
                "`{}` already approved the promotion of version {} (at {})",
                env.actor,
                e.version,
                a.at
            );
        }
        record.approvals.push(Self::act(env, e.comment.clone()));
        self.tenant.readiness = Some(record);
        Ok(Ok(()))
    }

    /// Whether the candidate `v` may go global by `env`'s signer: its verdict as of the
    /// event's time meets the tenant's thresholds, or an actor other than the signer approved
    /// the promotion. Otherwise why not, and how to get the approval.
    fn promotion_refusal(&self, env: &Envelope, v: &VersionView) -> Option<String> {
        let tenant = &self.tenant.tenant;
        let record = self.readiness_of(v.version);
        if record.approvals.iter().any(|a| a.actor != env.actor) {
            return None;
        }
        let (Ok(since), Ok(at)) = (
            aegis_core::events::envelope::parse_time(&v.created_at),
            aegis_core::events::envelope::parse_time(&env.time),
        ) else {
            return Some(format!(
                "unreadable times (published {}, promoted {}): cannot judge readiness",
                v.created_at, env.time
            ));
        };
        let counts = record
            .measurement
            .as_ref()
            .map(RolloutReadinessMeasured::counts)
            .unwrap_or_default();
        let verdict =
            aegis_core::readiness::verdict(&self.tenant.rollout_readiness, since, at, &counts);
        if verdict.ready {
            return None;
        }
        let unmet: Vec<String> = verdict.unmet.iter().map(ToString::to_string).collect();
        let own = if record.approvals.is_empty() {
            String::new()
        } else {
            format!(" (`{}`'s own approval does not count)", env.actor)
        };
        Some(format!(
            "version {} does not meet tenant `{tenant}`'s rollout readiness thresholds: {}. Promoting it now needs an approval by someone other than `{}`{own}: `aegisctl rollout approve --version {}` (approver, publisher or admin); `aegisctl rollout status` shows the readiness",
            v.version,
            unmet.join("; "),
            env.actor,
            v.version
        ))
    }

    /// `rollout_stage_changed`: not frozen; the version exists and is the candidate. Shadow and
    /// partial set the candidate's stage and cohort; global promotes it to stable, if it is
    /// ready or another actor approved ([`Ctx::promotion_refusal`]).
    fn stage_change(&mut self, env: &Envelope, e: &RolloutStageChanged) -> Step {
        let tenant = self.tid();
        if let Some(reason) = self.frozen_reason("change the rollout stage") {
            reject!("{reason}");
        }
        let k = keys::version(&tenant, e.version);
        let Some(mut v) = self.txn.get::<VersionView>(&k)? else {
            reject!("tenant `{tenant}` has no version {}", e.version);
        };
        if let Some(reason) = self.not_the_candidate(e.version) {
            reject!("{reason}");
        }
        if e.stage == RolloutStage::Partial && e.agents.is_empty() && e.percent.is_none() {
            reject!("a partial rollout needs agents or a percentage");
        }
        if e.percent.is_some_and(|p| p > 100) {
            reject!("percent must be 0..=100");
        }
        if e.stage == RolloutStage::Global
            && let Some(reason) = self.promotion_refusal(env, &v)
        {
            reject!("{reason}");
        }
        match e.stage {
            RolloutStage::Global => {
                self.tenant.stable = Some(e.version);
                self.tenant.candidate = None;
            }
            RolloutStage::Shadow => {
                self.tenant.candidate = Some(CandidateView {
                    version: e.version,
                    stage: RolloutStage::Shadow,
                    agents: Vec::new(),
                    percent: None,
                });
            }
            RolloutStage::Partial => {
                let mut agents = e.agents.clone();
                agents.sort();
                agents.dedup();
                self.tenant.candidate = Some(CandidateView {
                    version: e.version,
                    stage: RolloutStage::Partial,
                    agents,
                    percent: e.percent,
                });
            }
        }
        v.stage = e.stage;
        self.txn.put(k, &v)?;
        Ok(Ok(()))
    }

    /// `rollout_aborted`: not frozen; the version is the candidate. The candidate is dropped
    /// and the live policies are the stable version's again (no new version is cut).
    fn abort(&mut self, e: &RolloutAborted) -> Step {
        if let Some(reason) = self.frozen_reason("abort the rollout") {
            reject!("{reason}");
        }
        if let Some(reason) = self.not_the_candidate(e.version) {
            reject!("{reason}");
        }
        let next = match self.stable_live()? {
            Ok(next) => next,
            Err(reason) => reject!("{reason}"),
        };
        self.replace_live(&next)?;
        self.tenant.candidate = None;
        Ok(Ok(()))
    }

    /// The stable version's live set (its snapshot).
    fn stable_live(&self) -> Result<Result<LiveSet, Reject>, FoldError> {
        let tenant = &self.tenant.tenant;
        let Some(stable) = self.tenant.stable() else {
            return Ok(Err(format!("tenant `{tenant}` has no stable version")));
        };
        match self.txn.get::<LiveView>(&keys::snapshot(tenant, stable))? {
            Some(view) => Ok(Ok(LiveSet::from_view(view))),
            None => Ok(Err(format!(
                "tenant `{tenant}` has no snapshot of its stable version {stable}"
            ))),
        }
    }

    /// `runtime_approval_granted` (`expires_at` given) or `runtime_approval_denied`: a
    /// well-formed approval id and call digest, a grant that expires after it is signed and
    /// within 24 hours, and no earlier decision for the id. Accepted while frozen. The decision
    /// goes to the outbox, for the reactor to relay to gateways.
    fn decide_approval(
        &mut self,
        env: &Envelope,
        approval_id: &str,
        call_digest: &str,
        expires_at: Option<&str>,
        note: Option<String>,
    ) -> Step {
        let tenant = self.tid();
        let lower_hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !approval_id
            .strip_prefix("apr-")
            .is_some_and(|h| lower_hex(h, 32))
        {
            reject!(
                "approval id `{approval_id}` is not `apr-` and 32 lowercase hex digits (the id from the gateway's approval_needed answer)"
            );
        }
        if !call_digest
            .strip_prefix("sha256:")
            .is_some_and(|h| lower_hex(h, 64))
        {
            reject!("call digest `{call_digest}` is not `sha256:` and 64 lowercase hex digits");
        }
        if let Some(expires) = expires_at {
            let Ok(at) = aegis_core::events::envelope::parse_time(&env.time) else {
                reject!("unreadable event time {}", env.time);
            };
            let Ok(until) = aegis_core::events::envelope::parse_time(expires) else {
                reject!("expires_at `{expires}` is not an RFC 3339 time");
            };
            if until <= at {
                reject!(
                    "the grant expires at {expires}, not after it was signed ({})",
                    env.time
                );
            }
            if until - at > MAX_GRANT {
                reject!(
                    "the grant expires at {expires}, more than 24 hours after it was signed ({}); grant for at most 24 hours",
                    env.time
                );
            }
        }
        let k = keys::approval(&tenant, approval_id);
        if let Some(d) = self.txn.get::<ApprovalDecisionRecord>(&k)? {
            reject!(
                "runtime approval {approval_id} was already {} by {} at {}",
                if d.granted { "granted" } else { "denied" },
                d.by,
                d.at
            );
        }
        let record = ApprovalDecisionRecord {
            approval_id: approval_id.to_owned(),
            call_digest: call_digest.to_owned(),
            granted: expires_at.is_some(),
            expires_at: expires_at.map(str::to_owned),
            by: env.actor.clone(),
            at: env.time.clone(),
            note,
            event_id: env.id.clone(),
        };
        self.txn.put(k, &record)?;
        self.txn
            .put_local(keys::outbox_approval(&tenant, approval_id), &record)?;
        self.effect = Some(Effect::RelayApproval {
            approval_id: approval_id.to_owned(),
        });
        Ok(Ok(()))
    }

    fn put_draft(
        &mut self,
        env: &Envelope,
        name: &aegis_core::ids::PolicyName,
        format: aegis_core::events::DocumentFormat,
        document: Option<String>,
    ) -> Result<(), FoldError> {
        let tenant = self.tid();
        let record = DraftRecord {
            view: DraftView {
                name: name.clone(),
                revision: self.seq,
                deleted: document.is_none(),
                by: env.actor.clone(),
                at: env.time.clone(),
            },
            format,
            document,
        };
        self.txn.put(keys::draft(&tenant, name), &record)?;
        Ok(())
    }

    fn change(&self, id: &ChangeId) -> Result<Option<ChangeView>, FoldError> {
        Ok(self.txn.get(&keys::change(&self.tenant.tenant, id))?)
    }

    /// The change, if it exists and is still open (neither rejected nor published); else why
    /// not.
    fn open_change(&self, id: &ChangeId) -> Result<Result<ChangeView, String>, FoldError> {
        Ok(match self.change(id)? {
            None => Err(format!("no change {id} in tenant `{}`", self.tenant.tenant)),
            Some(c) if c.state == ChangeState::Rejected => Err(format!("change {id} was rejected")),
            Some(c) if c.state == ChangeState::Published => {
                Err(format!("change {id} is already published"))
            }
            Some(c) => Ok(c),
        })
    }

    fn put_change(&mut self, change: &ChangeView) -> Result<(), FoldError> {
        let k = keys::change(&self.tenant.tenant, &change.change_id);
        self.txn.put(k, change)?;
        Ok(())
    }

    fn live(&self) -> Result<LiveSet, FoldError> {
        let tenant = self.tid();
        let policies = self
            .txn
            .scan::<LiveDocument>(&keys::live_policies(&tenant))?;
        let vectors = self
            .txn
            .scan::<aegis_core::events::VectorDocument>(&keys::live_vectors_all(&tenant))?;
        Ok(LiveSet {
            policies: policies
                .into_iter()
                .map(|(_, p)| (p.name.clone(), p))
                .collect(),
            vectors: vectors
                .into_iter()
                .map(|(_, v)| (v.name.clone(), v))
                .collect(),
        })
    }

    /// `Some(reason)` when the change was written against live revisions that moved on.
    fn stale(live: &LiveSet, change: &ChangeView) -> Option<String> {
        let rev = |name| live.policies.get(name).map(|p| p.revision).unwrap_or(0);
        for d in &change.documents {
            if d.base_revision != rev(&d.name) {
                return Some(format!(
                    "stale: policy `{}` is live at revision {}, but the change was written against revision {}; propose it again",
                    d.name,
                    rev(&d.name),
                    d.base_revision
                ));
            }
        }
        for d in &change.deleted {
            if !live.policies.contains_key(&d.name) {
                return Some(format!("stale: policy `{}` to delete is not live", d.name));
            }
            if d.base_revision != rev(&d.name) {
                return Some(format!(
                    "stale: policy `{}` to delete is live at revision {}, not {}",
                    d.name,
                    rev(&d.name),
                    d.base_revision
                ));
            }
        }
        None
    }

    fn propose(&mut self, env: &Envelope, e: &ChangeProposed) -> Step {
        let tenant = self.tid();
        if self.change(&e.change_id)?.is_some() {
            reject!(
                "change id {} is already used in tenant `{tenant}`",
                e.change_id
            );
        }
        if e.documents.is_empty() && e.deleted.is_empty() {
            reject!("an empty change: no policy document written or deleted");
        }
        if e.intent.trim().is_empty() {
            reject!("a change needs an intent: say why");
        }
        let mut names = std::collections::BTreeSet::new();
        for n in e
            .documents
            .iter()
            .map(|d| &d.name)
            .chain(e.deleted.iter().map(|d| &d.name))
        {
            if !names.insert(n) {
                reject!("policy `{n}` appears twice in the change");
            }
        }
        let mut vnames = std::collections::BTreeSet::new();
        for v in &e.vectors {
            if !vnames.insert(&v.name) {
                reject!("test-vector file `{}` appears twice in the change", v.name);
            }
        }
        let live = self.live()?;
        let view = ChangeView {
            change_id: e.change_id.clone(),
            state: ChangeState::Open,
            intent: e.intent.clone(),
            ticket: e.ticket.clone(),
            proposed: Self::act(env, None),
            documents: e.documents.clone(),
            deleted: e.deleted.clone(),
            vectors: e.vectors.clone(),
            checks: None,
            risk_tier: aegis_core::policy::model::RiskTier::Low,
            required_approvals: 0,
            approvals: Vec::new(),
            shadow_reports: Vec::new(),
            shadow_report_required: false,
            rejected: None,
            published: None,
        };
        if let Some(reason) = Self::stale(&live, &view) {
            reject!("{reason}");
        }
        let checks = checks::run(&tenant, &live, e);
        let view = ChangeView {
            risk_tier: checks.risk_tier,
            required_approvals: self.tenant.required_approvals.for_tier(checks.risk_tier),
            checks: Some(checks.clone()),
            ..view
        };
        self.put_change(&view)?;
        // The control plane's verdict goes on the stream as its own signed event.
        let announcement = checks_envelope(self.config, &tenant, &env.time, checks);
        if let Some(bytes) = announcement {
            self.txn
                .put_local(keys::outbox_checks(&tenant, &e.change_id), &bytes)?;
            self.effect = Some(Effect::AnnounceChecks {
                change: e.change_id.clone(),
            });
        }
        Ok(Ok(()))
    }

    /// `shadow_report_attached`: the change is open and its checks compiled exactly the
    /// candidate the report replayed.
    fn attach_shadow_report(&mut self, env: &Envelope, e: &ShadowReportAttached) -> Step {
        let mut change = match self.open_change(&e.change_id)? {
            Ok(c) => c,
            Err(reason) => reject!("{reason}"),
        };
        let Some(checked) = change
            .checks
            .as_ref()
            .and_then(|c| c.candidate_digest.as_ref())
        else {
            reject!(
                "change {} has no compiled candidate yet (checks pending or failed to compile); a shadow report needs one",
                e.change_id
            );
        };
        if *checked != e.candidate_digest {
            reject!(
                "the report replayed candidate {} but the checks of change {} compiled {checked} (the live policies moved since the checks ran, or the report is of another candidate)",
                e.candidate_digest,
                e.change_id
            );
        }
        change.shadow_reports.push(ShadowReportView {
            attached: Self::act(env, None),
            report: e.clone(),
        });
        self.put_change(&change)?;
        Ok(Ok(()))
    }

    fn checks_completed(&mut self, e: &ChecksCompleted) -> Step {
        let tenant = self.tid();
        let Some(change) = self.change(&e.change_id)? else {
            reject!("no change {} in tenant `{tenant}`", e.change_id);
        };
        if change.checks.as_ref() != Some(e) {
            reject!(
                "these checks of change {} differ from the ones this control plane computed",
                e.change_id
            );
        }
        self.txn
            .delete_local(keys::outbox_checks(&tenant, &e.change_id));
        Ok(Ok(()))
    }

    fn publish(&mut self, env: &Envelope, e: &aegis_core::events::ChangePublished) -> Step {
        let tenant = self.tid();
        if let Some(reason) = self.frozen_reason("publish") {
            reject!("{reason}");
        }
        match e.stage {
            RolloutStage::Partial => reject!(
                "a change is not published straight to a partial rollout: publish it with stage shadow, then `aegisctl rollout partial` with a cohort (agents or a percentage)"
            ),
            RolloutStage::Shadow if self.tenant.stable().is_none() => reject!(
                "tenant `{tenant}` has no stable version yet: its first publish must be global (a shadow rollout runs a candidate next to the stable version)"
            ),
            _ => {}
        }
        let mut change = match self.open_change(&e.change_id)? {
            Ok(c) => c,
            Err(reason) => reject!("{reason}"),
        };
        let Some(checks) = &change.checks else {
            reject!("change {} has no checks yet", e.change_id);
        };
        if !checks.passed {
            let failed: Vec<&str> = checks
                .results
                .iter()
                .filter(|r| !r.passed)
                .map(|r| r.check.as_str())
                .collect();
            reject!(
                "change {} failed its checks ({}); it cannot be published",
                e.change_id,
                failed.join(", ")
            );
        }
        let required = self.tenant.required_approvals.for_tier(change.risk_tier);
        let have = change.approvals.len() as u32;
        if have < required {
            reject!(
                "change {} touches {}-risk policies and needs {required} approval(s) from someone other than its proposer; it has {have}",
                e.change_id,
                change.risk_tier.as_str()
            );
        }
        let live = self.live()?;
        if let Some(reason) = Self::stale(&live, &change) {
            reject!("{reason}");
        }
        let proposal = change.proposal();
        // Other changes may have gone live since the checks ran: check again against now.
        let recheck = checks::run(&tenant, &live, &proposal);
        if !recheck.passed {
            let details: Vec<String> = recheck
                .results
                .iter()
                .filter(|r| !r.passed)
                .flat_map(|r| r.details.iter().take(3).cloned())
                .collect();
            reject!(
                "change {} no longer passes its checks against the live policies: {}",
                e.change_id,
                details.join("; ")
            );
        }
        let version = self.tenant.last_version + 1;
        let next = checks::apply_change(&live, &proposal, version);
        let approvers: Vec<ActorId> = change.approvals.iter().map(|a| a.actor.clone()).collect();
        let trust = self.trust()?;
        let v = match self.cut_version(
            env,
            version,
            &next,
            &trust,
            Some(&e.change_id),
            None,
            false,
            e.stage,
            approvers,
        )? {
            Ok(v) => v,
            Err(reason) => reject!("{reason}"),
        };
        if e.stage == RolloutStage::Global {
            self.tenant.stable = Some(version);
            self.tenant.candidate = None;
        } else {
            // Replaces any earlier candidate: the new one carries its changes too (the live
            // set it was built from was the earlier candidate's).
            self.tenant.candidate = Some(CandidateView {
                version,
                stage: RolloutStage::Shadow,
                agents: Vec::new(),
                percent: None,
            });
        }
        change.state = ChangeState::Published;
        change.published = Some(PublishedView {
            by: Self::act(env, None),
            version,
            digest: v.digest,
            stage: e.stage,
        });
        self.put_change(&change)?;
        Ok(Ok(()))
    }

    fn rollback(&mut self, env: &Envelope, e: &aegis_core::events::RollbackRequested) -> Step {
        let tenant = self.tid();
        if e.emergency {
            // One publisher plus the admin role (admin implies publisher), and it goes through
            // a freeze: it is what an incident needs.
            if !self.roles.contains(&Role::Admin) {
                reject!(
                    "an emergency rollback needs the admin role (one publisher plus admin); `{}` is not an admin of tenant `{tenant}`: ask an admin to sign it, or roll back without emergency",
                    env.actor
                );
            }
        } else if let Some(reason) = self.frozen_reason("roll back") {
            reject!("{reason} (an admin can still roll back with emergency)");
        }
        if e.to_version == 0 || e.to_version >= self.tenant.last_version {
            reject!(
                "cannot roll back to version {}: tenant `{tenant}` is at version {}; pick an earlier one",
                e.to_version,
                self.tenant.last_version
            );
        }
        let Some(snapshot) = self
            .txn
            .get::<LiveView>(&keys::snapshot(&tenant, e.to_version))?
        else {
            reject!("tenant `{tenant}` has no version {}", e.to_version);
        };
        let live = self.live()?;
        let version = self.tenant.last_version + 1;
        let mut next = LiveSet::from_view(snapshot);
        for p in next.policies.values_mut() {
            // A policy whose content changes with the rollback gets the new version as revision.
            let unchanged = live
                .policies
                .get(&p.name)
                .is_some_and(|cur| cur.document == p.document && cur.format == p.format);
            p.revision = match live.policies.get(&p.name) {
                Some(cur) if unchanged => cur.revision,
                _ => version,
            };
        }
        let trust = self.trust()?;
        match self.cut_version(
            env,
            version,
            &next,
            &trust,
            None,
            Some(e.to_version),
            e.emergency,
            RolloutStage::Global,
            Vec::new(),
        )? {
            Ok(_) => {}
            Err(reason) => reject!("{reason}"),
        }
        self.tenant.stable = Some(version);
        self.tenant.candidate = None;
        if e.emergency {
            // A manifest freeze: nothing else is published until someone unfreezes; and the
            // rollback must reach gateways, so a data-plane freeze is lifted.
            self.tenant.frozen = Some(FreezeView {
                by: env.actor.clone(),
                at: env.time.clone(),
                reason: format!("emergency rollback to v{}: {}", e.to_version, e.reason),
            });
            self.tenant.data_plane_frozen = None;
        }
        Ok(Ok(()))
    }

    /// Makes `next` the tenant's live set.
    fn replace_live(&mut self, next: &LiveSet) -> Result<(), FoldError> {
        let tenant = self.tid();
        let live = self.live()?;
        for name in live.policies.keys() {
            if !next.policies.contains_key(name) {
                self.txn.delete(keys::live_policy(&tenant, name));
            }
        }
        for name in live.vectors.keys() {
            if !next.vectors.contains_key(name) {
                self.txn.delete(keys::live_vectors(&tenant, name));
            }
        }
        for p in next.policies.values() {
            self.txn.put(keys::live_policy(&tenant, &p.name), p)?;
        }
        for v in next.vectors.values() {
            self.txn.put(keys::live_vectors(&tenant, &v.name), v)?;
        }
        Ok(())
    }

    /// Builds, signs and stores version `version` with `next` as the live set and `trust` as
    /// its `trust.json`. Writes nothing when the bundle cannot be built.
    #[allow(clippy::too_many_arguments)]
    fn cut_version(
        &mut self,
        env: &Envelope,
        version: u64,
        next: &LiveSet,
        trust: &TrustData,
        change: Option<&ChangeId>,
        rollback_of: Option<u64>,
        emergency: bool,
        stage: aegis_core::events::RolloutStage,
        approved_by: Vec<ActorId>,
    ) -> Result<Result<VersionView, Reject>, FoldError> {
        let tenant = self.tid();
        let expires_at = expiry(&env.time, self.tenant.bundle_expiry_days);
        let built = match build_bundle(
            &BundleInput {
                tenant: &tenant,
                version,
                created_at: &env.time,
                expires_at: expires_at.clone(),
                author: &env.actor,
                change,
                live: next,
                trust,
            },
            &self.config.signing_key,
        ) {
            Ok(b) => b,
            Err(e) => return Ok(Err(format!("the bundle could not be built: {e}"))),
        };
        let view = VersionView {
            version,
            digest: built.digest.clone(),
            size: built.bytes.len() as u64,
            created_at: env.time.clone(),
            expires_at,
            change_id: change.cloned(),
            rollback_of,
            emergency,
            stage,
            published_by: env.actor.clone(),
            approved_by,
            signer: self.config.signing_key.key_id().clone(),
            announced: false,
        };
        self.replace_live(next)?;
        self.txn
            .put(keys::snapshot(&tenant, version), &next.to_view())?;
        self.txn.put(keys::version(&tenant, version), &view)?;
        self.txn
            .put_bytes(keys::bundle(&tenant, version), built.bytes);
        self.txn
            .put_local(keys::outbox_bundle(&tenant, version), &version)?;
        self.tenant.last_version = version;
        self.effect = Some(Effect::AnnounceBundle { version });
        Ok(Ok(view))
    }
}

/// How long after it is signed a runtime approval grant may expire at most.
const MAX_GRANT: time::Duration = time::Duration::hours(24);

/// The trust data of `issuers`: the keys that are not revoked.
fn trust_of(issuers: &[IssuerView]) -> TrustData {
    TrustData {
        token_issuers: issuers.iter().filter_map(IssuerView::trusted).collect(),
    }
}

/// A deterministic event id: `evt-` and 32 hex digits of SHA-256 over `parts`.
pub fn derived_event_id(parts: &[&str]) -> Option<EventId> {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    let hex = hex::encode(h.finalize());
    EventId::new(format!("evt-{}", &hex[..32])).ok()
}

/// The signed `checks_completed` envelope (canonical bytes as a string), deterministic: its id
/// and time derive from the change and the proposal.
fn checks_envelope(
    config: &FoldConfig,
    tenant: &TenantId,
    time: &str,
    checks: ChecksCompleted,
) -> Option<String> {
    let id = derived_event_id(&["checks", tenant.as_str(), checks.change_id.as_str()])?;
    let t = aegis_core::events::envelope::parse_time(time).ok()?;
    let env = Envelope::sign(
        id,
        tenant.clone(),
        config.control_plane_actor.clone(),
        &config.signing_key,
        t,
        Event::ChecksCompleted(checks),
    )
    .ok()?;
    env.to_bytes().ok().and_then(|b| String::from_utf8(b).ok())
}

/// One line about an event.
pub fn summary(env: &Envelope) -> String {
    match &env.event {
        Event::ActorRegistered(e) => format!("registered actor {} (key {})", e.actor, e.key_id),
        Event::KeyRevoked(e) => format!("revoked key {} of {}", e.key_id, e.actor),
        Event::RoleGranted(e) => format!("granted {} to {}", e.role, e.actor),
        Event::RoleRevoked(e) => format!("revoked {} from {}", e.role, e.actor),
        Event::TenantConfigured(e) => format!(
            "configured approvals low {} / medium {} / high {}",
            e.required_approvals.low, e.required_approvals.medium, e.required_approvals.high
        ),
        Event::PolicyUpserted(e) => format!("edited draft of policy {}", e.name),
        Event::PolicyDeleted(e) => format!("deleted draft of policy {}", e.name),
        Event::ChangeProposed(e) => {
            let names: Vec<&str> = e
                .documents
                .iter()
                .map(|d| d.name.as_str())
                .chain(e.deleted.iter().map(|d| d.name.as_str()))
                .collect();
            format!(
                "proposed {} ({}): {}",
                e.change_id,
                names.join(", "),
                e.intent
            )
        }
        Event::ChecksCompleted(e) => format!(
            "checks of {} {}",
            e.change_id,
            if e.passed { "passed" } else { "failed" }
        ),
        Event::ChangeApproved(e) => format!("approved {}", e.change_id),
        Event::ShadowReportAttached(e) => format!(
            "attached a shadow report to {}: {} of {} replayed decisions change",
            e.change_id, e.changed, e.replayed
        ),
        Event::ChangeRejected(e) => format!("rejected {}: {}", e.change_id, e.reason),
        Event::ChangePublished(e) => format!("published {} ({})", e.change_id, e.stage),
        Event::RollbackRequested(e) => format!(
            "{}rollback to version {}: {}",
            if e.emergency { "emergency " } else { "" },
            e.to_version,
            e.reason
        ),
        Event::TenantFrozen(e) => format!("froze the tenant: {}", e.reason),
        Event::TenantUnfrozen(_) => "unfroze the tenant".into(),
        Event::RolloutStageChanged(e) => format!("version {} to stage {}", e.version, e.stage),
        Event::TokenIssuerRegistered(e) => {
            format!("registered token issuer {} (key {})", e.issuer, e.key_id)
        }
        Event::TokenIssuerRevoked(e) => {
            format!("revoked token issuer key {}: {}", e.key_id, e.reason)
        }
        Event::RolloutAborted(e) => {
            format!("aborted the rollout of version {}: {}", e.version, e.reason)
        }
        Event::AgentBlocked(e) => format!("blocked agent {}: {}", e.agent, e.reason),
        Event::AgentUnblocked(e) => format!("unblocked agent {}", e.agent),
        Event::ToolBlocked(e) => format!("blocked tool {}: {}", e.tool, e.reason),
        Event::ToolUnblocked(e) => format!("unblocked tool {}", e.tool),
        Event::DataPlaneFrozen(e) => format!("froze the data plane: {}", e.reason),
        Event::DataPlaneUnfrozen(_) => "unfroze the data plane".into(),
        Event::RuntimeApprovalGranted(e) => format!("granted runtime approval {}", e.approval_id),
        Event::RuntimeApprovalDenied(e) => {
            format!("denied runtime approval {}: {}", e.approval_id, e.reason)
        }
        Event::RolloutReadinessMeasured(e) => format!(
            "readiness of version {}: {} of {} decisions disagree ({}), {} would be denied (decision stream {}..={})",
            e.version,
            e.disagreements,
            e.decisions,
            aegis_core::readiness::percent(e.counts().disagreement_basis_points()),
            e.would_deny,
            e.from_sequence,
            e.to_sequence
        ),
        Event::RolloutPromotionApproved(e) => {
            format!("approved promoting version {} to global", e.version)
        }
        Event::TenantControls(e) => format!("gateway controls at epoch {}", e.epoch),
        Event::RuntimeApprovalDecided(e) => format!(
            "runtime approval {} {} by {}",
            e.approval_id,
            if e.granted { "granted" } else { "denied" },
            e.by
        ),
        Event::BundlePublished(e) => format!("bundle version {} ({})", e.version, e.digest),
        Event::AuditCheckpoint(e) => {
            format!("audit checkpoint {}..={}", e.from_position, e.to_position)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    //! Token issuer keys: the fold's rules, and `trust.json` in every bundle it builds.

    use super::*;
    use crate::store::Family;
    use aegis_core::bundle::{TRUST_PATH, TokenIssuer, VerifiedBundle, VerifyPolicy, verify};
    use aegis_core::events::{
        ActorRegistered, ChangePublished, DocumentFormat, ProposedDocument, RequiredApprovals,
        RollbackRequested, RolloutStage, TenantConfigured, TenantFrozen, TenantUnfrozen,
    };
    use aegis_core::ids::PolicyName;
    use aegis_core::keys::TrustStore;

    const FINANCE_POLICY: &str = include_str!("../../policies/templates/finance/policy.yaml");

    struct Harness {
        _dir: tempfile::TempDir,
        store: Store,
        config: FoldConfig,
        root: Keypair,
        seq: u64,
        tenant: TenantId,
    }

    impl Harness {
        fn new() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let root = Keypair::from_seed(&[1; 32]);
            let root_admins = BTreeMap::from([(
                ActorId::new("root").unwrap(),
                vec![root.public_key().clone()],
            )]);
            Harness {
                _dir: dir,
                store,
                config: FoldConfig {
                    root_admins,
                    control_plane_actor: ActorId::new("control-plane").unwrap(),
                    signing_key: Keypair::from_seed(&[2; 32]),
                },
                root,
                seq: 0,
                tenant: TenantId::new("acme").unwrap(),
            }
        }

        /// Signs `event` as `actor` with `key`, folds it; the envelope, its record and effect.
        fn fold_as(
            &mut self,
            actor: &str,
            key: &Keypair,
            event: impl Into<Event>,
        ) -> (Envelope, EventRecord, Option<Effect>) {
            self.seq += 1;
            let time = time::OffsetDateTime::UNIX_EPOCH
                + time::Duration::days(20_000)
                + time::Duration::seconds(self.seq as i64);
            let env = Envelope::sign(
                EventId::new(format!("evt-{:032}", self.seq)).unwrap(),
                self.tenant.clone(),
                ActorId::new(actor).unwrap(),
                key,
                time,
                event.into(),
            )
            .unwrap();
            let msg = InMessage {
                seq: self.seq,
                subject: aegis_nats::topology::change_event_subject(&self.tenant, &env.event)
                    .unwrap(),
                payload: env.to_bytes().unwrap(),
            };
            let folder = Folder {
                store: &self.store,
                config: &self.config,
            };
            match folder.apply(&msg).unwrap() {
                Applied::Folded { record, effect, .. } => (env, *record, effect),
                other => panic!("not folded: {other:?}"),
            }
        }

        fn root(&mut self, event: impl Into<Event>) -> (Envelope, EventRecord, Option<Effect>) {
            let root = self.root.clone();
            self.fold_as("root", &root, event)
        }

        fn accept(&mut self, event: impl Into<Event>) -> (Envelope, Option<Effect>) {
            let (env, record, effect) = self.root(event);
            assert_eq!(record.outcome, Outcome::Accepted, "{}", record.summary);
            (env, effect)
        }

        fn refuse(&mut self, event: impl Into<Event>, needle: &str) -> String {
            let (_, record, effect) = self.root(event);
            let Outcome::Rejected { reason } = record.outcome else {
                panic!(
                    "expected a rejection ({needle}), got accepted: {}",
                    record.summary
                );
            };
            assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
            assert_eq!(effect, None);
            reason
        }

        fn tenant_record(&self) -> TenantRecord {
            self.store
                .get(Family::State, &keys::tenant(&self.tenant))
                .unwrap()
                .unwrap()
        }

        fn version(&self, v: u64) -> VersionView {
            self.store
                .get(Family::State, &keys::version(&self.tenant, v))
                .unwrap()
                .unwrap()
        }

        fn bundle(&self, v: u64) -> VerifiedBundle {
            let bytes = self
                .store
                .get_raw(Family::State, keys::bundle(&self.tenant, v).as_bytes())
                .unwrap()
                .unwrap();
            let mut trust = TrustStore::new();
            trust.trust(self.config.signing_key.public_key().clone());
            let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_001);
            verify(&bytes, &trust, &VerifyPolicy::new(now)).unwrap()
        }

        fn trust(&self, v: u64) -> TrustData {
            TrustData::from_bytes(&self.bundle(v).files[TRUST_PATH]).unwrap()
        }

        /// No approvals needed; propose the finance policy and publish it.
        fn publish_finance(&mut self) -> u64 {
            self.accept(TenantConfigured {
                required_approvals: RequiredApprovals {
                    low: 0,
                    medium: 0,
                    high: 0,
                },
                bundle_expiry_days: None,
                shadow_report_required: None,
                rollout_readiness: Default::default(),
            });
            let change = ChangeId::new("chg-0000000000000001").unwrap();
            self.accept(ChangeProposed {
                change_id: change.clone(),
                intent: "finance".into(),
                ticket: None,
                documents: vec![ProposedDocument {
                    name: PolicyName::new("finance-agent").unwrap(),
                    format: DocumentFormat::Yaml,
                    document: FINANCE_POLICY.into(),
                    base_revision: 0,
                }],
                deleted: vec![],
                vectors: vec![],
            });
            let (_, effect) = self.accept(ChangePublished {
                change_id: change,
                stage: RolloutStage::Global,
            });
            let v = self.tenant_record().last_version;
            assert_eq!(effect, Some(Effect::AnnounceBundle { version: v }));
            v
        }
    }

    fn idp(seed: u8) -> Keypair {
        Keypair::from_seed(&[seed; 32])
    }

    fn register(issuer: &str, key: &Keypair) -> TokenIssuerRegistered {
        TokenIssuerRegistered {
            issuer: issuer.into(),
            key_id: key.key_id().clone(),
            public_key: key.public_key().to_base64(),
        }
    }

    fn revoke(key: &Keypair) -> TokenIssuerRevoked {
        TokenIssuerRevoked {
            key_id: key.key_id().clone(),
            reason: "rotated".into(),
        }
    }

    fn entry(issuer: &str, key: &Keypair) -> TokenIssuer {
        TokenIssuer {
            issuer: issuer.into(),
            key_id: key.key_id().clone(),
            public_key: key.public_key().to_base64(),
        }
    }

    fn stored_issuers(h: &Harness) -> Vec<IssuerView> {
        crate::queries::Queries {
            store: &h.store,
            root_admins: &h.config.root_admins,
        }
        .issuers(&h.tenant)
        .unwrap()
    }

    #[test]
    fn issuer_rules() {
        let mut h = Harness::new();
        let (a, b) = (idp(20), idp(21));

        // A key that is not the key id's.
        let mut mismatched = register("acme-idp", &a);
        mismatched.public_key = b.public_key().to_base64();
        h.refuse(mismatched, "does not match key id");
        h.refuse(
            TokenIssuerRegistered {
                issuer: " acme-idp".into(),
                ..register("acme-idp", &a)
            },
            "whitespace",
        );

        // Before any publish: accepted, stored, nothing published.
        let (_, effect) = h.accept(register("acme-idp", &a));
        assert_eq!(effect, None);
        assert_eq!(h.tenant_record().last_version, 0);
        let issuers = stored_issuers(&h);
        assert_eq!(issuers.len(), 1);
        assert_eq!(issuers[0].trusted(), Some(entry("acme-idp", &a)));
        assert_eq!(issuers[0].registered.actor.as_str(), "root");

        // Twice the same key id, even under another issuer name.
        h.refuse(register("other-idp", &a), "already registered");

        // Revocations: unknown, then once, then not again; a revoked key never comes back.
        h.refuse(revoke(&b), "no token issuer key");
        h.accept(revoke(&a));
        h.refuse(revoke(&a), "already revoked");
        h.refuse(register("acme-idp", &a), "was revoked");
        let issuers = stored_issuers(&h);
        assert_eq!(issuers[0].trusted(), None);
        assert_eq!(
            issuers[0].revoked.as_ref().and_then(|r| r.note.as_deref()),
            Some("rotated")
        );

        // Frozen: registering waits, revoking does not.
        h.accept(register("acme-idp", &b));
        h.accept(TenantFrozen {
            reason: "incident".into(),
        });
        h.refuse(register("acme-idp", &idp(22)), "frozen");
        h.accept(revoke(&b));
        h.accept(TenantUnfrozen { reason: None });
        h.accept(register("acme-idp", &idp(22)));

        // Admins only.
        let ed = Keypair::from_seed(&[30; 32]);
        h.accept(ActorRegistered {
            actor: ActorId::new("ed").unwrap(),
            public_key: ed.public_key().to_base64(),
            key_id: ed.key_id().clone(),
            display_name: None,
        });
        h.accept(aegis_core::events::RoleGranted {
            actor: ActorId::new("ed").unwrap(),
            role: Role::Publisher,
        });
        let (_, record, _) = h.fold_as("ed", &ed, register("ed-idp", &idp(23)));
        assert!(
            matches!(&record.outcome, Outcome::Rejected { reason } if reason.contains("needs role admin")),
            "{:?}",
            record.outcome
        );
        let (_, record, _) = h.fold_as("ed", &ed, revoke(&idp(22)));
        assert!(matches!(record.outcome, Outcome::Rejected { .. }));
        assert_eq!(h.tenant_record().last_version, 0, "nothing was published");
    }

    #[test]
    fn every_bundle_carries_the_current_issuer_keys_and_trust_changes_publish_at_once() {
        let mut h = Harness::new();
        let (a, b) = (idp(20), idp(21));

        // The first bundle: no keys yet, still a trust.json.
        let v1 = h.publish_finance();
        assert_eq!(v1, 1);
        let b1 = h.bundle(1);
        assert_eq!(b1.files[TRUST_PATH], br#"{"token_issuers":[]}"#);

        // Registering with a published version puts a new version live: same policies, the
        // new trust data, a version like a rollback to the live one, the new stable version.
        let (env, effect) = h.accept(register("acme-idp", &a));
        assert_eq!(effect, Some(Effect::AnnounceBundle { version: 2 }));
        let v2 = h.version(2);
        assert_eq!(v2.created_at, env.time);
        assert_eq!((v2.change_id.as_ref(), v2.rollback_of), (None, None));
        assert_eq!(v2.stage, RolloutStage::Global);
        assert_eq!(h.tenant_record().stable(), Some(2));
        assert_eq!(v2.published_by.as_str(), "root");
        assert_eq!(h.trust(2).token_issuers, [entry("acme-idp", &a)]);
        let b2 = h.bundle(2);
        assert_eq!(b2.data(), b1.data(), "same policies");
        assert_eq!(b2.manifest.version, 2);
        assert_eq!(b2.manifest.created_at, env.time);

        // A second key: both, sorted by key id.
        h.accept(register("other-idp", &b));
        let mut both = vec![entry("acme-idp", &a), entry("other-idp", &b)];
        both.sort_by(|x, y| x.key_id.cmp(&y.key_id));
        assert_eq!(h.trust(3).token_issuers, both);
        assert_eq!(h.bundle(3).data(), b1.data());

        // Revoked: the next version goes without it.
        h.accept(revoke(&a));
        assert_eq!(h.trust(4).token_issuers, [entry("other-idp", &b)]);

        // A freeze does not hold back a revocation, nor its bundle.
        h.accept(TenantFrozen {
            reason: "incident".into(),
        });
        let (_, effect) = h.accept(revoke(&b));
        assert_eq!(effect, Some(Effect::AnnounceBundle { version: 5 }));
        assert_eq!(h.bundle(5).files[TRUST_PATH], br#"{"token_issuers":[]}"#);
        h.accept(TenantUnfrozen { reason: None });

        // A rollback carries today's keys, not the old version's.
        let c = idp(22);
        h.accept(register("acme-idp", &c));
        h.accept(RollbackRequested {
            to_version: 3,
            reason: "back".into(),
            emergency: false,
        });
        assert_eq!(h.version(7).rollback_of, Some(3));
        assert_eq!(h.trust(7).token_issuers, [entry("acme-idp", &c)]);
        assert_eq!(h.bundle(7).data(), b1.data());
    }
}

#[cfg(test)]
mod control_tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    //! Issue 5: rollouts (stable and candidate), emergency rollback, the kill switch, the
    //! data-plane freeze and runtime approval decisions.

    use super::*;
    use crate::store::Family;
    use aegis_core::events::envelope::format_time;
    use aegis_core::events::{
        ActorRegistered, AgentBlocked, AgentUnblocked, ChangePublished, DataPlaneFrozen,
        DataPlaneUnfrozen, DocumentFormat, ProposedDocument, RequiredApprovals, RoleGranted,
        RollbackRequested, RuntimeApprovalDenied, RuntimeApprovalGranted, TenantConfigured,
        TenantFrozen, TenantUnfrozen, ToolBlocked, ToolUnblocked,
    };
    use aegis_core::ids::{AgentId, PolicyName, ToolId};

    const FINANCE_POLICY: &str = include_str!("../../policies/templates/finance/policy.yaml");

    struct H {
        _dir: tempfile::TempDir,
        store: Store,
        config: FoldConfig,
        root: Keypair,
        seq: u64,
        changes: u64,
        tenant: TenantId,
        actors: BTreeMap<String, Keypair>,
        /// Added to every event's time (to let days pass).
        later: time::Duration,
    }

    fn time_of(seq: u64) -> time::OffsetDateTime {
        time::OffsetDateTime::UNIX_EPOCH
            + time::Duration::days(20_000)
            + time::Duration::seconds(seq as i64)
    }

    fn doc(ticket: u32) -> String {
        FINANCE_POLICY.replace("ticket: FIN-1001", &format!("ticket: FIN-{ticket}"))
    }

    impl H {
        fn new() -> H {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let root = Keypair::from_seed(&[1; 32]);
            let root_admins = BTreeMap::from([(
                ActorId::new("root").unwrap(),
                vec![root.public_key().clone()],
            )]);
            let mut h = H {
                _dir: dir,
                store,
                config: FoldConfig {
                    root_admins,
                    control_plane_actor: ActorId::new("control-plane").unwrap(),
                    signing_key: Keypair::from_seed(&[2; 32]),
                },
                root,
                seq: 0,
                changes: 0,
                tenant: TenantId::new("acme").unwrap(),
                actors: BTreeMap::new(),
                later: time::Duration::ZERO,
            };
            h.ok(
                "root",
                TenantConfigured {
                    required_approvals: RequiredApprovals {
                        low: 0,
                        medium: 0,
                        high: 0,
                    },
                    bundle_expiry_days: None,
                    shadow_report_required: None,
                    rollout_readiness: Default::default(),
                },
            );
            h
        }

        fn fold(&mut self, actor: &str, event: impl Into<Event>) -> (EventRecord, Option<Effect>) {
            self.seq += 1;
            let key = match actor {
                "root" => self.root.clone(),
                "control-plane" => self.config.signing_key.clone(),
                a => self.actors[a].clone(),
            };
            let env = Envelope::sign(
                EventId::new(format!("evt-{:032}", self.seq)).unwrap(),
                self.tenant.clone(),
                ActorId::new(actor).unwrap(),
                &key,
                time_of(self.seq) + self.later,
                event.into(),
            )
            .unwrap();
            let msg = InMessage {
                seq: self.seq,
                subject: aegis_nats::topology::change_event_subject(&self.tenant, &env.event)
                    .unwrap(),
                payload: env.to_bytes().unwrap(),
            };
            let folder = Folder {
                store: &self.store,
                config: &self.config,
            };
            match folder.apply(&msg).unwrap() {
                Applied::Folded { record, effect, .. } => (*record, effect),
                other => panic!("not folded: {other:?}"),
            }
        }

        fn ok(&mut self, actor: &str, event: impl Into<Event>) -> (EventRecord, Option<Effect>) {
            let (record, effect) = self.fold(actor, event);
            assert_eq!(record.outcome, Outcome::Accepted, "{}", record.summary);
            (record, effect)
        }

        fn no(&mut self, actor: &str, event: impl Into<Event>, needle: &str) -> String {
            let before = self.tenant();
            let controls = self.controls().len();
            let (record, effect) = self.fold(actor, event);
            let Outcome::Rejected { reason } = record.outcome else {
                panic!(
                    "expected a rejection ({needle}), got accepted: {}",
                    record.summary
                );
            };
            assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
            assert_eq!(effect, None);
            // A rejection changes nothing but the chain.
            let after = self.tenant();
            assert_eq!(after.controls_key(), before.controls_key());
            assert_eq!(
                (after.frozen, after.last_version),
                (before.frozen, before.last_version)
            );
            assert_eq!(self.controls().len(), controls);
            reason
        }

        /// Registers `name` with `roles`.
        fn actor(&mut self, name: &str, seed: u8, roles: &[Role]) {
            let key = Keypair::from_seed(&[seed; 32]);
            self.ok(
                "root",
                ActorRegistered {
                    actor: ActorId::new(name).unwrap(),
                    public_key: key.public_key().to_base64(),
                    key_id: key.key_id().clone(),
                    display_name: None,
                },
            );
            for role in roles {
                self.ok(
                    "root",
                    RoleGranted {
                        actor: ActorId::new(name).unwrap(),
                        role: *role,
                    },
                );
            }
            self.actors.insert(name.into(), key);
        }

        /// Proposes the finance policy with `ticket` against live `base`; returns its id.
        fn propose(&mut self, ticket: u32, base: u64) -> ChangeId {
            self.changes += 1;
            let change = ChangeId::new(format!("chg-{:016}", self.changes)).unwrap();
            self.ok(
                "root",
                ChangeProposed {
                    change_id: change.clone(),
                    intent: "finance".into(),
                    ticket: None,
                    documents: vec![ProposedDocument {
                        name: PolicyName::new("finance-agent").unwrap(),
                        format: DocumentFormat::Yaml,
                        document: doc(ticket),
                        base_revision: base,
                    }],
                    deleted: vec![],
                    vectors: vec![],
                },
            );
            change
        }

        /// Proposes and publishes; returns the new version.
        fn publish(&mut self, ticket: u32, stage: RolloutStage) -> u64 {
            let base = self.live_revision();
            let change_id = self.propose(ticket, base);
            self.ok("root", ChangePublished { change_id, stage });
            self.tenant().last_version
        }

        fn live_revision(&self) -> u64 {
            self.store
                .get::<LiveDocument>(
                    Family::State,
                    &keys::live_policy(&self.tenant, &PolicyName::new("finance-agent").unwrap()),
                )
                .unwrap()
                .map(|d| d.revision)
                .unwrap_or(0)
        }

        fn live_document(&self) -> String {
            self.store
                .get::<LiveDocument>(
                    Family::State,
                    &keys::live_policy(&self.tenant, &PolicyName::new("finance-agent").unwrap()),
                )
                .unwrap()
                .unwrap()
                .document
        }

        fn tenant(&self) -> TenantRecord {
            self.store
                .get(Family::State, &keys::tenant(&self.tenant))
                .unwrap()
                .unwrap()
        }

        fn version(&self, v: u64) -> VersionView {
            self.store
                .get(Family::State, &keys::version(&self.tenant, v))
                .unwrap()
                .unwrap()
        }

        fn status(&self) -> aegis_core::query::TenantStatus {
            crate::queries::Queries {
                store: &self.store,
                root_admins: &self.config.root_admins,
            }
            .status(&self.tenant)
            .unwrap()
        }

        /// The gateway-controls states in the outbox, oldest first.
        fn controls(&self) -> Vec<TenantControls> {
            self.store
                .scan::<ControlsOutbox>(Family::Local, keys::outbox_controls_all())
                .unwrap()
                .into_iter()
                .map(|(_, e)| e.controls)
                .collect()
        }

        fn last_controls(&self) -> TenantControls {
            self.controls()
                .pop()
                .expect("a controls state in the outbox")
        }
    }

    fn stage(version: u64, stage: RolloutStage) -> RolloutStageChanged {
        RolloutStageChanged {
            version,
            stage,
            agents: vec![],
            percent: None,
        }
    }

    fn agent(id: &str) -> AgentId {
        AgentId::new(id).unwrap()
    }

    #[test]
    fn a_rollout_goes_shadow_partial_global_and_every_step_queues_the_controls() {
        let mut h = H::new();
        // No stable version yet: nothing to shadow.
        let c = h.propose(1001, 0);
        h.no(
            "root",
            ChangePublished {
                change_id: c.clone(),
                stage: RolloutStage::Shadow,
            },
            "first publish must be global",
        );
        h.no(
            "root",
            ChangePublished {
                change_id: c.clone(),
                stage: RolloutStage::Partial,
            },
            "publish it with stage shadow, then `aegisctl rollout partial`",
        );
        let (record, effect) = h.ok(
            "root",
            ChangePublished {
                change_id: c,
                stage: RolloutStage::Global,
            },
        );
        assert_eq!(effect, Some(Effect::AnnounceBundle { version: 1 }));
        let v1 = h.version(1);
        let controls = h.last_controls();
        assert_eq!(controls.epoch, record.position, "epoch = chain position");
        assert_eq!(
            controls.stable,
            Some(BundleRef {
                version: 1,
                digest: v1.digest.clone(),
                size: v1.size
            })
        );
        assert_eq!(controls.candidate, None);
        assert_eq!(h.status().stable, Some(1));

        // v2 in shadow: the candidate; stable unchanged.
        assert_eq!(h.publish(1002, RolloutStage::Shadow), 2);
        let t = h.tenant();
        assert_eq!(t.stable(), Some(1));
        assert_eq!(
            t.candidate,
            Some(CandidateView {
                version: 2,
                stage: RolloutStage::Shadow,
                agents: vec![],
                percent: None
            })
        );
        assert_eq!(h.version(2).stage, RolloutStage::Shadow);
        let controls = h.last_controls();
        assert_eq!(controls.stable.as_ref().map(|b| b.version), Some(1));
        let cand = controls.candidate.clone().unwrap();
        assert_eq!((cand.bundle.version, cand.stage), (2, RolloutStage::Shadow));
        assert_eq!(cand.bundle.digest, h.version(2).digest);

        // Only the candidate's stage changes.
        h.no(
            "root",
            stage(1, RolloutStage::Partial),
            "is not the candidate",
        );
        h.no("root", stage(9, RolloutStage::Global), "has no version 9");
        h.no(
            "root",
            stage(2, RolloutStage::Partial),
            "a partial rollout needs agents or a percentage",
        );
        h.no(
            "root",
            RolloutStageChanged {
                percent: Some(101),
                ..stage(2, RolloutStage::Partial)
            },
            "fails its schema",
        );
        let before = h.last_controls().epoch;
        let (record, effect) = h.ok(
            "root",
            RolloutStageChanged {
                version: 2,
                stage: RolloutStage::Partial,
                agents: vec![agent("planner"), agent("auditor"), agent("planner")],
                percent: Some(10),
            },
        );
        assert_eq!(
            effect,
            Some(Effect::AnnounceControls {
                epoch: record.position
            })
        );
        let controls = h.last_controls();
        assert!(controls.epoch > before);
        let cand = controls.candidate.clone().unwrap();
        assert_eq!(cand.stage, RolloutStage::Partial);
        assert_eq!(
            cand.agents,
            [agent("auditor"), agent("planner")],
            "sorted, once each"
        );
        assert_eq!(cand.percent, Some(10));
        assert_eq!(h.version(2).stage, RolloutStage::Partial);
        let status = h.status();
        assert_eq!(
            status.candidate.as_ref().map(|c| c.stage),
            Some(RolloutStage::Partial)
        );

        // Frozen: stage changes wait.
        h.ok(
            "root",
            TenantFrozen {
                reason: "close".into(),
            },
        );
        h.no("root", stage(2, RolloutStage::Global), "is frozen");
        h.ok("root", TenantUnfrozen { reason: None });

        // Global: promoted (v2 is far below the default readiness thresholds: another
        // actor approves the promotion).
        h.actor("ann", 41, &[Role::Approver]);
        h.ok(
            "ann",
            RolloutPromotionApproved {
                version: 2,
                comment: None,
            },
        );
        h.ok("root", stage(2, RolloutStage::Global));
        let t = h.tenant();
        assert_eq!((t.stable(), t.candidate.clone()), (Some(2), None));
        assert_eq!(h.version(2).stage, RolloutStage::Global);
        let controls = h.last_controls();
        assert_eq!(controls.stable.map(|b| b.version), Some(2));
        assert_eq!(controls.candidate, None);
        // No rollout in progress any more.
        h.no(
            "root",
            stage(2, RolloutStage::Shadow),
            "no rollout is in progress",
        );

        // A later shadow publish replaces an earlier candidate.
        assert_eq!(h.publish(1003, RolloutStage::Shadow), 3);
        assert_eq!(h.publish(1004, RolloutStage::Shadow), 4);
        let t = h.tenant();
        assert_eq!(t.stable(), Some(2));
        assert_eq!(t.candidate.map(|c| c.version), Some(4));
        // A global publish ends the rollout.
        assert_eq!(h.publish(1005, RolloutStage::Global), 5);
        let t = h.tenant();
        assert_eq!((t.stable(), t.candidate), (Some(5), None));

        // Epochs strictly increase.
        let epochs: Vec<u64> = h.controls().iter().map(|c| c.epoch).collect();
        assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    }

    #[test]
    fn abort_puts_every_agent_and_the_live_policies_back_on_stable_without_a_new_version() {
        let mut h = H::new();
        h.actor("pat", 40, &[Role::Publisher]);
        h.publish(1001, RolloutStage::Global);
        let stable_doc = h.live_document();
        h.no(
            "pat",
            RolloutAborted {
                version: 1,
                reason: "x".into(),
            },
            "no rollout is in progress",
        );
        h.publish(1002, RolloutStage::Shadow);
        assert_eq!(
            h.live_revision(),
            2,
            "the next change is proposed against the candidate"
        );
        assert_ne!(h.live_document(), stable_doc);

        h.no(
            "pat",
            RolloutAborted {
                version: 1,
                reason: "x".into(),
            },
            "the rollout in progress is version 2",
        );
        h.ok(
            "root",
            TenantFrozen {
                reason: "close".into(),
            },
        );
        h.no(
            "pat",
            RolloutAborted {
                version: 2,
                reason: "x".into(),
            },
            "is frozen",
        );
        h.ok("root", TenantUnfrozen { reason: None });

        let (record, effect) = h.ok(
            "pat",
            RolloutAborted {
                version: 2,
                reason: "error rate".into(),
            },
        );
        assert_eq!(
            effect,
            Some(Effect::AnnounceControls {
                epoch: record.position
            })
        );
        let t = h.tenant();
        assert_eq!(
            (t.stable(), t.candidate.clone(), t.last_version),
            (Some(1), None, 2)
        );
        assert_eq!(h.live_revision(), 1);
        assert_eq!(h.live_document(), stable_doc);
        let controls = h.last_controls();
        assert_eq!(controls.stable.map(|b| b.version), Some(1));
        assert_eq!(controls.candidate, None);

        // A change written against the candidate is stale now; one against stable publishes.
        let stale = h.propose(1003, 1);
        let _ = stale;
        h.changes += 1;
        let c = ChangeId::new(format!("chg-{:016}", h.changes)).unwrap();
        h.no(
            "root",
            ChangeProposed {
                change_id: c,
                intent: "on the aborted candidate".into(),
                ticket: None,
                documents: vec![ProposedDocument {
                    name: PolicyName::new("finance-agent").unwrap(),
                    format: DocumentFormat::Yaml,
                    document: doc(1004),
                    base_revision: 2,
                }],
                deleted: vec![],
                vectors: vec![],
            },
            "stale",
        );
        assert_eq!(h.publish(1005, RolloutStage::Global), 3);
    }

    #[test]
    fn an_emergency_rollback_needs_admin_goes_through_a_freeze_and_leaves_the_tenant_frozen() {
        let mut h = H::new();
        h.actor("pat", 40, &[Role::Publisher]);
        h.actor("ada", 41, &[Role::Admin]);
        h.publish(1001, RolloutStage::Global);
        h.publish(1002, RolloutStage::Global);
        h.publish(1003, RolloutStage::Shadow);
        let emergency = |to| RollbackRequested {
            to_version: to,
            reason: "bad deny storm".into(),
            emergency: true,
        };

        // A publisher alone: refused, and told what to do.
        let reason = h.no("pat", emergency(1), "needs the admin role");
        assert!(reason.contains("ask an admin"), "{reason}");
        assert!(reason.contains("without emergency"), "{reason}");

        // Frozen (manifest and data plane): a normal rollback waits, an emergency one does not.
        h.ok(
            "pat",
            TenantFrozen {
                reason: "incident".into(),
            },
        );
        h.ok(
            "pat",
            DataPlaneFrozen {
                reason: "incident".into(),
            },
        );
        let reason = h.no(
            "pat",
            RollbackRequested {
                emergency: false,
                ..emergency(1)
            },
            "is frozen",
        );
        assert!(reason.contains("emergency"), "{reason}");
        let (record, effect) = h.ok("ada", emergency(1));
        assert_eq!(effect, Some(Effect::AnnounceBundle { version: 4 }));
        let v4 = h.version(4);
        assert!(v4.emergency);
        assert_eq!((v4.rollback_of, v4.stage), (Some(1), RolloutStage::Global));
        assert_eq!(v4.published_by.as_str(), "ada");
        let t = h.tenant();
        assert_eq!((t.stable(), t.candidate.clone()), (Some(4), None));
        let frozen = t.frozen.clone().expect("still frozen");
        assert_eq!(frozen.reason, "emergency rollback to v1: bad deny storm");
        assert_eq!(
            (frozen.by.as_str(), frozen.at.as_str()),
            ("ada", record.time.as_deref().unwrap())
        );
        assert_eq!(
            t.data_plane_frozen, None,
            "the rollback must reach gateways"
        );
        let controls = h.last_controls();
        assert_eq!(controls.epoch, record.position);
        assert_eq!(controls.stable.map(|b| b.version), Some(4));
        assert_eq!(
            (controls.candidate, controls.data_plane_frozen),
            (None, None)
        );

        // The freeze it leaves holds publishing back until someone unfreezes.
        let c = h.propose(1004, h.live_revision());
        h.no(
            "pat",
            ChangePublished {
                change_id: c,
                stage: RolloutStage::Global,
            },
            "emergency rollback to v1",
        );
        // A root admin may do it too.
        h.ok("root", emergency(2));
        assert!(h.version(5).emergency);
    }

    #[test]
    fn issuer_changes_during_a_rollout() {
        let mut h = H::new();
        let idp = Keypair::from_seed(&[20; 32]);
        h.publish(1001, RolloutStage::Global);
        h.ok(
            "root",
            TokenIssuerRegistered {
                issuer: "acme-idp".into(),
                key_id: idp.key_id().clone(),
                public_key: idp.public_key().to_base64(),
            },
        );
        assert_eq!(h.tenant().stable(), Some(2));
        let stable_doc = h.live_document();
        h.publish(1002, RolloutStage::Shadow);
        assert_eq!(h.tenant().candidate.as_ref().map(|c| c.version), Some(3));

        // Registering waits for the rollout to end.
        let other = Keypair::from_seed(&[21; 32]);
        h.no(
            "root",
            TokenIssuerRegistered {
                issuer: "other-idp".into(),
                key_id: other.key_id().clone(),
                public_key: other.public_key().to_base64(),
            },
            "finish or abort the rollout first",
        );

        // Revoking does not: the candidate is dropped and the new stable version carries the
        // stable policies with the revised trust.
        let (record, effect) = h.ok(
            "root",
            TokenIssuerRevoked {
                key_id: idp.key_id().clone(),
                reason: "leaked".into(),
            },
        );
        assert_eq!(effect, Some(Effect::AnnounceBundle { version: 4 }));
        let t = h.tenant();
        assert_eq!((t.stable(), t.candidate.clone()), (Some(4), None));
        assert_eq!(h.version(4).stage, RolloutStage::Global);
        assert_eq!(h.live_document(), stable_doc);
        let snapshot_2: LiveView = h
            .store
            .get(Family::State, &keys::snapshot(&h.tenant, 2))
            .unwrap()
            .unwrap();
        let snapshot_4: LiveView = h
            .store
            .get(Family::State, &keys::snapshot(&h.tenant, 4))
            .unwrap()
            .unwrap();
        assert_eq!(snapshot_4, snapshot_2);
        let controls = h.last_controls();
        assert_eq!(controls.epoch, record.position);
        assert_eq!(controls.stable.map(|b| b.version), Some(4));
        assert_eq!(controls.candidate, None);
    }

    #[test]
    fn kill_switch_and_data_plane_freeze() {
        let mut h = H::new();
        h.actor("pat", 40, &[Role::Publisher]);
        h.actor("eve", 42, &[Role::Editor]);
        let block_agent = |id: &str| AgentBlocked {
            agent: agent(id),
            reason: "runaway".into(),
        };
        let tool = |id: &str| ToolId::new(id).unwrap();

        // Before any publish, and while the tenant is frozen: accepted.
        h.ok(
            "pat",
            TenantFrozen {
                reason: "incident".into(),
            },
        );
        let (r1, effect) = h.ok("pat", block_agent("planner"));
        assert_eq!(
            effect,
            Some(Effect::AnnounceControls { epoch: r1.position })
        );
        h.no(
            "pat",
            block_agent("planner"),
            "agent `planner` is already blocked",
        );
        h.no("eve", block_agent("other"), "needs role admin or publisher");
        h.ok("pat", block_agent("billing"));
        h.ok(
            "pat",
            ToolBlocked {
                tool: tool("payments"),
                reason: "fraud".into(),
            },
        );
        h.no(
            "pat",
            ToolBlocked {
                tool: tool("payments"),
                reason: "again".into(),
            },
            "tool `payments` is already blocked",
        );
        let controls = h.last_controls();
        assert_eq!(controls.stable, None);
        let ids: Vec<&str> = controls
            .blocked_agents
            .iter()
            .map(|b| b.id.as_str())
            .collect();
        assert_eq!(ids, ["billing", "planner"], "sorted by id");
        assert_eq!(controls.blocked_agents[1].by.as_str(), "pat");
        assert_eq!(controls.blocked_agents[1].reason, "runaway");
        assert_eq!(controls.blocked_agents[1].at, r1.time.clone().unwrap());
        assert_eq!(controls.blocked_tools[0].id, "payments");
        let status = h.status();
        assert_eq!(
            status.blocked_agents.keys().collect::<Vec<_>>(),
            ["billing", "planner"]
        );
        assert_eq!(status.blocked_tools["payments"].reason, "fraud");

        h.ok(
            "pat",
            AgentUnblocked {
                agent: agent("planner"),
                reason: None,
            },
        );
        h.no(
            "pat",
            AgentUnblocked {
                agent: agent("planner"),
                reason: None,
            },
            "agent `planner` is not blocked",
        );
        h.ok(
            "pat",
            ToolUnblocked {
                tool: tool("payments"),
                reason: Some("fixed".into()),
            },
        );
        h.no(
            "pat",
            ToolUnblocked {
                tool: tool("payments"),
                reason: None,
            },
            "tool `payments` is not blocked",
        );
        let controls = h.last_controls();
        assert_eq!(controls.blocked_agents.len(), 1);
        assert!(controls.blocked_tools.is_empty());

        // The data-plane freeze.
        h.no("pat", DataPlaneUnfrozen { reason: None }, "is not frozen");
        h.ok(
            "pat",
            DataPlaneFrozen {
                reason: "hold".into(),
            },
        );
        h.no(
            "pat",
            DataPlaneFrozen {
                reason: "again".into(),
            },
            "already frozen",
        );
        let controls = h.last_controls();
        let f = controls.data_plane_frozen.unwrap();
        assert_eq!((f.reason.as_str(), f.by.as_str()), ("hold", "pat"));
        assert_eq!(
            h.status().data_plane_frozen.map(|f| f.reason),
            Some("hold".into())
        );
        h.ok("pat", DataPlaneUnfrozen { reason: None });
        assert_eq!(h.last_controls().data_plane_frozen, None);

        // Seven accepted changes, seven states, epochs increasing.
        let epochs: Vec<u64> = h.controls().iter().map(|c| c.epoch).collect();
        assert_eq!(epochs.len(), 7, "{epochs:?}");
        assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
        // Freezing the tenant itself is not a gateway control.
        h.ok("pat", TenantUnfrozen { reason: None });
        assert_eq!(h.controls().len(), 7);
    }

    const APR: &str = "apr-0123456789abcdef0123456789abcdef";
    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn grant(h: &H, approval_id: &str, valid_for: time::Duration) -> RuntimeApprovalGranted {
        RuntimeApprovalGranted {
            approval_id: approval_id.into(),
            call_digest: DIGEST.into(),
            expires_at: format_time(time_of(h.seq + 1) + valid_for).unwrap(),
            comment: Some("ok once".into()),
        }
    }

    #[test]
    fn runtime_approval_decisions() {
        let mut h = H::new();
        h.actor("bob", 43, &[Role::Approver]);
        h.actor("pat", 40, &[Role::Publisher]);
        let hour = time::Duration::hours(1);

        h.no("pat", grant(&h, APR, hour), "needs role admin or approver");
        h.no(
            "bob",
            grant(&h, "apr-0123456789ABCDEF0123456789ABCDEF", hour),
            "32 lowercase hex",
        );
        h.no("bob", grant(&h, "apr-0123", hour), "32 lowercase hex");
        h.no(
            "bob",
            grant(&h, "req-0123456789abcdef0123456789abcdef", hour),
            "is not `apr-`",
        );
        h.no(
            "bob",
            RuntimeApprovalGranted {
                call_digest: "sha256:abc".into(),
                ..grant(&h, APR, hour)
            },
            "fails its schema",
        );
        h.no(
            "bob",
            grant(&h, APR, time::Duration::ZERO),
            "not after it was signed",
        );
        h.no("bob", grant(&h, APR, -hour), "not after it was signed");
        h.no(
            "bob",
            grant(
                &h,
                APR,
                time::Duration::hours(24) + time::Duration::seconds(1),
            ),
            "more than 24 hours",
        );

        // Accepted while frozen; the decision waits in the outbox for the reactor.
        h.ok(
            "root",
            TenantFrozen {
                reason: "incident".into(),
            },
        );
        let g = grant(&h, APR, time::Duration::hours(24));
        let (record, effect) = h.ok("bob", g.clone());
        assert_eq!(
            effect,
            Some(Effect::RelayApproval {
                approval_id: APR.into()
            })
        );
        let pending: Vec<(String, ApprovalDecisionRecord)> = h
            .store
            .scan(Family::Local, keys::outbox_approval_all())
            .unwrap();
        assert_eq!(pending.len(), 1);
        let d = &pending[0].1;
        assert!(d.granted);
        assert_eq!(d.expires_at.as_deref(), Some(g.expires_at.as_str()));
        assert_eq!(
            (d.by.as_str(), d.at.as_str()),
            ("bob", record.time.as_deref().unwrap())
        );
        assert_eq!(d.event_id.as_str(), record.id);
        assert_eq!(d.note.as_deref(), Some("ok once"));
        assert_eq!(d.call_digest, DIGEST);
        assert!(
            h.controls().is_empty(),
            "a decision is not a gateway control"
        );

        // One decision per approval id.
        let reason = h.no(
            "root",
            RuntimeApprovalDenied {
                approval_id: APR.into(),
                call_digest: DIGEST.into(),
                reason: "no".into(),
            },
            "was already granted by bob at",
        );
        assert!(reason.contains(record.time.as_deref().unwrap()), "{reason}");
        h.no("bob", grant(&h, APR, hour), "already granted");

        // A denial.
        let other = "apr-ffffffffffffffffffffffffffffffff";
        h.ok(
            "bob",
            RuntimeApprovalDenied {
                approval_id: other.into(),
                call_digest: DIGEST.into(),
                reason: "too much".into(),
            },
        );
        h.no("bob", grant(&h, other, hour), "was already denied by bob");
    }

    /// One scenario through every new rule, folded twice: the same state bytes.
    /// A control-plane measurement of `version` over decision-stream sequences `from..=to`.
    fn measured(
        version: u64,
        from: u64,
        to: u64,
        decisions: u64,
        disagreements: u64,
    ) -> RolloutReadinessMeasured {
        RolloutReadinessMeasured {
            version,
            from_sequence: from,
            to_sequence: to,
            decisions,
            disagreements,
            would_deny: disagreements,
            measured_at: "2026-11-26T10:00:00Z".into(),
            top_agents: vec![],
            top_tools: vec![],
        }
    }

    fn approve(version: u64) -> RolloutPromotionApproved {
        RolloutPromotionApproved {
            version,
            comment: Some("looked at the diff".into()),
        }
    }

    fn thresholds(days: u32, basis_points: u32, decisions: u64) -> TenantConfigured {
        TenantConfigured {
            required_approvals: RequiredApprovals {
                low: 0,
                medium: 0,
                high: 0,
            },
            bundle_expiry_days: None,
            rollout_readiness: aegis_core::events::ReadinessThresholds {
                min_shadow_days: days,
                max_disagreement_basis_points: basis_points,
                min_decisions: decisions,
            },
            ..TenantConfigured::default()
        }
    }

    #[test]
    fn promotion_below_the_thresholds_needs_another_actors_approval() {
        let mut h = H::new();
        h.actor("pat", 40, &[Role::Publisher]);
        h.actor("ann", 41, &[Role::Approver]);
        h.actor("eve", 42, &[Role::Editor]);
        h.publish(1001, RolloutStage::Global);
        assert_eq!(h.publish(1002, RolloutStage::Shadow), 2);
        let status = h.status();
        assert_eq!(
            status.rollout_readiness,
            aegis_core::events::ReadinessThresholds::default()
        );
        let r = status.readiness.expect("the candidate's readiness");
        assert_eq!((r.version, r.since.clone()), (2, h.version(2).created_at));
        assert!(!r.verdict.ready);

        // The publisher alone, below the default thresholds (7 days, 100 decisions): refused,
        // with every unmet condition and the way out.
        let reason = h.no(
            "pat",
            stage(2, RolloutStage::Global),
            "does not meet tenant `acme`'s rollout readiness thresholds",
        );
        for needle in [
            "at least 7 day(s) needed",
            "0 decision(s) compared with the stable version, at least 100 needed",
            "needs an approval by someone other than `pat`",
            "`aegisctl rollout approve --version 2`",
        ] {
            assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
        }
        assert_eq!(h.tenant().candidate.map(|c| c.version), Some(2));

        // Their own approval does not count.
        h.ok("pat", approve(2));
        h.no(
            "pat",
            approve(2),
            "`pat` already approved the promotion of version 2",
        );
        h.no(
            "pat",
            stage(2, RolloutStage::Global),
            "`pat`'s own approval does not count",
        );
        // Only the candidate, only by approvers, publishers and admins.
        h.no("ann", approve(1), "is not the candidate");
        h.no(
            "eve",
            approve(2),
            "needs role admin or approver or publisher",
        );

        // A new candidate starts over: approvals of the one it replaces do not carry.
        h.ok("ann", approve(2));
        assert_eq!(h.publish(1003, RolloutStage::Shadow), 3);
        assert_eq!(h.tenant().readiness, None);
        h.no("pat", stage(3, RolloutStage::Global), "needs an approval");
        h.ok("ann", approve(3));
        let r = h.status().readiness.unwrap();
        let approvers: Vec<&str> = r.approvals.iter().map(|a| a.actor.as_str()).collect();
        assert_eq!(approvers, ["ann"]);
        assert_eq!(r.approvals[0].note.as_deref(), Some("looked at the diff"));
        // Another actor approved: the publisher may promote; approver alone may not publish.
        h.no(
            "ann",
            stage(3, RolloutStage::Global),
            "needs role admin or publisher",
        );
        h.ok("pat", stage(3, RolloutStage::Global));
        let t = h.tenant();
        assert_eq!(
            (t.stable(), t.candidate, t.readiness),
            (Some(3), None, None)
        );
        h.no("ann", approve(3), "no rollout is in progress");
    }

    #[test]
    fn promotion_by_the_publisher_alone_once_a_measurement_meets_the_thresholds() {
        let mut h = H::new();
        h.actor("pat", 40, &[Role::Publisher]);
        h.ok("root", thresholds(0, 100, 100));
        h.publish(1001, RolloutStage::Global);
        h.publish(1002, RolloutStage::Shadow);
        h.no(
            "pat",
            stage(2, RolloutStage::Global),
            "0 decision(s) compared with the stable version, at least 100 needed",
        );

        // Measurements come from the control plane, for the candidate, and add up.
        h.no(
            "root",
            measured(2, 1, 40, 200, 3),
            "signed by the control plane only",
        );
        h.no(
            "control-plane",
            measured(1, 1, 40, 200, 3),
            "is not the candidate",
        );
        h.no(
            "control-plane",
            measured(2, 41, 40, 200, 3),
            "from after to",
        );
        h.no(
            "control-plane",
            measured(2, 1, 40, 3, 200),
            "inconsistent counts",
        );
        // 3 of 200 = 1.5%: too many disagreements.
        h.ok("control-plane", measured(2, 1, 40, 200, 3));
        let reason = h.no(
            "pat",
            stage(2, RolloutStage::Global),
            "disagreement 1.50% (3 of 200 decisions), at most 1.00% allowed",
        );
        assert!(!reason.contains("day(s)"), "{reason}");
        assert!(!reason.contains("decision(s) compared"), "{reason}");
        // An older measurement (a lagging control plane) does not replace a newer one.
        h.no(
            "control-plane",
            measured(2, 1, 39, 400, 0),
            "stale measurement of version 2",
        );
        // 4 of 400 = 1%: ready.
        h.ok("control-plane", measured(2, 1, 90, 400, 4));
        let r = h.status().readiness.unwrap();
        assert!(r.verdict.ready, "{}", r.verdict);
        assert_eq!(r.measurement.as_ref().map(|m| m.decisions), Some(400));
        h.ok("pat", stage(2, RolloutStage::Global));
        assert_eq!(h.tenant().stable(), Some(2));
        h.no(
            "control-plane",
            measured(2, 1, 95, 500, 4),
            "no rollout is in progress",
        );
    }

    #[test]
    fn shadow_time_counts_from_the_publish_to_the_promotion() {
        let mut h = H::new();
        h.actor("pat", 40, &[Role::Publisher]);
        h.ok("root", thresholds(1, 10_000, 0));
        h.publish(1001, RolloutStage::Global);
        h.publish(1002, RolloutStage::Shadow);
        h.ok(
            "pat",
            RolloutStageChanged {
                percent: Some(50),
                ..stage(2, RolloutStage::Partial)
            },
        );
        h.no(
            "pat",
            stage(2, RolloutStage::Global),
            "at least 1 day(s) needed",
        );
        // A day later (partial counts too: the clock runs from the publish).
        h.later = time::Duration::days(1);
        h.ok("pat", stage(2, RolloutStage::Global));
    }

    #[test]
    fn the_same_events_fold_to_the_same_state() {
        let run = || {
            let mut h = H::new();
            h.actor("pat", 40, &[Role::Publisher]);
            h.publish(1001, RolloutStage::Global);
            h.publish(1002, RolloutStage::Shadow);
            h.ok(
                "pat",
                RolloutStageChanged {
                    version: 2,
                    stage: RolloutStage::Partial,
                    agents: vec![agent("b"), agent("a")],
                    percent: Some(25),
                },
            );
            h.ok("control-plane", measured(2, 1, 40, 200, 3));
            h.ok(
                "root",
                RolloutPromotionApproved {
                    version: 2,
                    comment: Some("ok".into()),
                },
            );
            h.ok(
                "pat",
                RolloutAborted {
                    version: 2,
                    reason: "x".into(),
                },
            );
            h.publish(1003, RolloutStage::Shadow);
            h.ok(
                "root",
                RolloutPromotionApproved {
                    version: 3,
                    comment: None,
                },
            );
            h.ok("pat", stage(3, RolloutStage::Global));
            h.ok(
                "pat",
                AgentBlocked {
                    agent: agent("planner"),
                    reason: "x".into(),
                },
            );
            h.ok("pat", DataPlaneFrozen { reason: "x".into() });
            h.ok(
                "root",
                RollbackRequested {
                    to_version: 1,
                    reason: "x".into(),
                    emergency: true,
                },
            );
            let g = grant(&h, APR, time::Duration::hours(1));
            h.ok("root", g);
            let local: Vec<(String, serde_json::Value)> =
                h.store.scan(Family::Local, "outbox/").unwrap();
            (h.store.state_digest().unwrap(), local)
        };
        assert_eq!(run(), run());
    }
}
