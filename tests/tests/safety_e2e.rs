//! Issue 5's safety controls end to end, every step through the real parts an operator uses:
//! `aegisctl` (the binary) signs the events, the real control plane checks the roles and folds
//! them, publishes bundles, the signed `tenant_controls` state and the approval relays, and real
//! gateway binaries enforce them — nothing in this file signs a control-plane message itself.
//!
//! - the README walk-through: the 6,000 payment needs approval, the webhook receives the
//!   request, an approver grants it with `aegisctl approvals grant`, the retry is allowed once at
//!   the other gateway, a second retry is denied, another amount cannot use the grant, and
//!   `aegisctl block agent planner` stops the planner at both gateways until `unblock`;
//! - a staged rollout with `aegisctl publish --stage shadow`, `rollout partial`, `rollout abort`
//!   and `rollout global` (refused for the publisher alone below the readiness thresholds,
//!   accepted after another actor's `rollout approve`), read back from the decision events of
//!   two gateways;
//! - a data-plane freeze holding both gateways on their bundle while a new version is
//!   published, and an emergency rollback by the admin that reaches them.
//!
//! The binaries come from `target/<profile>/`: `cargo build --bins` first.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_tests::cli::{Run, ok};
use aegis_tests::gateway::Gateway;
use aegis_tests::stack::{
    ACME, Stack, WAIT, code, finance_with_approval_limit, pay, with_approval,
};
use aegis_tests::webhook::{bodies, webhook};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Polls `gw` with `body` until the answer's decision and first reason code are `want`.
fn until_answer(gw: &Gateway, token: &str, body: &Value, want: (&str, &str)) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, answer) = gw.decide(token, body).unwrap();
        if (
            answer["decision"].as_str().unwrap_or_default(),
            code(&answer),
        ) == want
        {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{}: still {answer:#}, want {want:?}\n{}",
            gw.id,
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The decision events with these ids, once all are in the stream.
fn events(stack: &Stack, answers: &[&Value]) -> Vec<Value> {
    let ids: BTreeSet<String> = answers
        .iter()
        .map(|a| a["decision_id"].as_str().unwrap().to_owned())
        .collect();
    let mut got = stack.wait_decisions("aegis.decisions.acme.>", &ids, WAIT);
    got.sort_by_key(|e| {
        answers
            .iter()
            .position(|a| a["decision_id"] == e["id"])
            .unwrap_or(usize::MAX)
    });
    got
}

#[test]
fn the_walkthrough_approval_granted_once_then_the_planner_blocked_everywhere() {
    let stack = Stack::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = stack.write_keys(dir.path());
    let (url, received) = webhook();
    let gw1 = Gateway::start(
        &stack
            .gateway_options("gw1")
            .arg("--approval-webhook")
            .arg(&url),
    )
    .unwrap();
    gw1.wait_ready(WAIT).unwrap();
    let gw2 = stack.gateway("gw2");
    let token = stack.token("finance-agent", &["planner"]);

    // The 6,000 payment needs approval at gw1.
    let (status, first) = gw1.decide(&token, &pay(6_000)).unwrap();
    assert_eq!(
        (status, first["decision"].as_str()),
        (200, Some("approval_needed"))
    );
    let id = first["approval"]["id"].as_str().unwrap().to_owned();

    // The webhook gets the request as a Slack-compatible message naming it.
    let deadline = Instant::now() + WAIT;
    let posted = loop {
        if let Some(body) = bodies(&received).first().cloned() {
            break body;
        }
        assert!(Instant::now() < deadline, "no webhook post\n{}", gw1.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(posted["text"].as_str().unwrap().contains(&id), "{posted:#}");
    assert!(posted["blocks"].as_array().is_some_and(|b| !b.is_empty()));
    assert!(
        posted.to_string().contains("aegisctl approvals grant"),
        "{posted:#}"
    );

    // It is pending; an editor-only actor may not grant; carol (approver) does.
    let listed = ok(
        stack.aegisctl(&keys, "carol", &["approvals", "list"]),
        "list",
    );
    assert!(
        listed.stdout.contains(&id) && listed.stdout.contains("pending"),
        "{listed:#?}"
    );
    let not_yet = with_approval(&pay(6_000), &id);
    let pending = until_answer(
        &gw2,
        &token,
        &not_yet,
        ("approval_needed", "approval_pending"),
    );
    assert_eq!(pending["approval"]["id"], id.as_str());
    let pat = stack.aegisctl(&keys, "pat", &["approvals", "grant", &id]);
    assert_eq!(pat.code, 5, "a publisher is not an approver: {pat:#?}");
    ok(
        stack.aegisctl(
            &keys,
            "carol",
            &[
                "approvals",
                "grant",
                &id,
                "--ttl",
                "10m",
                "--comment",
                "invoice checked",
            ],
        ),
        "grant",
    );

    // Another amount cannot use the grant; the exact call is allowed once, at gw2 …
    let (_, other) = gw2
        .decide(&token, &with_approval(&pay(7_000), &id))
        .unwrap();
    assert_eq!(code(&other), "approval_call_mismatch", "{other:#}");
    let allowed = until_answer(&gw2, &token, &not_yet, ("allow", "approval_granted"));
    // … and not again, at either gateway.
    let (_, again) = gw1.decide(&token, &not_yet).unwrap();
    assert_eq!(
        (again["decision"].as_str(), code(&again)),
        (Some("deny"), "approval_used")
    );
    let (_, again2) = gw2.decide(&token, &not_yet).unwrap();
    assert_eq!(code(&again2), "approval_used");
    let recorded = events(&stack, &[&allowed, &again]);
    assert_eq!(recorded[0]["decision"], "allow");
    assert_eq!(recorded[0]["approval_id"], id.as_str());
    assert_eq!(recorded[1]["reasons"][0]["code"], "approval_used");
    let listed = ok(
        stack.aegisctl(&keys, "carol", &["approvals", "list", "--all"]),
        "list --all",
    );
    assert!(listed.stdout.contains("used"), "{listed:#?}");

    // The kill switch: pat blocks the planner; both gateways deny its calls, others go on.
    let small = pay(3_000);
    until_answer(&gw1, &token, &small, ("allow", "allowed"));
    ok(
        stack.aegisctl(
            &keys,
            "pat",
            &[
                "block",
                "agent",
                "planner",
                "--reason",
                "INC-9: planner loops on payments",
            ],
        ),
        "block",
    );
    for gw in [&gw1, &gw2] {
        let denied = until_answer(gw, &token, &small, ("deny", "agent_blocked"));
        assert!(
            denied["reasons"][0]["message"]
                .as_str()
                .unwrap()
                .contains("INC-9"),
            "{denied:#}"
        );
    }
    let direct = stack.token("finance-agent", &[]);
    let (_, alone) = gw2.decide(&direct, &small).unwrap();
    assert_ne!(
        code(&alone),
        "agent_blocked",
        "finance-agent without the planner is not blocked: {alone:#}"
    );
    ok(
        stack.aegisctl(&keys, "pat", &["unblock", "agent", "planner"]),
        "unblock",
    );
    for gw in [&gw1, &gw2] {
        until_answer(gw, &token, &small, ("allow", "allowed"));
    }
}

#[test]
fn rollout_shadow_partial_abort_global_then_freeze_and_emergency_rollback() {
    let mut stack = Stack::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = stack.write_keys(dir.path());
    let gws = [stack.gateway("gw1"), stack.gateway("gw2")];
    let token = stack.token("finance-agent", &["planner"]);
    let call = pay(5_200);
    for gw in &gws {
        until_answer(
            gw,
            &token,
            &call,
            ("approval_needed", "amount_requires_approval"),
        );
    }

    // v2 raises the approval bound to 5,500 and goes out in shadow: v1 still decides, v2's
    // answer is recorded beside it.
    let (v2, _) = stack.publish_change_staged(
        ACME,
        &finance_with_approval_limit(ACME, 5_500),
        aegis_core::events::RolloutStage::Shadow,
    );
    assert_eq!(v2, 2);
    let wait_shadow = |gw: &Gateway| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, answer) = gw.decide(&token, &call).unwrap();
            let event = &events(&stack, &[&answer])[0];
            if event["shadow"]["policy_version"] == 2 {
                return (answer, event.clone());
            }
            assert!(
                Instant::now() < deadline,
                "{}: no shadow result\n{}",
                gw.id,
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for gw in &gws {
        let (answer, event) = wait_shadow(gw);
        assert_eq!(
            answer["decision"], "approval_needed",
            "shadow enforces stable"
        );
        assert_eq!(event["policy_version"], 1);
        assert_eq!(event["rollout_stage"], "shadow");
        assert_eq!(event["shadow"]["decision"], "allow");
    }

    // Partial for finance-agent: the candidate decides for it, the stable one is recorded.
    ok(
        stack.aegisctl(
            &keys,
            "pat",
            &[
                "rollout",
                "partial",
                "--version",
                "2",
                "--agents",
                "finance-agent",
            ],
        ),
        "rollout partial",
    );
    for gw in &gws {
        let answer = until_answer(gw, &token, &call, ("allow", "allowed"));
        let event = &events(&stack, &[&answer])[0];
        assert_eq!(event["policy_version"], 2);
        assert_eq!(event["rollout_stage"], "partial");
        assert_eq!(event["shadow"]["policy_version"], 1);
        assert_eq!(event["shadow"]["decision"], "approval_needed");
    }
    let status = ok(
        stack.aegisctl(&keys, "pat", &["rollout", "status"]),
        "rollout status",
    );
    assert!(status.stdout.contains("partial"), "{status:#?}");

    // Abort: everyone is back on v1, no shadow any more.
    ok(
        stack.aegisctl(
            &keys,
            "pat",
            &[
                "rollout",
                "abort",
                "--version",
                "2",
                "--reason",
                "finance wants 5,000",
            ],
        ),
        "rollout abort",
    );
    for gw in &gws {
        let answer = until_answer(
            gw,
            &token,
            &call,
            ("approval_needed", "amount_requires_approval"),
        );
        let event = &events(&stack, &[&answer])[0];
        assert_eq!(event["policy_version"], 1);
        assert!(event.get("shadow").is_none_or(Value::is_null), "{event:#}");
    }

    // v3 (bound 5,600) in shadow, then global: it becomes stable everywhere.
    let (v3, _) = stack.publish_change_staged(
        ACME,
        &finance_with_approval_limit(ACME, 5_600),
        aegis_core::events::RolloutStage::Shadow,
    );
    // Freshly published, v3 is far below the tenant's readiness thresholds: the publisher
    // alone is refused and told how to get an approval; once carol approves, pat promotes it.
    let alone = aegis_rollout_global(&stack, &keys, v3);
    assert_eq!(alone.code, 5, "{alone:#?}");
    let told = format!("{}{}", alone.stdout, alone.stderr);
    assert!(
        told.contains(&format!("aegisctl rollout approve --version {v3}")),
        "{alone:#?}"
    );
    ok(
        stack.aegisctl(
            &keys,
            "carol",
            &["rollout", "approve", "--version", &v3.to_string()],
        ),
        "rollout approve",
    );
    ok(aegis_rollout_global(&stack, &keys, v3), "rollout global");
    for gw in &gws {
        gw.wait_version(ACME, v3, WAIT).unwrap();
        let answer = until_answer(gw, &token, &call, ("allow", "allowed"));
        let event = &events(&stack, &[&answer])[0];
        assert_eq!(event["policy_version"], v3);
    }

    // Data-plane freeze: a new global version (bound 5,100) is published, but both gateways
    // keep v3 until the freeze is lifted.
    ok(
        stack.aegisctl(
            &keys,
            "pat",
            &[
                "freeze",
                "--data-plane",
                "--reason",
                "INC-10: hold the fleet",
            ],
        ),
        "freeze --data-plane",
    );
    for gw in &gws {
        let deadline = Instant::now() + WAIT;
        while gw.status().unwrap()["tenants"][0]["data_plane_frozen"].is_null() {
            assert!(
                Instant::now() < deadline,
                "{}: not frozen\n{}",
                gw.id,
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let v4 = stack.publish_change(&finance_with_approval_limit(ACME, 5_100));
    std::thread::sleep(Duration::from_millis(500));
    for gw in &gws {
        assert_eq!(
            gw.version(ACME).unwrap(),
            Some(v3),
            "{} moved while frozen",
            gw.id
        );
        let (_, answer) = gw.decide(&token, &call).unwrap();
        assert_eq!(answer["decision"], "allow", "still v3's bound");
    }
    ok(
        stack.aegisctl(&keys, "pat", &["unfreeze", "--data-plane"]),
        "unfreeze --data-plane",
    );
    for gw in &gws {
        gw.wait_version(ACME, v4, WAIT).unwrap();
        until_answer(
            gw,
            &token,
            &call,
            ("approval_needed", "amount_requires_approval"),
        );
    }

    // Emergency rollback to v3's content: a publisher alone may not; the admin may, and it
    // reaches both gateways as a new version.
    let refused = stack.aegisctl(
        &keys,
        "pat",
        &["rollback", "--to", "3", "--reason", "INC-11", "--emergency"],
    );
    assert_eq!(refused.code, 5, "{refused:#?}");
    ok(
        stack.aegisctl(
            &keys,
            "root",
            &[
                "rollback",
                "--to",
                "3",
                "--reason",
                "INC-11: refunds denied",
                "--emergency",
            ],
        ),
        "emergency rollback",
    );
    let v5 = v4 + 1;
    for gw in &gws {
        gw.wait_version(ACME, v5, WAIT).unwrap();
        until_answer(gw, &token, &call, ("allow", "allowed"));
    }
    let newest = stack.current();
    assert_eq!(newest.version, v5);
    assert!(newest.emergency, "recorded as an emergency: {newest:?}");
    assert_eq!(newest.rollback_of, Some(3));
}

fn aegis_rollout_global(stack: &Stack, keys: &Path, version: u64) -> Run {
    stack.aegisctl(
        keys,
        "pat",
        &["rollout", "global", "--version", &version.to_string()],
    )
}
