//! One task per tenant that follows `aegis.bundles.<tenant>` and `aegis.bundles.<tenant>.controls`
//! and keeps the tenant's slot on the newest bundles that verify, with the newest kill switch,
//! freeze and rollout state.
//!
//! **Consuming.** One ordered push consumer on `AEGIS_BUNDLES` filtered to both subjects (so
//! announcements and controls states are handled in the order the control plane published
//! them) starts with `DeliverPolicy::LastPerSubject` (the newest message of each, then live).
//! The stream sequence of every handled message is remembered; whenever the consumer fails,
//! ends, or stays silent while the stream holds a newer message for either subject (checked every
//! [`WatcherOptions::stall_check`] with a direct get — a consumer that silently lost its
//! server-side state after a NATS restart), it is recreated from the next sequence, retried
//! with backoff until NATS answers. The task never exits on errors; abort its handle to stop.
//!
//! **Each message.** The envelope is parsed and its signature checked against the gateway's
//! trust store (the control plane signs announcements with its bundle key). Unparseable
//! messages and envelopes for another tenant are logged and skipped; a `bundle_published`
//! whose signature fails is refused (`bad_signature`, `unknown_key`, `revoked_key`).
//!
//! - `tenant_controls` (see [`super::controls`]): verified like an announcement (unknown or
//!   revoked key, bad signature → ignored with a warning and
//!   `aegis_controls_rejected_total{reason}`), applied only if its `epoch` is above the last
//!   applied one (an equal epoch only re-fetches what it names and is not yet loaded). Its
//!   blocks and freeze apply at once and the signed envelope is saved in the local store.
//!   Then, unless the data plane is frozen and the tenant already has a bundle, the slot is
//!   made to run the named `stable` and `candidate`: each fetched by digest if it is not the
//!   one loaded, verified with [`super::controls::prepare_ref`] (every rule but the high-water
//!   mark: the signed state vouches for a stable below it, e.g. after an abort), and both
//!   swapped in together. A stable that fails keeps the one in force; a candidate that fails is
//!   dropped; both refusals are recorded like bundle refusals; a fetch failure is retried every
//!   [`WatcherOptions::refetch_every`].
//! - `bundle_published` with stage `shadow` or `partial`: not applied (the controls state
//!   brings candidates). With stage `global`, while the data plane is frozen and a bundle is in
//!   force: held back ("pinned by the data-plane freeze": `/v1/status` `held_back`,
//!   `aegis_bundles_pinned_total`, a warning). Otherwise:
//! - `bundle_published`: skipped when that version with that digest is already in force. An
//!   announced version below the high-water mark (or equal with another digest) is refused as
//!   `version_not_above` without fetching. Otherwise the bytes are fetched from object store
//!   `aegis-bundles` by digest, retried with exponential backoff (the object may not be there
//!   yet, NATS may be away) up to [`WatcherOptions::fetch_attempts`]; then the refusal is
//!   `fetch_failed`, and the same announcement is tried again quietly every
//!   [`WatcherOptions::refetch_every`] until it applies or a newer one arrives. The bytes go
//!   through [`prepare`] on a blocking thread. Applied: the slot is swapped atomically
//!   (requests in flight finish on the old bundle), the bundle then the mark are saved to the
//!   [`LocalStore`](super::LocalStore), `aegis_bundles_applied_total` goes up, `bundle applied`
//!   is logged with tenant, version, digest and elapsed time, and the heartbeat beats. A
//!   global bundle ends any rollout: the candidate is cleared. Refused:
//!   see [`BundleContext::refuse`]; the bundle in force stays.
//! - `rollout_stage_changed` for the version in force: the slot is re-installed with the new
//!   stage (same evaluator) and the stage saved with the mark. Other versions and other event
//!   types are ignored.
//!
//! If saving to disk fails the bundle is still served (it verified); the error is logged, and
//! after a restart the gateway falls back to what the disk holds.

use super::apply::{BundleRefusal, SOURCE_NATS, prepare, reason};
use super::controls::{self, ControlsRefusal, controls_reason};
use super::{BundleContext, StoredMark, with_stage};
use crate::tenants::{ActiveBundle, Controls, Deployment, HeldBack, Registry, TenantSlot};
use aegis_core::bundle::HighWater;
use aegis_core::events::{
    BundlePublished, BundleRef, Event, ReceivedEnvelope, RolloutStage, RolloutStageChanged,
    TenantControls,
};
use aegis_nats::topology::{self, BUNDLE_OBJECT_STORE, BUNDLES_STREAM};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Timing of the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherOptions {
    /// Tries to fetch an announced bundle before refusing it as `fetch_failed`.
    pub fetch_attempts: u32,
    /// First pause between fetch tries; doubles up to `fetch_backoff_max`.
    pub fetch_backoff: Duration,
    pub fetch_backoff_max: Duration,
    /// Bound on one fetch try.
    pub fetch_timeout: Duration,
    /// After `fetch_failed`, how often the same announcement is tried again.
    pub refetch_every: Duration,
    /// Silence after which the stream is asked whether the consumer missed a message.
    pub stall_check: Duration,
    /// Longest pause between attempts to (re)create the consumer.
    pub reconnect_backoff_max: Duration,
}

impl Default for WatcherOptions {
    /// 6 fetch tries 250 ms..4 s apart (about 8 s), 30 s per try, refetch every 30 s, stall
    /// check after 5 s of silence, reconnect backoff up to 5 s.
    fn default() -> Self {
        Self {
            fetch_attempts: 6,
            fetch_backoff: Duration::from_millis(250),
            fetch_backoff_max: Duration::from_secs(4),
            fetch_timeout: Duration::from_secs(30),
            refetch_every: Duration::from_secs(30),
            stall_check: Duration::from_secs(5),
            reconnect_backoff_max: Duration::from_secs(5),
        }
    }
}

/// Starts one watcher per tenant of `registry`. Call [`super::restore_all`] first.
pub fn spawn_all(
    js: &jetstream::Context,
    registry: &Registry,
    ctx: &BundleContext,
    options: &WatcherOptions,
) -> Vec<JoinHandle<()>> {
    registry
        .slots()
        .map(|slot| spawn(js.clone(), slot.clone(), ctx.clone(), options.clone()))
        .collect()
}

/// Starts the watcher of one tenant. It runs until the handle is aborted.
pub fn spawn(
    js: jetstream::Context,
    slot: Arc<TenantSlot>,
    ctx: BundleContext,
    options: WatcherOptions,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let subjects = topology::bundles_subject(&slot.tenant)
            .and_then(|b| topology::controls_subject(&slot.tenant).map(|c| (b, c)));
        match subjects {
            Ok((subject, controls_subject)) => {
                let watcher = Watcher::new(js, slot, ctx, options, subject, controls_subject);
                watcher.run().await;
            }
            Err(e) => {
                // The tenant id cannot be a subject token: it can never receive bundles.
                tracing::error!(tenant = %slot.tenant, error = %e, "cannot watch bundles for this tenant");
            }
        }
    })
}

/// Work waiting for bytes that could not be fetched yet.
struct Pending {
    work: PendingWork,
    next_try: Instant,
}

enum PendingWork {
    /// A global announcement.
    Announcement(BundlePublished),
    /// The bundles the applied controls state names.
    Controls,
}

/// What [`Watcher::load_ref`] got.
enum Loaded {
    Ready(Box<ActiveBundle>, Vec<u8>),
    /// Not fetched yet: try again later.
    Retry,
    /// Refused (recorded).
    Refused,
}

/// What `/v1/status` and the logs say of a bundle the freeze kept out.
pub const PINNED: &str = "pinned by the data-plane freeze";

enum FetchFailure {
    TooLarge(String),
    Failed(String),
}

struct Watcher {
    js: jetstream::Context,
    slot: Arc<TenantSlot>,
    ctx: BundleContext,
    options: WatcherOptions,
    subject: String,
    controls_subject: String,
    high_water: Option<HighWater>,
    /// Stream sequence of the last message handled (0: none yet).
    last_seq: u64,
    pending: Option<Pending>,
    /// The newest controls state applied (restored from the local store at start).
    controls: Option<TenantControls>,
}

type Messages = consumer::push::Ordered;

impl Watcher {
    fn new(
        js: jetstream::Context,
        slot: Arc<TenantSlot>,
        ctx: BundleContext,
        options: WatcherOptions,
        subject: String,
        controls_subject: String,
    ) -> Self {
        // The mark: the higher of the one on disk and the bundle in force.
        let on_disk = match ctx.store.load_mark(&slot.tenant) {
            Ok(m) => m.map(|m| m.high_water),
            Err(e) => {
                tracing::warn!(tenant = %slot.tenant, error = %e, "high-water file unreadable");
                None
            }
        };
        let in_force = slot.active().map(|a| HighWater {
            version: a.version,
            digest: a.digest.clone(),
        });
        let high_water = match (on_disk, in_force) {
            (Some(d), Some(f)) => Some(if f.version >= d.version { f } else { d }),
            (d, f) => d.or(f),
        };
        // The state restored at start (verified there); read again, it verifies the same.
        let controls = match ctx.store.load_controls(&slot.tenant) {
            Ok(Some(bytes)) if slot.controls().unavailable.is_none() => {
                controls::verify(&slot.tenant, &ctx.trust, &bytes).ok()
            }
            _ => None,
        };
        Self {
            js,
            slot,
            ctx,
            options,
            subject,
            controls_subject,
            high_water,
            last_seq: 0,
            pending: None,
            controls,
        }
    }

    async fn run(mut self) {
        tracing::info!(tenant = %self.slot.tenant, subject = %self.subject, controls_subject = %self.controls_subject, high_water = self.high_water.as_ref().map(|h| h.version), controls_epoch = self.slot.controls().epoch, "bundle watcher starting");
        loop {
            let mut messages = self.open().await;
            loop {
                let retry_at = self.pending.as_ref().map(|p| p.next_try);
                tokio::select! {
                    next = tokio::time::timeout(self.options.stall_check, messages.next()) => {
                        match next {
                            Ok(Some(Ok(msg))) => {
                                let Ok(info) = msg.info() else {
                                    tracing::warn!(tenant = %self.slot.tenant, "a message without JetStream metadata; ignored");
                                    continue;
                                };
                                let seq = info.stream_sequence;
                                if seq <= self.last_seq {
                                    continue;
                                }
                                self.last_seq = seq;
                                self.handle(&msg.payload).await;
                            }
                            Ok(Some(Err(e))) => {
                                tracing::warn!(tenant = %self.slot.tenant, error = %e, after = self.last_seq, "bundle consumer failed; recreating it");
                                break;
                            }
                            Ok(None) => {
                                tracing::warn!(tenant = %self.slot.tenant, after = self.last_seq, "bundle consumer ended; recreating it");
                                break;
                            }
                            Err(_) => {
                                if self.stalled().await {
                                    tracing::warn!(tenant = %self.slot.tenant, after = self.last_seq, "bundle consumer stalled; recreating it");
                                    break;
                                }
                            }
                        }
                    }
                    () = sleep_until(retry_at), if retry_at.is_some() => {
                        match self.pending.take().map(|p| p.work) {
                            Some(PendingWork::Announcement(b)) => self.on_published(b, true).await,
                            Some(PendingWork::Controls) => self.reconcile(true).await,
                            None => {}
                        }
                    }
                }
            }
        }
    }

    /// The consumer, retried with backoff until NATS answers.
    async fn open(&self) -> Messages {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.try_open().await {
                Ok(m) => return m,
                Err(e) => {
                    tracing::warn!(tenant = %self.slot.tenant, error = %e, "cannot create the bundle consumer yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.options.reconnect_backoff_max);
                }
            }
        }
    }

    async fn try_open(&self) -> Result<Messages, String> {
        let deliver_policy = if self.last_seq == 0 {
            consumer::DeliverPolicy::LastPerSubject
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: self.last_seq + 1,
            }
        };
        let config = consumer::push::OrderedConfig {
            deliver_subject: self.js.client().new_inbox(),
            filter_subjects: vec![self.subject.clone(), self.controls_subject.clone()],
            deliver_policy,
            description: Some(format!("aegis gateway {} bundle watcher", self.ctx.gateway)),
            ..Default::default()
        };
        let consumer = self
            .js
            .create_consumer_on_stream(config, BUNDLES_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        consumer.messages().await.map_err(|e| e.to_string())
    }

    /// Whether the stream holds a message for either subject that this watcher has not
    /// handled.
    async fn stalled(&self) -> bool {
        for subject in [&self.subject, &self.controls_subject] {
            match aegis_nats::last_message(&self.js, BUNDLES_STREAM, subject).await {
                Ok(Some(m)) if m.sequence > self.last_seq => return true,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(tenant = %self.slot.tenant, %subject, error = %e, "cannot read the subject's last sequence");
                }
            }
        }
        false
    }

    async fn handle(&mut self, payload: &[u8]) {
        let tenant = &self.slot.tenant;
        let received = match ReceivedEnvelope::parse(payload) {
            Ok(r) => r,
            Err(e) => {
                match unknown_type(payload) {
                    // A newer control plane may announce event types this build does not know.
                    Some(kind) => {
                        tracing::info!(%tenant, seq = self.last_seq, event = %kind, "unknown event type on the bundle subject; ignored")
                    }
                    None => {
                        tracing::warn!(%tenant, seq = self.last_seq, error = %e, "unreadable message on the bundle subject; ignored")
                    }
                }
                return;
            }
        };
        let env = &received.envelope;
        if &env.tenant != tenant {
            tracing::warn!(%tenant, seq = self.last_seq, envelope_tenant = %env.tenant, "announcement for another tenant on this tenant's subject; ignored");
            return;
        }
        let checked = controls::check_signature(&received, &self.ctx.trust)
            .map_err(|(code, why)| (code, format!("the announcement is {why}")));
        if let Err((code, why)) = checked {
            match &env.event {
                Event::BundlePublished(b) => {
                    let refusal = BundleRefusal::new(code, Some(b.version), why);
                    self.ctx.refuse(&self.slot, &b.digest, &refusal);
                }
                Event::TenantControls(c) => {
                    let why = format!("epoch {}: {why}", c.epoch);
                    self.refuse_controls(&ControlsRefusal { code, reason: why });
                }
                other => {
                    tracing::warn!(%tenant, seq = self.last_seq, event = %other.event_type(), reason_code = code, reason = %why, "unverified message on the bundle subject; ignored");
                }
            }
            return;
        }
        match &env.event {
            Event::BundlePublished(b) => self.on_published(b.clone(), false).await,
            Event::RolloutStageChanged(r) => self.on_stage(r).await,
            Event::TenantControls(c) => self.on_controls(c.clone(), payload).await,
            other => {
                tracing::debug!(%tenant, event = %other.event_type(), "not a bundle event; ignored");
            }
        }
    }

    /// Applies or refuses an announced bundle. `retry`: a pending `fetch_failed` announcement
    /// tried again (its refusal was already recorded).
    async fn on_published(&mut self, b: BundlePublished, retry: bool) {
        let tenant = self.slot.tenant.clone();
        if b.stage != RolloutStage::Global {
            tracing::info!(%tenant, version = b.version, stage = %b.stage, "candidate version announced; the controls state says who runs it");
            return;
        }
        if let Some(active) = self.slot.active()
            && active.version == b.version
            && active.digest == b.digest
        {
            tracing::debug!(%tenant, version = b.version, "announced bundle already in force");
            self.pending = None;
            return;
        }
        if let Some(freeze) = &self.slot.controls().data_plane_frozen
            && let Some(active) = self.slot.active()
        {
            self.hold_back(&b, &active, freeze);
            return;
        }
        if let Some(hw) = &self.high_water
            && b.version == hw.version
            && b.digest == hw.digest
            && self.slot.active().is_some()
        {
            // The mark's own bundle, while another one (a stable the controls state named
            // after it, e.g. after an abort) is in force: an announcement the state supersedes.
            tracing::info!(%tenant, version = b.version, "announcement older than the controls state in force; ignored");
            return;
        }
        if let Some(hw) = &self.high_water
            && (b.version < hw.version || (b.version == hw.version && b.digest != hw.digest))
        {
            if !retry {
                let refusal = BundleRefusal::new(
                    reason::VERSION_NOT_ABOVE,
                    Some(b.version),
                    format!(
                        "announced version {} is not above the high-water mark {} (an equal version is accepted only for the identical bundle)",
                        b.version, hw.version
                    ),
                );
                self.ctx.refuse(&self.slot, &b.digest, &refusal);
            }
            return;
        }
        // A newer announcement supersedes one still waiting for its bytes.
        self.pending = None;

        let started = Instant::now();
        let bytes = match self.fetch(&b.digest, b.size).await {
            Ok(bytes) => bytes,
            Err(FetchFailure::TooLarge(why)) => {
                let refusal = BundleRefusal::new(reason::TOO_LARGE, Some(b.version), why);
                self.ctx.refuse(&self.slot, &b.digest, &refusal);
                return;
            }
            Err(FetchFailure::Failed(why)) => {
                if retry {
                    tracing::info!(%tenant, version = b.version, digest = %b.digest, error = %why, "bundle still cannot be fetched; will try again");
                } else {
                    let refusal = BundleRefusal::new(reason::FETCH_FAILED, Some(b.version), why);
                    self.ctx.refuse(&self.slot, &b.digest, &refusal);
                }
                self.pending = Some(Pending {
                    work: PendingWork::Announcement(b),
                    next_try: Instant::now() + self.options.refetch_every,
                });
                return;
            }
        };

        let (trust, limits, high_water) = (
            self.ctx.trust.clone(),
            self.ctx.limits,
            self.high_water.clone(),
        );
        let digest = b.digest.clone();
        let t = tenant.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let now = time::OffsetDateTime::now_utc();
            let result = prepare(
                &t,
                &bytes,
                &digest,
                &trust,
                high_water.as_ref(),
                now,
                &limits,
            );
            (result, bytes)
        })
        .await;
        let (result, bytes) = match prepared {
            Ok(r) => r,
            Err(e) => {
                let refusal = BundleRefusal::new(
                    reason::COMPILE_FAILED,
                    Some(b.version),
                    format!("verification did not complete: {e}"),
                );
                self.ctx.refuse(&self.slot, &b.digest, &refusal);
                return;
            }
        };
        let mut active = match result {
            Ok(active) => active,
            Err(mut refusal) => {
                refusal.version = refusal.version.or(Some(b.version));
                self.ctx.refuse(&self.slot, &b.digest, &refusal);
                return;
            }
        };
        if active.version != b.version {
            let refusal = BundleRefusal::new(
                reason::MALFORMED,
                Some(active.version),
                format!(
                    "announced as version {} but its signed manifest says version {}",
                    b.version, active.version
                ),
            );
            self.ctx.refuse(&self.slot, &b.digest, &refusal);
            return;
        }
        active.stage = b.stage;
        active.source = SOURCE_NATS;
        let version = active.version;
        let mark = StoredMark {
            high_water: HighWater {
                version,
                digest: active.digest.clone(),
            },
            stage: b.stage,
        };
        let had_candidate = self.slot.candidate().is_some();
        let previous = self.slot.install(active).map(|p| p.version);
        self.high_water = Some(mark.high_water.clone());
        if had_candidate {
            tracing::info!(%tenant, version, "a global bundle ends the rollout: candidate cleared");
        }
        self.ctx
            .metrics
            .bundles_applied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            %tenant,
            version,
            digest = %b.digest,
            previous,
            stage = %b.stage,
            elapsed_ms = started.elapsed().as_millis() as u64,
            source = SOURCE_NATS,
            "bundle applied"
        );
        self.ctx.beat.notify_one();

        let store = self.ctx.store.clone();
        let t = tenant.clone();
        let saved = tokio::task::spawn_blocking(move || {
            store.save(&t, &bytes, &mark)?;
            store.save_candidate(&t, None)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(%tenant, version, error = %e, "cannot save the bundle as last known-good; a restart would fall back to the previous one")
            }
            Err(e) => {
                tracing::error!(%tenant, version, error = %e, "saving the bundle did not complete")
            }
        }
    }

    async fn on_stage(&mut self, r: &RolloutStageChanged) {
        let tenant = &self.slot.tenant;
        let Some(active) = self.slot.active() else {
            return;
        };
        if active.version != r.version {
            tracing::debug!(%tenant, version = r.version, in_force = active.version, "rollout stage change for a version not in force; ignored");
            return;
        }
        if active.stage == r.stage {
            return;
        }
        self.slot.replace_stable(with_stage(&active, r.stage));
        tracing::info!(%tenant, version = r.version, from = %active.stage, to = %r.stage, "rollout stage changed");
        self.ctx.beat.notify_one();
        let mark = StoredMark {
            high_water: HighWater {
                version: active.version,
                digest: active.digest.clone(),
            },
            stage: r.stage,
        };
        // Only record the stage when the mark on disk names this very bundle.
        if self.high_water.as_ref() == Some(&mark.high_water) {
            let store = self.ctx.store.clone();
            let t = tenant.clone();
            match tokio::task::spawn_blocking(move || store.save_mark(&t, &mark)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(%tenant, error = %e, "cannot save the rollout stage"),
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "saving the rollout stage did not complete")
                }
            }
        }
    }

    /// A global announcement the data-plane freeze keeps out: recorded, not applied.
    fn hold_back(
        &self,
        b: &BundlePublished,
        active: &ActiveBundle,
        freeze: &aegis_core::events::DataPlaneFreeze,
    ) {
        let tenant = &self.slot.tenant;
        tracing::warn!(
            %tenant,
            version = b.version,
            digest = %b.digest,
            kept_version = active.version,
            frozen_by = %freeze.by,
            frozen_at = %freeze.at,
            "bundle pinned by the data-plane freeze; not applied"
        );
        let now = time::OffsetDateTime::now_utc();
        self.slot.set_held_back(Some(HeldBack {
            version: b.version,
            digest: b.digest.clone(),
            reason: PINNED.to_owned(),
            at: aegis_core::events::envelope::format_time(now).unwrap_or_else(|_| now.to_string()),
        }));
        self.ctx.metrics.bundle_pinned(tenant.as_str());
        self.ctx.beat.notify_one();
    }

    /// A controls state not applied: a warning and `aegis_controls_rejected_total`.
    fn refuse_controls(&self, refusal: &ControlsRefusal) {
        tracing::warn!(
            tenant = %self.slot.tenant,
            seq = self.last_seq,
            reason_code = refusal.code,
            reason = %refusal.reason,
            epoch_in_force = self.slot.controls().epoch,
            "controls state ignored"
        );
        self.ctx
            .metrics
            .controls_rejected(self.slot.tenant.as_str(), refusal.code);
    }

    /// Applies a verified controls state: blocks and freeze at once, then the bundles it names.
    async fn on_controls(&mut self, state: TenantControls, payload: &[u8]) {
        let tenant = self.slot.tenant.clone();
        let current = self.slot.controls();
        let known = current.unavailable.is_none();
        if known && state.epoch < current.epoch {
            self.refuse_controls(&ControlsRefusal {
                code: controls_reason::STALE_EPOCH,
                reason: format!(
                    "epoch {} is below the applied epoch {} (an older state replayed)",
                    state.epoch, current.epoch
                ),
            });
            return;
        }
        if !known || state.epoch > current.epoch || self.controls.is_none() {
            let controls = Controls::of(&state);
            tracing::info!(
                %tenant,
                epoch = state.epoch,
                previous_epoch = current.epoch,
                blocked_agents = controls.blocked_agents.len(),
                blocked_tools = controls.blocked_tools.len(),
                frozen = controls.data_plane_frozen.is_some(),
                stable = state.stable.as_ref().map(|s| s.version),
                candidate = state.candidate.as_ref().map(|c| c.bundle.version),
                "controls state applied"
            );
            // Saved first (a few milliseconds): what the gateway enforces survives a crash.
            let store = self.ctx.store.clone();
            let t = tenant.clone();
            let bytes = payload.to_vec();
            match tokio::task::spawn_blocking(move || store.save_controls(&t, &bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(%tenant, error = %e, "cannot save the controls state; a restart without NATS would not know it")
                }
                Err(e) => {
                    tracing::error!(%tenant, error = %e, "saving the controls state did not complete")
                }
            }
            self.slot.set_controls(controls);
            self.ctx.beat.notify_one();
            // A newer state supersedes an announcement still waiting for its bytes.
            if matches!(
                self.pending,
                Some(Pending {
                    work: PendingWork::Announcement(_),
                    ..
                })
            ) {
                self.pending = None;
            }
            self.controls = Some(state);
        }
        self.reconcile(false).await;
    }

    /// Makes the slot run the stable and candidate the applied controls state names (unless
    /// the data plane is frozen and a bundle is in force). `retry`: a pending fetch tried
    /// again (its refusal was already recorded).
    async fn reconcile(&mut self, retry: bool) {
        let Some(state) = self.controls.clone() else {
            return;
        };
        let tenant = self.slot.tenant.clone();
        let current = self.slot.deployment();
        if let (Some(_), Some(stable)) = (&state.data_plane_frozen, &current.stable) {
            let named = state.stable.as_ref().map(|s| s.version);
            if named != Some(stable.version)
                || state.candidate.as_ref().map(|c| &c.bundle.digest)
                    != current.candidate.as_ref().map(|c| &c.bundle.digest)
            {
                tracing::info!(%tenant, stable = stable.version, named_stable = named, "data plane frozen: keeping the bundles in force");
            }
            if matches!(
                self.pending,
                Some(Pending {
                    work: PendingWork::Controls,
                    ..
                })
            ) {
                self.pending = None;
            }
            return;
        }
        if state.data_plane_frozen.is_none() {
            self.slot.set_held_back(None);
        }
        let mut changed = false;
        let mut retry_needed = false;
        let mut loaded = 0u64;

        let mut stable = current.stable.clone();
        let mut stable_bytes = None;
        if let Some(named) = &state.stable
            && stable.as_ref().map(|s| s.digest.as_str()) != Some(named.digest.as_str())
        {
            match self.load_ref(named, retry).await {
                Loaded::Ready(active, bytes) => {
                    stable = Some(Arc::new(*active));
                    stable_bytes = Some(bytes);
                    changed = true;
                    loaded += 1;
                }
                Loaded::Retry => retry_needed = true,
                Loaded::Refused => {}
            }
        }

        // Some(None): remove the stored candidate; Some(Some(bytes)): store these.
        let mut candidate_bytes: Option<Option<Vec<u8>>> = None;
        let candidate = match &state.candidate {
            None => {
                if current.candidate.is_some() {
                    changed = true;
                    candidate_bytes = Some(None);
                }
                None
            }
            Some(named) => match current
                .candidate
                .as_ref()
                .filter(|c| c.bundle.digest == named.bundle.digest)
            {
                Some(c) => {
                    let next = controls::candidate_from(c.bundle.clone(), named);
                    if next.stage != c.stage || next.agents != c.agents || next.percent != c.percent
                    {
                        changed = true;
                    }
                    Some(next)
                }
                None => {
                    let dropped = current.candidate.is_some();
                    match self.load_ref(&named.bundle, retry).await {
                        Loaded::Ready(mut active, bytes) => {
                            active.stage = named.stage;
                            changed = true;
                            loaded += 1;
                            candidate_bytes = Some(Some(bytes));
                            Some(controls::candidate_of(*active, named))
                        }
                        Loaded::Retry => {
                            retry_needed = true;
                            changed |= dropped;
                            None
                        }
                        Loaded::Refused => {
                            if dropped {
                                changed = true;
                                candidate_bytes = Some(None);
                            }
                            None
                        }
                    }
                }
            },
        };

        if retry_needed {
            self.pending = Some(Pending {
                work: PendingWork::Controls,
                next_try: Instant::now() + self.options.refetch_every,
            });
        } else if matches!(
            self.pending,
            Some(Pending {
                work: PendingWork::Controls,
                ..
            })
        ) {
            self.pending = None;
        }
        if !changed {
            return;
        }
        // Persist first: the stable's bytes (and the mark when it rises), the candidate's bytes.
        let stable_version = stable.as_ref().map(|s| s.version);
        let mark = match (stable_version, &stable_bytes) {
            (Some(version), Some(_))
                if self
                    .high_water
                    .as_ref()
                    .is_none_or(|hw| version > hw.version) =>
            {
                state.stable.as_ref().map(|named| StoredMark {
                    high_water: HighWater {
                        version,
                        digest: named.digest.clone(),
                    },
                    stage: RolloutStage::Global,
                })
            }
            _ => None,
        };
        if let Some(m) = &mark {
            self.high_water = Some(m.high_water.clone());
        }
        let store = self.ctx.store.clone();
        let t = tenant.clone();
        let saved = tokio::task::spawn_blocking(move || {
            if let Some(bytes) = &stable_bytes {
                match &mark {
                    Some(mark) => store.save(&t, bytes, mark)?,
                    None => store.save_bundle(&t, bytes)?,
                }
            }
            match &candidate_bytes {
                Some(bytes) => store.save_candidate(&t, bytes.as_deref()),
                None => Ok(()),
            }
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(%tenant, error = %e, "cannot save the rollout's bundles; a restart would fall back to what the disk holds")
            }
            Err(e) => {
                tracing::error!(%tenant, error = %e, "saving the rollout's bundles did not complete")
            }
        }
        let candidate_version = candidate.as_ref().map(|c| c.bundle.version);
        let stage = candidate.as_ref().map(|c| c.stage);
        let previous = self
            .slot
            .install_deployment(Deployment { stable, candidate });
        self.ctx
            .metrics
            .bundles_applied
            .fetch_add(loaded, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            %tenant,
            epoch = state.epoch,
            stable = stable_version,
            previous_stable = previous.stable.as_ref().map(|s| s.version),
            candidate = candidate_version,
            previous_candidate = previous.candidate.as_ref().map(|c| c.bundle.version),
            stage = ?stage,
            source = SOURCE_NATS,
            "rollout state applied"
        );
        self.ctx.beat.notify_one();
    }

    /// Fetches and verifies a bundle a controls state names.
    async fn load_ref(&self, named: &BundleRef, retry: bool) -> Loaded {
        let tenant = self.slot.tenant.clone();
        let bytes = match self.fetch(&named.digest, named.size).await {
            Ok(bytes) => bytes,
            Err(FetchFailure::TooLarge(why)) => {
                let refusal = BundleRefusal::new(reason::TOO_LARGE, Some(named.version), why);
                self.ctx.refuse(&self.slot, &named.digest, &refusal);
                return Loaded::Refused;
            }
            Err(FetchFailure::Failed(why)) => {
                if retry {
                    tracing::info!(%tenant, version = named.version, digest = %named.digest, error = %why, "bundle still cannot be fetched; will try again");
                } else {
                    let refusal =
                        BundleRefusal::new(reason::FETCH_FAILED, Some(named.version), why);
                    self.ctx.refuse(&self.slot, &named.digest, &refusal);
                }
                return Loaded::Retry;
            }
        };
        let ctx = self.ctx.clone();
        let n = named.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let now = time::OffsetDateTime::now_utc();
            let result = controls::prepare_ref(&tenant, &bytes, &n, &ctx, now);
            (result, bytes)
        })
        .await;
        match prepared {
            Ok((Ok(mut active), bytes)) => {
                active.source = SOURCE_NATS;
                Loaded::Ready(Box::new(active), bytes)
            }
            Ok((Err(refusal), _)) => {
                self.ctx.refuse(&self.slot, &named.digest, &refusal);
                Loaded::Refused
            }
            Err(e) => {
                let refusal = BundleRefusal::new(
                    reason::COMPILE_FAILED,
                    Some(named.version),
                    format!("verification did not complete: {e}"),
                );
                self.ctx.refuse(&self.slot, &named.digest, &refusal);
                Loaded::Refused
            }
        }
    }

    /// The bytes of the bundle stored under `digest`, with retries.
    async fn fetch(&self, digest: &str, size: u64) -> Result<Vec<u8>, FetchFailure> {
        let max = self.ctx.limits.size.max_compressed_bytes;
        if size > max {
            return Err(FetchFailure::TooLarge(format!(
                "announced size {size} bytes is over the {max}-byte limit for compressed bundles"
            )));
        }
        let attempts = self.options.fetch_attempts.max(1);
        let mut delay = self.options.fetch_backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            let once =
                tokio::time::timeout(self.options.fetch_timeout, self.fetch_once(digest, max));
            match once.await {
                Ok(Ok(bytes)) => return Ok(bytes),
                Ok(Err(FetchFailure::TooLarge(why))) => return Err(FetchFailure::TooLarge(why)),
                Ok(Err(FetchFailure::Failed(why))) => last = why,
                Err(_) => last = format!("no answer within {:?}", self.options.fetch_timeout),
            }
            tracing::debug!(tenant = %self.slot.tenant, digest, attempt, error = %last, "bundle fetch failed");
            if attempt < attempts {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.options.fetch_backoff_max);
            }
        }
        Err(FetchFailure::Failed(format!(
            "cannot fetch {digest} from object store {BUNDLE_OBJECT_STORE} after {attempts} tries: {last}"
        )))
    }

    async fn fetch_once(&self, digest: &str, max: u64) -> Result<Vec<u8>, FetchFailure> {
        let bucket = self
            .js
            .get_object_store(BUNDLE_OBJECT_STORE)
            .await
            .map_err(|e| FetchFailure::Failed(e.to_string()))?;
        let mut object = bucket
            .get(digest)
            .await
            .map_err(|e| FetchFailure::Failed(e.to_string()))?;
        let mut bytes = Vec::new();
        (&mut object)
            .take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| FetchFailure::Failed(e.to_string()))?;
        if bytes.len() as u64 > max {
            return Err(FetchFailure::TooLarge(format!(
                "object {digest} is over the {max}-byte limit for compressed bundles"
            )));
        }
        Ok(bytes)
    }
}

/// The `type` of a JSON envelope whose type this build does not know.
fn unknown_type(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let kind = value.get("type")?.as_str()?;
    let known = aegis_core::events::EventType::ALL
        .iter()
        .any(|t| t.as_str() == kind);
    (!known).then(|| kind.to_owned())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tells_unknown_event_types_from_garbage() {
        assert_eq!(
            unknown_type(br#"{"type":"rollout_teleported","payload":{}}"#).as_deref(),
            Some("rollout_teleported")
        );
        assert_eq!(unknown_type(br#"{"type":"bundle_published"}"#), None);
        assert_eq!(unknown_type(b"not json"), None);
        assert_eq!(unknown_type(b"{}"), None);
    }
}
