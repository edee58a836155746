//! The replayer end to end: a decision log recorded by driving the real gateway (real
//! nats-server, real control plane), replayed against the version that recorded it, against
//! a stricter policy tree, a stricter published version (through the `aegisctl` binary) and
//! that version's bundle file.
//!
//! The finance template masks `account_number` in the log, so its payments are not
//! replayable: version 1 (the template) records a few of those. Version 2 is the template
//! without masking and with a looser approval bound (5,900), published with the template's
//! vectors minus the one that checks the masking; the mix of calls is recorded under it.
//! Version 3 (published later) has the template's bound, 5,000.
//!
//! Needs the binaries: `cargo build -p aegis-gateway -p aegis-controlplane -p aegisctl --bins`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::decision::DecisionKind;
use aegis_core::ids::{AgentId, TenantId};
use aegis_core::keys::TrustStore;
use aegis_nats::topology::DECISIONS_STREAM;
use aegis_replayer::engine::{EngineOptions, NotReplayable};
use aegis_replayer::report::{Report, ThresholdStatus, validate};
use aegis_replayer::{Bounds, Candidate, CandidateKind, Filter, SkipCause, SliceSpec, markdown};
use aegis_tests::stack::{
    ACME, APPROVAL_LIMIT, Stack, WAIT, balance, decide_raw, pay, unmasked_finance,
    unmasked_finance_vectors,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn acme() -> TenantId {
    TenantId::new(ACME).unwrap()
}

fn trust(stack: &Stack) -> TrustStore {
    aegisctl::online::audit::load_trust(&stack.trust_file).unwrap()
}

fn options() -> EngineOptions {
    EngineOptions {
        workers: 2,
        examples: 100,
        ..EngineOptions::default()
    }
}

fn replay(stack: &Stack, spec: &SliceSpec, candidate: &Candidate) -> Report {
    stack
        .block_on(aegis_replayer::replay(
            &stack.js,
            spec,
            candidate,
            options(),
        ))
        .unwrap()
}

fn last_sequence(stack: &Stack) -> u64 {
    stack.block_on(async {
        let mut s = stack.js.get_stream(DECISIONS_STREAM).await.unwrap();
        s.info().await.unwrap().state.last_sequence
    })
}

/// Every changed decision of a report: decision id → (recorded, candidate).
fn changed(report: &Report) -> BTreeMap<String, (DecisionKind, DecisionKind)> {
    let mut out = BTreeMap::new();
    for t in &report.examples {
        assert_eq!(t.examples.len() as u64, t.count, "all examples kept");
        for e in &t.examples {
            assert!(out.insert(e.decision_id.clone(), (t.from, t.to)).is_none());
        }
    }
    assert_eq!(out.len() as u64, report.counts.changed);
    out
}

fn assert_valid(report: &Report) {
    let value = serde_json::to_value(report).unwrap();
    if let Err(errors) = validate(&value) {
        panic!("{errors:#?}\n{value:#}");
    }
}

#[test]
fn replays_a_recorded_stream_against_the_same_and_stricter_policies() {
    let mut stack = Stack::start();
    let gw = stack.gateway("gw-replay");
    let finance = stack.token("finance-agent", &["planner"]);
    let research = stack.token("research-agent", &["planner"]);
    let decide = |token: &str, body: &Value| -> String {
        let (status, answer) = gw.decide(token, body).unwrap();
        assert_eq!(status, 200, "{answer:#}");
        answer["decision_id"].as_str().unwrap().to_owned()
    };
    let filter = format!("aegis.decisions.{ACME}.>");

    // Version 1 masks account numbers: its payments are not replayable; a balance look-up
    // (no account number) is.
    let masked: BTreeSet<String> = [decide(&finance, &pay(3000)), decide(&finance, &pay(7000))]
        .into_iter()
        .collect();
    let v1_balance = decide(&finance, &balance());
    // A token whose signature does not verify: recorded under the tenant it claims, with an
    // unverified identity.
    let mut forged = finance.clone().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (status, answer) = decide_raw(
        &gw,
        Some(&format!("Bearer {forged}")),
        pay(100).to_string().as_bytes(),
    );
    assert_eq!(status, 401, "{answer:#}");
    let mut v1_ids = masked.clone();
    v1_ids.insert(v1_balance);
    v1_ids.insert(answer["decision_id"].as_str().unwrap().to_owned());
    stack.wait_decisions(&filter, &v1_ids, WAIT);
    let v1_last = last_sequence(&stack);

    // Version 2: no masking, approval above 5,900.
    let v2 = stack.publish_change_with_vectors(
        ACME,
        &unmasked_finance(5900),
        &unmasked_finance_vectors(),
    );
    assert_eq!(v2, 2);
    gw.wait_version(ACME, v2, WAIT).unwrap();
    let since = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    // A sleep so that `since` is after every version 1 record (stored timestamps).
    std::thread::sleep(Duration::from_millis(1100));
    let since = since + Duration::from_secs(1);

    // The mix: (amount, decision under version 2).
    let mix = [
        (100, "allow"),
        (3000, "allow"),
        (5000, "allow"),
        (5500, "allow"),
        (7000, "approval_needed"),
        (30000, "deny"),
    ];
    let mut by_amount: BTreeMap<u64, String> = BTreeMap::new();
    for (amount, expected) in mix {
        let (status, answer) = gw.decide(&finance, &pay(amount)).unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["decision"], expected, "{amount}: {answer:#}");
        by_amount.insert(amount, answer["decision_id"].as_str().unwrap().to_owned());
    }
    let v2_balance = decide(&finance, &balance());
    let (status, answer) = gw.decide(&research, &pay(10)).unwrap();
    assert_eq!((status, answer["decision"].as_str()), (200, Some("deny")));
    let no_policy = answer["decision_id"].as_str().unwrap().to_owned();
    let mut v2_ids: BTreeSet<String> = by_amount.values().cloned().collect();
    v2_ids.insert(v2_balance);
    v2_ids.insert(no_policy.clone());
    let records = stack.wait_decisions(&filter, &v2_ids, WAIT);
    let masked_in_log = records
        .iter()
        .filter(|r| masked.contains(r["id"].as_str().unwrap()))
        .filter(|r| r["masked_params"] == serde_json::json!(["account_number"]))
        .count();
    assert_eq!(masked_in_log, 2, "version 1 masks its payments in the log");
    let total = (v1_ids.len() + v2_ids.len()) as u64;
    assert_eq!(last_sequence(&stack), total, "nothing else on the stream");

    // 1. The whole stream against version 2 (what recorded most of it): nothing changes;
    //    version 1's masked payments are counted as not replayable.
    let trust = trust(&stack);
    let same = stack
        .block_on(Candidate::from_published(
            &stack.js,
            &acme(),
            v2,
            &trust,
            Duration::from_secs(10),
        ))
        .unwrap();
    assert_eq!(same.info.kind, CandidateKind::PublishedVersion);
    let report = replay(&stack, &SliceSpec::all(acme()), &same);
    assert_eq!(report.counts.records, total);
    assert_eq!(report.counts.decisions, total);
    assert_eq!(report.counts.replayed, total - 3);
    assert_eq!(report.counts.changed, 0, "{report:#?}");
    assert_eq!(report.counts.reasons_changed, 0);
    let causes = &report.counts.not_replayable_by_cause;
    assert_eq!(causes[&NotReplayable::MaskedParams], 2);
    assert_eq!(causes[&NotReplayable::UnverifiedIdentity], 1);
    assert_eq!(report.counts.not_replayable, 3);
    assert_eq!(report.slice.read.first_sequence, Some(1));
    assert_eq!(report.slice.read.last_sequence, Some(total));
    assert_eq!(report.by_agent["research-agent"].candidate_denies, 1);
    assert_valid(&report);

    // 2. Version 2's traffic against a policy tree with approval above 1,000: the 3,000,
    //    5,000 and 5,500 payments now need approval, nothing else changes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("finance.yaml"), unmasked_finance(1000)).unwrap();
    let strict = Candidate::from_policy_tree(&[dir.path().to_owned()], &acme()).unwrap();
    let v2_slice = SliceSpec {
        tenant: acme(),
        bounds: Bounds::Sequence {
            from: v1_last + 1,
            to: None,
        },
        filter: Filter::default(),
    };
    let report = replay(&stack, &v2_slice, &strict);
    assert_eq!(report.counts.decisions, v2_ids.len() as u64);
    assert_eq!(report.counts.replayed, v2_ids.len() as u64);
    let expected: BTreeMap<String, (DecisionKind, DecisionKind)> = [3000, 5000, 5500]
        .iter()
        .map(|a| {
            (
                by_amount[a].clone(),
                (DecisionKind::Allow, DecisionKind::ApprovalNeeded),
            )
        })
        .collect();
    assert_eq!(changed(&report), expected);
    for e in &report.examples[0].examples {
        assert_eq!(e.recorded_reasons, ["allowed"]);
        assert_eq!(e.candidate_reasons, ["amount_requires_approval"]);
        assert_eq!(
            (e.agent.as_str(), e.tool.as_str()),
            ("finance-agent", "payments")
        );
    }
    assert_eq!(report.counts.unchanged, v2_ids.len() as u64 - 3);
    assert_eq!(report.histograms.len(), 1, "{:#?}", report.histograms);
    assert_eq!(report.histograms[0].param, "amount");
    // No trust store given to the library call: thresholds are not compared.
    assert_eq!(report.thresholds.status, ThresholdStatus::Unavailable);
    assert_valid(&report);

    // The same slice by time: the same decisions.
    let by_time = replay(
        &stack,
        &SliceSpec {
            bounds: Bounds::Time { since, until: None },
            ..v2_slice.clone()
        },
        &strict,
    );
    assert_eq!(by_time.counts.decisions, report.counts.decisions);
    assert_eq!(changed(&by_time), expected);
    // And filtered to the agent without a policy.
    let research_only = replay(
        &stack,
        &SliceSpec {
            filter: Filter {
                agents: vec![AgentId::new("research-agent").unwrap()],
                ..Filter::default()
            },
            ..v2_slice.clone()
        },
        &strict,
    );
    assert_eq!(research_only.counts.decisions, 1);
    assert_eq!(
        research_only.counts.skipped[&SkipCause::FilteredOut],
        v2_ids.len() as u64 - 1
    );
    assert_eq!(research_only.would_deny_rate, Some(1.0));

    // 3. Version 3 (the template's bound, 5,000), published, through the binary: only the
    //    5,500 payment changes, and the moved bound is marked on the amount histogram.
    let v3 = stack.publish_change_with_vectors(
        ACME,
        &unmasked_finance(APPROVAL_LIMIT),
        &unmasked_finance_vectors(),
    );
    assert_eq!(v3, 3);
    let from = (v1_last + 1).to_string();
    let trust_path = stack.trust_file.display().to_string();
    let url = stack.server.url();
    let run = aegis_tests::cli::run(
        &[
            "replay",
            "--tenant",
            ACME,
            "--nats",
            &url,
            "--version",
            "3",
            "--trust",
            &trust_path,
            "--from-seq",
            &from,
            "--format",
            "json",
            "--examples",
            "50",
        ],
        &[],
    );
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let value: Value = serde_json::from_str(&run.stdout).unwrap();
    if let Err(errors) = validate(&value) {
        panic!("{errors:#?}\n{value:#}");
    }
    let report: Report = serde_json::from_value(value).unwrap();
    assert_eq!(report.candidate.version, Some(3));
    assert_eq!(report.counts.replayed, v2_ids.len() as u64);
    let only_5500: BTreeMap<_, _> = [(
        by_amount[&5500].clone(),
        (DecisionKind::Allow, DecisionKind::ApprovalNeeded),
    )]
    .into_iter()
    .collect();
    assert_eq!(changed(&report), only_5500);
    assert_eq!(
        report.thresholds.status,
        ThresholdStatus::Compared,
        "{:#?}",
        report.thresholds
    );
    assert_eq!(
        report.thresholds.changes.len(),
        1,
        "{:#?}",
        report.thresholds
    );
    let moved = &report.thresholds.changes[0];
    assert_eq!(
        (moved.param.as_str(), moved.recorded, moved.candidate),
        ("amount", Some(5900.0), Some(5000.0))
    );
    assert_eq!(report.histograms[0].thresholds, report.thresholds.changes);
    let md = markdown::render(&report);
    assert!(md.contains("| recorded | candidate | count |"), "{md}");
    assert!(md.contains("| allow | approval_needed | **1** |"), "{md}");
    assert!(md.contains(&by_amount[&5500]), "{md}");
    assert!(md.contains("new bound 5000"), "{md}");

    // 4. Version 3's bundle as a file: the same answer.
    let bundle = dir.path().join("acme-v3.tar.gz");
    std::fs::write(&bundle, stack.bundle_bytes(&stack.current().digest)).unwrap();
    let file = Candidate::from_bundle_file(&bundle, &trust, &acme()).unwrap();
    assert_eq!(file.info.version, Some(3));
    let report = replay(&stack, &v2_slice, &file);
    assert_eq!(changed(&report), only_5500);

    // A bundle no trusted key signed is refused, and `aegisctl replay` says so (exit 1).
    let other = dir.path().join("other.pub.json");
    aegis_core::keys::Keypair::generate()
        .unwrap()
        .public_key()
        .write(&other)
        .unwrap();
    let run = aegis_tests::cli::run(
        &[
            "replay",
            "--tenant",
            ACME,
            "--nats",
            &url,
            "--bundle",
            &bundle.display().to_string(),
            "--trust",
            &other.display().to_string(),
        ],
        &[],
    );
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stderr.contains("rejected"), "{}", run.stderr);
}

/// A tenant operator (`acme-operator` of `nats/conf/accounts.conf`) may replay its own tenant's
/// decisions against a policy tree: the reader needs nothing but an ordered push consumer on
/// `aegis.decisions.acme.>`.
#[test]
fn a_tenant_operator_replays_its_own_decisions() {
    let stack = Stack::start_with_accounts();
    let gw = stack.gateway("gw1");
    let finance = stack.token("finance-agent", &["planner"]);
    let research = stack.token("research-agent", &["planner"]);
    let mut ids = BTreeSet::new();
    for (token, body) in [
        (&finance, balance()),
        (&finance, pay(3000)),
        (&research, pay(10)),
    ] {
        let (status, answer) = gw.decide(token, &body).unwrap();
        assert_eq!(status, 200, "{answer:#}");
        ids.insert(answer["decision_id"].as_str().unwrap().to_owned());
    }
    stack.wait_decisions(&format!("aegis.decisions.{ACME}.>"), &ids, WAIT);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("finance.yaml"), unmasked_finance(1000)).unwrap();
    let url = stack.server.url();
    let password = Stack::password("acme-operator");
    let env = [
        ("AEGIS_NATS_URL", url.as_str()),
        ("AEGIS_NATS_USER", "acme-operator"),
        ("AEGIS_NATS_PASSWORD", password.as_str()),
        ("AEGIS_TENANT", ACME),
    ];
    let tree = dir.path().display().to_string();
    let run = aegis_tests::cli::run(&["replay", "--policies", &tree, "--json"], &env);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let value: Value = serde_json::from_str(&run.stdout).unwrap();
    if let Err(errors) = validate(&value) {
        panic!("{errors:#?}\n{value:#}");
    }
    let report: Report = serde_json::from_value(value).unwrap();
    assert_eq!(report.counts.decisions, 3);
    assert_eq!(report.counts.replayed, 2, "{report:#?}");
    assert_eq!(
        report.counts.not_replayable_by_cause[&NotReplayable::MaskedParams],
        1
    );
    assert_eq!(report.counts.changed, 0);
    assert_eq!(report.candidate.kind, CandidateKind::PolicyTree);

    // Another tenant's decisions are not the operator's to read: creating the consumer gets
    // no answer (exit 6).
    std::fs::write(
        dir.path().join("globex.yaml"),
        aegis_tests::stack::finance_policy_for("globex"),
    )
    .unwrap();
    let run = aegis_tests::cli::run(&["replay", "--policies", &tree, "--tenant", "globex"], &env);
    assert_eq!(
        run.code, 6,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains("aegis.decisions.globex.>"),
        "{}",
        run.stderr
    );
    // Nor is object store aegis-bundles (shared by every tenant): a published version is
    // replayed with other credentials, or from its bundle file (exit 6, saying so).
    let trust = stack.trust_file.display().to_string();
    let run = aegis_tests::cli::run(&["replay", "--version", "1", "--trust", &trust], &env);
    assert_eq!(
        run.code, 6,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains("tenant operators may not"),
        "{}",
        run.stderr
    );
}
