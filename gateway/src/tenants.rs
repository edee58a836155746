//! The tenants a gateway serves and, for each, the bundle it enforces right now.
//!
//! Each tenant has a slot holding an `Arc<ActiveBundle>` behind an [`ArcSwapOption`]: the
//! request path loads it without a lock, and a new bundle is swapped in atomically — a request
//! that already loaded the old one finishes on it. An empty slot means "no verified bundle":
//! every call for that tenant is denied (`no_bundle`) and `/readyz` says not ready.
//!
//! **Rollout and kill switch.** The slot really holds a [`Deployment`]: the stable bundle and,
//! during a staged rollout, a [`Candidate`] (its stage and cohort). Both are swapped together,
//! so a request sees one consistent pair. Next to it sit the tenant's [`Controls`] from the
//! control plane's signed `tenant_controls` state: the blocked agents and tools, the data-plane
//! freeze and the epoch of that state.

use aegis_core::bundle::Manifest;
use aegis_core::eval::Evaluator;
use aegis_core::events::{BlockEntry, DataPlaneFreeze, RolloutStage, TenantControls};
use aegis_core::ids::{AgentId, TenantId};
use aegis_core::keys::KeyId;
use aegis_core::token::{IssuerKeys, TrustedIssuer};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A verified, compiled bundle in force for one tenant.
#[derive(Debug)]
pub struct ActiveBundle {
    pub tenant: TenantId,
    pub version: u64,
    /// `sha256:<hex>` of the bundle bytes.
    pub digest: String,
    pub manifest: Manifest,
    pub evaluator: Evaluator,
    /// Token issuer keys from the bundle's `trust.json`.
    pub issuers: IssuerKeys,
    pub stage: RolloutStage,
    /// RFC 3339: when this gateway applied it.
    pub applied_at: String,
    /// Where it came from: `nats` or `local` (last known-good on disk at start).
    pub source: &'static str,
    /// The manifest's `expires_at` as unix seconds. Past it, the bundle no longer decides:
    /// calls are denied (`bundle_expired`) and the gateway is not ready.
    pub expires_unix: Option<i64>,
    /// Tokens already verified against this bundle's issuer keys.
    pub tokens: TokenCache,
}

/// Most tokens a [`TokenCache`] holds before it starts over.
pub const TOKEN_CACHE_CAPACITY: usize = 16_384;

/// Identities of tokens already verified against one bundle's issuer keys, so a caller that
/// presents the same token on every call pays for one ed25519 verification, not one per call.
/// It lives inside the [`ActiveBundle`]: a new bundle (say, with an issuer key revoked) starts
/// with an empty cache. Expiry is checked on every hit; audience and signature cannot change
/// for the same token string.
#[derive(Debug, Default)]
pub struct TokenCache {
    map: Mutex<std::collections::HashMap<String, aegis_core::token::Identity>>,
}

impl TokenCache {
    /// The identity `token` was verified as, if it is cached and not expired at `now` (unix
    /// seconds, with `leeway` seconds of skew as in verification).
    pub fn get(&self, token: &str, now: i64, leeway: i64) -> Option<aegis_core::token::Identity> {
        let map = self.map.lock().ok()?;
        map.get(token)
            .filter(|id| now <= id.expires_at.saturating_add(leeway))
            .cloned()
    }

    /// Remembers a verified token (starting over when full).
    pub fn insert(&self, token: &str, identity: aegis_core::token::Identity) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= TOKEN_CACHE_CAPACITY {
                map.clear();
            }
            map.insert(token.to_owned(), identity);
        }
    }
}

impl ActiveBundle {
    /// Whether the bundle has expired at unix time `now`.
    pub fn expired(&self, now: i64) -> bool {
        self.expires_unix.is_some_and(|e| now >= e)
    }
}

/// `expires_at` (RFC 3339) as unix seconds; an unparseable time counts as already expired.
pub fn expiry_unix(expires_at: Option<&str>) -> Option<i64> {
    expires_at.map(|t| {
        aegis_core::events::envelope::parse_time(t)
            .map(|t| t.unix_timestamp())
            .unwrap_or(i64::MIN)
    })
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A bundle this gateway refused, as reported in `/v1/status` and the heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub version: Option<u64>,
    pub digest: String,
    pub reason_code: String,
    pub reason: String,
    pub at: String,
}

/// Most rejections kept per tenant for `/v1/status`.
pub const REJECTIONS_KEPT: usize = 16;

/// The candidate version of a staged rollout, as a slot runs it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub bundle: Arc<ActiveBundle>,
    /// `shadow` or `partial`.
    pub stage: RolloutStage,
    /// For `partial`: agents that get the candidate.
    pub agents: Vec<AgentId>,
    /// For `partial`: percentage of agents, by [`aegis_core::rollout::in_cohort`].
    pub percent: Option<u8>,
}

impl Candidate {
    /// Whether the candidate decides `agent`'s calls: a `partial` rollout and the agent is in
    /// its cohort. (In `shadow` nobody gets it.)
    pub fn enforced_for(&self, agent: &AgentId) -> bool {
        self.stage == RolloutStage::Partial
            && aegis_core::rollout::in_cohort(agent, &self.agents, self.percent)
    }
}

/// What a slot runs: the stable bundle and, during a rollout, a candidate. Swapped as one.
#[derive(Debug, Clone, Default)]
pub struct Deployment {
    pub stable: Option<Arc<ActiveBundle>>,
    pub candidate: Option<Candidate>,
}

/// The tenant's kill switch and data-plane freeze, from the newest applied `tenant_controls`.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Epoch of the applied state (0: none yet).
    pub epoch: u64,
    /// Blocked agents by id.
    pub blocked_agents: BTreeMap<String, BlockEntry>,
    /// Blocked tools by id.
    pub blocked_tools: BTreeMap<String, BlockEntry>,
    pub data_plane_frozen: Option<DataPlaneFreeze>,
    /// Set when a stored controls state exists but cannot be read or verified: the blocks in
    /// force are unknown, so every call is denied (`controls_unavailable`) until a verified
    /// state arrives.
    pub unavailable: Option<String>,
}

impl Controls {
    /// The blocks and freeze of a verified state.
    pub fn of(state: &TenantControls) -> Controls {
        Controls {
            epoch: state.epoch,
            blocked_agents: state
                .blocked_agents
                .iter()
                .map(|b| (b.id.clone(), b.clone()))
                .collect(),
            blocked_tools: state
                .blocked_tools
                .iter()
                .map(|b| (b.id.clone(), b.clone()))
                .collect(),
            data_plane_frozen: state.data_plane_frozen.clone(),
            unavailable: None,
        }
    }
}

/// A global bundle a data-plane freeze kept this gateway from applying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldBack {
    pub version: u64,
    pub digest: String,
    /// Always "pinned by the data-plane freeze".
    pub reason: String,
    pub at: String,
}

/// One tenant's slot.
#[derive(Debug)]
pub struct TenantSlot {
    pub tenant: TenantId,
    deployment: ArcSwap<Deployment>,
    controls: ArcSwap<Controls>,
    held_back: Mutex<Option<HeldBack>>,
    rejections: Mutex<Vec<Rejection>>,
}

impl TenantSlot {
    fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            deployment: ArcSwap::from_pointee(Deployment::default()),
            controls: ArcSwap::from_pointee(Controls::default()),
            held_back: Mutex::new(None),
            rejections: Mutex::new(Vec::new()),
        }
    }

    /// The stable bundle in force, if any. Lock-free.
    pub fn active(&self) -> Option<Arc<ActiveBundle>> {
        self.deployment.load().stable.clone()
    }

    /// The stable bundle and the candidate, as one consistent pair. Lock-free.
    pub fn deployment(&self) -> Arc<Deployment> {
        self.deployment.load_full()
    }

    /// The candidate in force, if any.
    pub fn candidate(&self) -> Option<Candidate> {
        self.deployment.load().candidate.clone()
    }

    /// Swaps in a new stable bundle and clears any candidate (a global bundle ends a
    /// rollout); returns the previous stable bundle.
    pub fn install(&self, bundle: ActiveBundle) -> Option<Arc<ActiveBundle>> {
        let previous = self.deployment.swap(Arc::new(Deployment {
            stable: Some(Arc::new(bundle)),
            candidate: None,
        }));
        previous.stable.clone()
    }

    /// Replaces the stable bundle, keeping the candidate.
    pub fn replace_stable(&self, bundle: ActiveBundle) {
        let current = self.deployment();
        self.deployment.store(Arc::new(Deployment {
            stable: Some(Arc::new(bundle)),
            candidate: current.candidate.clone(),
        }));
    }

    /// Swaps in a stable bundle and candidate together; returns what ran before.
    pub fn install_deployment(&self, deployment: Deployment) -> Arc<Deployment> {
        self.deployment.swap(Arc::new(deployment))
    }

    /// The kill switch and freeze in force. Lock-free.
    pub fn controls(&self) -> Arc<Controls> {
        self.controls.load_full()
    }

    /// Applies new controls at once.
    pub fn set_controls(&self, controls: Controls) {
        self.controls.store(Arc::new(controls));
    }

    /// The newest global bundle held back by the data-plane freeze, if any.
    pub fn held_back(&self) -> Option<HeldBack> {
        self.held_back.lock().ok().and_then(|h| h.clone())
    }

    /// Records (or, with None, clears) a bundle held back by the freeze.
    pub fn set_held_back(&self, held: Option<HeldBack>) {
        if let Ok(mut h) = self.held_back.lock() {
            *h = held;
        }
    }

    /// Records a refused bundle (newest last, at most [`REJECTIONS_KEPT`]).
    pub fn reject(&self, rejection: Rejection) {
        if let Ok(mut list) = self.rejections.lock() {
            list.push(rejection);
            let excess = list.len().saturating_sub(REJECTIONS_KEPT);
            list.drain(..excess);
        }
    }

    /// Refused bundles, oldest first.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.rejections
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
}

/// Every tenant this gateway serves. The set is fixed at start (configuration).
#[derive(Debug)]
pub struct Registry {
    slots: BTreeMap<TenantId, Arc<TenantSlot>>,
}

impl Registry {
    pub fn new(tenants: impl IntoIterator<Item = TenantId>) -> Self {
        Self {
            slots: tenants
                .into_iter()
                .map(|t| (t.clone(), Arc::new(TenantSlot::new(t))))
                .collect(),
        }
    }

    pub fn slot(&self, tenant: &TenantId) -> Option<&Arc<TenantSlot>> {
        self.slots.get(tenant)
    }

    pub fn slots(&self) -> impl Iterator<Item = &Arc<TenantSlot>> {
        self.slots.values()
    }

    pub fn tenants(&self) -> impl Iterator<Item = &TenantId> {
        self.slots.keys()
    }

    pub fn serves(&self, tenant: &str) -> bool {
        self.slots.keys().any(|t| t.as_str() == tenant)
    }

    /// Ready when every configured tenant has a verified, unexpired bundle.
    pub fn ready(&self) -> bool {
        let now = unix_now();
        !self.slots.is_empty()
            && self
                .slots
                .values()
                .all(|s| s.active().is_some_and(|a| !a.expired(now)))
    }

    /// The issuer key `kid` as registered by whichever served tenant's active bundle holds it.
    /// Two tenants registering the same key is refused by nobody here, so the first tenant
    /// (by id) wins — and the token's `tenant` claim must still match it.
    pub fn issuer(&self, kid: &KeyId) -> Option<(Arc<ActiveBundle>, TrustedIssuer)> {
        self.slots.values().find_map(|slot| {
            let active = slot.active()?;
            let issuer = active.issuers.get(kid)?.clone();
            Some((active, issuer))
        })
    }
}
