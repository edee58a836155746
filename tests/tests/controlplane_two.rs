//! Two control planes at once, on one stream, sharing the signing key (replicas without leader
//! election): every event is submitted once and both fold it; the bundles they both build are
//! published once — one `bundle_published` per version, one object per digest — the checks of
//! each proposal appear once on `AEGIS_CHANGES`, and both end in byte-identical state (equal to
//! a fresh rebuild too).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::bundle::{VerifyPolicy, sha256_hex, verify};
use aegis_core::events::*;
use aegis_core::ids::{ChangeId, TenantId};
use aegis_core::keys::TrustStore;
use aegis_core::query::{QueryAnswer, QueryRequest};
use aegis_tests::NatsServer;
use aegis_tests::controlplane::{ControlPlane, Keys, Operator, query, rebuild, state_digest};
use aegis_tests::flow::{
    FINANCE_POLICY, accept, announced, envelopes, finance_proposal, read_stream, refuse,
    setup_actors, stream_last,
};
use aegis_tests::workload::{Template, Workload, WorkloadConfig, check_outcomes, publish_workload};
use async_nats::jetstream;
use futures::StreamExt as _;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const WORKLOAD_EVENTS: usize = 1000;

/// Proposes `document`, has bob and carol approve it (after alice's own approval is refused),
/// publishes it, and waits for the announcement of `version`.
async fn change_to_version(
    js: &jetstream::Context,
    ops: &[Operator; 4],
    document: &str,
    base_revision: u64,
    version: u64,
) -> ChangeId {
    let [alice, bob, carol, pat] = ops;
    let id = ChangeId::random().unwrap();
    accept(
        js,
        &alice.sign(finance_proposal(&id, document, base_revision)),
    )
    .await;
    refuse(
        js,
        &alice.sign(ChangeApproved {
            change_id: id.clone(),
            comment: None,
        }),
        "four eyes",
    )
    .await;
    for op in [bob, carol] {
        accept(
            js,
            &op.sign(ChangeApproved {
                change_id: id.clone(),
                comment: None,
            }),
        )
        .await;
    }
    accept(
        js,
        &pat.sign(ChangePublished {
            change_id: id.clone(),
            stage: RolloutStage::Global,
        }),
    )
    .await;
    announced(js, &alice.tenant, version).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_publish_one_bundle_per_version_and_end_in_identical_state() {
    let started = Instant::now();
    let server = NatsServer::start().unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let keys = Keys::generate().unwrap();
    // Both provision the topology at start, concurrently (and so does the test).
    let mut a = ControlPlane::start(&server.url(), &keys, &[]).unwrap();
    let mut b = ControlPlane::start(&server.url(), &keys, &[]).unwrap();
    aegis_nats::provision(&js, &aegis_nats::Topology::single())
        .await
        .unwrap();
    let logs = |a: &ControlPlane, b: &ControlPlane| {
        let tail = |s: String| {
            let l: Vec<&str> = s.lines().collect();
            l[l.len().saturating_sub(20)..].join("\n")
        };
        format!("A:\n{}\nB:\n{}", tail(a.log()), tail(b.log()))
    };
    let acme = TenantId::new("acme").unwrap();

    // The workflow, every event submitted once: v1, v2, a rollback to v1 as v3.
    let ops = setup_actors(&js, &keys, "acme").await;
    let c1 = change_to_version(&js, &ops, FINANCE_POLICY, 0, 1).await;
    let stricter = FINANCE_POLICY.replace("ticket: FIN-1001", "ticket: FIN-1002");
    let c2 = change_to_version(&js, &ops, &stricter, 1, 2).await;
    accept(
        &js,
        &ops[3].sign(RollbackRequested {
            to_version: 1,
            reason: "incident 42".into(),
            emergency: false,
        }),
    )
    .await;
    let v3 = announced(&js, &acme, 3).await;
    assert_eq!(v3.rollback_of, Some(1));

    // A mixed workload on two more tenants, with frequent proposals: more bundles, both
    // control planes racing to publish each one.
    let mut config = WorkloadConfig::new(0x7770);
    config.tenants = vec![Template::ehr(), Template::cicd()];
    config.proposal_one_in = 10;
    let mut workload = Workload::new(config, &keys.root);
    let published = publish_workload(&js, &mut workload, WORKLOAD_EVENTS, 32)
        .await
        .unwrap();
    let expectations = workload.expectations();

    // Quiet: the stream stops growing and both control planes have applied all of it (the
    // queue group spreads 30 status queries over both).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut stable = (0u64, Instant::now());
    let last = loop {
        let last = stream_last(&js, "AEGIS_CHANGES").await;
        if last != stable.0 {
            stable = (last, Instant::now());
        } else if stable.1.elapsed() >= Duration::from_secs(3) {
            let mut all = true;
            for _ in 0..30 {
                let applied = match query(&client, &acme, QueryRequest::Status).await {
                    Ok(QueryAnswer::Status(s)) => s.applied_seq,
                    _ => 0,
                };
                if applied != last {
                    all = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if all {
                break last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no quiescence (stream at {last})\n{}",
            logs(&a, &b)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        a.exited().is_none() && b.exited().is_none(),
        "{}",
        logs(&a, &b)
    );

    // The workload's events have the outcomes its model predicts.
    let report = check_outcomes(&client, &published).await.unwrap();
    assert!(
        report.mismatches.is_empty(),
        "{}\n{}",
        report.mismatches.join("\n"),
        logs(&a, &b)
    );

    // Expected versions per tenant, and every version's announcement settles.
    let mut want_versions: BTreeMap<TenantId, u64> = BTreeMap::new();
    want_versions.insert(acme.clone(), 3);
    for e in &expectations {
        want_versions.insert(e.tenant.clone(), e.last_version);
    }
    assert!(
        want_versions.values().sum::<u64>() >= 6,
        "the workload published too little to race on: {want_versions:?}"
    );
    let mut digests: BTreeMap<String, (TenantId, u64)> = BTreeMap::new();
    for (tenant, &n) in &want_versions {
        announced(&js, tenant, n).await;
    }
    // Give a losing control plane time to (wrongly) publish a second copy.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // AEGIS_BUNDLES: exactly one bundle_published per version, in order, matching History.
    for (tenant, &n) in &want_versions {
        let msgs = read_stream(&js, "AEGIS_BUNDLES", &format!("aegis.bundles.{tenant}")).await;
        let announced: Vec<BundlePublished> = envelopes(&msgs)
            .into_iter()
            .filter_map(|e| match e.event {
                Event::BundlePublished(b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(
            announced.len(),
            msgs.len(),
            "{tenant}: only bundle_published"
        );
        let versions: Vec<u64> = announced.iter().map(|b| b.version).collect();
        assert_eq!(
            versions,
            (1..=n).collect::<Vec<_>>(),
            "{tenant}: one bundle_published per version"
        );
        let history = match query(&client, tenant, QueryRequest::History).await.unwrap() {
            QueryAnswer::History(h) => h,
            other => panic!("{other:?}"),
        };
        let from_history: Vec<(u64, String)> = history
            .iter()
            .map(|v| (v.version, v.digest.clone()))
            .collect();
        let from_stream: Vec<(u64, String)> = announced
            .iter()
            .map(|b| (b.version, b.digest.clone()))
            .collect();
        assert_eq!(
            from_history, from_stream,
            "{tenant}: history = announcements"
        );
        for b in &announced {
            assert!(
                digests
                    .insert(b.digest.clone(), (tenant.clone(), b.version))
                    .is_none(),
                "digest {} announced twice",
                b.digest
            );
        }
    }

    // The object store: one object per digest, named by it, holding bytes that hash to it and
    // verify; no second copy of any bundle's chunks.
    let bucket = js.get_object_store("aegis-bundles").await.unwrap();
    let mut names: Vec<String> = Vec::new();
    let mut chunks = 0usize;
    let mut list = bucket.list().await.unwrap();
    while let Some(info) = list.next().await {
        let info = info.unwrap();
        names.push(info.name.clone());
        chunks += info.chunks;
    }
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "an object listed twice: {names:?}"
    );
    assert_eq!(
        unique,
        digests.keys().collect::<BTreeSet<_>>(),
        "objects = announced digests"
    );
    let mut trust = TrustStore::new();
    trust.trust(keys.control_plane.public_key().clone());
    for (digest, (tenant, version)) in &digests {
        let mut object = bucket.get(digest).await.unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
            .await
            .unwrap();
        assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), *digest);
        let verified = verify(
            &bytes,
            &trust,
            &VerifyPolicy::new(time::OffsetDateTime::now_utc()),
        )
        .unwrap_or_else(|e| panic!("{digest}: {e}"));
        assert_eq!(
            (&verified.manifest.tenant, verified.manifest.version),
            (tenant, *version)
        );
    }
    let meta = read_stream(&js, "OBJ_aegis-bundles", "$O.aegis-bundles.M.>").await;
    let chunk_msgs = read_stream(&js, "OBJ_aegis-bundles", "$O.aegis-bundles.C.>").await;
    assert_eq!(meta.len(), digests.len(), "one metadata record per bundle");
    // Known limitation (not asserted): when both control planes find no object and put the
    // same bundle at once, the async-nats object store's put (random chunk subject, then a
    // rollup of the metadata) leaves the loser's chunks behind, unreferenced. Readers never
    // see them; they only cost storage. Reported, with the count, rather than failed on.
    if chunk_msgs.len() != chunks {
        eprintln!(
            "NOTE: the object store holds {} chunk messages for {} referenced chunks: {} orphaned by concurrent puts of the same bundle",
            chunk_msgs.len(),
            chunks,
            chunk_msgs.len().saturating_sub(chunks)
        );
    }

    // AEGIS_CHANGES: exactly one checks_completed per accepted proposal.
    let changes = envelopes(&read_stream(&js, "AEGIS_CHANGES", "aegis.changes.>").await);
    let mut checks: BTreeMap<(TenantId, ChangeId), usize> = BTreeMap::new();
    for e in &changes {
        if let Event::ChecksCompleted(c) = &e.event {
            *checks
                .entry((e.tenant.clone(), c.change_id.clone()))
                .or_default() += 1;
        }
    }
    let mut want_checks: BTreeMap<(TenantId, ChangeId), usize> = BTreeMap::new();
    for id in [&c1, &c2] {
        want_checks.insert((acme.clone(), id.clone()), 1);
    }
    for e in &expectations {
        for id in &e.accepted_proposals {
            want_checks.insert((e.tenant.clone(), id.clone()), 1);
        }
    }
    assert_eq!(checks, want_checks, "one checks_completed per proposal");

    // Stop both: identical state, equal to a fresh rebuild, everything applied.
    a.kill9();
    b.kill9();
    let da = state_digest(&a.data_dir).unwrap();
    let db = state_digest(&b.data_dir).unwrap();
    assert_eq!(
        da,
        db,
        "the two control planes' states differ\n{}",
        logs(&a, &b)
    );
    assert_eq!(da["applied_seq"].as_u64(), Some(last));
    let dir = tempfile::tempdir().unwrap();
    let out = rebuild(&server.url(), &keys, &dir.path().join("rebuilt")).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dr = state_digest(&dir.path().join("rebuilt")).unwrap();
    assert_eq!(da, dr, "a rebuild differs from the live control planes");
    eprintln!(
        "two control planes: {} versions over {} tenants, {} proposals checked once each, state {} ({} keys, applied {last}); {:?}",
        digests.len(),
        want_versions.len(),
        want_checks.len(),
        da["digest"],
        da["keys"],
        started.elapsed()
    );
}
