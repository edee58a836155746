#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The gateway binary when things break: NATS down while it restarts (it serves its last
//! known-good bundle at once and spools decisions), no bundle or a corrupt one on disk (every
//! call denied, not ready), 20,000 decisions across two NATS restarts with none lost or
//! duplicated, and SIGTERM with NATS down (clean exit, spool kept, shipped after restart).
//!
//! Needs the binaries: `cargo build --bins -p aegis-gateway -p aegis-controlplane -p aegisctl`.

use aegis_tests::gateway::{Gateway, HttpClient};
use aegis_tests::stack::{
    ACME, Stack, WAIT, assert_decision_event, balance, code, pay, tenant_status, wait_drained,
    with_id,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// First bytes of a spool segment file (`aegis_gateway::shipper::spool::SEGMENT_MAGIC`).
const SEGMENT_MAGIC: &[u8; 8] = b"AEGSPL\x00\x01";

/// Spool segment files under `dir` holding at least one record, with their sizes.
fn spool_segments(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                if bytes.starts_with(SEGMENT_MAGIC) && bytes.len() > SEGMENT_MAGIC.len() {
                    out.push((path, bytes.len() as u64));
                }
            }
        }
    }
    out
}

/// Decides `n` payments of 3,000; returns the decision ids (asserting each was a 200 allow or a
/// policy deny — recorded either way).
fn decide_n(gw: &Gateway, token: &str, n: usize) -> BTreeSet<String> {
    let mut client = gw.client().unwrap();
    (0..n)
        .map(|_| {
            let (status, answer) = client.decide(token, &pay(3_000)).unwrap();
            assert_eq!(status, 200, "{answer:#}");
            answer["decision_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn spool_events(gw: &Gateway) -> u64 {
    gw.status().unwrap()["decision_log"]["spool_events"]
        .as_u64()
        .unwrap()
}

#[test]
fn restarted_with_nats_down_it_serves_the_last_known_good_bundle_and_spools() {
    let mut stack = Stack::start();
    let mut gw = stack.gateway("gw-restart");
    let digest = stack.current().digest;
    let token = stack.token("finance-agent", &["planner"]);
    let bundle_file = gw.data_dir.join("bundles/acme/bundle.tar.gz");
    assert!(bundle_file.is_file(), "{}", bundle_file.display());

    // NATS goes away; the gateway is killed and started again.
    stack.server.kill().unwrap();
    gw.kill9();
    gw.restart().unwrap();
    let (ready, body) = gw.get("/readyz").unwrap();
    assert_eq!(ready, 200, "ready at once from the stored bundle: {body}");
    let t = tenant_status(&gw, ACME);
    assert_eq!(
        (&t["version"], &t["digest"], &t["source"]),
        (&json!(1), &json!(digest), &json!("local")),
        "{t:#}"
    );
    let mut answered = BTreeSet::new();
    for amount in [3_000, 6_000, 50_000] {
        let (status, answer) = gw.decide(&token, &pay(amount)).unwrap();
        assert_eq!(status, 200, "{answer:#}");
        assert_eq!(answer["policy_version"], 1);
        answered.insert(answer["decision_id"].as_str().unwrap().to_owned());
    }
    aegis_tests::stack::wait_until(WAIT, "the decisions to be spooled", || {
        spool_events(&gw) >= 3
    });

    // A gateway that never had a bundle, NATS down: every call denied, not ready.
    let empty = Gateway::start(&stack.gateway_options("gw-empty")).unwrap();
    let (ready, _) = empty.get("/readyz").unwrap();
    assert_eq!(ready, 503);
    for body in [pay(3_000), balance()] {
        let (status, answer) = empty.decide(&token, &body).unwrap();
        assert_eq!(status, 503, "{answer:#}");
        assert_eq!(
            (&answer["decision"], code(&answer)),
            (&json!("deny"), "no_bundle")
        );
    }

    // The stored bundle is damaged while the gateway is down; restarted with NATS still down:
    // denied, not ready, and the refusal is reported. The spooled events survive the kill -9.
    gw.kill9();
    let mut bytes = std::fs::read(&bundle_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&bundle_file, &bytes).unwrap();
    gw.restart().unwrap();
    let (ready, _) = gw.get("/readyz").unwrap();
    assert_eq!(ready, 503);
    let (status, answer) = gw.decide(&token, &pay(3_000)).unwrap();
    assert_eq!(status, 503, "{answer:#}");
    assert_eq!(code(&answer), "no_bundle");
    let denied = answer["decision_id"].as_str().unwrap().to_owned();
    let t = tenant_status(&gw, ACME);
    assert!(t["version"].is_null(), "{t:#}");
    let rejected = t["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{t:#}");
    assert!(
        ["malformed", "hash_mismatch", "digest_mismatch"]
            .contains(&rejected[0]["reason_code"].as_str().unwrap()),
        "{t:#}"
    );
    assert!(spool_events(&gw) >= 4, "{:#}", gw.status().unwrap());

    // NATS is back: the spooled decisions arrive (once each), the gateways fetch v1 again.
    stack.server.restart().unwrap();
    for g in [&gw, &empty] {
        g.wait_ready(WAIT).unwrap();
        g.wait_version(ACME, 1, WAIT).unwrap();
    }
    assert_eq!(tenant_status(&gw, ACME)["source"], "nats");
    // The heartbeat of the restarted process reaches KV once NATS is back.
    let started_at = gw.status().unwrap()["started_at"].clone();
    let beat = stack.wait_heartbeat(ACME, &gw.id, "the restarted process", |b| {
        json!(b.started_at) == started_at && b.version == Some(1) && b.ready
    });
    assert_eq!(beat.rejected, 1, "{beat:?}");
    wait_drained(&gw, WAIT);
    let mut ids = answered.clone();
    ids.insert(denied.clone());
    let records = stack.wait_decisions("aegis.decisions.acme.gw-restart", &ids, WAIT);
    for id in &ids {
        let found = with_id(&records, id);
        assert_eq!(found.len(), 1, "{id}");
        assert_decision_event(found[0]);
    }
    assert_eq!(
        with_id(&records, &denied)[0]["reasons"][0]["code"],
        "no_bundle"
    );
    let (status, answer) = gw.decide(&token, &pay(3_000)).unwrap();
    assert_eq!(
        (status, &answer["decision"]),
        (200, &json!("allow")),
        "{answer:#}"
    );
}

#[test]
fn twenty_thousand_decisions_across_two_nats_restarts_none_lost_none_duplicated() {
    const TOTAL: usize = 20_000;
    const CLIENTS: usize = 4;
    let mut stack = Stack::start();
    let gw = stack.gateway("gw-load");
    let token = stack.token("finance-agent", &["planner"]);
    let answered = AtomicUsize::new(0);
    let ids: Mutex<Vec<String>> = Mutex::new(Vec::with_capacity(TOTAL));
    let statuses: Mutex<std::collections::BTreeMap<u16, usize>> = Mutex::default();
    let started = Instant::now();

    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (gw, token, answered, ids, statuses) = (&gw, &token, &answered, &ids, &statuses);
            s.spawn(move || {
                let mut client: HttpClient = gw.client().unwrap();
                let mut mine = Vec::with_capacity(TOTAL / CLIENTS);
                for i in 0..TOTAL / CLIENTS {
                    let body = if i % 2 == 0 {
                        pay(100 + c as u64)
                    } else {
                        balance()
                    };
                    let (status, answer) = client.decide(token, &body).unwrap();
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    if let Some(id) = answer["decision_id"].as_str() {
                        mine.push(id.to_owned());
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                ids.lock().unwrap().extend(mine);
            });
        }
        // Two NATS restarts in the middle of the run.
        let at = |n: usize| {
            while answered.load(Ordering::Relaxed) < n {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        for (kill_at, restart_at) in [(TOTAL / 5, TOTAL * 3 / 10), (TOTAL / 2, TOTAL * 3 / 5)] {
            at(kill_at);
            stack.server.kill().unwrap();
            eprintln!(
                "nats-server killed at {} decisions",
                answered.load(Ordering::Relaxed)
            );
            at(restart_at);
            stack.server.restart().unwrap();
            eprintln!(
                "nats-server back at {} decisions",
                answered.load(Ordering::Relaxed)
            );
        }
    });
    let elapsed = started.elapsed();
    let statuses = statuses.into_inner().unwrap();
    eprintln!("{TOTAL} decisions in {elapsed:?}; statuses {statuses:?}");
    assert_eq!(
        statuses.get(&200),
        Some(&TOTAL),
        "every call answered 200: {statuses:?}"
    );

    let ids = ids.into_inner().unwrap();
    let answered_ids: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(answered_ids.len(), TOTAL, "decision ids are unique");
    wait_drained(&gw, Duration::from_secs(180));
    let records = stack.wait_decisions(
        "aegis.decisions.acme.gw-load",
        &answered_ids,
        Duration::from_secs(120),
    );
    let on_stream: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "decision")
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = on_stream.iter().copied().collect();
    assert_eq!(
        on_stream.len(),
        unique.len(),
        "{} duplicate events on the stream",
        on_stream.len() - unique.len()
    );
    let answered_ref: BTreeSet<&str> = answered_ids.iter().map(String::as_str).collect();
    let missing = answered_ref.difference(&unique).count();
    let extra = unique.difference(&answered_ref).count();
    assert_eq!((missing, extra), (0, 0), "missing / unexpected events");
    let status = gw.status().unwrap();
    eprintln!("decision log after the run: {}", status["decision_log"]);
    assert_eq!(status["decision_log"]["unrecorded"], 0);
}

#[test]
fn sigterm_with_nats_down_exits_cleanly_and_keeps_the_spool() {
    let mut stack = Stack::start();
    let mut gw = stack.gateway("gw-term");
    let token = stack.token("finance-agent", &["planner"]);
    // NATS dies right after a burst: some of these events may be unacknowledged when it goes.
    let shipped = decide_n(&gw, &token, 50);
    stack.server.kill().unwrap();
    let spooled = decide_n(&gw, &token, 25);
    // An agent keeps its keep-alive connection open (idle) across the stop.
    let mut idle = gw.client().unwrap();
    let (code, _) = idle.request("GET", "/healthz", &[], b"").unwrap();
    assert_eq!(code, 200);
    let stopping = Instant::now();
    let status = gw.terminate(Duration::from_secs(30)).unwrap();
    eprintln!("SIGTERM -> exit with NATS down: {:?}", stopping.elapsed());
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        gw.log()
    );
    let segments = spool_segments(&gw.data_dir);
    assert!(
        !segments.is_empty(),
        "no spool segment with records under {}",
        gw.data_dir.display()
    );
    let on_disk: u64 = segments.iter().map(|(_, n)| n).sum();
    eprintln!("spool on disk after SIGTERM: {segments:?}");
    // Each record holds a whole decision event (hundreds of bytes).
    assert!(on_disk > 25 * 200, "{on_disk} bytes of spool");

    stack.server.restart().unwrap();
    gw.restart().unwrap();
    gw.wait_ready(WAIT).unwrap();
    wait_drained(&gw, WAIT);
    let records = stack.wait_decisions("aegis.decisions.acme.gw-term", &spooled, WAIT);
    for id in spooled.iter().chain(&shipped) {
        let found = with_id(&records, id);
        assert_eq!(found.len(), 1, "{id}");
        assert_decision_event(found[0]);
    }
    let decisions: Vec<&Value> = records.iter().filter(|r| r["type"] == "decision").collect();
    assert_eq!(decisions.len(), 75, "no other decision events");
}

#[test]
fn a_full_spool_refuses_calls_until_nats_takes_the_events() {
    let mut stack = Stack::start();
    let options = stack
        .gateway_options("gw-full")
        .arg("--max-spool-bytes")
        .arg("65536");
    let gw = Gateway::start(&options).unwrap();
    gw.wait_version(ACME, 1, WAIT).unwrap();
    let token = stack.token("finance-agent", &["planner"]);
    stack.server.kill().unwrap();

    // NATS away: decisions spool until 64 KiB are on disk, then calls are refused (fail
    // closed: no decision without a record).
    let mut client = gw.client().unwrap();
    let mut recorded = BTreeSet::new();
    let mut refused = 0;
    for _ in 0..5_000 {
        let (status, answer) = client.decide(&token, &balance()).unwrap();
        match status {
            200 => {
                recorded.insert(answer["decision_id"].as_str().unwrap().to_owned());
            }
            503 => {
                assert_eq!(code(&answer), "decision_log_full", "{answer:#}");
                assert_eq!(answer["decision"], "deny");
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
            other => panic!("{other}: {answer:#}"),
        }
    }
    assert_eq!(refused, 5, "never full after {} decisions", recorded.len());
    assert!(
        recorded.len() > 20,
        "{} decisions before full",
        recorded.len()
    );
    let log = gw.status().unwrap()["decision_log"].clone();
    assert_eq!(log["accepting"], false, "{log}");
    eprintln!("spool full after {} decisions: {log}", recorded.len());

    // NATS back: the spool drains, calls are answered again, and every answered decision is on
    // the stream once (the refused ones were never decided, so they have no event).
    stack.server.restart().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer) = client.decide(&token, &balance()).unwrap();
        if status == 200 {
            recorded.insert(answer["decision_id"].as_str().unwrap().to_owned());
            break;
        }
        assert_eq!(code(&answer), "decision_log_full", "{answer:#}");
        assert!(
            Instant::now() < deadline,
            "still refusing: {}",
            gw.status().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_drained(&gw, WAIT);
    let records = stack.wait_decisions("aegis.decisions.acme.gw-full", &recorded, WAIT);
    let decisions: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["type"] == "decision")
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions.len(),
        records.len(),
        "no duplicates, nothing else"
    );
    assert_eq!(decisions.len(), recorded.len());
}
