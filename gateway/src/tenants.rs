//! The tenants a gateway serves and, for each, the bundle it enforces right now.
//!
//! Each tenant has a slot holding an `Arc<ActiveBundle>` behind an [`ArcSwapOption`]: the
//! request path loads it without a lock, and a new bundle is swapped in atomically — a request
//! that already loaded the old one finishes on it. An empty slot means "no verified bundle":
//! every call for that tenant is denied (`no_bundle`) and `/readyz` says not ready.

use aegis_core::bundle::Manifest;
use aegis_core::eval::Evaluator;
use aegis_core::events::RolloutStage;
use aegis_core::ids::TenantId;
use aegis_core::keys::KeyId;
use aegis_core::token::{IssuerKeys, TrustedIssuer};
use arc_swap::ArcSwapOption;
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

/// One tenant's slot.
#[derive(Debug)]
pub struct TenantSlot {
    pub tenant: TenantId,
    active: ArcSwapOption<ActiveBundle>,
    rejections: Mutex<Vec<Rejection>>,
}

impl TenantSlot {
    fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            active: ArcSwapOption::empty(),
            rejections: Mutex::new(Vec::new()),
        }
    }

    /// The bundle in force, if any. Lock-free.
    pub fn active(&self) -> Option<Arc<ActiveBundle>> {
        self.active.load_full()
    }

    /// Swaps in a new bundle; returns the previous one.
    pub fn install(&self, bundle: ActiveBundle) -> Option<Arc<ActiveBundle>> {
        self.active.swap(Some(Arc::new(bundle)))
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
