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
use crate::records::{ActorRecord, DraftRecord, LiveSet, TenantRecord, keys};
use crate::store::{Store, StoreError, Txn};
use aegis_core::events::chain::{ChainEntry, event_hash, link, raw_event_id};
use aegis_core::events::roles::may_sign;
use aegis_core::events::{
    ChangeProposed, ChecksCompleted, Envelope, Event, ReceivedEnvelope, Role, RoleSet,
};
use aegis_core::ids::{ActorId, ChangeId, EventId, TenantId};
use aegis_core::keys::{KeyId, Keypair, PublicKey};
use aegis_core::query::{
    ActView, ChangeState, ChangeView, DraftView, EventRecord, FreezeView, KeyView, LiveDocument,
    LiveView, Outcome, PublishedView, VersionView,
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
        self.apply_event(env)
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
                let Some(mut change) = self.change(&e.change_id)? else {
                    reject!("no change {} in tenant `{tenant}`", e.change_id);
                };
                match change.state {
                    ChangeState::Rejected => reject!("change {} was rejected", e.change_id),
                    ChangeState::Published => {
                        reject!("change {} is already published", e.change_id)
                    }
                    _ => {}
                }
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
                change.approvals.push(Self::act(env, e.comment.clone()));
                self.put_change(&change)?;
            }
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
                self.tenant.frozen = Some(FreezeView {
                    by: env.actor.clone(),
                    at: env.time.clone(),
                    reason: e.reason.clone(),
                });
            }
            Event::TenantUnfrozen(_) => {
                if self.tenant.frozen.is_none() {
                    reject!("tenant `{tenant}` is not frozen");
                }
                self.tenant.frozen = None;
            }
            Event::RolloutStageChanged(e) => {
                if let Some(reason) = self.frozen_reason("change the rollout stage") {
                    reject!("{reason}");
                }
                let k = keys::version(&tenant, e.version);
                let Some(mut v) = self.txn.get::<VersionView>(&k)? else {
                    reject!("tenant `{tenant}` has no version {}", e.version);
                };
                if e.stage == aegis_core::events::RolloutStage::Partial
                    && e.agents.is_empty()
                    && e.percent.is_none()
                {
                    reject!("a partial rollout needs agents or a percentage");
                }
                if e.percent.is_some_and(|p| p > 100) {
                    reject!("percent must be 0..=100");
                }
                v.stage = e.stage;
                self.txn.put(k, &v)?;
            }
            Event::BundlePublished(_) | Event::AuditCheckpoint(_) => {
                reject!(
                    "`{}` events do not belong on AEGIS_CHANGES",
                    env.event_type()
                )
            }
        }
        Ok(Ok(()))
    }

    fn frozen_reason(&self, what: &str) -> Option<String> {
        self.tenant.frozen.as_ref().map(|f| {
            format!(
                "tenant `{}` is frozen (by {} at {}: {}); cannot {what} until `aegisctl unfreeze`",
                self.tenant.tenant, f.by, f.at, f.reason
            )
        })
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
        let Some(mut change) = self.change(&e.change_id)? else {
            reject!("no change {} in tenant `{tenant}`", e.change_id);
        };
        match change.state {
            ChangeState::Rejected => reject!("change {} was rejected", e.change_id),
            ChangeState::Published => reject!("change {} is already published", e.change_id),
            _ => {}
        }
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
        let proposal = ChangeProposed {
            change_id: change.change_id.clone(),
            intent: change.intent.clone(),
            ticket: change.ticket.clone(),
            documents: change.documents.clone(),
            deleted: change.deleted.clone(),
            vectors: change.vectors.clone(),
        };
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
        let v = match self.cut_version(
            env,
            version,
            &next,
            Some(&e.change_id),
            None,
            false,
            e.stage,
            approvers,
        )? {
            Ok(v) => v,
            Err(reason) => reject!("{reason}"),
        };
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
        if let Some(reason) = self.frozen_reason("roll back") {
            reject!("{reason}");
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
        match self.cut_version(
            env,
            version,
            &next,
            None,
            Some(e.to_version),
            e.emergency,
            Default::default(),
            Vec::new(),
        )? {
            Ok(_) => Ok(Ok(())),
            Err(reason) => reject!("{reason}"),
        }
    }

    /// Builds, signs and stores version `version` with `next` as the live set.
    #[allow(clippy::too_many_arguments)]
    fn cut_version(
        &mut self,
        env: &Envelope,
        version: u64,
        next: &LiveSet,
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
        // Replace the live set.
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
        Event::BundlePublished(e) => format!("bundle version {} ({})", e.version, e.digest),
        Event::AuditCheckpoint(e) => {
            format!("audit checkpoint {}..={}", e.from_position, e.to_position)
        }
    }
}
