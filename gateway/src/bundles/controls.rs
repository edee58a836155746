//! The control plane's signed `tenant_controls` state at the edge: staged rollout (stable and
//! candidate versions), kill switch and data-plane freeze.
//!
//! - [`verify`]: a `tenant_controls` envelope is checked exactly like a bundle announcement —
//!   its `key_id` looked up in the gateway's trust store (unknown or revoked key → refused),
//!   its signature verified, its tenant compared with the subject's.
//! - [`prepare_ref`]: a bundle the state names (stable or candidate) is verified with every
//!   rule of [`prepare`] except the high-water mark — the signed, epoch-checked state vouches
//!   for a stable below the mark (after an abort) — and its signed version must equal the
//!   one the state names.
//! - [`restore_controls`] / [`restore_candidate`]: at start, the stored state (kept byte for
//!   byte as signed) is verified again and its blocks and freeze applied before anything is
//!   served; a stored state that cannot be read or verified denies every call of the tenant
//!   (`controls_unavailable`) until NATS delivers a verified one — a lost kill switch must
//!   never mean allow.

use super::BundleContext;
use super::apply::{BundleRefusal, SOURCE_LOCAL, prepare, reason};
use crate::tenants::{ActiveBundle, Candidate, Controls, Deployment, TenantSlot};
use aegis_core::bundle::bundle_digest;
use aegis_core::events::{BundleRef, Event, ReceivedEnvelope, RolloutStage, TenantControls};
use aegis_core::ids::TenantId;
use aegis_core::keys::{TrustError, TrustStore};
use time::OffsetDateTime;

/// Reason codes of refused `tenant_controls` states (`aegis_controls_rejected_total{reason}`).
pub mod controls_reason {
    pub use super::reason::{BAD_SIGNATURE, REVOKED_KEY, UNKNOWN_KEY, WRONG_TENANT};
    /// Its epoch is below the one applied (an older state replayed).
    pub const STALE_EPOCH: &str = "stale_epoch";
    /// Not a readable `tenant_controls` envelope.
    pub const MALFORMED: &str = "malformed";
}

/// Why a controls state was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct ControlsRefusal {
    pub code: &'static str,
    pub reason: String,
}

impl ControlsRefusal {
    fn new(code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// Checks the key and signature of a received envelope against the trust store: `Err((code,
/// why))` for an unknown or revoked key or a bad signature.
pub fn check_signature(
    received: &ReceivedEnvelope,
    trust: &TrustStore,
) -> Result<(), (&'static str, String)> {
    let env = &received.envelope;
    match trust.lookup(&env.key_id) {
        Ok(key) => received.verify(key).map_err(|e| {
            (
                reason::BAD_SIGNATURE,
                format!("the signature does not verify: {e}"),
            )
        }),
        Err(TrustError::RevokedKey { key_id }) => Err((
            reason::REVOKED_KEY,
            format!("signed by key {key_id}, which has been revoked"),
        )),
        Err(_) => Err((
            reason::UNKNOWN_KEY,
            format!("signed by key {}, which is not trusted", env.key_id),
        )),
    }
}

/// Parses and verifies a stored or received `tenant_controls` envelope for `tenant`.
pub fn verify(
    tenant: &TenantId,
    trust: &TrustStore,
    payload: &[u8],
) -> Result<TenantControls, ControlsRefusal> {
    let received = ReceivedEnvelope::parse(payload)
        .map_err(|e| ControlsRefusal::new(controls_reason::MALFORMED, e.to_string()))?;
    check_signed(tenant, trust, &received)
}

/// [`verify`] for an envelope already parsed.
pub fn check_signed(
    tenant: &TenantId,
    trust: &TrustStore,
    received: &ReceivedEnvelope,
) -> Result<TenantControls, ControlsRefusal> {
    let env = &received.envelope;
    let Event::TenantControls(state) = &env.event else {
        return Err(ControlsRefusal::new(
            controls_reason::MALFORMED,
            format!("a {} event, not tenant_controls", env.event.event_type()),
        ));
    };
    if &env.tenant != tenant {
        return Err(ControlsRefusal::new(
            controls_reason::WRONG_TENANT,
            format!("a state for tenant {}, not {tenant}", env.tenant),
        ));
    }
    check_signature(received, trust).map_err(|(code, why)| ControlsRefusal::new(code, why))?;
    Ok(state.clone())
}

/// Verifies the bytes of a bundle a controls state names: every [`prepare`] rule except the
/// high-water mark, and the signed version must be the named one.
pub fn prepare_ref(
    tenant: &TenantId,
    bytes: &[u8],
    named: &BundleRef,
    ctx: &BundleContext,
    now: OffsetDateTime,
) -> Result<ActiveBundle, BundleRefusal> {
    let active = prepare(
        tenant,
        bytes,
        &named.digest,
        &ctx.trust,
        None,
        now,
        &ctx.limits,
    )
    .map_err(|mut r| {
        r.version = r.version.or(Some(named.version));
        r
    })?;
    if active.version != named.version {
        return Err(BundleRefusal::new(
            reason::MALFORMED,
            Some(active.version),
            format!(
                "named as version {} by the controls state but its signed manifest says version {}",
                named.version, active.version
            ),
        ));
    }
    Ok(active)
}

/// Reads the stored controls state of `slot`'s tenant, verifies it and applies its blocks and
/// freeze to the slot. Returns the verified state (None when nothing usable is stored).
pub fn restore_controls(slot: &TenantSlot, ctx: &BundleContext) -> Option<TenantControls> {
    let tenant = &slot.tenant;
    let unavailable = |why: String| {
        tracing::error!(%tenant, reason = %why, "stored controls state unusable: every call of the tenant is denied until the control plane's state arrives");
        slot.set_controls(Controls {
            unavailable: Some(why),
            ..Controls::default()
        });
        None
    };
    match ctx.store.load_controls(tenant) {
        Ok(None) => None,
        Err(e) => unavailable(format!("the stored controls state cannot be read: {e}")),
        Ok(Some(bytes)) => match verify(tenant, &ctx.trust, &bytes) {
            Ok(state) => {
                let controls = Controls::of(&state);
                tracing::info!(
                    %tenant,
                    epoch = state.epoch,
                    blocked_agents = controls.blocked_agents.len(),
                    blocked_tools = controls.blocked_tools.len(),
                    frozen = controls.data_plane_frozen.is_some(),
                    "controls state restored from the local store"
                );
                slot.set_controls(controls);
                Some(state)
            }
            Err(r) => unavailable(format!("the stored controls state does not verify: {r}")),
        },
    }
}

/// Serves the candidate the stored state names, if its bytes are stored and verify. A candidate
/// that does not verify is refused (recorded) and dropped; the stable bundle stays.
pub fn restore_candidate(
    slot: &TenantSlot,
    ctx: &BundleContext,
    state: &TenantControls,
    now: OffsetDateTime,
) {
    let tenant = &slot.tenant;
    let Some(named) = &state.candidate else {
        return;
    };
    let bytes = match ctx.store.load_candidate(tenant) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(%tenant, error = %e, "stored candidate unreadable; it comes back from NATS");
            return;
        }
    };
    if bundle_digest(&bytes) != named.bundle.digest {
        tracing::info!(%tenant, "the stored candidate is not the one the controls state names; it comes from NATS");
        return;
    }
    match prepare_ref(tenant, &bytes, &named.bundle, ctx, now) {
        Ok(mut active) => {
            active.source = SOURCE_LOCAL;
            active.stage = named.stage;
            let version = active.version;
            let current = slot.deployment();
            slot.install_deployment(Deployment {
                stable: current.stable.clone(),
                candidate: Some(candidate_of(active, named)),
            });
            tracing::info!(%tenant, version, stage = %named.stage, source = SOURCE_LOCAL, "candidate applied");
            ctx.beat.notify_one();
        }
        Err(refusal) => ctx.refuse(slot, &named.bundle.digest, &refusal),
    }
}

/// The slot's view of a verified candidate bundle named by `named`.
pub fn candidate_of(
    active: ActiveBundle,
    named: &aegis_core::events::RolloutCandidate,
) -> Candidate {
    candidate_from(std::sync::Arc::new(active), named)
}

/// [`candidate_of`] for a bundle already shared.
pub fn candidate_from(
    bundle: std::sync::Arc<ActiveBundle>,
    named: &aegis_core::events::RolloutCandidate,
) -> Candidate {
    Candidate {
        bundle,
        stage: match named.stage {
            // A candidate is `shadow` or `partial`; anything else is evaluated in shadow only.
            RolloutStage::Partial => RolloutStage::Partial,
            _ => RolloutStage::Shadow,
        },
        agents: named.agents.clone(),
        percent: named.percent,
    }
}
