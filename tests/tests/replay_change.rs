//! `aegisctl replay --change`: a proposed change's candidate (from the control plane) replayed
//! against decisions recorded by the real gateway, its summary attached to the change as a
//! signed event, shown in `aegisctl changes show`, and required before approval when the
//! tenant says so. Real nats-server, control plane, gateway and `aegisctl` binaries.
//!
//! Needs the binaries: `cargo build -p aegis-gateway -p aegis-controlplane -p aegisctl --bins`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::bundle::sha256_hex;
use aegis_core::decision::DecisionKind;
use aegis_core::events::{ShadowReportAttached, ShadowSlice};
use aegis_core::ids::ChangeId;
use aegis_core::query::ChangeView;
use aegis_replayer::CandidateKind;
use aegis_replayer::report::{Report, validate};
use aegis_tests::cli::{Run, ok};
use aegis_tests::flow::{self, accept, refuse};
use aegis_tests::stack::{
    ACME, Stack, WAIT, live_revision, pay, unmasked_finance, unmasked_finance_vectors,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// `aegisctl <args> --tenant acme --nats URL` as nobody in particular (no signing key).
fn ctl(stack: &Stack, args: &[&str]) -> Run {
    let url = stack.server.url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--tenant", ACME, "--nats", &url]);
    aegis_tests::cli::run(&all, &[])
}

fn change(stack: &Stack, id: &ChangeId) -> ChangeView {
    let run = ok(
        ctl(stack, &["changes", "show", id.as_str(), "--json"]),
        "changes show --json",
    );
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn a_change_is_replayed_its_report_attached_and_required_before_approval() {
    let mut stack = Stack::start();
    let gw = stack.gateway("gw-change");
    let finance = stack.token("finance-agent", &["planner"]);
    let dir = tempfile::tempdir().unwrap();
    let acme = stack.acme().tenant.clone();
    let [alice, _bob, carol, _pat] = stack.acme().actors.clone();
    let keys = stack.write_keys(dir.path());

    // Version 2 records replayable payments (no masking, approval above 5,900).
    let v2 = stack.publish_change_with_vectors(
        ACME,
        &unmasked_finance(5900),
        &unmasked_finance_vectors(),
    );
    gw.wait_version(ACME, v2, WAIT).unwrap();
    let first = stack.block_on(flow::stream_last(&stack.js, "AEGIS_DECISIONS")) + 1;
    let mut ids: BTreeMap<u64, String> = BTreeMap::new();
    for (amount, expected) in [
        (100, "allow"),
        (3000, "allow"),
        (5500, "allow"),
        (7000, "approval_needed"),
        (30000, "deny"),
    ] {
        let (status, answer) = gw.decide(&finance, &pay(amount)).unwrap();
        assert_eq!((status, answer["decision"].as_str()), (200, Some(expected)));
        ids.insert(amount, answer["decision_id"].as_str().unwrap().to_owned());
    }
    let wanted = ids.values().cloned().collect();
    stack.wait_decisions(&format!("aegis.decisions.{ACME}.>"), &wanted, WAIT);

    // The tenant wants a shadow report before a high-risk change is approved.
    let run = ok(
        stack.aegisctl(
            &keys,
            "root",
            &["tenant", "configure", "--shadow-report-required", "high"],
        ),
        "tenant configure",
    );
    assert!(
        run.stdout
            .contains("shadow report required from: high risk"),
        "{}",
        run.stdout
    );

    // Alice proposes a stricter bound: approval above 1,000.
    let id = ChangeId::random().unwrap();
    let revision = stack.block_on(live_revision(&stack.js, &acme));
    stack.block_on(accept(
        &stack.js,
        &alice.sign(flow::finance_proposal_with_vectors(
            &id,
            &unmasked_finance(1000),
            revision,
            &unmasked_finance_vectors(),
        )),
    ));
    let view = change(&stack, &id);
    assert!(view.shadow_report_required, "{view:#?}");
    assert!(view.shadow_reports.is_empty());
    let run = ok(
        ctl(&stack, &["changes", "show", id.as_str()]),
        "changes show",
    );
    assert!(
        run.stdout.contains("required before approval"),
        "{}",
        run.stdout
    );

    // Bob may not approve it yet.
    let run = stack.aegisctl(&keys, "bob", &["approve", id.as_str()]);
    assert_eq!(run.code, 5, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("requires a shadow report"),
        "{}",
        run.stdout
    );

    // Replaying a change attaches its report, so it needs an identity (or --no-attach).
    let from = first.to_string();
    let replay = |extra: &[&str], who: Option<&str>| {
        let mut args = vec!["replay", "--change", id.as_str(), "--from-seq", &from];
        args.extend(extra);
        match who {
            Some(actor) => stack.aegisctl(&keys, actor, &args),
            None => ctl(&stack, &args),
        }
    };
    let run = replay(&[], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--actor"), "{}", run.stderr);
    let run = ok(replay(&["--no-attach"], None), "replay --no-attach");
    assert!(
        run.stdout.contains("amount_requires_approval"),
        "{}",
        run.stdout
    );
    assert!(change(&stack, &id).shadow_reports.is_empty());

    // Bob replays it and attaches the report.
    let file = dir.path().join("report.json");
    let file_arg = file.display().to_string();
    let run = ok(
        replay(&["--format", "json", "--output", &file_arg], Some("bob")),
        "replay --change as bob",
    );
    assert!(run.stderr.contains("accepted"), "{}", run.stderr);
    let bytes = std::fs::read(&file).unwrap();
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    if let Err(errors) = validate(&value) {
        panic!("{errors:#?}\n{value:#}");
    }
    let report: Report = serde_json::from_value(value).unwrap();
    assert_eq!(report.candidate.kind, CandidateKind::ProposedChange);
    assert_eq!(report.counts.replayed, 5);
    assert_eq!(report.counts.changed, 2, "{report:#?}");
    assert_eq!(
        report.transition(DecisionKind::Allow, DecisionKind::ApprovalNeeded),
        2
    );
    let changed: Vec<&str> = report
        .examples
        .iter()
        .flat_map(|t| t.examples.iter().map(|e| e.decision_id.as_str()))
        .collect();
    assert_eq!(changed.len(), 2);
    for amount in [3000, 5500] {
        assert!(changed.contains(&ids[&amount].as_str()), "{amount}");
    }

    // The change carries bob's signed summary, tied to the file and to the checked candidate.
    let view = change(&stack, &id);
    assert_eq!(view.shadow_reports.len(), 1, "{view:#?}");
    let attached = &view.shadow_reports[0];
    assert_eq!(attached.attached.actor.as_str(), "bob");
    let summary = &attached.report;
    assert_eq!(
        summary.report_digest,
        format!("sha256:{}", sha256_hex(&bytes))
    );
    assert_eq!(
        Some(&summary.candidate_digest),
        view.checks.as_ref().unwrap().candidate_digest.as_ref()
    );
    assert_eq!(
        Some(&summary.candidate_digest),
        report.candidate.digest.as_ref()
    );
    assert_eq!(
        (
            summary.decisions,
            summary.replayed,
            summary.changed,
            summary.would_deny
        ),
        (5, 5, 2, 1)
    );
    assert_eq!(summary.slice.first_seq, Some(first));
    assert_eq!(summary.slice.last_seq, Some(first + 4));
    let pairs: Vec<(DecisionKind, DecisionKind, u64)> = summary
        .transitions
        .iter()
        .map(|t| (t.from, t.to, t.count))
        .collect();
    assert!(pairs.contains(&(DecisionKind::Allow, DecisionKind::ApprovalNeeded, 2)));
    assert!(pairs.contains(&(DecisionKind::Deny, DecisionKind::Deny, 1)));
    let run = ok(
        ctl(&stack, &["changes", "show", id.as_str()]),
        "changes show",
    );
    for needle in [
        "shadow reports: 1",
        "by bob at",
        "allow -> approval_needed: 2",
        "changed:    2 (40.00%)",
        summary.report_digest.as_str(),
    ] {
        assert!(run.stdout.contains(needle), "{needle}:\n{}", run.stdout);
    }

    // A summary of another candidate is refused, and nothing stored changes.
    let forged = ShadowReportAttached {
        candidate_digest: format!("sha256:{}", "0".repeat(64)),
        slice: ShadowSlice {
            first_seq: None,
            last_seq: None,
            first_time: None,
            last_time: None,
        },
        ..summary.clone()
    };
    stack.block_on(refuse(
        &stack.js,
        &carol.sign(forged),
        "the checks of change",
    ));
    assert_eq!(change(&stack, &id).shadow_reports.len(), 1);

    // Now the approvals go through.
    ok(
        stack.aegisctl(&keys, "bob", &["approve", id.as_str()]),
        "bob approves",
    );
    stack.block_on(accept(
        &stack.js,
        &carol.sign(aegis_core::events::ChangeApproved {
            change_id: id.clone(),
            comment: None,
        }),
    ));
    assert_eq!(change(&stack, &id).approvals.len(), 2);
}
