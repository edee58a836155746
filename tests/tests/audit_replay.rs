//! Audit replay end to end: a decision log recorded by driving the real gateway across three
//! published versions (real nats-server, real control plane), checked decision by decision
//! against the version each records, fetched from object store `aegis-bundles` and verified.
//! Then the log is tampered with, as someone with write access to the decision subject could:
//! a recorded deny republished as an allow (a disagreement, both results listed, exit 9), and
//! a decision naming a bundle digest the store does not hold (unverifiable, exit 9).
//!
//! Version 1 (the finance template) masks account numbers in the log: its payments are not
//! replayable. Versions 2 and 3 do not mask; version 2 asks for approval above 5,900,
//! version 3 above 5,000, so the same 5,500 payment was allowed under 2 and held for approval
//! under 3: the audit agrees only if each is checked against its own version.
//!
//! Needs the binaries: `cargo build -p aegis-gateway -p aegis-controlplane -p aegisctl --bins`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::decision::DecisionKind;
use aegis_core::ids::TenantId;
use aegis_nats::topology::{self, DECISIONS_STREAM};
use aegis_replayer::audit::{AuditReport, VersionStatus, validate};
use aegis_replayer::engine::NotReplayable;
use aegis_replayer::{AuditOptions, SliceSpec, Verdict};
use aegis_tests::stack::{
    ACME, Stack, WAIT, balance, pay, unmasked_finance, unmasked_finance_vectors,
};
use serde_json::Value;
use std::collections::BTreeSet;

const GATEWAY: &str = "gw-audit";

fn acme() -> TenantId {
    TenantId::new(ACME).unwrap()
}

fn last_sequence(stack: &Stack) -> u64 {
    stack.block_on(async {
        let mut s = stack.js.get_stream(DECISIONS_STREAM).await.unwrap();
        s.info().await.unwrap().state.last_sequence
    })
}

/// Publishes `record` on the gateway's decision subject with a fresh `Nats-Msg-Id`, as a
/// client allowed to write there could.
fn inject(stack: &Stack, record: &Value) {
    let subject = topology::decisions_subject(&acme(), GATEWAY).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("tampered-{}", record["id"].as_str().unwrap()).as_str(),
    );
    let payload = serde_json::to_vec(record).unwrap();
    stack.block_on(async {
        stack
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
}

/// `aegisctl audit replay` with `extra` arguments: (exit code, stdout, stderr).
fn audit_cli(stack: &Stack, extra: &[&str]) -> (i32, String, String) {
    let url = stack.server.url();
    let trust = stack.trust_file.display().to_string();
    let mut args = vec![
        "audit", "replay", "--tenant", ACME, "--nats", &url, "--trust", &trust,
    ];
    args.extend_from_slice(extra);
    let run = aegis_tests::cli::run(&args, &[]);
    (run.code, run.stdout, run.stderr)
}

fn parse_report(stdout: &str) -> AuditReport {
    let value: Value = serde_json::from_str(stdout).unwrap();
    if let Err(errors) = validate(&value) {
        panic!("{errors:#?}\n{value:#}");
    }
    serde_json::from_value(value).unwrap()
}

#[test]
fn audit_replay_proves_a_recorded_log_and_finds_tampering() {
    let mut stack = Stack::start();
    let gw = stack.gateway(GATEWAY);
    let finance = stack.token("finance-agent", &["planner"]);
    let filter = format!("aegis.decisions.{ACME}.>");
    let mut ids = BTreeSet::new();
    let mut decide = |body: &Value, expected: &str| -> String {
        let (status, answer) = gw.decide(&finance, body).unwrap();
        assert_eq!(status, 200, "{answer:#}");
        assert_eq!(answer["decision"], expected, "{body}: {answer:#}");
        let id = answer["decision_id"].as_str().unwrap().to_owned();
        ids.insert(id.clone());
        id
    };

    // Version 1: payments masked in the log (not replayable), a balance look-up replayable.
    decide(&pay(3000), "allow");
    decide(&pay(7000), "approval_needed");
    decide(&balance(), "allow");

    // Version 2: approval above 5,900.
    let v2 = stack.publish_change_with_vectors(
        ACME,
        &unmasked_finance(5900),
        &unmasked_finance_vectors(),
    );
    assert_eq!(v2, 2);
    gw.wait_version(ACME, v2, WAIT).unwrap();
    let v2_5500 = decide(&pay(5500), "allow");
    decide(&pay(100), "allow");
    decide(&balance(), "allow");

    // Version 3: approval above 5,000; the same 5,500 payment is now held.
    let v3 = stack.publish_change_with_vectors(
        ACME,
        &unmasked_finance(5000),
        &unmasked_finance_vectors(),
    );
    assert_eq!(v3, 3);
    gw.wait_version(ACME, v3, WAIT).unwrap();
    let v3_5500 = decide(&pay(5500), "approval_needed");
    let denied = decide(&pay(30000), "deny");
    decide(&pay(100), "allow");
    let records = stack.wait_decisions(&filter, &ids, WAIT);
    let total = ids.len() as u64;
    assert_eq!(last_sequence(&stack), total, "nothing else on the stream");

    // 1. The untouched log: consistent, every replayable decision checked against its own
    //    version (a single version could not agree with both 5,500 payments).
    let trust = aegisctl::online::audit::load_trust(&stack.trust_file).unwrap();
    let report = stack
        .block_on(aegis_replayer::audit_replay(
            &stack.js,
            &SliceSpec::all(acme()),
            &trust,
            AuditOptions {
                workers: 2,
                ..AuditOptions::default()
            },
        ))
        .unwrap();
    assert_eq!(report.verdict, Verdict::Consistent, "{report:#?}");
    assert_eq!(report.counts.decisions, total);
    assert_eq!(report.counts.checked, total - 2);
    assert_eq!(report.counts.agreeing, total - 2);
    assert_eq!(
        report.counts.not_replayable_by_cause[&NotReplayable::MaskedParams],
        2
    );
    assert_eq!(report.counts.unverifiable, 0);
    let per_version: Vec<(Option<u64>, VersionStatus, u64, u64, u64)> = report
        .versions
        .iter()
        .map(|v| {
            (
                v.policy_version,
                v.status,
                v.counts.decisions,
                v.counts.checked,
                v.counts.agreeing,
            )
        })
        .collect();
    assert_eq!(
        per_version,
        [
            (Some(1), VersionStatus::Verified, 3, 1, 1),
            (Some(2), VersionStatus::Verified, 3, 3, 3),
            (Some(3), VersionStatus::Verified, 3, 3, 3),
        ]
    );
    let digests: BTreeSet<_> = report.versions.iter().map(|v| &v.bundle_digest).collect();
    assert_eq!(digests.len(), 3, "each version has its own digest");
    validate(&serde_json::to_value(&report).unwrap()).unwrap();
    assert!(ids.contains(&v2_5500) && ids.contains(&v3_5500));

    // The same through the binary: exit 0, the verdict first.
    let (code, stdout, stderr) = audit_cli(&stack, &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("CONSISTENT"), "{stdout}");

    // 2. A recorded deny republished as an allow, everything else the same: a disagreement,
    //    listed with both results.
    let original = records
        .iter()
        .find(|r| r["id"] == denied.as_str())
        .unwrap()
        .clone();
    assert_eq!(original["decision"], "deny");
    let mut flipped = original.clone();
    flipped["decision"] = "allow".into();
    flipped["reasons"] = serde_json::json!([{"code": "allowed", "message": "allowed"}]);
    inject(&stack, &flipped);
    let tampered_seq = total + 1;
    assert_eq!(last_sequence(&stack), tampered_seq);
    let (code, stdout, stderr) = audit_cli(&stack, &["--json"]);
    assert_eq!(code, 9, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report = parse_report(&stdout);
    assert_eq!(report.verdict, Verdict::Inconsistent);
    assert_eq!(report.counts.disagreeing, 1, "{report:#?}");
    assert_eq!(
        report.counts.agreeing,
        total - 2,
        "the original still agrees"
    );
    assert_eq!(report.counts.unverifiable, 0);
    assert!(report.disagreements_complete);
    let d = &report.disagreements[0];
    assert_eq!(d.decision_id, denied);
    assert_eq!(d.sequence, tampered_seq);
    assert_eq!(
        (d.agent.as_str(), d.tool.as_str(), d.action.as_str()),
        (
            "finance-agent",
            "payments",
            original["action"].as_str().unwrap()
        )
    );
    assert_eq!(d.policy_version, Some(3));
    assert_eq!(d.recorded.decision, DecisionKind::Allow);
    assert_eq!(d.recorded.reasons, ["allowed"]);
    assert_eq!(d.replayed.decision, DecisionKind::Deny);
    let original_codes: Vec<&str> = original["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(d.replayed.reasons, original_codes);
    let v3_counts = report
        .versions
        .iter()
        .find(|v| v.policy_version == Some(3))
        .unwrap();
    assert_eq!(
        (v3_counts.counts.checked, v3_counts.counts.disagreeing),
        (4, 1)
    );
    // For a human: the verdict, the versions, then the disagreement with both results.
    let (code, text, _) = audit_cli(&stack, &[]);
    assert_eq!(code, 9);
    assert!(text.starts_with("INCONSISTENT: 1 disagreement"), "{text}");
    let versions_at = text.find("Versions:").unwrap();
    let listed_at = text.find(&denied).unwrap();
    assert!(versions_at < listed_at, "{text}");
    assert!(
        text.contains("recorded allow [allowed], replayed deny"),
        "{text}"
    );

    // 3. A decision naming a digest the object store does not hold: unverifiable, never
    //    agreeing.
    let mut unknown = records
        .iter()
        .find(|r| r["id"] == v3_5500.as_str())
        .unwrap()
        .clone();
    let fake = format!("sha256:{}", "0".repeat(64));
    unknown["bundle_digest"] = fake.clone().into();
    unknown["policy_version"] = 7.into();
    inject(&stack, &unknown);
    let from = (tampered_seq + 1).to_string();
    let (code, stdout, stderr) = audit_cli(&stack, &["--json", "--from-seq", &from]);
    assert_eq!(code, 9, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report = parse_report(&stdout);
    assert_eq!(report.verdict, Verdict::Inconsistent);
    assert_eq!(report.counts.decisions, 1);
    assert_eq!(report.counts.unverifiable, 1);
    assert_eq!(report.counts.checked, 0);
    assert_eq!(report.counts.agreeing, 0);
    assert_eq!(report.versions.len(), 1);
    let v = &report.versions[0];
    assert_eq!(v.policy_version, Some(7));
    assert_eq!(v.bundle_digest.as_deref(), Some(fake.as_str()));
    assert_eq!(v.status, VersionStatus::Unverifiable);
    assert!(v.note.as_deref().unwrap().contains(&fake), "{v:#?}");

    // An unreadable trust file is an error, not a verdict (exit 2).
    let (code, _, stderr) = {
        let url = stack.server.url();
        let run = aegis_tests::cli::run(
            &[
                "audit",
                "replay",
                "--tenant",
                ACME,
                "--nats",
                &url,
                "--trust",
                "/nonexistent/trust.json",
            ],
            &[],
        );
        (run.code, run.stdout, run.stderr)
    };
    assert_eq!(code, 2, "{stderr}");
}

/// A tenant operator may read its tenant's decisions but not object store `aegis-bundles`
/// (shared by every tenant): the audit cannot verify anything, which is an error (exit 6,
/// saying why), not a verdict about the log.
#[test]
fn without_access_to_the_bundles_the_audit_is_an_error_not_a_verdict() {
    let stack = Stack::start_with_accounts();
    let gw = stack.gateway("gw1");
    let finance = stack.token("finance-agent", &["planner"]);
    let (status, answer) = gw.decide(&finance, &balance()).unwrap();
    assert_eq!(status, 200, "{answer:#}");
    let ids: BTreeSet<String> = [answer["decision_id"].as_str().unwrap().to_owned()].into();
    stack.wait_decisions(&format!("aegis.decisions.{ACME}.>"), &ids, WAIT);
    let url = stack.server.url();
    let password = Stack::password("acme-operator");
    let trust = stack.trust_file.display().to_string();
    let env = [
        ("AEGIS_NATS_URL", url.as_str()),
        ("AEGIS_NATS_USER", "acme-operator"),
        ("AEGIS_NATS_PASSWORD", password.as_str()),
        ("AEGIS_TENANT", ACME),
    ];
    let run = aegis_tests::cli::run(&["audit", "replay", "--trust", &trust], &env);
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
