//! Rollout readiness end to end, as real processes: nats-server, the control-plane binary
//! (with `--readiness-interval 1`, so its readiness task measures every second), an
//! `aegis-gateway` binary enforcing the rollout, and `aegisctl` for everything an operator does.
//!
//! - a stricter candidate in shadow: traffic through the gateway, the control plane publishes a
//!   `rollout_readiness_measured` with exactly the expected counts, `aegisctl rollout status`
//!   and `rollout readiness` show it with the verdict; the publisher alone may not promote it
//!   (not even after approving it themselves), after another actor's `rollout approve` they may;
//! - a lenient candidate on a tenant whose thresholds it meets (0 days, 5 decisions): refused
//!   before any traffic, promoted by the publisher alone once measured.
//!
//! Needs the binaries: `cargo build --bins -p aegis-gateway -p aegis-controlplane -p aegis-cli`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::events::RolloutStage;
use aegis_core::ids::TenantId;
use aegis_core::query::{Outcome, QueryAnswer, QueryRequest, ReadinessView};
use aegis_tests::cli::{Run, ok};
use aegis_tests::controlplane::{ControlPlane, eventually, query};
use aegis_tests::gateway::Gateway;
use aegis_tests::stack::{
    ACCOUNT, ACME, Stack, WAIT, balance, finance_policy_for, finance_with_approval_limit, pay,
    tenant_status, wait_until,
};
use serde_json::{Value, json};

/// An IBAN-shaped account with 25 characters after the check digits: the template accepts
/// 11 to 30, the stricter candidate only 11 to 23.
const LONG_ACCOUNT: &str = "DE893704004405320130001234567";

/// The stack, its control plane replaced by one that measures readiness every second, and a
/// directory with acme's operators' and the root admin's keys.
fn start() -> (Stack, tempfile::TempDir) {
    let mut stack = Stack::start();
    // A fresh control plane rebuilds everything from the stream.
    stack.cp = ControlPlane::start(
        &stack.server.url(),
        &stack.keys,
        &["--readiness-interval", "1"],
    )
    .unwrap();
    // Caught up with everything on AEGIS_CHANGES before anyone reads its state.
    let tenant = TenantId::new(ACME).unwrap();
    let js = stack.js.clone();
    stack
        .block_on(eventually(
            WAIT,
            "the new control plane to catch up",
            || async {
                let last = js
                    .get_stream(aegis_nats::topology::CHANGES_STREAM)
                    .await
                    .ok()?
                    .info()
                    .await
                    .ok()?
                    .state
                    .last_sequence;
                match query(&js.client(), &tenant, QueryRequest::Status).await {
                    Ok(QueryAnswer::Status(s)) if s.applied_seq >= last => Some(()),
                    _ => None,
                }
            },
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    stack.write_keys(dir.path());
    (stack, dir)
}

/// `aegisctl …` must be refused by the control plane (exit 5); returns what it printed.
fn refused(run: Run, what: &str) -> String {
    assert_eq!(run.code, 5, "{what}: {run:#?}");
    format!("{}{}", run.stdout, run.stderr)
}

/// Waits until the gateway evaluates candidate `version` in shadow.
fn wait_shadow(gw: &Gateway, version: u64) {
    wait_until(WAIT, &format!("{}: candidate v{version}", gw.id), || {
        let t = tenant_status(gw, ACME);
        t["candidate"]["version"] == version && t["candidate"]["stage"] == "shadow"
    });
}

/// Decides `body` as the finance agent called by the planner.
fn decide(stack: &Stack, gw: &Gateway, body: &Value) -> Value {
    let (status, answer) = gw
        .decide(&stack.token("finance-agent", &["planner"]), body)
        .unwrap();
    assert_eq!(status, 200, "{answer:#}");
    answer
}

fn pay_to(account: &str) -> Value {
    json!({
        "tool_id": "payments",
        "action": "create_payment",
        "params": {"amount": 3000, "currency": "USD", "account_number": account},
        "context": {},
    })
}

/// The control plane's readiness view of acme once its measurement has `decisions`.
fn wait_measured(stack: &Stack, decisions: u64) -> ReadinessView {
    let tenant = TenantId::new(ACME).unwrap();
    let client = stack.js.client();
    stack
        .block_on(eventually(
            WAIT,
            &format!("a readiness measurement of {decisions} decisions"),
            || async {
                match query(&client, &tenant, QueryRequest::Status).await {
                    Ok(QueryAnswer::Status(s)) => s.readiness.filter(|r| {
                        r.measurement
                            .as_ref()
                            .is_some_and(|m| m.decisions == decisions)
                    }),
                    _ => None,
                }
            },
        ))
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.cp.log()))
}

#[test]
fn a_stricter_candidate_is_measured_live_and_needs_another_actors_approval() {
    let (mut stack, keys) = start();
    let keys = keys.path();
    let gw = stack.gateway("gw-ready");

    // v2: the template with account numbers of at most 23 characters after the check digits.
    let stricter = finance_policy_for(ACME).replace("{11,30}", "{11,23}");
    assert_ne!(stricter, finance_policy_for(ACME));
    let (v2, _) = stack.publish_change_staged(ACME, &stricter, RolloutStage::Shadow);
    assert_eq!(v2, 2);
    wait_shadow(&gw, 2);

    // 6 payments to a long account (stable allows, candidate denies), 10 to a short one and 2
    // balance look-ups (both allow): 18 decisions compared, 6 disagreements, 6 would-deny.
    for _ in 0..6 {
        let a = decide(&stack, &gw, &pay_to(LONG_ACCOUNT));
        assert_eq!(a["decision"], "allow", "stable enforces: {a:#}");
    }
    for _ in 0..10 {
        assert_eq!(decide(&stack, &gw, &pay_to(ACCOUNT))["decision"], "allow");
    }
    for _ in 0..2 {
        assert_eq!(decide(&stack, &gw, &balance())["decision"], "allow");
    }

    // The control plane measures it on its own.
    let r = wait_measured(&stack, 18);
    let m = r.measurement.clone().unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(
        (m.version, m.decisions, m.disagreements, m.would_deny),
        (2, 18, 6, 6),
        "{m:#?}"
    );
    assert!(m.from_sequence <= m.to_sequence, "{m:#?}");
    assert_eq!(m.top_agents.len(), 1, "{m:#?}");
    assert_eq!(
        (m.top_agents[0].id.as_str(), m.top_agents[0].disagreements),
        ("finance-agent", 6)
    );
    assert_eq!(
        (
            m.top_tools[0].id.as_str(),
            m.top_tools[0].decisions,
            m.top_tools[0].would_deny
        ),
        ("payments", 18, 6)
    );
    assert!(!r.verdict.ready);
    // Folded as an event signed by the control plane.
    let events = stack
        .block_on(query(
            &stack.js.client(),
            &TenantId::new(ACME).unwrap(),
            QueryRequest::Events {
                from_position: None,
                limit: None,
            },
        ))
        .unwrap();
    let QueryAnswer::Events(events) = events else {
        panic!("{events:?}")
    };
    let measured: Vec<_> = events
        .iter()
        .filter(|e| e.event_type.map(|t| t.as_str()) == Some("rollout_readiness_measured"))
        .collect();
    assert!(!measured.is_empty());
    for e in &measured {
        assert_eq!(e.outcome, Outcome::Accepted, "{e:#?}");
        assert_eq!(e.actor.as_ref().map(|a| a.as_str()), Some("control-plane"));
        assert_eq!(e.subject, "aegis.changes.acme.readiness");
    }

    // `rollout status` shows it with the verdict and what is unmet.
    let status = ok(
        stack.aegisctl(keys, "pat", &["rollout", "status"]),
        "rollout status",
    );
    for needle in [
        "readiness of candidate 2",
        "18 decision(s) compared, 6 disagree (33.34%), 6 would be denied by the candidate only",
        "most disagreements by agent: finance-agent 6/18 (6 would-deny)",
        "thresholds: at least 7 day(s) as candidate, at least 100 decision(s) compared, at most 1.00% disagreement",
        "at least 7 day(s) needed",
        "18 decision(s) compared with the stable version, at least 100 needed",
        "disagreement 33.34% (6 of 18 decisions), at most 1.00% allowed",
        "promotion approvals: none",
        "aegisctl rollout approve --version 2",
    ] {
        assert!(
            status.stdout.contains(needle),
            "{needle:?} in\n{}",
            status.stdout
        );
    }
    let json = ok(
        stack.aegisctl(keys, "pat", &["rollout", "status", "--json"]),
        "rollout status --json",
    );
    let view: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        view["readiness"]["measurement"]["decisions"], 18,
        "{view:#}"
    );
    assert_eq!(view["readiness"]["verdict"]["ready"], false, "{view:#}");
    let unmet: Vec<&str> = view["readiness"]["verdict"]["unmet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["condition"].as_str().unwrap())
        .collect();
    assert_eq!(unmet, ["shadow_days", "decisions", "disagreement"]);

    // On demand, client-side: the same counts.
    let now = ok(
        stack.aegisctl(keys, "pat", &["rollout", "readiness", "--json"]),
        "rollout readiness",
    );
    let now: Value = serde_json::from_str(&now.stdout).unwrap();
    assert_eq!(
        (
            &now["version"],
            &now["decisions"],
            &now["disagreements"],
            &now["would_deny"],
            &now["disagreement_basis_points"]
        ),
        (&json!(2), &json!(18), &json!(6), &json!(6), &json!(3334)),
        "{now:#}"
    );
    assert_eq!(now["verdict"]["ready"], false);
    let text = ok(
        stack.aegisctl(keys, "pat", &["rollout", "readiness"]),
        "rollout readiness",
    );
    assert!(
        text.stdout.contains("verdict: not ready: candidate for"),
        "{}",
        text.stdout
    );

    // The publisher alone: refused, with the unmet conditions and the way out.
    let global = ["rollout", "global", "--version", "2"];
    let told = refused(stack.aegisctl(keys, "pat", &global), "pat alone");
    for needle in [
        "does not meet tenant `acme`'s rollout readiness thresholds",
        "at least 7 day(s) needed",
        "disagreement 33.34% (6 of 18 decisions), at most 1.00% allowed",
        "aegisctl rollout approve --version 2",
    ] {
        assert!(told.contains(needle), "{needle:?} in {told}");
    }
    // Approving it themselves does not help.
    ok(
        stack.aegisctl(keys, "pat", &["rollout", "approve", "--version", "2"]),
        "pat approves",
    );
    let told = refused(stack.aegisctl(keys, "pat", &global), "pat self-approved");
    assert!(
        told.contains("`pat`'s own approval does not count"),
        "{told}"
    );
    assert_eq!(gw.version(ACME).unwrap(), Some(1));

    // carol approves; pat promotes; the gateway moves to v2.
    ok(
        stack.aegisctl(
            keys,
            "carol",
            &[
                "rollout",
                "approve",
                "--version",
                "2",
                "--comment",
                "long accounts are fraud",
            ],
        ),
        "carol approves",
    );
    let status = ok(
        stack.aegisctl(keys, "pat", &["rollout", "status"]),
        "rollout status",
    );
    assert!(
        status.stdout.contains(": long accounts are fraud"),
        "{}",
        status.stdout
    );
    ok(stack.aegisctl(keys, "pat", &global), "pat promotes");
    gw.wait_version(ACME, 2, WAIT).unwrap();
    let a = decide(&stack, &gw, &pay_to(LONG_ACCOUNT));
    assert_eq!(
        (a["decision"].as_str(), a["policy_version"].as_u64()),
        (Some("deny"), Some(2)),
        "{a:#}"
    );
}

#[test]
fn a_candidate_that_meets_the_thresholds_is_promoted_by_the_publisher_alone() {
    let (mut stack, keys) = start();
    let keys = keys.path();
    let gw = stack.gateway("gw-ready2");
    ok(
        stack.aegisctl(
            keys,
            "root",
            &[
                "tenant",
                "configure",
                "--min-shadow-days",
                "0",
                "--min-decisions",
                "5",
                "--max-disagreement-basis-points",
                "100",
            ],
        ),
        "tenant configure",
    );

    // v2 only raises the approval bound: the traffic below does not tell them apart.
    let (v2, _) = stack.publish_change_staged(
        ACME,
        &finance_with_approval_limit(ACME, 5500),
        RolloutStage::Shadow,
    );
    wait_shadow(&gw, v2);
    let global = ["rollout", "global", "--version", "2"];
    let told = refused(stack.aegisctl(keys, "pat", &global), "nothing measured");
    assert!(
        told.contains("0 decision(s) compared with the stable version, at least 5 needed"),
        "{told}"
    );
    assert!(!told.contains("day(s)"), "{told}");

    for _ in 0..8 {
        assert_eq!(decide(&stack, &gw, &pay(3000))["decision"], "allow");
    }
    let r = wait_measured(&stack, 8);
    let m = r.measurement.unwrap();
    assert_eq!((m.decisions, m.disagreements, m.would_deny), (8, 0, 0));
    assert!(r.verdict.ready, "{}", r.verdict);
    // More traffic: the next measurement goes on from where the last one stopped.
    for _ in 0..4 {
        assert_eq!(decide(&stack, &gw, &balance())["decision"], "allow");
    }
    let r = wait_measured(&stack, 12);
    let next = r.measurement.unwrap();
    assert_eq!((next.decisions, next.disagreements), (12, 0));
    assert_eq!(next.from_sequence, m.from_sequence);
    assert!(next.to_sequence > m.to_sequence, "{next:#?} after {m:#?}");
    let status = ok(
        stack.aegisctl(keys, "pat", &["rollout", "status"]),
        "rollout status",
    );
    assert!(
        status
            .stdout
            .contains("promotion: a publisher alone may promote it"),
        "{}",
        status.stdout
    );

    ok(stack.aegisctl(keys, "pat", &global), "pat alone promotes");
    gw.wait_version(ACME, v2, WAIT).unwrap();
}
