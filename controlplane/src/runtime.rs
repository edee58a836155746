//! The running control plane: a consumer feeding the fold, a reactor performing the fold's
//! effects on NATS, and the query service.
//!
//! - **Consumer → fold.** An ordered consumer on `AEGIS_CHANGES` starting just after the
//!   checkpoint stored in RocksDB delivers messages in stream order; a dedicated thread folds
//!   them (RocksDB writes and bundle builds are blocking work). The checkpoint lives in the same
//!   `WriteBatch` as the state, so RocksDB — not a server-side ack floor — is the source of
//!   truth for where to resume, and a kill -9 can neither skip nor double-apply an event.
//! - **Reactor.** Publishes what the fold decided: `checks_completed` events, bundles (object
//!   store by digest, then `BundlePublished` on `aegis.bundles.<tenant>` with a deterministic
//!   `Nats-Msg-Id`, skipped when the subject already announces that version), the tenant's
//!   signed `tenant_controls` state on `aegis.bundles.<tenant>.controls` (after the bundles it
//!   names are announced; only the newest pending epoch, skipped when the subject already holds
//!   it or a later one), runtime approval decisions relayed as signed `runtime_approval_decided`
//!   on `aegis.approvals.<tenant>.<approval_id>`, and signed audit checkpoints on
//!   `aegis.audit.<tenant>` (published with an expected last subject sequence so two control
//!   planes cannot both extend the checkpoint chain).
//! - **Readiness task.** While a tenant has a rollout candidate, measures it on the tenant's
//!   live decisions every `readiness_interval` and publishes a signed
//!   `rollout_readiness_measured` when the counts change (see [`crate::readiness`]).
//! - **Query service.** The async-nats `service` API, one endpoint per query op on
//!   `aegis.query.*.<op>`, in a queue group so several control planes share the load.

use crate::fold::{Applied, Effect, FoldConfig, Folder, InMessage, derived_event_id};
use crate::queries::Queries;
use crate::records::{ApprovalDecisionRecord, ControlsOutbox, TenantRecord, keys};
use crate::store::{Family, Store, StoreError};
use aegis_core::approvals::ApprovalMessage;
use aegis_core::events::chain::ChainEntry;
use aegis_core::events::{
    AuditCheckpoint, BundlePublished, Envelope, Event, ReceivedEnvelope, RuntimeApprovalDecided,
};
use aegis_core::ids::TenantId;
use aegis_core::query::{EventRecord, QueryError, QueryReply, QueryRequest, VersionView};
use aegis_nats::topology::{
    self, APPROVALS_STREAM, AUDIT_STREAM, BUNDLE_OBJECT_STORE, BUNDLES_STREAM, CHANGES_STREAM,
};
use aegis_nats::{Publish, PublishError};
use async_nats::jetstream;
use futures::StreamExt as _;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub data_dir: PathBuf,
    pub fold: FoldConfig,
    /// Publish checks, bundles and checkpoints (off for a pure rebuild).
    pub effects: bool,
    /// Answer queries.
    pub serve_queries: bool,
    /// Stop once every message that was in the stream at start has been folded.
    pub until_caught_up: bool,
    /// Publish an audit checkpoint after this many new chain entries…
    pub checkpoint_every: u64,
    /// …or when this long has passed since the last new entry.
    pub checkpoint_idle: Duration,
    /// Measure rollout candidates on live decisions this often and publish
    /// `rollout_readiness_measured` (with `effects`; None: never).
    pub readiness_interval: Option<Duration>,
}

/// Why the control plane stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "FATAL: AEGIS_CHANGES ends at sequence {stream_last}, but this control plane has already applied up to {applied} (from {data_dir}). The stream was replaced or truncated: refusing to run. Investigate, then either restore the stream or delete the data directory to rebuild from what the stream holds."
    )]
    StreamBehindCheckpoint {
        stream_last: u64,
        applied: u64,
        data_dir: String,
    },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("the fold thread stopped: {0}")]
    Fold(String),
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub applied_seq: u64,
    pub folded: u64,
}

fn nats_err(e: impl std::fmt::Display) -> RunError {
    RunError::Nats(e.to_string())
}

/// Runs until `shutdown` resolves (or, with `until_caught_up`, until caught up).
pub async fn run(
    js: jetstream::Context,
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<RunSummary, RunError> {
    let store = Arc::new(Store::open(&config.data_dir)?);
    let applied = store.applied_seq()?;
    let mut stream = js.get_stream(CHANGES_STREAM).await.map_err(nats_err)?;
    let stream_last = stream.info().await.map_err(nats_err)?.state.last_sequence;
    if stream_last < applied {
        let err = RunError::StreamBehindCheckpoint {
            stream_last,
            applied,
            data_dir: config.data_dir.display().to_string(),
        };
        tracing::error!(stream_last, applied, "{err}");
        return Err(err);
    }
    tracing::info!(applied, stream_last, "control plane starting");

    let mut messages = open_consumer(&stream, applied + 1).await?;

    let (to_fold, mut fold_rx) = mpsc::channel::<InMessage>(1024);
    let (effects_tx, effects_rx) = mpsc::unbounded_channel::<(TenantId, Effect)>();
    let (applied_tx, mut applied_rx) = watch::channel(applied);
    let folded = Arc::new(AtomicU64::new(0));

    // The fold thread.
    let fold_store = store.clone();
    let fold_config = config.fold.clone();
    let fold_count = folded.clone();
    let fold_thread = tokio::task::spawn_blocking(move || -> Result<(), RunError> {
        let folder = Folder {
            store: &fold_store,
            config: &fold_config,
        };
        while let Some(msg) = fold_rx.blocking_recv() {
            let seq = msg.seq;
            match folder
                .apply(&msg)
                .map_err(|e| RunError::Fold(e.to_string()))?
            {
                Applied::Folded {
                    tenant,
                    record,
                    effect,
                } => {
                    log_record(&tenant, &record);
                    if let Some(effect) = effect {
                        let _ = effects_tx.send((tenant.clone(), effect));
                    }
                    let _ = effects_tx.send((tenant, Effect::ChainAdvanced));
                    fold_count.fetch_add(1, Ordering::Relaxed);
                }
                Applied::Duplicate { tenant, id } => {
                    tracing::info!(%tenant, %id, seq, "duplicate event id ignored");
                }
                Applied::Unroutable => tracing::warn!(seq, "message outside a tenant subject"),
                Applied::Skipped => {}
            }
            let _ = applied_tx.send(seq);
        }
        Ok(())
    });

    // The reactor.
    let reactor = if config.effects {
        let reactor = Reactor {
            js: js.clone(),
            store: store.clone(),
            config: config.clone(),
        };
        Some(tokio::spawn(reactor.run(effects_rx)))
    } else {
        drop(effects_rx);
        None
    };

    // The readiness task: reads AEGIS_DECISIONS, publishes measurements; never waits on the
    // fold.
    let readiness = match config.readiness_interval {
        Some(interval) if config.effects && !interval.is_zero() => Some(tokio::spawn(
            crate::readiness::run(js.clone(), store.clone(), config.fold.clone(), interval),
        )),
        _ => None,
    };

    // The query service.
    let service = if config.serve_queries {
        Some(tokio::spawn(serve_queries(
            js.clone(),
            store.clone(),
            config.fold.root_admins.clone(),
        )))
    } else {
        None
    };

    let feed = async {
        // The sequence of the last message handed to the fold: a new consumer starts after it.
        let mut last_enqueued = applied;
        loop {
            if config.until_caught_up && *applied_rx.borrow() >= stream_last {
                return Ok::<(), RunError>(());
            }
            tokio::select! {
                next = tokio::time::timeout(STALL_CHECK, messages.next()) => {
                    let msg = match next {
                        Ok(Some(Ok(msg))) => msg,
                        // The consumer failed or ended (a server restart, a lost connection):
                        // start a new one just after what the fold already has.
                        Ok(Some(Err(e))) => {
                            tracing::warn!(error = %e, after = last_enqueued, "AEGIS_CHANGES consumer failed; recreating it");
                            messages = reopen(&stream, last_enqueued + 1).await;
                            continue;
                        }
                        Ok(None) => {
                            tracing::warn!(after = last_enqueued, "AEGIS_CHANGES consumer ended; recreating it");
                            messages = reopen(&stream, last_enqueued + 1).await;
                            continue;
                        }
                        // Quiet: make sure it is the stream that is quiet, not the consumer
                        // that silently lost its server-side state.
                        Err(_) => {
                            let last = stream.info().await.map(|i| i.state.last_sequence);
                            if let Ok(last) = last && last > last_enqueued {
                                tracing::warn!(stream_last = last, after = last_enqueued, "AEGIS_CHANGES consumer stalled; recreating it");
                                messages = reopen(&stream, last_enqueued + 1).await;
                            }
                            continue;
                        }
                    };
                    let Ok(info) = msg.info() else {
                        tracing::warn!(subject = %msg.subject, "a message without JetStream metadata; ignored");
                        continue;
                    };
                    let seq = info.stream_sequence;
                    if seq <= last_enqueued {
                        continue;
                    }
                    let m = InMessage {
                        seq,
                        subject: msg.subject.to_string(),
                        payload: msg.payload.to_vec(),
                    };
                    if to_fold.send(m).await.is_err() {
                        return Err(RunError::Fold("fold thread is gone".into()));
                    }
                    last_enqueued = seq;
                }
                changed = applied_rx.changed(), if config.until_caught_up => {
                    if changed.is_err() {
                        return Err(RunError::Fold("fold thread is gone".into()));
                    }
                }
            }
        }
    };
    let result = tokio::select! {
        r = feed => r,
        () = shutdown => Ok(()),
    };
    drop(to_fold);
    let fold_result = fold_thread
        .await
        .map_err(|e| RunError::Fold(e.to_string()))?;
    if let Some(r) = reactor {
        r.abort();
    }
    if let Some(s) = service {
        s.abort();
    }
    if let Some(r) = readiness {
        r.abort();
    }
    store.flush()?;
    result?;
    fold_result?;
    Ok(RunSummary {
        applied_seq: store.applied_seq()?,
        folded: folded.load(Ordering::Relaxed),
    })
}

/// How long the consumer may be silent before the stream is asked whether it is really quiet.
const STALL_CHECK: Duration = Duration::from_secs(3);

type Messages = jetstream::consumer::pull::Ordered;

/// An ordered consumer over every change subject, from `start` on.
async fn open_consumer(
    stream: &jetstream::stream::Stream,
    start: u64,
) -> Result<Messages, RunError> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", topology::CHANGES_PREFIX),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(nats_err)?;
    consumer.messages().await.map_err(nats_err)
}

/// [`open_consumer`], retried with backoff until it works (NATS may still be coming back).
async fn reopen(stream: &jetstream::stream::Stream, start: u64) -> Messages {
    let mut delay = Duration::from_millis(100);
    loop {
        match open_consumer(stream, start).await {
            Ok(m) => return m,
            Err(e) => {
                tracing::warn!(error = %e, start, "cannot create the AEGIS_CHANGES consumer yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The tenant of an outbox key `<prefix><tenant>#<id>`.
fn outbox_tenant(key: &str, prefix: &str) -> Option<TenantId> {
    key.strip_prefix(prefix)?
        .split('#')
        .next()
        .and_then(|t| TenantId::new(t).ok())
}

fn log_record(tenant: &TenantId, r: &EventRecord) {
    match &r.outcome {
        aegis_core::query::Outcome::Accepted => {
            tracing::info!(%tenant, seq = r.seq, position = r.position, id = %r.id, summary = %r.summary, "accepted")
        }
        aegis_core::query::Outcome::Rejected { reason } => {
            tracing::warn!(%tenant, seq = r.seq, position = r.position, id = %r.id, %reason, "rejected")
        }
    }
}

struct Reactor {
    js: jetstream::Context,
    store: Arc<Store>,
    config: RunConfig,
}

impl Reactor {
    async fn run(self, mut effects: mpsc::UnboundedReceiver<(TenantId, Effect)>) {
        // Whatever the outbox holds from before a restart.
        self.drain_outbox().await;
        let mut dirty: std::collections::BTreeSet<TenantId> = self.tenants().into_iter().collect();
        let mut last_activity = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                e = effects.recv() => {
                    let Some((tenant, effect)) = e else { return };
                    last_activity = tokio::time::Instant::now();
                    match effect {
                        Effect::ChainAdvanced => {}
                        Effect::AnnounceChecks { .. }
                        | Effect::AnnounceBundle { .. }
                        | Effect::AnnounceControls { .. }
                        | Effect::RelayApproval { .. } => {
                            self.drain_outbox().await;
                        }
                    }
                    dirty.insert(tenant.clone());
                    self.maybe_checkpoint(&tenant, false).await;
                }
                _ = tick.tick() => {
                    self.drain_outbox().await;
                    if last_activity.elapsed() >= self.config.checkpoint_idle {
                        let tenants: Vec<TenantId> = std::mem::take(&mut dirty).into_iter().collect();
                        for t in tenants {
                            if !self.maybe_checkpoint(&t, true).await {
                                dirty.insert(t);
                            }
                        }
                    }
                }
            }
        }
    }

    fn tenants(&self) -> Vec<TenantId> {
        crate::records::tenant_ids(&self.store)
    }

    /// Whether the fold has reached the end of `AEGIS_CHANGES` as it is now. Only then is a
    /// pending `checks_completed` known not to be on the stream already: had any control plane
    /// published it, the fold would have folded it and cleared the outbox entry. (Relying on
    /// `Nats-Msg-Id` alone would re-publish it when a replica starts, or a rebuild runs, more
    /// than the duplicate window after the proposal.)
    async fn caught_up(&self) -> bool {
        let Ok(mut stream) = self.js.get_stream(CHANGES_STREAM).await else {
            return false;
        };
        let Ok(info) = stream.info().await else {
            return false;
        };
        let last = info.state.last_sequence;
        self.store
            .applied_seq()
            .is_ok_and(|applied| applied >= last)
    }

    async fn drain_outbox(&self) {
        // Checks.
        let pending: Vec<(String, String)> = self
            .store
            .scan(Family::Local, keys::outbox_checks_all())
            .unwrap_or_default();
        let pending = if !pending.is_empty() && self.caught_up().await {
            pending
        } else {
            Vec::new()
        };
        for (key, envelope) in pending {
            let Ok(env) = serde_json::from_str::<Envelope>(&envelope) else {
                let _ = self.store.delete_local(&key);
                continue;
            };
            let Ok(subject) = topology::change_event_subject(&env.tenant, &env.event) else {
                continue;
            };
            let publish =
                Publish::new(subject, envelope.clone().into_bytes()).msg_id(env.id.to_string());
            match aegis_nats::publish(&self.js, publish).await {
                // The fold removes the outbox entry when it folds the event.
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "publishing checks failed; will retry"),
            }
        }
        // Bundles.
        let pending: Vec<(String, u64)> = self
            .store
            .scan(Family::Local, keys::outbox_bundle_all())
            .unwrap_or_default();
        for (key, version) in pending {
            let Some(tenant) = outbox_tenant(&key, keys::outbox_bundle_all()) else {
                let _ = self.store.delete_local(&key);
                continue;
            };
            match self.announce_bundle(&tenant, version).await {
                Ok(()) => {
                    let _ = self
                        .store
                        .put_local(&keys::announced(&tenant, version), &true);
                    let _ = self.store.delete_local(&key);
                }
                Err(e) => {
                    tracing::warn!(%tenant, version, error = %e, "announcing bundle failed; will retry")
                }
            }
        }
        // Gateway controls: after the bundles they name are out.
        let pending: Vec<(String, ControlsOutbox)> = self
            .store
            .scan(Family::Local, keys::outbox_controls_all())
            .unwrap_or_default();
        let mut by_tenant: BTreeMap<TenantId, Vec<(String, ControlsOutbox)>> = BTreeMap::new();
        for (key, entry) in pending {
            match outbox_tenant(&key, keys::outbox_controls_all()) {
                Some(tenant) => by_tenant.entry(tenant).or_default().push((key, entry)),
                None => {
                    let _ = self.store.delete_local(&key);
                }
            }
        }
        for (tenant, entries) in by_tenant {
            let bundles_pending = self
                .store
                .scan::<u64>(Family::Local, &keys::outbox_bundle_all_of(&tenant))
                .map(|v| !v.is_empty())
                .unwrap_or(true);
            if bundles_pending {
                continue;
            }
            // Only the newest state matters: gateways apply the highest epoch.
            let Some((_, newest)) = entries.iter().max_by_key(|(_, e)| e.controls.epoch) else {
                continue;
            };
            let epoch = newest.controls.epoch;
            match self.announce_controls(&tenant, newest).await {
                Ok(()) => {
                    for (key, _) in &entries {
                        let _ = self.store.delete_local(key);
                    }
                }
                Err(e) => {
                    tracing::warn!(%tenant, epoch, error = %e, "publishing gateway controls failed; will retry")
                }
            }
        }
        // Runtime approval decisions.
        let pending: Vec<(String, ApprovalDecisionRecord)> = self
            .store
            .scan(Family::Local, keys::outbox_approval_all())
            .unwrap_or_default();
        for (key, decision) in pending {
            let Some(tenant) = outbox_tenant(&key, keys::outbox_approval_all()) else {
                let _ = self.store.delete_local(&key);
                continue;
            };
            match self.relay_approval(&tenant, &decision).await {
                Ok(()) => {
                    let _ = self.store.delete_local(&key);
                }
                Err(e) => {
                    tracing::warn!(%tenant, approval_id = %decision.approval_id, error = %e, "relaying a runtime approval decision failed; will retry")
                }
            }
        }
    }

    /// Signs and publishes `entry` on `aegis.bundles.<tenant>.controls`, unless the subject
    /// already holds a state of this control plane's key at this epoch or a later one.
    async fn announce_controls(
        &self,
        tenant: &TenantId,
        entry: &ControlsOutbox,
    ) -> Result<(), RunError> {
        let epoch = entry.controls.epoch;
        let subject = topology::controls_subject(tenant).map_err(nats_err)?;
        let last_epoch = self
            .last_own_event(BUNDLES_STREAM, &subject)
            .await?
            .and_then(|event| match event {
                Event::TenantControls(c) => Some(c.epoch),
                _ => None,
            });
        if last_epoch.is_some_and(|last| last >= epoch) {
            return Ok(());
        }
        let event = Event::TenantControls(entry.controls.clone());
        let parts = ["controls", tenant.as_str(), &epoch.to_string()];
        self.publish_signed(tenant, subject, &parts, &entry.time, event)
            .await?;
        tracing::info!(%tenant, epoch, "gateway controls published");
        Ok(())
    }

    /// Publishes the signed `runtime_approval_decided` on `aegis.approvals.<tenant>.<id>`,
    /// unless the subject already has a decision or a consumed grant (an earlier run or
    /// another control plane relayed it).
    async fn relay_approval(
        &self,
        tenant: &TenantId,
        d: &ApprovalDecisionRecord,
    ) -> Result<(), RunError> {
        let subject = topology::approvals_subject(tenant, &d.approval_id).map_err(nats_err)?;
        let last = self.last_message(APPROVALS_STREAM, &subject).await?;
        // Only a decision this control plane's key signed counts.
        let done = last
            .as_ref()
            .is_some_and(|m| match ApprovalMessage::parse(&m.payload) {
                Ok(ApprovalMessage::Decided(received, _)) => self.signed_by_us(&received),
                Ok(ApprovalMessage::Consumed(_)) => true,
                _ => false,
            });
        if done {
            return Ok(());
        }
        let decided = RuntimeApprovalDecided {
            approval_id: d.approval_id.clone(),
            call_digest: d.call_digest.clone(),
            granted: d.granted,
            expires_at: d.expires_at.clone(),
            by: d.by.clone(),
            at: d.at.clone(),
            note: d.note.clone(),
            source_event: d.event_id.clone(),
        };
        let event = Event::RuntimeApprovalDecided(decided);
        let parts = ["decided", tenant.as_str(), &d.approval_id];
        self.publish_signed(tenant, subject, &parts, &d.at, event)
            .await?;
        tracing::info!(%tenant, approval_id = %d.approval_id, granted = d.granted, "runtime approval decision relayed");
        Ok(())
    }

    /// The last message on `subject` in `stream`, if any.
    async fn last_message(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<aegis_nats::LastMessage>, RunError> {
        aegis_nats::last_message(&self.js, stream, subject)
            .await
            .map_err(nats_err)
    }

    /// Whether this control plane's key signed `received`.
    fn signed_by_us(&self, received: &ReceivedEnvelope) -> bool {
        received
            .verify(self.config.fold.signing_key.verifying_key())
            .is_ok()
    }

    /// The event of the last message on `subject`, if this control plane's key signed it: a
    /// forged message on the subject (say, a high version or epoch) must not silence every
    /// real one after it.
    async fn last_own_event(&self, stream: &str, subject: &str) -> Result<Option<Event>, RunError> {
        Ok(self
            .last_message(stream, subject)
            .await?
            .and_then(|m| ReceivedEnvelope::parse(&m.payload).ok())
            .filter(|r| self.signed_by_us(r))
            .map(|r| r.envelope.event))
    }

    /// Signs `event` as the control plane, with the event id derived from `parts` and the
    /// time `time`, and publishes it on `subject` with `Nats-Msg-Id` `parts` joined by `:`
    /// (so a replay within the duplicate window is dropped).
    async fn publish_signed(
        &self,
        tenant: &TenantId,
        subject: String,
        parts: &[&str],
        time: &str,
        event: Event,
    ) -> Result<(), RunError> {
        let id = derived_event_id(parts)
            .ok_or_else(|| RunError::Fold("cannot derive an event id".into()))?;
        let payload = self.sign(tenant, id, time, event)?;
        let publish = Publish::new(subject, payload).msg_id(parts.join(":"));
        aegis_nats::publish(&self.js, publish)
            .await
            .map_err(nats_err)?;
        Ok(())
    }

    /// An envelope signed by the control plane, as bytes.
    fn sign(
        &self,
        tenant: &TenantId,
        id: aegis_core::ids::EventId,
        time: &str,
        event: Event,
    ) -> Result<Vec<u8>, RunError> {
        let time = aegis_core::events::envelope::parse_time(time)
            .map_err(|e| RunError::Fold(e.to_string()))?;
        self.sign_at(tenant, id, time, event)
    }

    /// An envelope signed by the control plane at `time`, as bytes.
    fn sign_at(
        &self,
        tenant: &TenantId,
        id: aegis_core::ids::EventId,
        time: time::OffsetDateTime,
        event: Event,
    ) -> Result<Vec<u8>, RunError> {
        let env = Envelope::sign(
            id,
            tenant.clone(),
            self.config.fold.control_plane_actor.clone(),
            &self.config.fold.signing_key,
            time,
            event,
        )
        .map_err(|e| RunError::Fold(e.to_string()))?;
        env.to_bytes().map_err(|e| RunError::Fold(e.to_string()))
    }

    async fn announce_bundle(&self, tenant: &TenantId, version: u64) -> Result<(), RunError> {
        let view: VersionView = self
            .store
            .get(Family::State, &keys::version(tenant, version))?
            .ok_or_else(|| {
                RunError::Fold(format!("version {version} of {tenant} is not stored"))
            })?;
        let bytes = self
            .store
            .get_raw(Family::State, keys::bundle(tenant, version).as_bytes())?
            .ok_or_else(|| RunError::Fold(format!("bundle {version} of {tenant} is not stored")))?;
        let bucket = self
            .js
            .get_object_store(BUNDLE_OBJECT_STORE)
            .await
            .map_err(nats_err)?;
        if bucket.info(&view.digest).await.is_err() {
            let mut reader: &[u8] = &bytes;
            bucket
                .put(view.digest.as_str(), &mut reader)
                .await
                .map_err(nats_err)?;
        }
        let subject = topology::bundles_subject(tenant).map_err(nats_err)?;
        // Another control plane (or an earlier run) may have announced it already.
        let last_version = self
            .last_own_event(BUNDLES_STREAM, &subject)
            .await?
            .and_then(|event| match event {
                Event::BundlePublished(b) => Some(b.version),
                _ => None,
            })
            .unwrap_or(0);
        if last_version >= version {
            return Ok(());
        }
        let event = Event::BundlePublished(BundlePublished {
            version,
            digest: view.digest.clone(),
            size: view.size,
            created_at: view.created_at.clone(),
            change_id: view.change_id.clone(),
            rollback_of: view.rollback_of,
            stage: view.stage,
            signer: view.signer.clone(),
        });
        let parts = ["bundle", tenant.as_str(), &version.to_string()];
        self.publish_signed(tenant, subject, &parts, &view.created_at, event)
            .await?;
        tracing::info!(%tenant, version, digest = %view.digest, "bundle announced");
        Ok(())
    }

    /// Publishes a checkpoint when enough entries accumulated (or `idle` and any did). Returns
    /// whether the tenant is fully checkpointed afterwards.
    async fn maybe_checkpoint(&self, tenant: &TenantId, idle: bool) -> bool {
        match self.checkpoint(tenant, idle).await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "audit checkpoint failed; will retry");
                false
            }
        }
    }

    async fn checkpoint(&self, tenant: &TenantId, idle: bool) -> Result<bool, RunError> {
        let Some(t) = self
            .store
            .get::<TenantRecord>(Family::State, &keys::tenant(tenant))?
        else {
            return Ok(true);
        };
        let known: u64 = self
            .store
            .get(Family::Local, &keys::audit_checkpointed(tenant))?
            .unwrap_or(0);
        let pending = t.chain_position.saturating_sub(known);
        if pending == 0 || (!idle && pending < self.config.checkpoint_every) {
            return Ok(pending == 0);
        }
        // Where does the checkpoint chain on the stream end?
        let subject = topology::audit_subject(tenant).map_err(nats_err)?;
        let last = self.last_message(AUDIT_STREAM, &subject).await?;
        let (last_seq, stream_to) = match &last {
            None => (0, 0),
            Some(m) => {
                let to = serde_json::from_slice::<Envelope>(&m.payload)
                    .ok()
                    .and_then(|e| match e.event {
                        Event::AuditCheckpoint(c) => Some(c.to_position),
                        _ => None,
                    })
                    .unwrap_or(0);
                (m.sequence, to)
            }
        };
        if stream_to >= t.chain_position {
            self.store
                .put_local(&keys::audit_checkpointed(tenant), &stream_to)?;
            return Ok(true);
        }
        let from = stream_to + 1;
        let to = t.chain_position;
        let previous_head: String = if stream_to == 0 {
            aegis_core::events::chain::genesis(tenant)
        } else {
            self.store
                .get(Family::State, &keys::head(tenant, stream_to))?
                .ok_or_else(|| RunError::Fold(format!("no chain head at {stream_to}")))?
        };
        let head: String = self
            .store
            .get(Family::State, &keys::head(tenant, to))?
            .ok_or_else(|| RunError::Fold(format!("no chain head at {to}")))?;
        let mut entries: Vec<ChainEntry> = Vec::with_capacity((to - from + 1) as usize);
        let start = keys::event(tenant, from);
        let prefix = keys::events(tenant);
        self.store.scan_from(
            Family::State,
            start.as_bytes(),
            prefix.as_bytes(),
            |k, v| {
                if !k.starts_with(prefix.as_bytes()) {
                    return Ok(false);
                }
                let r: EventRecord =
                    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
                        key: String::from_utf8_lossy(k).into_owned(),
                        reason: e.to_string(),
                    })?;
                if r.position > to {
                    return Ok(false);
                }
                entries.push(r.chain);
                Ok(true)
            },
        )?;
        let checkpoint = AuditCheckpoint {
            from_position: from,
            to_position: to,
            previous_head,
            head,
            entries,
        };
        let id = derived_event_id(&["audit", tenant.as_str(), &from.to_string(), &to.to_string()])
            .ok_or_else(|| RunError::Fold("cannot derive an event id".into()))?;
        let time = self
            .store
            .get::<EventRecord>(Family::State, &keys::event(tenant, to))?
            .and_then(|r| r.time)
            .and_then(|t| aegis_core::events::envelope::parse_time(&t).ok())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let payload = self.sign_at(tenant, id.clone(), time, Event::AuditCheckpoint(checkpoint))?;
        let publish = Publish::new(subject, payload)
            .msg_id(id.to_string())
            .expect_last_subject_sequence(last_seq);
        match aegis_nats::publish(&self.js, publish).await {
            Ok(_) => {
                tracing::info!(%tenant, from, to, "audit checkpoint published");
                self.store
                    .put_local(&keys::audit_checkpointed(tenant), &to)?;
                Ok(true)
            }
            // Another control plane extended the checkpoint chain first; re-read next time.
            Err(PublishError::Conflict { .. }) => Ok(false),
            Err(e) => Err(nats_err(e)),
        }
    }
}

/// Registers one endpoint per query op and answers until aborted.
pub async fn serve_queries(
    js: jetstream::Context,
    store: Arc<Store>,
    root_admins: std::collections::BTreeMap<
        aegis_core::ids::ActorId,
        Vec<aegis_core::keys::PublicKey>,
    >,
) -> Result<(), RunError> {
    use async_nats::service::ServiceExt as _;
    let client = js.client();
    let service = client
        .service_builder()
        .description("Aegis control plane queries: status, changes, history, events, outcomes")
        .queue_group("aegis-controlplane")
        .start("aegis-controlplane", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(nats_err)?;
    let mut endpoints = Vec::new();
    for op in QueryRequest::OPS {
        let endpoint = service
            .endpoint_builder()
            .name(op)
            .add(format!("{}.*.{op}", topology::QUERY_PREFIX))
            .await
            .map_err(nats_err)?;
        endpoints.push(endpoint);
    }
    let mut all = futures::stream::select_all(endpoints);
    while let Some(request) = all.next().await {
        let store = store.clone();
        let root_admins = root_admins.clone();
        tokio::spawn(async move {
            let reply = {
                let queries = Queries {
                    store: &store,
                    root_admins: &root_admins,
                };
                answer_message(&queries, &request.message.subject, &request.message.payload)
            };
            let bytes = serde_json::to_vec(&reply).unwrap_or_else(|e| {
                format!(r#"{{"error":{{"code":"internal","message":"{e}"}}}}"#).into_bytes()
            });
            if let Err(e) = request.respond(Ok(bytes.into())).await {
                tracing::warn!(error = %e, "could not answer a query");
            }
        });
    }
    Ok(())
}

/// Parses a request from its subject and body and answers it.
pub fn answer_message(queries: &Queries<'_>, subject: &str, body: &[u8]) -> QueryReply {
    let parts: Vec<&str> = subject.split('.').collect();
    let (tenant, op) = match parts.as_slice() {
        ["aegis", "query", t, op] => (*t, *op),
        _ => {
            return QueryReply::Error(QueryError::bad_request(format!(
                "unexpected subject {subject}"
            )));
        }
    };
    let Ok(tenant) = TenantId::new(tenant) else {
        return QueryReply::Error(QueryError::bad_request(format!(
            "invalid tenant `{tenant}`"
        )));
    };
    let request: QueryRequest = if body.is_empty() {
        match serde_json::from_value(serde_json::json!({ "op": op })) {
            Ok(r) => r,
            Err(e) => return QueryReply::Error(QueryError::bad_request(format!("{op}: {e}"))),
        }
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return QueryReply::Error(QueryError::bad_request(format!(
                    "not a query request: {e}"
                )));
            }
        }
    };
    if request.op() != op {
        return QueryReply::Error(QueryError::bad_request(format!(
            "a `{}` request sent to the `{op}` endpoint",
            request.op()
        )));
    }
    queries.answer(&tenant, &request)
}
