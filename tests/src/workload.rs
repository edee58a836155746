//! A deterministic, realistic mixed workload of `AEGIS_CHANGES` events for end-to-end tests.
//!
//! [`Workload`] is a generator: given a seed, the root admin's key and some tenants (each with a
//! policy template from `policies/templates/`), it yields an endless sequence of
//! [`WorkItem`]s — registering actors, granting and revoking roles, rotating and revoking keys,
//! draft edits of policies (valid template documents with a new `ticket:`, some of them stale,
//! some deletions), occasional proposals of the template with its test vectors (some with a
//! failing vector, some written against an outdated live revision), approvals (valid ones,
//! self-approvals, duplicates), publishes, rollbacks, rollout stage changes, freezes and
//! unfreezes — mixed with invalid events: a flipped signature, an unknown key, an unknown actor,
//! a revoked key, a missing role, bytes that are not JSON.
//!
//! The generator keeps a model of what the fold makes of each event (who holds which role and
//! key, which changes exist and how many approvals they have, what is live at which revision,
//! whether the tenant is frozen), so every item carries its [`Expect`]ed outcome, and
//! [`check_outcomes`] compares them with what the control plane recorded.
//!
//! Everything is a function of the seed (keys, event ids, times, documents, choices) except the
//! draft `base_revision`s, which are the stream sequences of earlier messages: [`Publisher`]
//! fills them in from the publish acks and publishes draft edits with
//! `Nats-Expected-Last-Subject-Sequence`. Other publishes are pipelined.
//!
//! Test support: a programming error here (an invalid literal id, a model index out of range)
//! panics, like an assertion.
#![allow(clippy::panic, clippy::indexing_slicing)]

use crate::controlplane::{ControlPlaneError, query};
use aegis_core::events::roles::may_sign;
use aegis_core::events::{
    ActorRegistered, ChangeApproved, ChangeProposed, ChangePublished, ChangeRejected,
    DocumentFormat, Envelope, Event, EventType, KeyRevoked, PolicyDeleted, PolicyUpserted,
    ProposedDocument, Role, RoleGranted, RoleRevoked, RoleSet, RollbackRequested, RolloutStage,
    RolloutStageChanged, TenantFrozen, TenantUnfrozen, VectorDocument,
};
use aegis_core::ids::{ActorId, ChangeId, EventId, PolicyName, TenantId};
use aegis_core::keys::Keypair;
use aegis_core::query::{EventRecord, Outcome, QueryAnswer, QueryRequest};
use async_nats::jetstream;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use time::OffsetDateTime;

type Result<T> = std::result::Result<T, ControlPlaneError>;

fn id<T, E: fmt::Display>(r: std::result::Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

// ---- PRNG -------------------------------------------------------------------------------------

/// SplitMix64: tiny, fast, and good enough to drive a test workload.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }

    pub fn index(&mut self, len: usize) -> Option<usize> {
        (len > 0).then(|| self.below(len as u64) as usize)
    }

    pub fn seed32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }
}

// ---- templates --------------------------------------------------------------------------------

/// A tenant's policy template and its test vectors.
#[derive(Debug, Clone)]
pub struct Template {
    pub tenant: TenantId,
    /// The policy the proposals write (`metadata.name`).
    pub policy_name: PolicyName,
    pub policy: String,
    pub vectors_name: String,
    pub vectors: String,
}

impl Template {
    fn new(tenant: &str, name: &str, policy: &str, vectors_name: &str, vectors: &str) -> Template {
        Template {
            tenant: id(TenantId::new(tenant)),
            policy_name: id(PolicyName::new(name)),
            policy: policy.to_owned(),
            vectors_name: vectors_name.to_owned(),
            vectors: vectors.to_owned(),
        }
    }

    /// `policies/templates/finance` (tenant `acme`).
    pub fn finance() -> Template {
        Template::new(
            "acme",
            "finance-agent",
            include_str!("../../policies/templates/finance/policy.yaml"),
            "finance-vectors.yaml",
            include_str!("../../policies/templates/finance/vectors.yaml"),
        )
    }

    /// `policies/templates/ehr` (tenant `stmarys`).
    pub fn ehr() -> Template {
        Template::new(
            "stmarys",
            "clinical-agent",
            include_str!("../../policies/templates/ehr/policy.yaml"),
            "clinical-vectors.yaml",
            include_str!("../../policies/templates/ehr/vectors.yaml"),
        )
    }

    /// `policies/templates/cicd` (tenant `buildco`).
    pub fn cicd() -> Template {
        Template::new(
            "buildco",
            "deploy-agent",
            include_str!("../../policies/templates/cicd/policy.yaml"),
            "deploy-vectors.yaml",
            include_str!("../../policies/templates/cicd/vectors.yaml"),
        )
    }

    /// The same template for another tenant (every `tenant: <old>` line is rewritten).
    pub fn for_tenant(&self, tenant: &str) -> Template {
        let from = format!("tenant: {}", self.tenant);
        let to = format!("tenant: {tenant}");
        Template {
            tenant: id(TenantId::new(tenant)),
            policy_name: self.policy_name.clone(),
            policy: self.policy.replace(&from, &to),
            vectors_name: self.vectors_name.clone(),
            vectors: self.vectors.replace(&from, &to),
        }
    }

    /// The policy document named `name` with ticket `<PREFIX>-<ticket>`: a small, valid edit.
    pub fn policy_variant(&self, name: &PolicyName, ticket: u64) -> String {
        let mut out = String::with_capacity(self.policy.len() + 16);
        for line in self.policy.lines() {
            if let Some(value) = line.strip_prefix("  ticket: ") {
                let prefix = value.split('-').next().unwrap_or("T");
                out.push_str(&format!("  ticket: {prefix}-{ticket}"));
            } else if line.starts_with("  name: ") {
                out.push_str(&format!("  name: {name}"));
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        out
    }

    /// The vectors with the first expected `allow` turned into `deny`: the checks fail.
    pub fn failing_vectors(&self) -> String {
        self.vectors
            .replacen("decision: allow", "decision: deny", 1)
    }
}

// ---- expectations -----------------------------------------------------------------------------

/// Why the fold rejects an event, as the workload expects it (matched on the reason text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    NotAnEnvelope,
    /// The event fails its JSON Schema (e.g. a rollback to version 0).
    Schema,
    BadSignature,
    UnknownActor,
    UnknownKey,
    RevokedKey,
    MissingRole,
    RootAdmin,
    AlreadyHasRole,
    LacksRole,
    StaleEdit,
    NoDraft,
    StaleChange,
    NoChange,
    ChangeWasRejected,
    AlreadyRejected,
    AlreadyPublished,
    FourEyes,
    AlreadyApproved,
    ChecksFailed,
    NeedsApprovals,
    Frozen,
    AlreadyFrozen,
    NotFrozen,
    BadRollback,
    NoVersion,
    /// A rollout stage change for a version that is not the candidate (the workload publishes
    /// globally, so there never is one).
    NotCandidate,
}

impl Reject {
    pub const ALL: [Reject; 27] = [
        Reject::NotAnEnvelope,
        Reject::Schema,
        Reject::BadSignature,
        Reject::UnknownActor,
        Reject::UnknownKey,
        Reject::RevokedKey,
        Reject::MissingRole,
        Reject::RootAdmin,
        Reject::AlreadyHasRole,
        Reject::LacksRole,
        Reject::StaleEdit,
        Reject::NoDraft,
        Reject::StaleChange,
        Reject::NoChange,
        Reject::ChangeWasRejected,
        Reject::AlreadyRejected,
        Reject::AlreadyPublished,
        Reject::FourEyes,
        Reject::AlreadyApproved,
        Reject::ChecksFailed,
        Reject::NeedsApprovals,
        Reject::Frozen,
        Reject::AlreadyFrozen,
        Reject::NotFrozen,
        Reject::BadRollback,
        Reject::NoVersion,
        Reject::NotCandidate,
    ];

    /// A phrase of the fold's rejection reason for this kind.
    pub fn needle(self) -> &'static str {
        match self {
            Reject::NotAnEnvelope => "not a valid event envelope",
            Reject::Schema => "fails its schema",
            Reject::BadSignature => "bad signature",
            Reject::UnknownActor => "unknown actor",
            Reject::UnknownKey => "unknown key",
            Reject::RevokedKey => "is revoked",
            Reject::MissingRole => "needs role",
            Reject::RootAdmin => "is a root admin",
            Reject::AlreadyHasRole => "already has role",
            Reject::LacksRole => "does not have role",
            Reject::StaleEdit => "stale edit",
            Reject::NoDraft => "has no draft to delete",
            Reject::StaleChange => "stale: policy",
            Reject::NoChange => "no change",
            Reject::ChangeWasRejected => "was rejected",
            Reject::AlreadyRejected => "is already rejected",
            Reject::AlreadyPublished => "is already published",
            Reject::FourEyes => "four eyes",
            Reject::AlreadyApproved => "already approved",
            Reject::ChecksFailed => "failed its checks",
            Reject::NeedsApprovals => "approval(s) from someone other than its proposer",
            Reject::Frozen => "is frozen (by",
            Reject::AlreadyFrozen => "is already frozen",
            Reject::NotFrozen => "is not frozen",
            Reject::BadRollback => "cannot roll back to version",
            Reject::NoVersion => "has no version",
            Reject::NotCandidate => "is not the candidate",
        }
    }

    /// The kind a rejection reason names, if any.
    pub fn classify(reason: &str) -> Option<Reject> {
        Reject::ALL
            .into_iter()
            .find(|r| reason.contains(r.needle()))
    }
}

/// What the fold should make of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Accepted,
    Rejected(Reject),
}

impl Expect {
    /// Whether `outcome` is this expectation.
    pub fn matches(&self, outcome: &Outcome) -> bool {
        match (self, outcome) {
            (Expect::Accepted, Outcome::Accepted) => true,
            (Expect::Rejected(r), Outcome::Rejected { reason }) => reason.contains(r.needle()),
            _ => false,
        }
    }
}

// ---- work items -------------------------------------------------------------------------------

/// One message of the workload, ready to publish once the draft base (if any) is known.
#[derive(Debug, Clone)]
pub struct WorkItem {
    /// Position in the workload (0-based).
    pub index: usize,
    pub tenant: TenantId,
    pub subject: String,
    /// `Nats-Msg-Id` (and the envelope id when there is one).
    pub msg_id: String,
    /// What kind of step this is (`draft_edit`, `bad_signature`, …), for reports.
    pub label: &'static str,
    pub expect: Expect,
    content: Content,
}

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // test data; `Event` grew with the issue-5 events
enum Content {
    Signed {
        actor: ActorId,
        key: Box<Keypair>,
        time: OffsetDateTime,
        event: Event,
        /// A draft edit or delete: `Some(stale)`, its base revision is filled in at publish.
        draft: Option<bool>,
        tamper: bool,
    },
    Raw(Vec<u8>),
}

impl WorkItem {
    /// A draft edit whose `base_revision` depends on the subject's last sequence.
    pub fn is_draft(&self) -> bool {
        matches!(self.content, Content::Signed { draft: Some(_), .. })
    }

    /// The bytes to publish and the expected last subject sequence to send, given the last
    /// sequence on this item's subject (0 when none).
    pub fn render(&self, last_subject_seq: u64) -> (Vec<u8>, Option<u64>) {
        match &self.content {
            Content::Raw(bytes) => (bytes.clone(), None),
            Content::Signed {
                actor,
                key,
                time,
                event,
                draft,
                tamper,
            } => {
                let mut event = event.clone();
                let mut expected = None;
                if let Some(stale) = draft {
                    let base = if *stale {
                        if last_subject_seq > 0 {
                            last_subject_seq - 1
                        } else {
                            1
                        }
                    } else {
                        expected = Some(last_subject_seq);
                        last_subject_seq
                    };
                    match &mut event {
                        Event::PolicyUpserted(e) => e.base_revision = base,
                        Event::PolicyDeleted(e) => e.base_revision = base,
                        _ => {}
                    }
                }
                let mut env = id(Envelope::sign(
                    id(EventId::new(self.msg_id.clone())),
                    self.tenant.clone(),
                    actor.clone(),
                    key,
                    *time,
                    event,
                ));
                if *tamper {
                    // Flip the first base64 digit: still 64 bytes, but not the signed ones.
                    let mut sig: Vec<char> = env.signature.chars().collect();
                    if let Some(c) = sig.first_mut() {
                        *c = if *c == 'A' { 'B' } else { 'A' };
                    }
                    env.signature = sig.into_iter().collect();
                }
                (id(env.to_bytes()), expected)
            }
        }
    }
}

// ---- the model --------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ActorModel {
    name: ActorId,
    /// Keys in registration order, with whether each is revoked.
    keys: Vec<(Keypair, bool)>,
    roles: RoleSet,
    /// Core actors keep their roles (the workflow always has editors, approvers, a publisher).
    core: bool,
}

impl ActorModel {
    fn current(&self) -> Option<&Keypair> {
        self.keys.iter().rev().find(|(_, r)| !r).map(|(k, _)| k)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeStateModel {
    Open,
    Rejected,
    Published,
}

#[derive(Debug, Clone)]
struct ChangeModel {
    id: ChangeId,
    proposer: ActorId,
    approvals: Vec<ActorId>,
    state: ChangeStateModel,
    base: u64,
    document: String,
    checks_pass: bool,
}

#[derive(Debug, Clone)]
struct TenantModel {
    template: Template,
    actors: Vec<ActorModel>,
    changes: Vec<ChangeModel>,
    frozen: bool,
    last_version: u64,
    /// The document of each version (index `version - 1`).
    versions: Vec<String>,
    /// The live document of the template policy and its revision.
    live: Option<(String, u64)>,
    draft_names: Vec<PolicyName>,
    /// Policy subjects that already hold a message.
    drafts_seen: BTreeSet<PolicyName>,
    accepted_proposals: Vec<ChangeId>,
}

impl TenantModel {
    fn actor(&self, name: &ActorId) -> Option<usize> {
        self.actors.iter().position(|a| &a.name == name)
    }

    fn live_revision(&self) -> u64 {
        self.live.as_ref().map(|(_, r)| *r).unwrap_or(0)
    }

    fn change(&self, id: &ChangeId) -> Option<usize> {
        self.changes.iter().position(|c| &c.id == id)
    }

    /// Actors (by index) that may sign `ty` with a usable key.
    fn capable(&self, ty: EventType) -> Vec<usize> {
        (0..self.actors.len())
            .filter(|&i| may_sign(&self.actors[i].roles, ty) && self.actors[i].current().is_some())
            .collect()
    }
}

/// Who signs a planned event.
#[derive(Debug, Clone)]
enum Who {
    Root,
    Actor(usize),
    /// Not registered in the tenant.
    Stranger(ActorId, Box<Keypair>),
}

#[derive(Debug, Clone)]
enum Fault {
    None,
    Tamper,
    UnknownKey(Box<Keypair>),
    RevokedKey(usize),
}

#[derive(Debug, Clone)]
struct Plan {
    label: &'static str,
    who: Who,
    fault: Fault,
    event: Event,
    draft: Option<bool>,
    /// The key an `actor_registered` registers.
    new_key: Option<Keypair>,
    core: bool,
}

impl Plan {
    fn new(label: &'static str, who: Who, event: impl Into<Event>) -> Plan {
        Plan {
            label,
            who,
            fault: Fault::None,
            event: event.into(),
            draft: None,
            new_key: None,
            core: false,
        }
    }
}

/// How to generate a workload.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub seed: u64,
    pub tenants: Vec<Template>,
    /// On average one step in this many is a proposal (they run checks: keep them rare).
    pub proposal_one_in: u64,
    /// The first event's time; each next one is a millisecond later.
    pub start_time: OffsetDateTime,
}

impl WorkloadConfig {
    /// The three templates' tenants (`acme`, `stmarys`, `buildco`), one proposal in 500.
    pub fn new(seed: u64) -> WorkloadConfig {
        WorkloadConfig {
            seed,
            tenants: vec![Template::finance(), Template::ehr(), Template::cicd()],
            proposal_one_in: 500,
            start_time: OffsetDateTime::now_utc(),
        }
    }
}

/// What the model expects of a tenant once its events are folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantExpectation {
    pub tenant: TenantId,
    pub frozen: bool,
    pub last_version: u64,
    /// Live revision of the template policy (0: not live).
    pub live_revision: u64,
    /// Changes whose proposal was accepted (each gets one `checks_completed`).
    pub accepted_proposals: Vec<ChangeId>,
    pub actors: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    DraftEdit,
    DraftStale,
    DraftDelete,
    DraftRandom,
    RegisterActor,
    AddKey,
    RevokeKey,
    GrantRole,
    RevokeRole,
    ApproveGood,
    ApproveRandom,
    SelfApprove,
    RejectChange,
    PublishGood,
    PublishRandom,
    Rollback,
    RolloutStage,
    FreezeToggle,
    BadSignature,
    UnknownKey,
    UnknownActor,
    RevokedKeyUse,
    MissingRole,
    Garbage,
    RegisterRoot,
}

/// Relative weights of the steps (proposals are drawn separately).
const KINDS: &[(Kind, u64)] = &[
    (Kind::DraftEdit, 250),
    (Kind::DraftStale, 40),
    (Kind::DraftDelete, 20),
    (Kind::DraftRandom, 30),
    (Kind::RegisterActor, 25),
    (Kind::AddKey, 10),
    (Kind::RevokeKey, 10),
    (Kind::GrantRole, 50),
    (Kind::RevokeRole, 30),
    (Kind::ApproveGood, 60),
    (Kind::ApproveRandom, 30),
    (Kind::SelfApprove, 15),
    (Kind::RejectChange, 6),
    (Kind::PublishGood, 30),
    (Kind::PublishRandom, 15),
    (Kind::Rollback, 8),
    (Kind::RolloutStage, 8),
    (Kind::FreezeToggle, 20),
    (Kind::BadSignature, 40),
    (Kind::UnknownKey, 20),
    (Kind::UnknownActor, 20),
    (Kind::RevokedKeyUse, 15),
    (Kind::MissingRole, 40),
    (Kind::Garbage, 20),
    (Kind::RegisterRoot, 3),
];

/// The core actors every tenant starts with, and their roles.
const CORE: &[(&str, &[Role])] = &[
    ("editor-1", &[Role::Editor, Role::Approver]),
    ("editor-2", &[Role::Editor]),
    ("approver-1", &[Role::Approver]),
    ("approver-2", &[Role::Approver]),
    ("approver-3", &[Role::Approver]),
    ("publisher-1", &[Role::Publisher]),
    ("auditor-1", &[Role::Auditor]),
];

/// The generator. An `Iterator` of [`WorkItem`]s that never ends.
#[derive(Debug)]
pub struct Workload {
    rng: Rng,
    config: WorkloadConfig,
    root: Keypair,
    root_actor: ActorId,
    tenants: Vec<TenantModel>,
    setup: VecDeque<(usize, Plan)>,
    index: usize,
    counter: u64,
    labels: BTreeMap<&'static str, usize>,
}

impl Workload {
    /// A workload signed by root admin `root` (the control plane's `--root-admin root=…`).
    pub fn new(config: WorkloadConfig, root: &Keypair) -> Workload {
        let mut rng = Rng::new(config.seed);
        let tenants: Vec<TenantModel> = config
            .tenants
            .iter()
            .map(|t| {
                let base = t.policy_name.as_str();
                TenantModel {
                    template: t.clone(),
                    actors: Vec::new(),
                    changes: Vec::new(),
                    frozen: false,
                    last_version: 0,
                    versions: Vec::new(),
                    live: None,
                    draft_names: [
                        base.to_owned(),
                        format!("{base}-eu"),
                        format!("{base}-canary"),
                    ]
                    .into_iter()
                    .map(|n| id(PolicyName::new(n)))
                    .collect(),
                    drafts_seen: BTreeSet::new(),
                    accepted_proposals: Vec::new(),
                }
            })
            .collect();
        // Setup: the core actors and their roles, tenant by tenant.
        let mut setup = VecDeque::new();
        for (t, _) in tenants.iter().enumerate() {
            for (name, roles) in CORE {
                let key = Keypair::from_seed(&rng.seed32());
                let actor = id(ActorId::new(*name));
                let mut plan = Plan::new(
                    "setup_register",
                    Who::Root,
                    ActorRegistered {
                        actor: actor.clone(),
                        public_key: key.public_key().to_base64(),
                        key_id: key.key_id().clone(),
                        display_name: Some(format!("{name} (core)")),
                    },
                );
                plan.new_key = Some(key);
                plan.core = true;
                setup.push_back((t, plan));
                for role in *roles {
                    setup.push_back((
                        t,
                        Plan::new(
                            "setup_grant",
                            Who::Root,
                            RoleGranted {
                                actor: actor.clone(),
                                role: *role,
                            },
                        ),
                    ));
                }
            }
        }
        Workload {
            rng,
            config,
            root: root.clone(),
            root_actor: id(ActorId::new("root")),
            tenants,
            setup,
            index: 0,
            counter: 0,
            labels: BTreeMap::new(),
        }
    }

    /// How many items of each label were generated so far.
    pub fn labels(&self) -> &BTreeMap<&'static str, usize> {
        &self.labels
    }

    /// What the model expects of each tenant after everything generated so far is folded.
    pub fn expectations(&self) -> Vec<TenantExpectation> {
        self.tenants
            .iter()
            .map(|t| TenantExpectation {
                tenant: t.template.tenant.clone(),
                frozen: t.frozen,
                last_version: t.last_version,
                live_revision: t.live_revision(),
                accepted_proposals: t.accepted_proposals.clone(),
                actors: t.actors.len(),
            })
            .collect()
    }

    fn next_counter(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// The next item.
    pub fn next_item(&mut self) -> WorkItem {
        let index = self.index;
        self.index += 1;
        if let Some((t, plan)) = self.setup.pop_front() {
            return self.build(index, t, plan);
        }
        let t = self.rng.below(self.tenants.len() as u64) as usize;
        let plan = if self.rng.chance(1, self.config.proposal_one_in.max(1)) {
            self.plan_proposal(t)
        } else {
            let total: u64 = KINDS.iter().map(|(_, w)| w).sum();
            let mut roll = self.rng.below(total);
            let mut kind = Kind::DraftEdit;
            for (k, w) in KINDS {
                if roll < *w {
                    kind = *k;
                    break;
                }
                roll -= w;
            }
            self.plan(t, kind)
        };
        self.build(index, t, plan)
    }

    // ---- planning --------------------------------------------------------------------------

    fn random_actor(&mut self, t: usize) -> Option<usize> {
        let n = self.tenants[t].actors.len();
        self.rng.index(n)
    }

    fn capable_or_root(&mut self, t: usize, ty: EventType) -> Who {
        let capable = self.tenants[t].capable(ty);
        if self.rng.chance(1, 8) {
            return Who::Root;
        }
        match self.rng.pick(&capable) {
            Some(&i) => Who::Actor(i),
            None => Who::Root,
        }
    }

    fn draft_event(&mut self, t: usize, delete: bool) -> Event {
        let names = self.tenants[t].draft_names.clone();
        let name = self
            .rng
            .pick(&names)
            .cloned()
            .unwrap_or_else(|| names[0].clone());
        if delete {
            return Event::PolicyDeleted(PolicyDeleted {
                name,
                base_revision: 0,
                change_id: None,
            });
        }
        let ticket = 1000 + self.next_counter();
        let document = self.tenants[t].template.policy_variant(&name, ticket);
        Event::PolicyUpserted(PolicyUpserted {
            name,
            format: DocumentFormat::Yaml,
            document,
            base_revision: 0,
            change_id: None,
        })
    }

    fn ghost_change(&mut self) -> ChangeId {
        let n = self.next_counter();
        id(ChangeId::new(format!(
            "chg-ghost-{:x}-{n}",
            self.config.seed
        )))
    }

    /// A change id: one the model knows (any state) or, sometimes, one never proposed.
    fn some_change(&mut self, t: usize) -> ChangeId {
        let n = self.tenants[t].changes.len();
        match self.rng.index(n) {
            Some(i) if !self.rng.chance(1, 10) => self.tenants[t].changes[i].id.clone(),
            _ => self.ghost_change(),
        }
    }

    /// A plausible event of some kind, for the invalid variants.
    fn some_event(&mut self, t: usize) -> (Event, Option<bool>) {
        match self.rng.below(4) {
            0 => (self.draft_event(t, false), Some(false)),
            1 => {
                let change_id = self.some_change(t);
                (
                    Event::ChangeApproved(ChangeApproved {
                        change_id,
                        comment: Some("looks fine".into()),
                    }),
                    None,
                )
            }
            2 => (
                Event::TenantFrozen(TenantFrozen {
                    reason: "who is this?".into(),
                }),
                None,
            ),
            _ => {
                let actor = match self.random_actor(t) {
                    Some(i) => self.tenants[t].actors[i].name.clone(),
                    None => self.root_actor.clone(),
                };
                (
                    Event::RoleGranted(RoleGranted {
                        actor,
                        role: Role::Admin,
                    }),
                    None,
                )
            }
        }
    }

    fn plan_proposal(&mut self, t: usize) -> Plan {
        let who = if self.rng.chance(1, 5) {
            Who::Root
        } else {
            let editors: Vec<usize> = self.tenants[t]
                .capable(EventType::ChangeProposed)
                .into_iter()
                .filter(|&i| self.tenants[t].actors[i].core)
                .collect();
            match self.rng.pick(&editors) {
                Some(&i) => Who::Actor(i),
                None => Who::Root,
            }
        };
        let n = self.next_counter();
        let change_id = id(ChangeId::new(format!("chg-{:x}-{n}", self.config.seed)));
        let tm = &self.tenants[t];
        let live = tm.live_revision();
        let stale = self.rng.chance(1, 5);
        let base = if !stale {
            live
        } else if live > 0 {
            live - 1
        } else {
            1
        };
        let failing = self.rng.chance(1, 5);
        let tm = &self.tenants[t];
        let document = tm
            .template
            .policy_variant(&tm.template.policy_name, 5000 + n);
        let vectors = if failing {
            tm.template.failing_vectors()
        } else {
            tm.template.vectors.clone()
        };
        let label = match (stale, failing) {
            (true, _) => "propose_stale",
            (false, true) => "propose_failing",
            (false, false) => "propose",
        };
        Plan::new(
            label,
            who,
            ChangeProposed {
                change_id,
                intent: format!(
                    "workload change {n}: tighten the {} policy",
                    tm.template.policy_name
                ),
                ticket: Some(format!("WL-{n}")),
                documents: vec![ProposedDocument {
                    name: tm.template.policy_name.clone(),
                    format: DocumentFormat::Yaml,
                    document,
                    base_revision: base,
                }],
                deleted: vec![],
                vectors: vec![VectorDocument {
                    name: tm.template.vectors_name.clone(),
                    format: DocumentFormat::Yaml,
                    document: vectors,
                }],
            },
        )
    }

    fn plan(&mut self, t: usize, kind: Kind) -> Plan {
        match kind {
            Kind::DraftEdit | Kind::DraftStale | Kind::DraftDelete | Kind::DraftRandom => {
                let who = if kind == Kind::DraftRandom {
                    match self.random_actor(t) {
                        Some(i) => Who::Actor(i),
                        None => Who::Root,
                    }
                } else {
                    self.capable_or_root(t, EventType::PolicyUpserted)
                };
                let event = self.draft_event(t, kind == Kind::DraftDelete);
                let label = match kind {
                    Kind::DraftEdit => "draft_edit",
                    Kind::DraftStale => "draft_stale",
                    Kind::DraftDelete => "draft_delete",
                    _ => "draft_by_anyone",
                };
                let mut plan = Plan::new(label, who, event);
                plan.draft = Some(kind == Kind::DraftStale);
                plan
            }
            Kind::RegisterActor => {
                let n = self.next_counter();
                let key = Keypair::from_seed(&self.rng.seed32());
                let mut plan = Plan::new(
                    "register_actor",
                    Who::Root,
                    ActorRegistered {
                        actor: id(ActorId::new(format!("user-{n}"))),
                        public_key: key.public_key().to_base64(),
                        key_id: key.key_id().clone(),
                        display_name: None,
                    },
                );
                plan.new_key = Some(key);
                plan
            }
            Kind::AddKey => {
                let Some(i) = self.random_actor(t) else {
                    return self.plan(t, Kind::RegisterActor);
                };
                let key = Keypair::from_seed(&self.rng.seed32());
                let mut plan = Plan::new(
                    "add_key",
                    Who::Root,
                    ActorRegistered {
                        actor: self.tenants[t].actors[i].name.clone(),
                        public_key: key.public_key().to_base64(),
                        key_id: key.key_id().clone(),
                        display_name: None,
                    },
                );
                plan.new_key = Some(key);
                plan
            }
            Kind::RevokeKey => {
                // An older, unrevoked key of an actor that has a newer one.
                let candidates: Vec<(usize, usize)> = self.tenants[t]
                    .actors
                    .iter()
                    .enumerate()
                    .flat_map(|(i, a)| {
                        let live: Vec<usize> = a
                            .keys
                            .iter()
                            .enumerate()
                            .filter(|(_, (_, r))| !r)
                            .map(|(k, _)| k)
                            .collect();
                        let newest = live.last().copied();
                        live.into_iter()
                            .filter(move |k| Some(*k) != newest)
                            .map(move |k| (i, k))
                    })
                    .collect();
                let Some(&(i, k)) = self.rng.pick(&candidates) else {
                    return self.plan(t, Kind::AddKey);
                };
                let a = &self.tenants[t].actors[i];
                Plan::new(
                    "revoke_key",
                    Who::Root,
                    KeyRevoked {
                        actor: a.name.clone(),
                        key_id: a.keys[k].0.key_id().clone(),
                        reason: Some("rotated".into()),
                    },
                )
            }
            Kind::GrantRole | Kind::RevokeRole => {
                let others: Vec<usize> = (0..self.tenants[t].actors.len())
                    .filter(|&i| !self.tenants[t].actors[i].core)
                    .collect();
                let Some(&i) = self.rng.pick(&others) else {
                    return self.plan(t, Kind::RegisterActor);
                };
                let roles = [Role::Editor, Role::Approver, Role::Publisher, Role::Auditor];
                let role = self.rng.pick(&roles).copied().unwrap_or(Role::Auditor);
                let actor = self.tenants[t].actors[i].name.clone();
                if kind == Kind::GrantRole {
                    Plan::new("grant_role", Who::Root, RoleGranted { actor, role })
                } else {
                    Plan::new("revoke_role", Who::Root, RoleRevoked { actor, role })
                }
            }
            Kind::ApproveGood => {
                let tm = &self.tenants[t];
                let open: Vec<usize> = (0..tm.changes.len())
                    .filter(|&c| {
                        tm.changes[c].state == ChangeStateModel::Open
                            && tm.changes[c].approvals.len() < 2
                    })
                    .collect();
                // Reviewers mostly pick changes that can still go live.
                let promising: Vec<usize> = open
                    .iter()
                    .copied()
                    .filter(|&c| {
                        tm.changes[c].checks_pass && tm.changes[c].base == tm.live_revision()
                    })
                    .collect();
                let open = if !promising.is_empty() && self.rng.chance(4, 5) {
                    promising
                } else {
                    open
                };
                let Some(&c) = self.rng.pick(&open) else {
                    return self.plan(t, Kind::DraftEdit);
                };
                let change = &tm.changes[c];
                let approvers: Vec<usize> = tm
                    .capable(EventType::ChangeApproved)
                    .into_iter()
                    .filter(|&i| {
                        let n = &tm.actors[i].name;
                        n != &change.proposer && !change.approvals.contains(n)
                    })
                    .collect();
                let change_id = change.id.clone();
                let who = match self.rng.pick(&approvers) {
                    Some(&i) => Who::Actor(i),
                    None => Who::Root,
                };
                Plan::new(
                    "approve",
                    who,
                    ChangeApproved {
                        change_id,
                        comment: Some("lgtm".into()),
                    },
                )
            }
            Kind::ApproveRandom => {
                let who = match self.random_actor(t) {
                    Some(i) if !self.rng.chance(1, 8) => Who::Actor(i),
                    _ => Who::Root,
                };
                let change_id = self.some_change(t);
                Plan::new(
                    "approve_any",
                    who,
                    ChangeApproved {
                        change_id,
                        comment: None,
                    },
                )
            }
            Kind::SelfApprove => {
                let tm = &self.tenants[t];
                let own: Vec<(ChangeId, Who)> = tm
                    .changes
                    .iter()
                    .filter(|c| c.state == ChangeStateModel::Open)
                    .filter_map(|c| {
                        if c.proposer == self.root_actor {
                            return Some((c.id.clone(), Who::Root));
                        }
                        let i = tm.actor(&c.proposer)?;
                        (may_sign(&tm.actors[i].roles, EventType::ChangeApproved)
                            && tm.actors[i].current().is_some())
                        .then(|| (c.id.clone(), Who::Actor(i)))
                    })
                    .collect();
                let Some((change_id, who)) = self.rng.pick(&own).cloned() else {
                    return self.plan(t, Kind::ApproveRandom);
                };
                Plan::new(
                    "self_approve",
                    who,
                    ChangeApproved {
                        change_id,
                        comment: Some("my own, trust me".into()),
                    },
                )
            }
            Kind::RejectChange => {
                let who = self.capable_or_root(t, EventType::ChangeRejected);
                let change_id = self.some_change(t);
                Plan::new(
                    "reject_change",
                    who,
                    ChangeRejected {
                        change_id,
                        reason: "not now".into(),
                    },
                )
            }
            Kind::PublishGood => {
                let tm = &self.tenants[t];
                let ready: Vec<&ChangeModel> = tm
                    .changes
                    .iter()
                    .filter(|c| c.state == ChangeStateModel::Open && c.approvals.len() >= 2)
                    .collect();
                let fresh: Vec<&ChangeModel> = ready
                    .iter()
                    .copied()
                    .filter(|c| c.base == tm.live_revision())
                    .collect();
                let ready: Vec<ChangeId> = if !fresh.is_empty() && self.rng.chance(4, 5) {
                    fresh
                } else {
                    ready
                }
                .into_iter()
                .map(|c| c.id.clone())
                .collect();
                let Some(change_id) = self.rng.pick(&ready).cloned() else {
                    return self.plan(t, Kind::ApproveGood);
                };
                let who = self.capable_or_root(t, EventType::ChangePublished);
                Plan::new(
                    "publish",
                    who,
                    ChangePublished {
                        change_id,
                        stage: RolloutStage::Global,
                    },
                )
            }
            Kind::PublishRandom => {
                let who = match self.random_actor(t) {
                    Some(i) => Who::Actor(i),
                    None => Who::Root,
                };
                let change_id = self.some_change(t);
                Plan::new(
                    "publish_any",
                    who,
                    ChangePublished {
                        change_id,
                        stage: RolloutStage::Global,
                    },
                )
            }
            Kind::Rollback => {
                let who = self.capable_or_root(t, EventType::RollbackRequested);
                let last = self.tenants[t].last_version;
                let to_version = if last >= 2 && self.rng.chance(3, 4) {
                    self.rng.range(1, last - 1)
                } else {
                    self.rng.range(0, last + 1)
                };
                Plan::new(
                    "rollback",
                    who,
                    RollbackRequested {
                        to_version,
                        reason: "incident drill".into(),
                        emergency: false,
                    },
                )
            }
            Kind::RolloutStage => {
                let who = self.capable_or_root(t, EventType::RolloutStageChanged);
                let last = self.tenants[t].last_version;
                let version = self.rng.range(1, last + 1);
                let stage = if self.rng.chance(1, 2) {
                    RolloutStage::Shadow
                } else {
                    RolloutStage::Global
                };
                Plan::new(
                    "rollout_stage",
                    who,
                    RolloutStageChanged {
                        version,
                        stage,
                        agents: vec![],
                        percent: None,
                    },
                )
            }
            Kind::FreezeToggle => {
                let who = self.capable_or_root(t, EventType::TenantFrozen);
                let freeze = if self.tenants[t].frozen {
                    self.rng.chance(1, 10)
                } else {
                    self.rng.chance(1, 4)
                };
                if freeze {
                    Plan::new(
                        "freeze",
                        who,
                        TenantFrozen {
                            reason: "quarter close".into(),
                        },
                    )
                } else {
                    Plan::new(
                        "unfreeze",
                        who,
                        TenantUnfrozen {
                            reason: Some("done".into()),
                        },
                    )
                }
            }
            Kind::BadSignature | Kind::UnknownKey => {
                let who = match self.random_actor(t) {
                    Some(i) if !self.rng.chance(1, 6) => Who::Actor(i),
                    _ => Who::Root,
                };
                let (event, draft) = self.some_event(t);
                let (label, fault) = if kind == Kind::BadSignature {
                    ("bad_signature", Fault::Tamper)
                } else {
                    (
                        "unknown_key",
                        Fault::UnknownKey(Box::new(Keypair::from_seed(&self.rng.seed32()))),
                    )
                };
                let mut plan = Plan::new(label, who, event);
                plan.fault = fault;
                plan.draft = draft;
                plan
            }
            Kind::UnknownActor => {
                let n = self.next_counter();
                let key = Keypair::from_seed(&self.rng.seed32());
                let (event, draft) = self.some_event(t);
                let mut plan = Plan::new(
                    "unknown_actor",
                    Who::Stranger(id(ActorId::new(format!("intruder-{n}"))), Box::new(key)),
                    event,
                );
                plan.draft = draft;
                plan
            }
            Kind::RevokedKeyUse => {
                let revoked: Vec<(usize, usize)> = self.tenants[t]
                    .actors
                    .iter()
                    .enumerate()
                    .flat_map(|(i, a)| {
                        a.keys
                            .iter()
                            .enumerate()
                            .filter(|(_, (_, r))| *r)
                            .map(move |(k, _)| (i, k))
                    })
                    .collect();
                let Some(&(i, k)) = self.rng.pick(&revoked) else {
                    return self.plan(t, Kind::UnknownKey);
                };
                let (event, draft) = self.some_event(t);
                let mut plan = Plan::new("revoked_key", Who::Actor(i), event);
                plan.fault = Fault::RevokedKey(k);
                plan.draft = draft;
                plan
            }
            Kind::MissingRole => {
                let (event, draft) = self.some_event(t);
                let ty = event.event_type();
                let tm = &self.tenants[t];
                let lacking: Vec<usize> = (0..tm.actors.len())
                    .filter(|&i| {
                        !may_sign(&tm.actors[i].roles, ty) && tm.actors[i].current().is_some()
                    })
                    .collect();
                let Some(&i) = self.rng.pick(&lacking) else {
                    return self.plan(t, Kind::UnknownActor);
                };
                let mut plan = Plan::new("missing_role", Who::Actor(i), event);
                plan.draft = draft;
                plan
            }
            Kind::Garbage | Kind::RegisterRoot => {
                // Garbage is built in `build`; RegisterRoot registers the root admin's name.
                let key = Keypair::from_seed(&self.rng.seed32());
                let mut plan = Plan::new(
                    if kind == Kind::Garbage {
                        "garbage"
                    } else {
                        "register_root"
                    },
                    Who::Root,
                    ActorRegistered {
                        actor: self.root_actor.clone(),
                        public_key: key.public_key().to_base64(),
                        key_id: key.key_id().clone(),
                        display_name: None,
                    },
                );
                plan.new_key = Some(key);
                plan
            }
        }
    }

    // ---- the model's verdict -----------------------------------------------------------------

    fn auth(&self, t: usize, plan: &Plan) -> std::result::Result<(), Reject> {
        let ty = plan.event.event_type();
        match &plan.who {
            Who::Stranger(..) => Err(Reject::UnknownActor),
            Who::Root => match plan.fault {
                Fault::None => Ok(()),
                Fault::Tamper => Err(Reject::BadSignature),
                Fault::UnknownKey(_) | Fault::RevokedKey(_) => Err(Reject::UnknownKey),
            },
            Who::Actor(i) => {
                match plan.fault {
                    Fault::None => {}
                    Fault::Tamper => return Err(Reject::BadSignature),
                    Fault::UnknownKey(_) => return Err(Reject::UnknownKey),
                    Fault::RevokedKey(_) => return Err(Reject::RevokedKey),
                }
                if may_sign(&self.tenants[t].actors[*i].roles, ty) {
                    Ok(())
                } else {
                    Err(Reject::MissingRole)
                }
            }
        }
    }

    /// Applies an authorised event to the model, or says why the fold rejects it.
    fn apply(
        &mut self,
        t: usize,
        plan: &Plan,
        subject_had_messages: bool,
    ) -> std::result::Result<(), Reject> {
        let signer = match &plan.who {
            Who::Root => self.root_actor.clone(),
            Who::Actor(i) => self.tenants[t].actors[*i].name.clone(),
            Who::Stranger(n, _) => n.clone(),
        };
        let tm = &mut self.tenants[t];
        match &plan.event {
            Event::ActorRegistered(e) => {
                if e.actor == self.root_actor {
                    return Err(Reject::RootAdmin);
                }
                let Some(key) = plan.new_key.clone() else {
                    panic!("actor_registered without its key");
                };
                match tm.actor(&e.actor) {
                    Some(i) => tm.actors[i].keys.push((key, false)),
                    None => tm.actors.push(ActorModel {
                        name: e.actor.clone(),
                        keys: vec![(key, false)],
                        roles: RoleSet::new(),
                        core: plan.core,
                    }),
                }
            }
            Event::KeyRevoked(e) => {
                let Some(i) = tm.actor(&e.actor) else {
                    panic!("revoking a key of an unknown actor");
                };
                for (k, revoked) in &mut tm.actors[i].keys {
                    if k.key_id() == &e.key_id {
                        *revoked = true;
                    }
                }
            }
            Event::RoleGranted(e) => {
                let Some(i) = tm.actor(&e.actor) else {
                    return Err(Reject::UnknownActor);
                };
                if !tm.actors[i].roles.insert(e.role) {
                    return Err(Reject::AlreadyHasRole);
                }
            }
            Event::RoleRevoked(e) => {
                let Some(i) = tm.actor(&e.actor) else {
                    return Err(Reject::UnknownActor);
                };
                if !tm.actors[i].roles.remove(&e.role) {
                    return Err(Reject::LacksRole);
                }
            }
            Event::PolicyUpserted(_) => {
                if plan.draft == Some(true) {
                    return Err(Reject::StaleEdit);
                }
            }
            Event::PolicyDeleted(_) => {
                if plan.draft == Some(true) {
                    return Err(Reject::StaleEdit);
                }
                if !subject_had_messages {
                    return Err(Reject::NoDraft);
                }
            }
            Event::ChangeProposed(e) => {
                let Some(doc) = e.documents.first() else {
                    panic!("a proposal without a document");
                };
                if doc.base_revision != tm.live_revision() {
                    return Err(Reject::StaleChange);
                }
                let checks_pass = e
                    .vectors
                    .first()
                    .is_some_and(|v| v.document == tm.template.vectors);
                tm.changes.push(ChangeModel {
                    id: e.change_id.clone(),
                    proposer: signer,
                    approvals: Vec::new(),
                    state: ChangeStateModel::Open,
                    base: doc.base_revision,
                    document: doc.document.clone(),
                    checks_pass,
                });
                tm.accepted_proposals.push(e.change_id.clone());
            }
            Event::ChangeApproved(e) => {
                let Some(c) = tm.change(&e.change_id) else {
                    return Err(Reject::NoChange);
                };
                let change = &mut tm.changes[c];
                match change.state {
                    ChangeStateModel::Rejected => return Err(Reject::ChangeWasRejected),
                    ChangeStateModel::Published => return Err(Reject::AlreadyPublished),
                    ChangeStateModel::Open => {}
                }
                if change.proposer == signer {
                    return Err(Reject::FourEyes);
                }
                if change.approvals.contains(&signer) {
                    return Err(Reject::AlreadyApproved);
                }
                change.approvals.push(signer);
            }
            Event::ChangeRejected(e) => {
                let Some(c) = tm.change(&e.change_id) else {
                    return Err(Reject::NoChange);
                };
                let change = &mut tm.changes[c];
                match change.state {
                    ChangeStateModel::Rejected => return Err(Reject::AlreadyRejected),
                    ChangeStateModel::Published => return Err(Reject::AlreadyPublished),
                    ChangeStateModel::Open => change.state = ChangeStateModel::Rejected,
                }
            }
            Event::ChangePublished(e) => {
                if tm.frozen {
                    return Err(Reject::Frozen);
                }
                let Some(c) = tm.change(&e.change_id) else {
                    return Err(Reject::NoChange);
                };
                let live = tm.live_revision();
                let change = &tm.changes[c];
                match change.state {
                    ChangeStateModel::Rejected => return Err(Reject::ChangeWasRejected),
                    ChangeStateModel::Published => return Err(Reject::AlreadyPublished),
                    ChangeStateModel::Open => {}
                }
                if !change.checks_pass {
                    return Err(Reject::ChecksFailed);
                }
                if change.approvals.len() < 2 {
                    return Err(Reject::NeedsApprovals);
                }
                if change.base != live {
                    return Err(Reject::StaleChange);
                }
                let document = change.document.clone();
                let version = tm.last_version + 1;
                tm.last_version = version;
                tm.versions.push(document.clone());
                tm.live = Some((document, version));
                tm.changes[c].state = ChangeStateModel::Published;
            }
            Event::RollbackRequested(e) => {
                if tm.frozen {
                    return Err(Reject::Frozen);
                }
                if e.to_version == 0 || e.to_version >= tm.last_version {
                    return Err(Reject::BadRollback);
                }
                let Some(document) = tm.versions.get(e.to_version as usize - 1).cloned() else {
                    panic!("no version {} in the model", e.to_version);
                };
                let version = tm.last_version + 1;
                let revision = match &tm.live {
                    Some((doc, rev)) if *doc == document => *rev,
                    _ => version,
                };
                tm.last_version = version;
                tm.versions.push(document.clone());
                tm.live = Some((document, revision));
            }
            Event::TenantFrozen(_) => {
                if tm.frozen {
                    return Err(Reject::AlreadyFrozen);
                }
                tm.frozen = true;
            }
            Event::TenantUnfrozen(_) => {
                if !tm.frozen {
                    return Err(Reject::NotFrozen);
                }
                tm.frozen = false;
            }
            Event::RolloutStageChanged(e) => {
                if tm.frozen {
                    return Err(Reject::Frozen);
                }
                if e.version == 0 || e.version > tm.last_version {
                    return Err(Reject::NoVersion);
                }
                // Only a candidate's stage changes, and every publish here is global.
                return Err(Reject::NotCandidate);
            }
            other => panic!("the workload does not generate {}", other.event_type()),
        }
        Ok(())
    }

    fn build(&mut self, index: usize, t: usize, plan: Plan) -> WorkItem {
        *self.labels.entry(plan.label).or_default() += 1;
        let tenant = self.tenants[t].template.tenant.clone();
        let msg_id = format!("evt-wl-{:x}-{index}", self.config.seed);
        let time = self.config.start_time + time::Duration::milliseconds(index as i64);
        if plan.label == "garbage" {
            let suffix = if self.rng.chance(1, 2) {
                "control"
            } else {
                "actors"
            };
            let mut bytes = b"\x00\xffnot json at all {{{ ".to_vec();
            bytes.extend_from_slice(format!("#{index}").as_bytes());
            return WorkItem {
                index,
                subject: format!("aegis.changes.{tenant}.{suffix}"),
                tenant,
                msg_id,
                label: plan.label,
                expect: Expect::Rejected(Reject::NotAnEnvelope),
                content: Content::Raw(bytes),
            };
        }
        let subject = aegis_nats::topology::change_event_subject(&tenant, &plan.event)
            .unwrap_or_else(|e| panic!("{e}"));
        let policy = match &plan.event {
            Event::PolicyUpserted(e) => Some(e.name.clone()),
            Event::PolicyDeleted(e) => Some(e.name.clone()),
            _ => None,
        };
        let (actor, key) = match &plan.who {
            Who::Root => {
                let key = match &plan.fault {
                    Fault::UnknownKey(k) => (**k).clone(),
                    _ => self.root.clone(),
                };
                (self.root_actor.clone(), key)
            }
            Who::Actor(i) => {
                let a = &self.tenants[t].actors[*i];
                let key = match &plan.fault {
                    Fault::UnknownKey(k) => Some((**k).clone()),
                    Fault::RevokedKey(k) => a.keys.get(*k).map(|(k, _)| k.clone()),
                    Fault::None | Fault::Tamper => a.current().cloned(),
                };
                let Some(key) = key else {
                    panic!("actor {} has no usable key", a.name);
                };
                (a.name.clone(), key)
            }
            Who::Stranger(name, key) => (name.clone(), (**key).clone()),
        };
        let had_messages = policy
            .as_ref()
            .is_some_and(|p| self.tenants[t].drafts_seen.contains(p));
        // The fold checks the schema first, then who signed, then what the event does.
        let schema = match &plan.event {
            Event::RollbackRequested(e) if e.to_version == 0 => Err(Reject::Schema),
            _ => Ok(()),
        };
        let expect = match schema
            .and_then(|()| self.auth(t, &plan))
            .and_then(|()| self.apply(t, &plan, had_messages))
        {
            Ok(()) => Expect::Accepted,
            Err(r) => Expect::Rejected(r),
        };
        if let Some(p) = policy {
            self.tenants[t].drafts_seen.insert(p);
        }
        WorkItem {
            index,
            tenant,
            subject,
            msg_id,
            label: plan.label,
            expect,
            content: Content::Signed {
                actor,
                key: Box::new(key),
                time,
                event: plan.event,
                draft: plan.draft,
                tamper: matches!(plan.fault, Fault::Tamper),
            },
        }
    }
}

impl Iterator for Workload {
    type Item = WorkItem;
    fn next(&mut self) -> Option<WorkItem> {
        Some(self.next_item())
    }
}

// ---- publishing -------------------------------------------------------------------------------

/// A published item: where it landed and what the fold should make of it.
#[derive(Debug, Clone)]
pub struct Published {
    pub index: usize,
    pub tenant: TenantId,
    pub seq: u64,
    pub label: &'static str,
    pub expect: Expect,
}

struct InFlight {
    item: WorkItem,
    ack: jetstream::context::PublishAckFuture,
}

/// Publishes work items in order, pipelining up to `window` unacknowledged publishes. A draft
/// edit waits for every earlier publish on its subject to be acknowledged (its base revision
/// is the last one's sequence) and is published with `Nats-Expected-Last-Subject-Sequence`.
pub struct Publisher {
    js: jetstream::Context,
    window: usize,
    in_flight: VecDeque<InFlight>,
    last_seq: HashMap<String, u64>,
    published: Vec<Published>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("window", &self.window)
            .field("in_flight", &self.in_flight.len())
            .field("published", &self.published.len())
            .finish()
    }
}

fn nats(e: impl fmt::Display) -> ControlPlaneError {
    ControlPlaneError::Nats(e.to_string())
}

impl Publisher {
    pub fn new(js: jetstream::Context, window: usize) -> Publisher {
        Publisher {
            js,
            window: window.max(1),
            in_flight: VecDeque::new(),
            last_seq: HashMap::new(),
            published: Vec::new(),
        }
    }

    /// Everything published so far (acknowledged).
    pub fn published(&self) -> &[Published] {
        &self.published
    }

    async fn settle_one(&mut self) -> Result<()> {
        let Some(f) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let ack = f.ack.await.map_err(|e| {
            nats(format!(
                "publishing item {} ({}) on {}: {e}",
                f.item.index, f.item.label, f.item.subject
            ))
        })?;
        if ack.duplicate {
            return Err(nats(format!(
                "item {} ({}) was acknowledged as a duplicate of sequence {}",
                f.item.index, f.item.label, ack.sequence
            )));
        }
        self.last_seq.insert(f.item.subject.clone(), ack.sequence);
        self.published.push(Published {
            index: f.item.index,
            tenant: f.item.tenant,
            seq: ack.sequence,
            label: f.item.label,
            expect: f.item.expect,
        });
        Ok(())
    }

    /// Waits for every outstanding ack.
    pub async fn flush(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Publishes one item (returns once it is sent, not necessarily acknowledged).
    pub async fn publish(&mut self, item: WorkItem) -> Result<()> {
        if item.is_draft()
            && self
                .in_flight
                .iter()
                .any(|f| f.item.subject == item.subject)
        {
            self.flush().await?;
        }
        while self.in_flight.len() >= self.window {
            self.settle_one().await?;
        }
        let last = self.last_seq.get(&item.subject).copied().unwrap_or(0);
        let (payload, expected) = item.render(last);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(aegis_nats::publish::MSG_ID_HEADER, item.msg_id.as_str());
        if let Some(seq) = expected {
            headers.insert(
                aegis_nats::publish::EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
                seq.to_string().as_str(),
            );
        }
        let ack = self
            .js
            .publish_with_headers(item.subject.clone(), headers, payload.into())
            .await
            .map_err(nats)?;
        self.in_flight.push_back(InFlight { item, ack });
        Ok(())
    }

    /// Flushes and returns everything published.
    pub async fn finish(mut self) -> Result<Vec<Published>> {
        self.flush().await?;
        Ok(self.published)
    }
}

/// Publishes the next `n` items of `workload` (pipelined, `window` in flight).
pub async fn publish_workload(
    js: &jetstream::Context,
    workload: &mut Workload,
    n: usize,
    window: usize,
) -> Result<Vec<Published>> {
    let mut publisher = Publisher::new(js.clone(), window);
    for _ in 0..n {
        publisher.publish(workload.next_item()).await?;
    }
    publisher.finish().await
}

// ---- checking ---------------------------------------------------------------------------------

/// Every event record of `tenant`, by chain position (pages of 1000 `events` queries).
pub async fn read_events(
    client: &async_nats::Client,
    tenant: &TenantId,
) -> Result<Vec<EventRecord>> {
    let mut out: Vec<EventRecord> = Vec::new();
    loop {
        let from = out.last().map(|r| r.position + 1).unwrap_or(1);
        let page = match query(
            client,
            tenant,
            QueryRequest::Events {
                from_position: Some(from),
                limit: Some(1000),
            },
        )
        .await?
        {
            QueryAnswer::Events(page) => page,
            other => {
                return Err(ControlPlaneError::Query {
                    op: "events",
                    tenant: tenant.to_string(),
                    message: format!("unexpected answer {other:?}"),
                });
            }
        };
        let n = page.len();
        out.extend(page);
        if n < 1000 {
            return Ok(out);
        }
    }
}

/// How the control plane's records compare with the workload's expectations.
#[derive(Debug, Clone, Default)]
pub struct OutcomeReport {
    /// Workload items found in the records.
    pub checked: usize,
    pub accepted: usize,
    /// Rejections by kind (as classified from the recorded reason).
    pub rejected: BTreeMap<Reject, usize>,
    /// Items whose record is missing or whose outcome is not the expected one.
    pub mismatches: Vec<String>,
    /// Records that are not workload items (the control plane's own events), by type and
    /// outcome, e.g. `acme checks_completed accepted`.
    pub other_records: BTreeMap<String, usize>,
}

/// Reads every tenant's records and compares them with `published`.
pub async fn check_outcomes(
    client: &async_nats::Client,
    published: &[Published],
) -> Result<OutcomeReport> {
    let tenants: BTreeSet<TenantId> = published.iter().map(|p| p.tenant.clone()).collect();
    let mut by_seq: HashMap<u64, EventRecord> = HashMap::new();
    let mut report = OutcomeReport::default();
    let ours: BTreeSet<u64> = published.iter().map(|p| p.seq).collect();
    for t in &tenants {
        for r in read_events(client, t).await? {
            if !ours.contains(&r.seq) {
                let ty = r.event_type.map(|t| t.to_string()).unwrap_or("-".into());
                let outcome = match &r.outcome {
                    Outcome::Accepted => "accepted".to_owned(),
                    Outcome::Rejected { reason } => format!("rejected: {reason}"),
                };
                *report
                    .other_records
                    .entry(format!("{t} {ty} {outcome}"))
                    .or_default() += 1;
            }
            by_seq.insert(r.seq, r);
        }
    }
    for p in published {
        let Some(r) = by_seq.get(&p.seq) else {
            report.mismatches.push(format!(
                "item {} ({}, {}) at seq {}: no record",
                p.index, p.label, p.tenant, p.seq
            ));
            continue;
        };
        report.checked += 1;
        match &r.outcome {
            Outcome::Accepted => report.accepted += 1,
            Outcome::Rejected { reason } => {
                if let Some(kind) = Reject::classify(reason) {
                    *report.rejected.entry(kind).or_default() += 1;
                }
            }
        }
        if !p.expect.matches(&r.outcome) {
            report.mismatches.push(format!(
                "item {} ({}, {}) at seq {} (position {}): expected {:?}, got {:?} — {}",
                p.index, p.label, p.tenant, p.seq, r.position, p.expect, r.outcome, r.summary
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn generate(seed: u64, n: usize) -> (Vec<WorkItem>, Workload) {
        let root = Keypair::from_seed(&[9; 32]);
        let mut config = WorkloadConfig::new(seed);
        config.start_time = OffsetDateTime::UNIX_EPOCH;
        let mut w = Workload::new(config, &root);
        let items = (&mut w).take(n).collect();
        (items, w)
    }

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        let (a, _) = generate(7, 2000);
        let (b, _) = generate(7, 2000);
        let (c, _) = generate(8, 2000);
        let render = |items: &[WorkItem]| -> Vec<(String, Vec<u8>, Expect)> {
            items
                .iter()
                .map(|i| (i.subject.clone(), i.render(3).0, i.expect))
                .collect()
        };
        assert_eq!(render(&a), render(&b));
        assert_ne!(render(&a), render(&c));
    }

    #[test]
    fn ten_thousand_events_cover_every_kind_of_outcome() {
        let (items, w) = generate(42, 10_000);
        let mut kinds: BTreeMap<Option<Reject>, usize> = BTreeMap::new();
        for i in &items {
            let k = match i.expect {
                Expect::Accepted => None,
                Expect::Rejected(r) => Some(r),
            };
            *kinds.entry(k).or_default() += 1;
        }
        eprintln!("{kinds:#?}\n{:#?}\n{:#?}", w.labels(), w.expectations());
        for r in [
            Reject::NotAnEnvelope,
            Reject::BadSignature,
            Reject::UnknownActor,
            Reject::UnknownKey,
            Reject::RevokedKey,
            Reject::MissingRole,
            Reject::StaleEdit,
            Reject::FourEyes,
        ] {
            assert!(kinds.get(&Some(r)).copied().unwrap_or(0) > 0, "{r:?}");
        }
        assert!(kinds[&None] > 4000, "{kinds:?}");
        // Every rejection's needle classifies back to its kind.
        for r in Reject::ALL {
            assert_eq!(Reject::classify(r.needle()), Some(r), "{r:?}");
        }
    }

    #[test]
    fn variants_keep_the_document_valid_but_change_the_ticket() {
        let t = Template::finance();
        let name = PolicyName::new("finance-agent-eu").unwrap();
        let doc = t.policy_variant(&name, 4242);
        assert!(doc.contains("\n  ticket: FIN-4242\n"), "{doc}");
        assert!(doc.contains("\n  name: finance-agent-eu\n"), "{doc}");
        assert_eq!(doc.lines().count(), t.policy.lines().count());
        let other = t.for_tenant("globex");
        assert!(other.policy.contains("tenant: globex"));
        assert!(!other.vectors.contains("tenant: acme"));
        assert_ne!(t.failing_vectors(), t.vectors);
    }
}
