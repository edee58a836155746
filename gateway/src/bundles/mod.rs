//! Bundles at the edge: verify, hot-swap, keep the last known-good one on disk.
//!
//! - [`apply`]: [`prepare`] turns bundle bytes into an [`ActiveBundle`] — digest, signature,
//!   exact file set and hashes, tenant, high-water mark, expiry, `trust.json`, compilation — or a
//!   [`BundleRefusal`] with a stable reason code.
//! - [`local_store`]: the last known-good bundle and the high-water mark per tenant, written
//!   atomically under `<data_dir>/bundles/<tenant>/`.
//! - [`restore`] / [`restore_all`]: at start, before anything else, each tenant's stored bundle
//!   is verified again (with the stored mark) and served at once — NATS is not needed.
//! - [`watcher`]: one task per tenant follows `aegis.bundles.<tenant>`, fetches announced
//!   bundles from the object store, applies or refuses them, and survives NATS restarts.
//!
//! **Failure handling.** A refused bundle never replaces the one in force. Every refusal is
//! recorded the same way ([`BundleContext::refuse`]): a [`Rejection`] on the tenant's slot
//! (`/v1/status`, heartbeat), `aegis_bundles_rejected_total{tenant,reason}`, a warning log, a
//! [`BundleRejected`] record handed to [`BundleContext::on_rejected`] (the runtime ships it on
//! `aegis.decisions.<tenant>.<gateway>`), and an immediate heartbeat. Corrupt or missing local
//! state never means allow: a stored bundle that cannot be read or does not verify leaves the
//! slot empty (every call for the tenant is denied, `/readyz` is not ready) until NATS delivers
//! one that verifies.

pub mod apply;
pub mod controls;
pub mod local_store;
pub mod watcher;

pub use apply::{BundleLimits, BundleRefusal, SOURCE_LOCAL, SOURCE_NATS, prepare, reason};
pub use local_store::{LocalStore, LocalStoreError, StoredMark, StoredState};

use crate::metrics::Metrics;
use crate::tenants::{ActiveBundle, Registry, Rejection, TenantSlot};
use aegis_core::bundle::{HighWater, bundle_digest};
use aegis_core::decision_log::{BUNDLE_REJECTED_TYPE, BundleRejected, SCHEMA_VERSION};
use aegis_core::events::RolloutStage;
use aegis_core::events::envelope::format_time;
use aegis_core::ids::TenantId;
use aegis_core::keys::TrustStore;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Where [`BundleRejected`] records go (the runtime hands them to the decision shipper).
#[derive(Clone)]
pub struct RejectionSink(Arc<dyn Fn(BundleRejected) + Send + Sync>);

impl RejectionSink {
    pub fn new(f: impl Fn(BundleRejected) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Sends every record into `tx` (dropped, with a warning, if the receiver is gone).
    pub fn channel(tx: tokio::sync::mpsc::UnboundedSender<BundleRejected>) -> Self {
        Self::new(move |r| {
            if tx.send(r).is_err() {
                tracing::warn!("bundle_rejected record dropped: its receiver is gone");
            }
        })
    }

    /// Discards the records (tests, tools).
    pub fn discard() -> Self {
        Self::new(|_| {})
    }

    pub fn send(&self, record: BundleRejected) {
        (self.0)(record);
    }
}

impl fmt::Debug for RejectionSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RejectionSink")
    }
}

/// What restoring, watching and the heartbeat share.
#[derive(Debug, Clone)]
pub struct BundleContext {
    /// This gateway's id (`aegis.decisions.<tenant>.<gateway>`, the KV key).
    pub gateway: String,
    pub site: Option<String>,
    /// The control plane's signing keys: bundle manifests and announcements are checked
    /// against them.
    pub trust: Arc<TrustStore>,
    pub store: Arc<LocalStore>,
    pub metrics: Arc<Metrics>,
    pub limits: BundleLimits,
    pub on_rejected: RejectionSink,
    /// Poked after every swap and refusal: the heartbeat task beats at once.
    pub beat: Arc<Notify>,
}

impl BundleContext {
    /// Records a refusal for `slot`: the slot's rejection list, the metric, a warning, a
    /// [`BundleRejected`] record and a heartbeat. The bundle in force (if any) stays.
    pub fn refuse(&self, slot: &TenantSlot, digest: &str, refusal: &BundleRefusal) {
        let now = OffsetDateTime::now_utc();
        let at = format_time(now).unwrap_or_else(|_| now.to_string());
        let kept_version = slot.active().map(|a| a.version);
        tracing::warn!(
            tenant = %slot.tenant,
            version = refusal.version,
            digest,
            reason_code = refusal.reason_code,
            reason = %refusal.reason,
            kept_version,
            "bundle refused"
        );
        slot.reject(Rejection {
            version: refusal.version,
            digest: digest.to_owned(),
            reason_code: refusal.reason_code.to_owned(),
            reason: refusal.reason.clone(),
            at: at.clone(),
        });
        self.metrics
            .bundle_rejected(slot.tenant.as_str(), refusal.reason_code);
        self.on_rejected.send(BundleRejected {
            id: rejection_id(),
            kind: BUNDLE_REJECTED_TYPE.to_owned(),
            schema_version: SCHEMA_VERSION,
            time: at,
            tenant: slot.tenant.clone(),
            gateway: self.gateway.clone(),
            site: self.site.clone(),
            version: refusal.version,
            digest: digest.to_owned(),
            reason_code: refusal.reason_code.to_owned(),
            reason: refusal.reason.clone(),
            kept_version,
        });
        self.beat.notify_one();
    }
}

/// `rej-<32 hex>`, random.
pub fn rejection_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to the clock, still unique enough for a record id.
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = nanos.to_be_bytes();
    }
    format!("rej-{}", hex::encode(bytes))
}

/// What [`restore`] did for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The stored bundle verified and is in force.
    Served { version: u64, digest: String },
    /// Nothing stored: the slot stays empty until NATS delivers a bundle.
    Nothing,
    /// A bundle is stored but could not be read or was refused: the slot stays empty.
    Refused(BundleRefusal),
}

/// Serves `slot`'s last known-good bundle from the local store, verified again with the stored
/// high-water mark (which accepts the same version with the identical digest) at `now`.
///
/// - bundle verifies → installed (`source` = `local`); a missing, corrupt or older mark is
///   rewritten from the bundle's version (the bundle is signed; the mark is not);
/// - bundle unreadable or refused (tampered, expired, below the mark, key revoked since) →
///   the slot stays empty and the refusal is recorded like any other;
/// - no bundle → the slot stays empty.
///
/// Before the bundle, the stored `tenant_controls` state is verified and its blocks and freeze
/// applied ([`controls::restore_controls`]); a stored bundle that state names as its stable
/// version is verified without the high-water mark, and the candidate it names is served too
/// when its bytes are stored and verify ([`controls::restore_candidate`]).
pub fn restore(slot: &TenantSlot, ctx: &BundleContext, now: OffsetDateTime) -> Restored {
    // The kill switch and freeze first: they hold before anything is served.
    let controls = controls::restore_controls(slot, ctx);
    let restored = restore_stable(slot, ctx, now, controls.as_ref());
    if let (Some(state), Restored::Served { .. }) = (&controls, &restored) {
        controls::restore_candidate(slot, ctx, state, now);
    }
    restored
}

/// The stable half of [`restore`]. A stored bundle that the verified controls state names as
/// its stable version is checked without the high-water mark (the state vouches for it).
fn restore_stable(
    slot: &TenantSlot,
    ctx: &BundleContext,
    now: OffsetDateTime,
    controls: Option<&aegis_core::events::TenantControls>,
) -> Restored {
    let tenant = &slot.tenant;
    let state = ctx.store.load(tenant);
    let mark = match state.mark {
        Ok(mark) => mark,
        Err(e) => {
            tracing::warn!(%tenant, error = %e, "high-water file unreadable; the stored bundle's version becomes the mark if it verifies");
            None
        }
    };
    let bytes = match state.bundle {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            tracing::info!(%tenant, high_water = mark.as_ref().map(|m| m.high_water.version), "no stored bundle; denying until NATS delivers one");
            return Restored::Nothing;
        }
        Err(e) => {
            let refusal = BundleRefusal::new(
                reason::FETCH_FAILED,
                mark.as_ref().map(|m| m.high_water.version),
                format!("the stored bundle cannot be read: {e}"),
            );
            tracing::error!(%tenant, error = %e, "stored bundle unreadable; denying until NATS delivers one");
            let digest = mark.map(|m| m.high_water.digest).unwrap_or_default();
            ctx.refuse(slot, &digest, &refusal);
            return Restored::Refused(refusal);
        }
    };
    let digest = bundle_digest(&bytes);
    let high_water = mark.as_ref().map(|m| &m.high_water);
    let vouched = controls
        .and_then(|c| c.stable.as_ref())
        .filter(|r| r.digest == digest);
    let prepared = match vouched {
        Some(named) => controls::prepare_ref(tenant, &bytes, named, ctx, now),
        None => prepare(
            tenant,
            &bytes,
            &digest,
            &ctx.trust,
            high_water,
            now,
            &ctx.limits,
        ),
    };
    match prepared {
        Ok(mut active) => {
            active.source = SOURCE_LOCAL;
            active.stage = mark
                .as_ref()
                .filter(|m| m.high_water.digest == active.digest)
                .map_or(RolloutStage::Global, |m| m.stage);
            let (version, digest) = (active.version, active.digest.clone());
            let stage = active.stage;
            slot.install(active);
            // Never lowered: a vouched stable may sit below the mark.
            let mark_ok = mark.as_ref().is_some_and(|m| {
                (m.high_water.version == version && m.high_water.digest == digest)
                    || m.high_water.version > version
            });
            if !mark_ok {
                let repaired = StoredMark {
                    high_water: HighWater {
                        version,
                        digest: digest.clone(),
                    },
                    stage,
                };
                match ctx.store.save_mark(tenant, &repaired) {
                    Ok(()) => {
                        tracing::info!(%tenant, version, "high-water mark rewritten from the stored bundle")
                    }
                    Err(e) => {
                        tracing::error!(%tenant, version, error = %e, "cannot rewrite the high-water mark")
                    }
                }
            }
            ctx.metrics
                .bundles_applied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%tenant, version, %digest, source = SOURCE_LOCAL, "bundle applied");
            ctx.beat.notify_one();
            Restored::Served { version, digest }
        }
        Err(refusal) => {
            tracing::error!(%tenant, reason_code = refusal.reason_code, reason = %refusal.reason, "stored bundle refused; denying until NATS delivers one");
            ctx.refuse(slot, &digest, &refusal);
            Restored::Refused(refusal)
        }
    }
}

/// [`restore`] for every tenant of `registry`, at the current time. Call it before serving and
/// before starting the watchers.
pub fn restore_all(registry: &Registry, ctx: &BundleContext) -> BTreeMap<TenantId, Restored> {
    let now = OffsetDateTime::now_utc();
    registry
        .slots()
        .map(|slot| (slot.tenant.clone(), restore(slot, ctx, now)))
        .collect()
}

/// A copy of `active` with another rollout stage (the evaluator is shared, not recompiled).
pub fn with_stage(active: &ActiveBundle, stage: RolloutStage) -> ActiveBundle {
    ActiveBundle {
        tenant: active.tenant.clone(),
        version: active.version,
        digest: active.digest.clone(),
        manifest: active.manifest.clone(),
        evaluator: active.evaluator.clone(),
        issuers: active.issuers.clone(),
        stage,
        applied_at: active.applied_at.clone(),
        source: active.source,
        expires_unix: active.expires_unix,
        tokens: crate::tenants::TokenCache::default(),
    }
}
