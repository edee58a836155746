//! `aegisctl audit export --decisions` over a decision log written by a real gateway, with a
//! runtime approval granted by carol through `aegisctl approvals grant` (relayed and signed by
//! the real control plane), a second one granted for a second and left to lapse (reported
//! `expired`), and a new policy version published mid-way.
//!
//! The binaries come from `target/<profile>/`: `cargo build --bins` first.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_replayer::decision_report;
use aegis_tests::cli::ok;
use aegis_tests::stack::{
    ACME, Stack, WAIT, code, finance_with_approval_limit, pay, with_approval,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[test]
fn the_decision_report_counts_versions_and_names_the_approver() {
    let mut stack = Stack::start();
    let dir = tempfile::tempdir().unwrap();
    for op in &stack.acme().actors {
        op.key.write_to_dir(dir.path(), op.actor.as_str()).unwrap();
    }
    let keys = dir.path();
    let trust = dir.path().join("controlplane.pub.json");
    stack.keys.control_plane.public_key().write(&trust).unwrap();
    let since = OffsetDateTime::now_utc() - Duration::from_secs(1);
    let gw = stack.gateway("gw1");
    let token = stack.token("finance-agent", &["planner"]);

    // Every answer the gateway gives, to count against the report.
    let mut answers: Vec<Value> = Vec::new();
    let mut decide = |body: &Value| -> Value {
        let (_, answer) = gw.decide(&token, body).unwrap();
        answers.push(answer.clone());
        answer
    };
    decide(&aegis_tests::stack::balance());
    decide(&aegis_tests::stack::balance());
    assert_eq!(decide(&pay(100))["decision"], "allow");
    let first = decide(&pay(6_000));
    assert_eq!(first["decision"], "approval_needed", "{first:#}");
    let id = first["approval"]["id"].as_str().unwrap().to_owned();
    ok(
        stack.aegisctl(
            keys,
            "carol",
            &[
                "approvals",
                "grant",
                &id,
                "--ttl",
                "10m",
                "--comment",
                "<b>ok</b>",
            ],
        ),
        "grant",
    );
    let retry = with_approval(&pay(6_000), &id);
    let deadline = Instant::now() + WAIT;
    let allowed = loop {
        let a = decide(&retry);
        if a["decision"] == "allow" {
            break a;
        }
        assert!(Instant::now() < deadline, "never allowed: {a:#}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code(&allowed), "approval_granted");
    let again = decide(&retry);
    assert_eq!(code(&again), "approval_used", "{again:#}");

    // A second request, granted for one second and never used: it lapses before the report.
    let second = decide(&pay(6_000));
    assert_eq!(second["decision"], "approval_needed", "{second:#}");
    let lapsed = second["approval"]["id"].as_str().unwrap().to_owned();
    assert_ne!(lapsed, id);
    ok(
        stack.aegisctl(
            keys,
            "carol",
            &["approvals", "grant", &lapsed, "--ttl", "1s"],
        ),
        "short grant",
    );
    let grant_lapses = Instant::now() + Duration::from_secs(1);

    // Version 2 mid-way; decisions until the gateway answers with it, then two more.
    let v2 = stack.publish_change(&finance_with_approval_limit(ACME, 5_500));
    assert_eq!(v2, 2);
    let deadline = Instant::now() + WAIT;
    while decide(&pay(100))["policy_version"] != 2 {
        assert!(Instant::now() < deadline, "v2 never reached the gateway");
        std::thread::sleep(Duration::from_millis(50));
    }
    decide(&pay(200));
    decide(&aegis_tests::stack::balance());

    let ids: BTreeSet<String> = answers
        .iter()
        .map(|a| a["decision_id"].as_str().unwrap().to_owned())
        .collect();
    let recorded = stack.wait_decisions("aegis.decisions.acme.>", &ids, WAIT);
    assert_eq!(recorded.len(), ids.len());
    // The report is judged at its end (or when it is made): past the short grant's expiry.
    std::thread::sleep(grant_lapses.saturating_duration_since(Instant::now()));
    let until = OffsetDateTime::now_utc() + Duration::from_secs(1);
    let (since_s, until_s) = (
        since.format(&Rfc3339).unwrap(),
        until.format(&Rfc3339).unwrap(),
    );

    // What the report must say, from the recorded events.
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_tool: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_version: BTreeMap<u64, u64> = BTreeMap::new();
    for e in &recorded {
        *by_outcome
            .entry(e["decision"].as_str().unwrap().to_owned())
            .or_default() += 1;
        *by_tool
            .entry(e["tool_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
        *by_version
            .entry(e["policy_version"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(by_outcome["approval_needed"], 2);
    assert_eq!(by_outcome["deny"], 1);

    let export = |format: &str, with_trust: bool| -> String {
        let mut args = vec![
            "audit",
            "export",
            "--decisions",
            "--since",
            &since_s,
            "--until",
            &until_s,
            "--format",
            format,
        ];
        if with_trust {
            args.extend(["--trust", trust.to_str().unwrap()]);
        }
        ok(stack.aegisctl(keys, "carol", &args), format).stdout
    };
    let report: Value = serde_json::from_str(&export("json", true)).unwrap();
    decision_report::validate(&report).unwrap();
    assert_eq!(report["decisions"], recorded.len() as u64);
    for (outcome, n) in &by_outcome {
        assert_eq!(report["by_outcome"][outcome], *n, "{outcome}: {report:#}");
        assert_eq!(report["by_agent"]["finance-agent"][outcome], *n);
    }
    assert_eq!(report["by_agent"].as_object().unwrap().len(), 1);
    for (tool, n) in &by_tool {
        let total: u64 = report["by_tool"][tool]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(total, *n, "{tool}");
    }
    let cells = report["cells"].as_array().unwrap();
    let cell_sum: u64 = cells.iter().map(|c| c["count"].as_u64().unwrap()).sum();
    assert_eq!(cell_sum, recorded.len() as u64);
    assert!(cells.iter().any(|c| c["agent"] == "finance-agent"
        && c["tool"] == "payments"
        && c["outcome"] == "approval_needed"
        && c["count"] == 2));

    // Both versions, v1's range before v2's.
    let versions = report["policy_versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{versions:#?}");
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[1]["version"], 2);
    assert_eq!(versions[0]["decisions"], by_version[&1]);
    assert_eq!(versions[1]["decisions"], by_version[&2]);
    assert!(versions[0]["last_decision"].as_str() <= versions[1]["first_decision"].as_str());
    assert_ne!(versions[0]["digest"], versions[1]["digest"]);

    // The approvals, in request order. The first: granted by carol (signature verified), used by
    // the allowed retry.
    let approvals = report["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 2, "{approvals:#?}");
    let a = &approvals[0];
    assert_eq!(a["approval_id"], id.as_str());
    assert_eq!(a["state"], "used");
    assert_eq!(a["decided_by"], "carol");
    assert_eq!(a["signature"], "verified");
    assert_eq!(a["consumed_by"], allowed["decision_id"]);
    assert_eq!(a["request_decision"], first["decision_id"]);
    // The second: granted by carol, unused past the grant's expiry.
    let b = &approvals[1];
    assert_eq!(b["approval_id"], lapsed.as_str());
    assert_eq!(b["state"], "expired", "{b:#}");
    assert_eq!(b["decided_by"], "carol");
    assert_eq!(b["signature"], "verified");
    assert_eq!(b["consumed_by"], Value::Null);

    // Without --trust the relay is reported unverified.
    let plain: Value = serde_json::from_str(&export("json", false)).unwrap();
    assert_eq!(plain["approvals"][0]["signature"], "unverified");

    // CSV: the decision, version and approval rows.
    let csv = export("csv", true);
    assert!(
        csv.starts_with("section,agent,tool,outcome,count,"),
        "{csv}"
    );
    assert!(
        csv.contains("decision,finance-agent,payments,approval_needed,2,"),
        "{csv}"
    );
    assert!(
        csv.lines().filter(|l| l.starts_with("version,")).count() == 2,
        "{csv}"
    );
    let approval_row = csv
        .lines()
        .find(|l| l.starts_with(&format!("approval,{id},")))
        .unwrap();
    assert!(approval_row.contains(",used,carol,"), "{approval_row}");
    assert!(
        csv.contains(&format!("approval,{lapsed},")) && csv.contains(",expired,carol,"),
        "{csv}"
    );
    assert!(
        approval_row.contains(allowed["decision_id"].as_str().unwrap()),
        "{approval_row}"
    );

    // HTML: self-contained, names the approver.
    let html = export("html", true);
    assert!(html.contains("granted by carol"), "{html}");
    assert!(html.contains(allowed["decision_id"].as_str().unwrap()));
    for external in ["http://", "https://", "src=", "<script", "<link", "@import"] {
        assert!(!html.contains(external), "{external} in {html}");
    }

    // An out-of-range window holds nothing.
    let before = (since - Duration::from_secs(3600))
        .format(&Rfc3339)
        .unwrap();
    let empty = ok(
        stack.aegisctl(
            keys,
            "carol",
            &[
                "audit",
                "export",
                "--decisions",
                "--since",
                &before,
                "--until",
                &before,
            ],
        ),
        "empty",
    );
    let empty: Value = serde_json::from_str(&empty.stdout).unwrap();
    assert_eq!(empty["decisions"], 0);
    assert_eq!(empty["approvals"].as_array().unwrap().len(), 0);
}
