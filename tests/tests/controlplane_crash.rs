//! Crash safety of the control plane's fold.
//!
//! - kill -9 the control plane at random points while 10,000 events of a mixed workload stream
//!   in (and while it catches up), restart it each time on the same RocksDB directory; once it
//!   is quiet, its state must be byte-identical to a fresh rebuild from the stream, and every
//!   event's outcome must be the one the workload model predicts.
//! - SIGTERM stops it cleanly (exit 0, state flushed), like Ctrl-C; restarted on the same
//!   directory it carries on with the same state.
//! - A data directory that is ahead of the stream (the stream was replaced by a shorter one) is
//!   a fatal, loudly reported error: the control plane exits non-zero with a `FATAL` log line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::events::{Event, EventType};
use aegis_core::ids::TenantId;
use aegis_tests::NatsServer;
use aegis_tests::controlplane::{
    ControlPlane, Keys, Operator, eventually, rebuild, state_digest, submit, wait_ready,
};
use aegis_tests::flow::{read_stream, status, stream_last};
use aegis_tests::workload::{Publisher, Reject, Rng, Workload, WorkloadConfig, check_outcomes};
use async_nats::jetstream;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EVENTS: usize = 10_000;
const MIN_KILLS: u64 = 5;

fn seed() -> u64 {
    std::env::var("AEGIS_WORKLOAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xAE61_5C4A_5E00)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_while_events_stream_in_then_state_equals_a_fresh_rebuild() {
    let started = Instant::now();
    let seed = seed();
    eprintln!("workload seed {seed} (set AEGIS_WORKLOAD_SEED to replay)");
    let server = NatsServer::start().unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    aegis_nats::provision(&js, &aegis_nats::Topology::single())
        .await
        .unwrap();
    let keys = Arc::new(Keys::generate().unwrap());
    let dirs = tempfile::tempdir().unwrap();
    let data = dirs.path().join("crashing");
    let cp = Arc::new(Mutex::new(
        ControlPlane::start_on(&server.url(), &keys, &data, &[]).unwrap(),
    ));

    // The killer: kill -9 and restart at random intervals until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let self_exits = Arc::new(Mutex::new(Vec::<String>::new()));
    let killer = {
        let (cp, stop, kills, self_exits) =
            (cp.clone(), stop.clone(), kills.clone(), self_exits.clone());
        tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ 0x5EED_0FC0_FFEE);
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(rng.range(100, 700))).await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let mut cp = cp.lock().unwrap();
                if let Some(status) = cp.exited() {
                    self_exits.lock().unwrap().push(format!(
                        "exited by itself with {status}:\n{}",
                        tail(&cp.log(), 30)
                    ));
                }
                cp.restart().unwrap();
                kills.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // Stream the workload in.
    let config = WorkloadConfig::new(seed);
    let mut workload = Workload::new(config, &keys.root);
    let mut publisher = Publisher::new(js.clone(), 64);
    for _ in 0..EVENTS {
        publisher.publish(workload.next_item()).await.unwrap();
    }
    let published = publisher.finish().await.unwrap();
    let publish_time = started.elapsed();
    let last_workload_seq = published.iter().map(|p| p.seq).max().unwrap();
    let kills_while_publishing = kills.load(Ordering::SeqCst);
    eprintln!(
        "published {EVENTS} events in {publish_time:?} (last seq {last_workload_seq}); {kills_while_publishing} kills so far"
    );

    // Keep killing while the control plane folds its way through the workload.
    let probe = TenantId::new("acme").unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let applied = status(&client, &probe).await.map(|s| s.applied_seq);
        if applied.is_some_and(|a| a >= last_workload_seq)
            && kills.load(Ordering::SeqCst) >= MIN_KILLS
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the control plane did not fold the workload in time (applied {applied:?} of {last_workload_seq}, {} kills)\n{}",
            kills.load(Ordering::SeqCst),
            tail(&cp.lock().unwrap().log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    killer.await.unwrap();
    let kills = kills.load(Ordering::SeqCst);
    let fold_time = started.elapsed();
    eprintln!("folded the workload after {fold_time:?} with {kills} kills");
    let exits = self_exits.lock().unwrap().clone();
    assert!(
        exits.is_empty(),
        "the control plane died on its own:\n{}",
        exits.join("\n\n")
    );

    // Quiet: the control plane's own events (checks) are in, the stream stops growing and
    // everything in it is applied.
    let quiet_deadline = Instant::now() + Duration::from_secs(180);
    let mut stable_since = (0u64, Instant::now());
    let last = loop {
        let last = stream_last(&js, "AEGIS_CHANGES").await;
        let applied = status(&client, &probe).await.map(|s| s.applied_seq);
        if last != stable_since.0 {
            stable_since = (last, Instant::now());
        } else if applied == Some(last) && stable_since.1.elapsed() >= Duration::from_secs(3) {
            break last;
        }
        assert!(
            Instant::now() < quiet_deadline,
            "no quiescence: stream at {last}, applied {applied:?}\n{}",
            tail(&cp.lock().unwrap().log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        cp.lock().unwrap().exited().is_none(),
        "{}",
        cp.lock().unwrap().log()
    );

    // Rebuild from the stream into a fresh directory meanwhile (the stream no longer changes).
    let fresh = dirs.path().join("rebuilt");
    let rebuild_task = {
        let (url, keys, fresh) = (server.url(), keys.clone(), fresh.clone());
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            (rebuild(&url, &keys, &fresh).unwrap(), t.elapsed())
        })
    };

    // Every workload event has the outcome the model predicts.
    let report = check_outcomes(&client, &published).await.unwrap();
    eprintln!(
        "checked {} events: {} accepted, rejected by kind {:?}; control-plane events {:#?}",
        report.checked, report.accepted, report.rejected, report.other_records
    );
    assert!(
        report.mismatches.is_empty(),
        "{} of {} outcomes differ from the model, first ones:\n{}\n\nlog tail:\n{}",
        report.mismatches.len(),
        published.len(),
        report.mismatches[..report.mismatches.len().min(20)].join("\n"),
        tail(&cp.lock().unwrap().log(), 30)
    );
    assert_eq!(report.checked, EVENTS);
    assert!(report.accepted > EVENTS / 3, "{report:?}");
    for kind in [
        Reject::NotAnEnvelope,
        Reject::BadSignature,
        Reject::UnknownActor,
        Reject::UnknownKey,
        Reject::RevokedKey,
        Reject::MissingRole,
        Reject::StaleEdit,
        Reject::FourEyes,
        Reject::Frozen,
    ] {
        assert!(
            report.rejected.get(&kind).copied().unwrap_or(0) > 0,
            "no {kind:?} rejection in {:?}",
            report.rejected
        );
    }
    // The control plane's own events: one accepted `checks_completed` per accepted proposal,
    // nothing else, whatever the kills did to its outbox.
    let expectations = workload.expectations();
    let mut want_other: BTreeMap<String, usize> = BTreeMap::new();
    for e in &expectations {
        if !e.accepted_proposals.is_empty() {
            want_other.insert(
                format!("{} checks_completed accepted", e.tenant),
                e.accepted_proposals.len(),
            );
        }
    }
    assert_eq!(report.other_records, want_other);
    // Each tenant ends where the model says, and each version was announced exactly once.
    let mut versions_total = 0;
    for e in &expectations {
        let s = status(&client, &e.tenant).await.unwrap();
        assert_eq!(s.frozen.is_some(), e.frozen, "{}: frozen", e.tenant);
        assert_eq!(
            s.latest.as_ref().map(|v| v.version).unwrap_or(0),
            e.last_version,
            "{}: latest version",
            e.tenant
        );
        let live: Vec<u64> = s.live_policies.iter().map(|p| p.revision).collect();
        let want: Vec<u64> = if e.live_revision > 0 {
            vec![e.live_revision]
        } else {
            vec![]
        };
        assert_eq!(live, want, "{}: live revision", e.tenant);
        versions_total += e.last_version;
        let announced = eventually(Duration::from_secs(60), "every version announced", || {
            let (js, tenant, n) = (js.clone(), e.tenant.clone(), e.last_version);
            async move {
                let msgs =
                    read_stream(&js, "AEGIS_BUNDLES", &format!("aegis.bundles.{tenant}")).await;
                (msgs.len() as u64 >= n).then_some(msgs)
            }
        })
        .await
        .unwrap();
        let versions: Vec<u64> = announced
            .iter()
            .filter_map(|m| match m.envelope()?.event {
                Event::BundlePublished(b) => Some(b.version),
                _ => None,
            })
            .collect();
        assert_eq!(
            versions,
            (1..=e.last_version).collect::<Vec<_>>(),
            "{}: one announcement per version, in order",
            e.tenant
        );
    }
    assert!(versions_total > 0, "the workload published no bundle");
    // How many checks_completed messages the stream holds (the fold ignores repeats by id; a
    // control plane that lags more than the 2-minute duplicate window behind its outbox may
    // publish a check again).
    let accepted_proposals: usize = expectations
        .iter()
        .map(|e| e.accepted_proposals.len())
        .sum();
    let checks_messages = read_stream(&js, "AEGIS_CHANGES", "aegis.changes.*.change.>")
        .await
        .into_iter()
        .filter(|m| {
            m.envelope()
                .is_some_and(|e| e.event_type() == EventType::ChecksCompleted)
        })
        .count();
    if checks_messages != accepted_proposals {
        eprintln!(
            "NOTE: AEGIS_CHANGES holds {checks_messages} checks_completed messages for {accepted_proposals} accepted proposals"
        );
    }

    // Stop it, digest its state, rebuild from the stream into a fresh directory: identical.
    cp.lock().unwrap().kill9();
    let crashed = state_digest(&data).unwrap();
    let (out, rebuild_time) = rebuild_task.await.unwrap();
    assert!(
        out.status.success(),
        "rebuild failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 30)
    );
    let rebuilt = state_digest(&fresh).unwrap();
    assert_eq!(
        crashed["applied_seq"].as_u64(),
        Some(last),
        "applied_seq is the stream's last sequence"
    );
    assert_eq!(
        crashed,
        rebuilt,
        "the state after {kills} kill -9s differs from a fresh rebuild\ncrashed: {crashed}\nrebuilt: {rebuilt}\nlog tail:\n{}",
        tail(&cp.lock().unwrap().log(), 30)
    );
    eprintln!(
        "identical state {} ({} keys, applied {}) after {kills} kills ({kills_while_publishing} while publishing); publish {publish_time:?}, fold done at {fold_time:?}, rebuild {rebuild_time:?}, total {:?}",
        crashed["digest"],
        crashed["keys"],
        crashed["applied_seq"],
        started.elapsed()
    );
}

/// A nats-server, a control plane on its own data directory, and `n` actor registrations by
/// acme's root admin folded by it.
struct Folded {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    keys: Keys,
    tenant: TenantId,
    root: Operator,
    dirs: tempfile::TempDir,
    data: std::path::PathBuf,
    cp: ControlPlane,
}

async fn folded(n: usize, dir: &str) -> Folded {
    let server = NatsServer::start().unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    aegis_nats::provision(&js, &aegis_nats::Topology::single())
        .await
        .unwrap();
    let keys = Keys::generate().unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let data = dirs.path().join(dir);
    let tenant = TenantId::new("acme").unwrap();
    let root = keys.root_operator(&tenant);
    let cp = ControlPlane::start_on(&server.url(), &keys, &data, &[]).unwrap();
    for i in 0..n {
        let op = Operator::new("acme", &format!("user-{i}"));
        submit(&js, &root.register(&op)).await.unwrap();
    }
    let applied = status(&client, &tenant).await.unwrap().applied_seq;
    assert_eq!(applied, n as u64);
    Folded {
        server,
        client,
        js,
        keys,
        tenant,
        root,
        dirs,
        data,
        cp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_ahead_of_the_stream_is_fatal() {
    let Folded {
        server: _server,
        client: _client,
        js,
        keys: _keys,
        root,
        dirs: _dirs,
        data,
        mut cp,
        ..
    } = folded(10, "ahead").await;
    cp.kill9();

    // The stream is replaced by one holding fewer messages.
    js.delete_stream("AEGIS_CHANGES").await.unwrap();
    aegis_nats::provision(&js, &aegis_nats::Topology::single())
        .await
        .unwrap();
    for i in 0..3 {
        let op = Operator::new("acme", &format!("other-{i}"));
        aegis_tests::controlplane::publish(&js, &root.register(&op), None)
            .await
            .unwrap();
    }
    assert_eq!(stream_last(&js, "AEGIS_CHANGES").await, 3);

    // Restarted on the directory that has applied up to 10: it refuses, loudly.
    cp.restart().unwrap();
    let status = eventually(Duration::from_secs(30), "the control plane to exit", || {
        let s = cp.exited();
        async move { s }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: it kept running\n{}", cp.log()));
    assert!(!status.success(), "exit status {status}\n{}", cp.log());
    let log = cp.log();
    let fatal = log
        .lines()
        .find(|l| l.contains("FATAL"))
        .unwrap_or_else(|| panic!("no FATAL line in the log:\n{log}"));
    assert!(
        fatal.contains("sequence 3") && fatal.contains("up to 10"),
        "the FATAL line names both sequences: {fatal}"
    );
    // It did not touch the state: still at 10.
    assert_eq!(
        state_digest(&data).unwrap()["applied_seq"].as_u64(),
        Some(10)
    );
    // Nothing new was folded or published on its behalf.
    let changes = read_stream(&js, "AEGIS_CHANGES", "aegis.changes.>").await;
    assert_eq!(changes.len(), 3);
    assert!(
        changes
            .iter()
            .all(|m| m.envelope().unwrap().event_type() == EventType::ActorRegistered)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_control_plane_cleanly_and_it_restarts_with_the_same_state() {
    let Folded {
        server: _server,
        client,
        tenant,
        keys: _keys,
        dirs: _dirs,
        data,
        mut cp,
        ..
    } = folded(5, "terminated").await;

    // SIGTERM: a clean exit, promptly, through the shutdown path (it prints its summary).
    let started = Instant::now();
    let exit = cp.terminate(Duration::from_secs(10));
    let took = started.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("the control plane was not running\n{}", cp.log()));
    assert!(
        exit.success(),
        "exit status {exit} after SIGTERM\n{}",
        cp.log()
    );
    assert!(took < Duration::from_secs(5), "took {took:?} to stop");
    let log = cp.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("\"applied_seq\":5"), "no summary line: {log}");
    let before = state_digest(&data).unwrap();
    assert_eq!(before["applied_seq"].as_u64(), Some(5), "{before}");

    // Restarted on the same directory: it carries on where it stopped, same state.
    cp.restart().unwrap();
    wait_ready(&client, &tenant, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status(&client, &tenant).await.unwrap().applied_seq, 5);
    let exit = cp.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        exit.success(),
        "exit status {exit} after SIGTERM\n{}",
        cp.log()
    );
    assert_eq!(state_digest(&data).unwrap(), before);

    // Stopped during startup (the handler is installed before the store is opened; a SIGTERM
    // that comes earlier still ends the process): it never leaves a broken directory behind.
    cp.restart().unwrap();
    let exit = cp.terminate(Duration::from_secs(10)).unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        exit.success() || exit.signal() == Some(15),
        "exit status {exit} after an early SIGTERM\n{}",
        cp.log()
    );
    assert_eq!(state_digest(&data).unwrap(), before);
}
