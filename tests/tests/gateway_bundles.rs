#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Bundles at the edge, against a real nats-server, with the test acting as the control plane:
//! it builds and signs bundles (the finance template), puts the bytes in object store
//! `aegis-bundles` under their digest and announces them with a signed `bundle_published` on
//! `aegis.bundles.<tenant>`. The gateway side is the library: the local store, `restore_all`,
//! the per-tenant watchers and the heartbeat.

use aegis_core::bundle::{BuiltBundle, BundleSpec, build};
use aegis_core::decision_log::BundleRejected;
use aegis_core::events::{
    BundlePublished, BundleRef, Envelope, Event, RolloutCandidate, RolloutStage,
    RolloutStageChanged, TenantControls,
};
use aegis_core::heartbeat::Heartbeat;
use aegis_core::ids::{ActorId, EventId, TenantId};
use aegis_core::keys::{Keypair, TrustStore};
use aegis_core::policy::PolicySet;
use aegis_gateway::bundles::{
    self, BundleContext, BundleLimits, LocalStore, RejectionSink, Restored, reason, watcher,
};
use aegis_gateway::heartbeat::{self, HeartbeatConfig};
use aegis_gateway::metrics::Metrics;
use aegis_gateway::tenants::{Registry, TenantSlot};
use aegis_nats::Publish;
use aegis_nats::topology::{BUNDLE_OBJECT_STORE, GATEWAYS_KV, bundles_subject, controls_subject};
use aegis_tests::NatsServer;
use aegis_tests::bundles::retar;
use async_nats::jetstream;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

const FINANCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/templates/finance");
const GATEWAY: &str = "gw-test";
const WAIT: Duration = Duration::from_secs(30);

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

/// The control plane's bundle signing key.
fn cp_key() -> Keypair {
    Keypair::from_seed(&[42; 32])
}

fn trust_of(key: &Keypair) -> TrustStore {
    let mut trust = TrustStore::new();
    trust.trust(key.public_key().clone());
    trust
}

/// The finance template compiled for `acme`: the payload of every bundle here.
fn finance_files() -> BTreeMap<String, Vec<u8>> {
    let set = PolicySet::load(&[PathBuf::from(FINANCE_DIR)]).unwrap();
    set.compile_tenant(&acme()).files()
}

fn spec(version: u64) -> BundleSpec {
    BundleSpec {
        tenant: acme(),
        version,
        created_at: "2026-01-01T00:00:00Z".into(),
        expires_at: Some("2099-01-01T00:00:00Z".into()),
        author: "controlplane".into(),
        source_change: Some(format!("chg-{version}")),
    }
}

fn bundle(version: u64) -> BuiltBundle {
    build(&spec(version), &finance_files(), &cp_key()).unwrap()
}

fn expired_bundle(version: u64) -> BuiltBundle {
    let mut s = spec(version);
    s.created_at = "2020-01-01T00:00:00Z".into();
    s.expires_at = Some("2021-01-01T00:00:00Z".into());
    build(&s, &finance_files(), &cp_key()).unwrap()
}

/// The gateway side: one tenant's registry, the context the watchers share, and the receiving
/// end of the `bundle_rejected` records.
struct Gw {
    registry: Arc<Registry>,
    ctx: BundleContext,
    rejected: mpsc::UnboundedReceiver<BundleRejected>,
}

impl Gw {
    fn new(data_dir: &Path, trust: TrustStore) -> Gw {
        let (tx, rejected) = mpsc::unbounded_channel();
        let ctx = BundleContext {
            gateway: GATEWAY.into(),
            site: Some("test-site".into()),
            trust: Arc::new(trust),
            store: Arc::new(LocalStore::open(data_dir).unwrap()),
            metrics: Arc::new(Metrics::new()),
            limits: BundleLimits::default(),
            on_rejected: RejectionSink::channel(tx),
            beat: Arc::new(Notify::new()),
        };
        Gw {
            registry: Arc::new(Registry::new([acme()])),
            ctx,
            rejected,
        }
    }

    fn slot(&self) -> Arc<TenantSlot> {
        self.registry.slot(&acme()).unwrap().clone()
    }

    fn restore(&self) -> Restored {
        bundles::restore_all(&self.registry, &self.ctx)
            .remove(&acme())
            .unwrap()
    }

    fn watch(&self, js: &jetstream::Context) -> Vec<JoinHandle<()>> {
        watcher::spawn_all(js, &self.registry, &self.ctx, &options())
    }

    /// The next `bundle_rejected` record; asserts its code, the version kept, and that the slot
    /// recorded the same rejection.
    async fn refused(&mut self, code: &str, kept: Option<u64>) -> BundleRejected {
        let r = tokio::time::timeout(WAIT, self.rejected.recv())
            .await
            .unwrap_or_else(|_| panic!("no bundle_rejected record ({code}) within {WAIT:?}"))
            .unwrap();
        assert_eq!(r.reason_code, code, "{r:?}");
        assert_eq!(r.kept_version, kept, "{r:?}");
        assert_eq!(r.kind, "bundle_rejected");
        assert_eq!(r.gateway, GATEWAY);
        assert_eq!(r.tenant, acme());
        assert!(
            r.id.starts_with("rej-") && r.id.len() == 36,
            "id {:?}",
            r.id
        );
        let last = self.slot().rejections().last().cloned().unwrap();
        assert_eq!(last.reason_code, code);
        assert_eq!(last.digest, r.digest);
        assert_eq!(self.slot().active().map(|a| a.version), kept);
        r
    }

    /// Waits until version `version` is in force.
    async fn serving(&self, version: u64) {
        let slot = self.slot();
        eventually(&format!("version {version} in force"), || {
            slot.active().filter(|a| a.version == version).map(|_| ())
        })
        .await;
    }
}

fn options() -> watcher::WatcherOptions {
    watcher::WatcherOptions {
        fetch_attempts: 3,
        fetch_backoff: Duration::from_millis(100),
        fetch_backoff_max: Duration::from_millis(400),
        fetch_timeout: Duration::from_secs(5),
        refetch_every: Duration::from_secs(1),
        stall_check: Duration::from_secs(1),
        reconnect_backoff_max: Duration::from_millis(500),
    }
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(server: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    aegis_nats::provision(&js, &aegis_nats::Topology::single())
        .await
        .unwrap();
    js
}

/// Puts `bytes` into the object store under their digest (what the control plane does first).
async fn store_object(js: &jetstream::Context, bytes: &[u8]) -> String {
    let digest = aegis_core::bundle::bundle_digest(bytes);
    let bucket = js.get_object_store(BUNDLE_OBJECT_STORE).await.unwrap();
    let mut reader = bytes;
    bucket.put(digest.as_str(), &mut reader).await.unwrap();
    digest
}

/// Publishes a signed event on `aegis.bundles.acme` (each with a fresh `Nats-Msg-Id`, so a
/// replay is a new message).
async fn announce_event(js: &jetstream::Context, key: &Keypair, event: Event) {
    let env = Envelope::sign(
        EventId::random().unwrap(),
        acme(),
        ActorId::new("controlplane").unwrap(),
        key,
        time::OffsetDateTime::now_utc(),
        event,
    )
    .unwrap();
    let publish = Publish::new(bundles_subject(&acme()).unwrap(), env.to_bytes().unwrap())
        .msg_id(env.id.to_string());
    aegis_nats::publish(js, publish).await.unwrap();
}

/// Announces `bytes` as `version` under `digest`.
async fn announce(js: &jetstream::Context, key: &Keypair, version: u64, digest: &str, size: u64) {
    announce_staged(js, key, version, digest, size, RolloutStage::Global).await;
}

/// [`announce`] at a rollout stage.
async fn announce_staged(
    js: &jetstream::Context,
    key: &Keypair,
    version: u64,
    digest: &str,
    size: u64,
    stage: RolloutStage,
) {
    let event = BundlePublished {
        version,
        digest: digest.to_owned(),
        size,
        created_at: "2026-01-01T00:00:00.000Z".into(),
        change_id: None,
        rollback_of: None,
        stage,
        signer: key.key_id().clone(),
    };
    announce_event(js, key, Event::BundlePublished(event)).await;
}

/// Publishes a signed `tenant_controls` state on `aegis.bundles.acme.controls`.
async fn publish_controls(js: &jetstream::Context, key: &Keypair, state: TenantControls) {
    let env = Envelope::sign(
        EventId::random().unwrap(),
        acme(),
        ActorId::new("controlplane").unwrap(),
        key,
        time::OffsetDateTime::now_utc(),
        Event::TenantControls(state),
    )
    .unwrap();
    let publish = Publish::new(controls_subject(&acme()).unwrap(), env.to_bytes().unwrap())
        .msg_id(env.id.to_string());
    aegis_nats::publish(js, publish).await.unwrap();
}

fn bundle_ref(b: &BuiltBundle) -> BundleRef {
    BundleRef {
        version: b.manifest.version,
        digest: b.digest.clone(),
        size: b.bytes.len() as u64,
    }
}

/// Stores and announces `bytes` as `version`, signed by the control plane.
async fn publish_bytes(js: &jetstream::Context, version: u64, bytes: &[u8]) -> String {
    let digest = store_object(js, bytes).await;
    announce(js, &cp_key(), version, &digest, bytes.len() as u64).await;
    digest
}

async fn publish_bundle(js: &jetstream::Context, b: &BuiltBundle) {
    publish_bytes(js, b.manifest.version, &b.bytes).await;
}

fn abort(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        h.abort();
    }
}

/// A gateway on `data_dir` that has applied v1 and then v2 from NATS; its watchers are stopped
/// again. Returns it with the two bundles.
async fn served_v1_then_v2(
    js: &jetstream::Context,
    data_dir: &Path,
) -> (Gw, BuiltBundle, BuiltBundle) {
    let gw = Gw::new(data_dir, trust_of(&cp_key()));
    gw.restore();
    let handles = gw.watch(js);
    let (v1, v2) = (bundle(1), bundle(2));
    publish_bundle(js, &v1).await;
    gw.serving(1).await;
    publish_bundle(js, &v2).await;
    gw.serving(2).await;
    abort(handles);
    (gw, v1, v2)
}

/// The mark of `b` (its version and digest) at stage global.
fn mark_of(b: &BuiltBundle) -> bundles::StoredMark {
    bundles::StoredMark {
        high_water: aegis_core::bundle::HighWater {
            version: b.manifest.version,
            digest: b.digest.clone(),
        },
        stage: RolloutStage::Global,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_new_versions_and_refuses_tampered_downgraded_and_expired_bundles() {
    let server = NatsServer::start().unwrap();
    let js = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gw::new(dir.path(), trust_of(&cp_key()));
    assert_eq!(gw.restore(), Restored::Nothing);
    assert!(!gw.registry.ready());
    let handles = gw.watch(&js);
    let slot = gw.slot();

    // v1 is applied, then v2 swaps in; a request holding v1 finishes on it.
    let v1 = bundle(1);
    publish_bundle(&js, &v1).await;
    gw.serving(1).await;
    let in_flight = slot.active().unwrap();
    assert_eq!(in_flight.digest, v1.digest);
    assert_eq!(in_flight.source, bundles::SOURCE_NATS);
    assert_eq!(in_flight.stage, RolloutStage::Global);
    assert!(gw.registry.ready());
    let v2 = bundle(2);
    publish_bundle(&js, &v2).await;
    gw.serving(2).await;
    assert_eq!(
        in_flight.version, 1,
        "the old bundle is intact for its holders"
    );
    assert_eq!(slot.active().unwrap().digest, v2.digest);
    assert_eq!(gw.ctx.metrics.bundles_applied.load(Ordering::Relaxed), 2);
    // Saved as last known-good, bundle and mark.
    let stored = gw.ctx.store.load(&acme());
    assert_eq!(stored.bundle.unwrap().unwrap(), v2.bytes);
    let mark = stored.mark.unwrap().unwrap();
    assert_eq!(
        (mark.high_water.version, mark.high_water.digest.as_str()),
        (2, v2.digest.as_str())
    );

    // Tampered: one byte of data.json changed, re-tarred (announced under its true digest).
    let v3 = bundle(3);
    let tampered = retar(&v3.bytes, |files| {
        let data = files.get_mut("data.json").unwrap();
        let i = data.iter().position(|b| *b == b'5').unwrap();
        data[i] = b'9';
    });
    let digest = publish_bytes(&js, 3, &tampered).await;
    let r = gw.refused(reason::HASH_MISMATCH, Some(2)).await;
    assert_eq!((r.version, r.digest.as_str()), (Some(3), digest.as_str()));
    assert!(r.reason.contains("data.json"), "{}", r.reason);

    // Announced, but the object never shows up (after the bounded tries).
    let missing = format!("sha256:{}", "1".repeat(64));
    announce(&js, &cp_key(), 3, &missing, 10).await;
    gw.refused(reason::FETCH_FAILED, Some(2)).await;

    // An object whose bytes do not hash to the name (and announced digest) it is stored under.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let bucket = js.get_object_store(BUNDLE_OBJECT_STORE).await.unwrap();
    bucket
        .put(wrong.as_str(), &mut v3.bytes.as_slice())
        .await
        .unwrap();
    announce(&js, &cp_key(), 3, &wrong, v3.bytes.len() as u64).await;
    gw.refused(reason::DIGEST_MISMATCH, Some(2)).await;

    // Signed by a key the gateway does not trust.
    let rogue = Keypair::from_seed(&[7; 32]);
    let foreign = build(&spec(3), &finance_files(), &rogue).unwrap();
    publish_bytes(&js, 3, &foreign.bytes).await;
    gw.refused(reason::UNKNOWN_KEY, Some(2)).await;

    // The trusted key id with someone else's signature.
    let forged = retar(&v3.bytes, |files| {
        let mut m = v3.manifest.clone();
        m.signature = foreign.manifest.signature.clone();
        files.insert("manifest.json".into(), m.to_canonical_bytes().unwrap());
    });
    publish_bytes(&js, 3, &forged).await;
    gw.refused(reason::BAD_SIGNATURE, Some(2)).await;

    // A file the manifest does not list.
    let extra = retar(&v3.bytes, |files| {
        files.insert("extra.rego".into(), b"package aegis.extra\n".to_vec());
    });
    publish_bytes(&js, 3, &extra).await;
    gw.refused(reason::UNEXPECTED_FILE, Some(2)).await;

    // An announcement signed by the rogue key (bundle untouched).
    announce(&js, &rogue, 3, &v3.digest, v3.bytes.len() as u64).await;
    gw.refused(reason::UNKNOWN_KEY, Some(2)).await;

    // Downgrade: v1's announcement again.
    announce(&js, &cp_key(), 1, &v1.digest, v1.bytes.len() as u64).await;
    let r = gw.refused(reason::VERSION_NOT_ABOVE, Some(2)).await;
    assert_eq!(r.version, Some(1));

    // Expired.
    let old = expired_bundle(3);
    publish_bundle(&js, &old).await;
    gw.refused(reason::EXPIRED, Some(2)).await;

    assert_eq!(gw.ctx.metrics.rejected_for("acme"), 9);
    assert_eq!(slot.rejections().len(), 9);
    assert_eq!(slot.active().unwrap().digest, v2.digest);

    // The watcher is not wedged by all that: the real v3 applies.
    publish_bundle(&js, &v3).await;
    gw.serving(3).await;
    // Re-announcing what is in force changes nothing.
    announce(&js, &cp_key(), 3, &v3.digest, v3.bytes.len() as u64).await;

    // A rollout stage change for the version in force is recorded, and kept with the mark.
    announce_event(
        &js,
        &cp_key(),
        Event::RolloutStageChanged(RolloutStageChanged {
            version: 3,
            stage: RolloutStage::Shadow,
            agents: vec![],
            percent: None,
        }),
    )
    .await;
    eventually("stage shadow", || {
        slot.active()
            .filter(|a| a.stage == RolloutStage::Shadow)
            .map(|_| ())
    })
    .await;
    assert_eq!(slot.active().unwrap().version, 3);
    eventually("the stage saved with the mark", || {
        let mark = gw.ctx.store.load_mark(&acme()).ok()??;
        (mark.stage == RolloutStage::Shadow && mark.high_water.version == 3).then_some(())
    })
    .await;
    assert_eq!(gw.ctx.metrics.bundles_applied.load(Ordering::Relaxed), 3);
    assert!(gw.rejected.try_recv().is_err(), "no further refusals");
    abort(handles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_with_nats_down_serves_the_stored_bundle_at_once_and_rides_out_nats_restarts() {
    let mut server = NatsServer::start().unwrap();
    let js = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, _, v2) = served_v1_then_v2(&js, dir.path()).await;
    drop(gw);

    // The gateway process "restarts" while NATS is down.
    tokio::task::block_in_place(|| server.kill()).unwrap();
    let gw = Gw::new(dir.path(), trust_of(&cp_key()));
    let started = Instant::now();
    assert_eq!(
        gw.restore(),
        Restored::Served {
            version: 2,
            digest: v2.digest.clone()
        }
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let slot = gw.slot();
    let active = slot.active().unwrap();
    assert_eq!(active.source, bundles::SOURCE_LOCAL);
    assert!(gw.registry.ready());

    // Its watcher starts with NATS still away, and does not disturb what is served.
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await
        .unwrap();
    let js2 = jetstream::new(client);
    let handles = gw.watch(&js2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(slot.active().unwrap().version, 2);

    // NATS comes back: the watcher connects, sees v2 announced (already in force), then
    // applies v3.
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let v3 = bundle(3);
    eventually_publish(&js, &v3).await;
    gw.serving(3).await;

    // NATS restarts under a running watcher: v4 still arrives.
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let v4 = bundle(4);
    eventually_publish(&js, &v4).await;
    gw.serving(4).await;
    let mark = gw.ctx.store.load_mark(&acme()).unwrap().unwrap();
    assert_eq!(mark.high_water.version, 4);
    assert_eq!(slot.rejections(), vec![]);
    abort(handles);
}

/// Publishes once the test's own client has reconnected after a server restart.
async fn eventually_publish(js: &jetstream::Context, b: &BuiltBundle) {
    let start = Instant::now();
    loop {
        let attempt = async {
            let bucket = js.get_object_store(BUNDLE_OBJECT_STORE).await.ok()?;
            let mut reader = b.bytes.as_slice();
            bucket.put(b.digest.as_str(), &mut reader).await.ok()?;
            Some(())
        };
        if tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "NATS did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    announce(
        js,
        &cp_key(),
        b.manifest.version,
        &b.digest,
        b.bytes.len() as u64,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_older_announcement_after_restart_is_refused_by_the_persisted_mark() {
    let server = NatsServer::start().unwrap();
    let js = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, v1, v2) = served_v1_then_v2(&js, dir.path()).await;
    let bundle_path = gw.ctx.store.bundle_path(&acme());
    drop(gw);

    // While the gateway is down its stored bundle is damaged, and v1 is announced again: the
    // newest message on the subject is now the replay.
    let mut bytes = std::fs::read(&bundle_path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&bundle_path, &bytes).unwrap();
    announce(&js, &cp_key(), 1, &v1.digest, v1.bytes.len() as u64).await;

    // The damaged bundle is not served: the slot is empty (deny, not ready), and the refusal
    // is recorded like any other.
    let mut gw = Gw::new(dir.path(), trust_of(&cp_key()));
    let Restored::Refused(refusal) = gw.restore() else {
        panic!("a damaged stored bundle must be refused");
    };
    assert_eq!(refusal.reason_code, reason::MALFORMED, "{refusal:?}");
    let slot = gw.slot();
    assert!(slot.active().is_none());
    assert!(!gw.registry.ready());
    gw.refused(reason::MALFORMED, None).await;

    // The watcher's first message is the v1 replay: refused by the mark kept on disk, although
    // no bundle is in force.
    let handles = gw.watch(&js);
    let r = gw.refused(reason::VERSION_NOT_ABOVE, None).await;
    assert_eq!(r.version, Some(1));
    assert!(slot.active().is_none());

    // The control plane announces v2 again (same digest): equal to the mark, identical bundle,
    // so it is applied and the gateway is whole again.
    announce(&js, &cp_key(), 2, &v2.digest, v2.bytes.len() as u64).await;
    gw.serving(2).await;
    assert!(gw.registry.ready());
    assert_eq!(
        std::fs::read(&bundle_path).unwrap(),
        v2.bytes,
        "the good bytes are stored again"
    );
    abort(handles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_missing_local_state_never_means_allow() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = bundle(2);

    // Nothing stored: empty slot.
    let gw = Gw::new(dir.path(), trust_of(&cp_key()));
    assert_eq!(gw.restore(), Restored::Nothing);
    assert!(gw.slot().active().is_none());

    // A good bundle with a corrupt mark: served (it is signed), the mark rebuilt from it.
    let store = gw.ctx.store.clone();
    let mark = mark_of(&v2);
    store.save(&acme(), &v2.bytes, &mark).unwrap();
    std::fs::write(store.mark_path(&acme()), b"{\"version\": tw").unwrap();
    let gw = Gw::new(dir.path(), trust_of(&cp_key()));
    assert!(matches!(gw.restore(), Restored::Served { version: 2, .. }));
    assert_eq!(store.load_mark(&acme()).unwrap().unwrap(), mark);

    // The mark is above the stored bundle (the disk was rolled back): refused, empty slot.
    let v3 = bundle(3);
    store.save_mark(&acme(), &mark_of(&v3)).unwrap();
    let mut gw = Gw::new(dir.path(), trust_of(&cp_key()));
    assert!(
        matches!(gw.restore(), Restored::Refused(r) if r.reason_code == reason::VERSION_NOT_ABOVE)
    );
    assert!(gw.slot().active().is_none());
    gw.refused(reason::VERSION_NOT_ABOVE, None).await;

    // The signing key was revoked since: refused.
    store.save(&acme(), &v3.bytes, &mark_of(&v3)).unwrap();
    let mut revoked = trust_of(&cp_key());
    revoked.revoke(cp_key().key_id().clone());
    let gw = Gw::new(dir.path(), revoked);
    assert!(matches!(gw.restore(), Restored::Refused(r) if r.reason_code == reason::REVOKED_KEY));
    assert!(gw.slot().active().is_none());

    // Truncated on disk: refused.
    let bytes = std::fs::read(store.bundle_path(&acme())).unwrap();
    std::fs::write(store.bundle_path(&acme()), &bytes[..bytes.len() / 3]).unwrap();
    let gw = Gw::new(dir.path(), trust_of(&cp_key()));
    assert!(matches!(gw.restore(), Restored::Refused(r) if r.reason_code == reason::MALFORMED));
    assert!(gw.slot().active().is_none());
    assert!(!gw.registry.ready());

    // Expired while the gateway was down: refused.
    let old = expired_bundle(4);
    store.save(&acme(), &old.bytes, &mark_of(&old)).unwrap();
    let gw = Gw::new(dir.path(), trust_of(&cp_key()));
    assert!(matches!(gw.restore(), Restored::Refused(r) if r.reason_code == reason::EXPIRED));
    assert!(gw.slot().active().is_none());
    assert_eq!(gw.ctx.metrics.rejected_for("acme"), 1);

    // Unreadable (a directory where the file should be): refused.
    std::fs::remove_file(store.bundle_path(&acme())).unwrap();
    std::fs::create_dir(store.bundle_path(&acme())).unwrap();
    let gw = Gw::new(dir.path(), trust_of(&cp_key()));
    assert!(matches!(gw.restore(), Restored::Refused(r) if r.reason_code == reason::FETCH_FAILED));
    assert!(gw.slot().active().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_reports_the_bundle_in_force_in_kv() {
    let server = NatsServer::start().unwrap();
    let js = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::new(dir.path(), trust_of(&cp_key()));
    gw.restore();
    let mut config = HeartbeatConfig::new(GATEWAY, Some("test-site".into()));
    // Long enough that the beats seen below come from the watcher's pokes.
    config.interval = Duration::from_secs(60);
    config.spool_events = Some(Arc::new(|| 7));
    let beat = heartbeat::spawn(
        js.clone(),
        gw.registry.clone(),
        gw.ctx.metrics.clone(),
        config,
        gw.ctx.beat.clone(),
    );
    let kv = js.get_key_value(GATEWAYS_KV).await.unwrap();
    let read = || {
        let kv = kv.clone();
        async move {
            kv.get("acme.gw-test")
                .await
                .unwrap()
                .map(|b| serde_json::from_slice::<Heartbeat>(&b).unwrap())
        }
    };
    let until = |pred: fn(&Heartbeat) -> bool, what: &'static str| async move {
        let start = Instant::now();
        loop {
            if let Some(h) = read().await
                && pred(&h)
            {
                return h;
            }
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // The first beat, before any bundle: no version, not ready.
    let h = until(|h| h.version.is_none(), "a first heartbeat").await;
    assert!(!h.ready);
    assert_eq!(h.spool_events, 7);
    assert_eq!(h.interval_seconds, 60);

    let handles = gw.watch(&js);
    let v1 = bundle(1);
    publish_bundle(&js, &v1).await;
    let h = until(|h| h.version == Some(1), "v1 in the heartbeat").await;
    assert_eq!(h.digest.as_deref(), Some(v1.digest.as_str()));
    assert_eq!(h.stage.as_deref(), Some("global"));
    assert_eq!(h.gateway, GATEWAY);
    assert_eq!(h.site.as_deref(), Some("test-site"));
    assert!(h.ready);
    assert!(h.applied_at.is_some());
    assert_eq!(h.rejected, 0);

    // A refusal shows at once too.
    let expired = expired_bundle(2);
    publish_bundle(&js, &expired).await;
    let h = until(|h| h.rejected == 1, "the refusal in the heartbeat").await;
    assert_eq!(h.version, Some(1));
    let last = h.last_rejection.unwrap();
    assert!(last.starts_with("v2 expired: "), "{last}");
    abort(handles);
    beat.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_states_bring_candidates_drop_bad_ones_and_outlive_a_corrupt_store() {
    let server = NatsServer::start().unwrap();
    let js = connect(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gw::new(dir.path(), trust_of(&cp_key()));
    gw.restore();
    let handles = gw.watch(&js);
    let slot = gw.slot();
    let v1 = bundle(1);
    publish_bundle(&js, &v1).await;
    gw.serving(1).await;

    // v2 announced as a shadow candidate: not enforced; the controls state brings it.
    let v2 = bundle(2);
    let digest = store_object(&js, &v2.bytes).await;
    announce_staged(
        &js,
        &cp_key(),
        2,
        &digest,
        v2.bytes.len() as u64,
        RolloutStage::Shadow,
    )
    .await;
    let named = |c: &BuiltBundle, stage| RolloutCandidate {
        bundle: bundle_ref(c),
        stage,
        agents: vec![],
        percent: Some(10),
    };
    let state = |epoch, candidate| TenantControls {
        epoch,
        stable: Some(bundle_ref(&v1)),
        candidate,
        blocked_agents: vec![],
        blocked_tools: vec![],
        data_plane_frozen: None,
    };
    publish_controls(
        &js,
        &cp_key(),
        state(5, Some(named(&v2, RolloutStage::Partial))),
    )
    .await;
    let c = eventually("the candidate", || slot.candidate()).await;
    assert_eq!(
        (c.bundle.version, c.stage, c.percent),
        (2, RolloutStage::Partial, Some(10))
    );
    assert_eq!(slot.active().unwrap().version, 1);
    assert_eq!(
        gw.ctx
            .store
            .load_mark(&acme())
            .unwrap()
            .unwrap()
            .high_water
            .version,
        1,
        "a candidate does not raise the mark"
    );
    assert_eq!(
        gw.ctx.store.load_candidate(&acme()).unwrap().unwrap(),
        v2.bytes
    );

    // A candidate that does not verify (expired) is refused and dropped; the stable stays.
    let v3 = expired_bundle(3);
    store_object(&js, &v3.bytes).await;
    publish_controls(
        &js,
        &cp_key(),
        state(6, Some(named(&v3, RolloutStage::Shadow))),
    )
    .await;
    gw.refused(reason::EXPIRED, Some(1)).await;
    eventually("the candidate dropped", || {
        slot.candidate().is_none().then_some(())
    })
    .await;
    assert_eq!(slot.controls().epoch, 6);
    abort(handles);
    drop(gw);

    // The stored state is damaged while the gateway is down: the bundle is still served but
    // every call is denied until a verified state arrives from NATS.
    let store = LocalStore::open(dir.path()).unwrap();
    let path = store.tenant_dir(&acme()).join("controls.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.iter().position(|b| *b == b'6').unwrap();
    bytes[i] = b'9';
    std::fs::write(&path, &bytes).unwrap();
    let gw = Gw::new(dir.path(), trust_of(&cp_key()));
    assert!(matches!(gw.restore(), Restored::Served { version: 1, .. }));
    let slot = gw.slot();
    assert!(slot.controls().unavailable.is_some());
    let handles = gw.watch(&js);
    eventually("the verified state from NATS", || {
        let c = slot.controls();
        (c.unavailable.is_none() && c.epoch == 6).then_some(())
    })
    .await;
    assert_eq!(slot.active().unwrap().version, 1);
    abort(handles);
}
