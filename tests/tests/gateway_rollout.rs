#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Staged rollout, kill switch and data-plane freeze at the edge, as real processes:
//! nats-server, the control-plane binary (which publishes and announces the versions) and
//! `aegis-gateway` binaries. The tenant's `tenant_controls` states are signed here with the
//! control plane's own key and published on `aegis.bundles.<tenant>.controls` — the same
//! messages the control plane publishes after every rollout, kill-switch or freeze change.
//!
//! The epochs used here start far above any chain position the control plane reaches in a
//! test, so once a test publishes its first state, whatever the control plane publishes
//! itself is an older epoch to the gateways.
//!
//! - shadow: the stable version decides, both answers and the stage are recorded;
//! - partial: exactly the cohort (named agents; a percentage, checked against
//!   `aegis_core::rollout::in_cohort`) gets the candidate;
//! - abort back to stable, also to a stable below the high-water mark, which survives a
//!   restart; blocks and freeze survive a restart with NATS down;
//! - kill switch and freeze on five gateways: block/unblock agent and tool, an older epoch
//!   replayed and a state signed by an unknown key are ignored, a global version published
//!   while frozen is held back until the unfreeze, blocks still apply while frozen.
//!
//! Needs the binaries: `cargo build --bins -p aegis-gateway -p aegis-controlplane -p aegis-cli`.

use aegis_core::events::{
    BlockEntry, BundleRef, DataPlaneFreeze, RolloutCandidate, RolloutStage, TenantControls,
};
use aegis_core::ids::{ActorId, AgentId};
use aegis_core::keys::Keypair;
use aegis_core::rollout::in_cohort;
use aegis_tests::gateway::Gateway;
use aegis_tests::stack::{
    ACME, Stack, WAIT, assert_decision_event, balance, code, finance_with_approval_limit, metrics,
    pay, tenant_status, wait_until, with_id,
};
use serde_json::Value;
use std::collections::BTreeSet;

/// Above any chain position the control plane reaches in these tests.
const EPOCH: u64 = 1_000_000;
/// The candidate's approval bound: a 5,200 payment needs approval under the template (5,000)
/// and is allowed under the candidate.
const CANDIDATE_LIMIT: u64 = 5500;
const BETWEEN: u64 = 5200;

fn state(epoch: u64, stable: &BundleRef) -> TenantControls {
    TenantControls {
        epoch: EPOCH + epoch,
        stable: Some(stable.clone()),
        candidate: None,
        blocked_agents: vec![],
        blocked_tools: vec![],
        data_plane_frozen: None,
    }
}

fn candidate(
    bundle: &BundleRef,
    stage: RolloutStage,
    agents: &[&str],
    percent: Option<u8>,
) -> RolloutCandidate {
    RolloutCandidate {
        bundle: bundle.clone(),
        stage,
        agents: agents.iter().map(|a| AgentId::new(*a).unwrap()).collect(),
        percent,
    }
}

fn block(id: &str) -> BlockEntry {
    BlockEntry {
        id: id.to_owned(),
        reason: format!("{id} runs away with payments"),
        by: ActorId::new("alice").unwrap(),
        at: "2026-11-26T08:00:00.000Z".to_owned(),
    }
}

fn freeze() -> DataPlaneFreeze {
    DataPlaneFreeze {
        reason: "incident 42".to_owned(),
        by: ActorId::new("alice").unwrap(),
        at: "2026-11-26T08:00:00.000Z".to_owned(),
    }
}

/// Decides `body` as `agent` (through `chain`); returns the answer (asserting status 200).
fn ask(stack: &Stack, gw: &Gateway, agent: &str, chain: &[&str], body: &Value) -> Value {
    let (status, answer) = gw.decide(&stack.token(agent, chain), body).unwrap();
    assert_eq!(status, 200, "{}: {answer:#}", gw.id);
    answer
}

/// The reason code of a 3,000 payment by `agent` through `chain`.
fn pay_code(stack: &Stack, gw: &Gateway, agent: &str, chain: &[&str]) -> String {
    let answer = ask(stack, gw, agent, chain, &pay(3000));
    code(&answer).to_owned()
}

/// Waits until `gw`'s status for acme satisfies `done`.
fn wait_status(gw: &Gateway, what: &str, done: impl Fn(&Value) -> bool) {
    wait_until(WAIT, &format!("{}: {what}", gw.id), || {
        done(&tenant_status(gw, ACME))
    });
}

/// The value of a metric line `name{tenant="acme"...}` (0 when absent).
fn metric(gw: &Gateway, prefix: &str) -> u64 {
    metrics(gw)
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The decision events of `gw` with the given ids.
fn events(stack: &Stack, gw: &Gateway, ids: &[&Value]) -> Vec<Value> {
    let ids: Vec<String> = ids
        .iter()
        .map(|a| a["decision_id"].as_str().unwrap().to_owned())
        .collect();
    let filter = format!("aegis.decisions.{ACME}.{}", gw.id);
    let wanted: BTreeSet<String> = ids.iter().cloned().collect();
    let records = stack.wait_decisions(&filter, &wanted, WAIT);
    ids.iter()
        .map(|id| {
            let r = with_id(&records, id)[0].clone();
            assert_decision_event(&r);
            r
        })
        .collect()
}

#[test]
fn shadow_partial_and_abort_including_a_stable_below_the_mark_and_a_restart_without_nats() {
    let mut stack = Stack::start();
    let mut gw = stack.gateway("gw-rollout");
    let v1 = stack.bundle_ref(ACME, 1);

    // v2 is published as a shadow candidate: announced, but nobody enforces it.
    let (version, _) = stack.publish_change_staged(
        ACME,
        &finance_with_approval_limit(ACME, CANDIDATE_LIMIT),
        RolloutStage::Shadow,
    );
    assert_eq!(version, 2);
    let v2 = stack.bundle_ref(ACME, 2);

    // Shadow: every answer is the stable version's; the candidate's is recorded next to it.
    let mut s = state(1, &v1);
    s.candidate = Some(candidate(&v2, RolloutStage::Shadow, &[], None));
    stack.publish_controls(ACME, &s);
    // The control plane publishes its own state for this publish too (a small epoch): wait for
    // the test's, or the check below races it.
    wait_status(&gw, "a shadow candidate", |t| {
        t["candidate"]["version"] == 2
            && t["candidate"]["stage"] == "shadow"
            && t["controls_epoch"] == EPOCH + 1
    });
    let st = tenant_status(&gw, ACME);
    assert_eq!(st["version"], 1, "{st:#}");
    assert_eq!(st["stable"]["version"], 1, "{st:#}");
    assert_eq!(st["controls_epoch"], EPOCH + 1, "{st:#}");
    let between = ask(&stack, &gw, "finance-agent", &["planner"], &pay(BETWEEN));
    assert_eq!(between["decision"], "approval_needed", "{between:#}");
    assert_eq!(between["policy_version"], 1);
    assert_eq!(between["bundle_digest"], v1.digest.as_str());
    let small = ask(&stack, &gw, "finance-agent", &["planner"], &pay(3000));
    assert_eq!(
        (small["decision"].as_str(), small["policy_version"].as_u64()),
        (Some("allow"), Some(1))
    );
    let recorded = events(&stack, &gw, &[&between, &small]);
    for r in &recorded {
        assert_eq!(r["rollout_stage"], "shadow", "{r:#}");
        assert_eq!(r["policy_version"], 1, "{r:#}");
        assert_eq!(r["shadow"]["policy_version"], 2, "{r:#}");
        assert_eq!(r["shadow"]["bundle_digest"], v2.digest.as_str(), "{r:#}");
    }
    assert_eq!(recorded[0]["decision"], "approval_needed");
    assert_eq!(
        recorded[0]["shadow"]["decision"], "allow",
        "the candidate would allow it"
    );
    assert_eq!(recorded[1]["shadow"]["decision"], "allow");
    assert!(metric(&gw, "aegis_shadow_disagreements_total{tenant=\"acme\"}") >= 1);
    assert_eq!(metric(&gw, "aegis_candidate_version{tenant=\"acme\"}"), 2);
    let beat = stack.wait_heartbeat(ACME, "gw-rollout", "the candidate", |h| {
        h.candidate_version == Some(2)
    });
    assert_eq!(beat.version, Some(1));

    // Partial, named cohort: finance-agent gets the candidate, treasury-agent the stable one;
    // both answers are recorded either way.
    let mut s = state(2, &v1);
    s.candidate = Some(candidate(
        &v2,
        RolloutStage::Partial,
        &["finance-agent"],
        None,
    ));
    stack.publish_controls(ACME, &s);
    wait_status(&gw, "a partial candidate", |t| {
        t["candidate"]["stage"] == "partial"
    });
    assert_eq!(
        tenant_status(&gw, ACME)["candidate"]["agents"],
        serde_json::json!(["finance-agent"])
    );
    let cohort = ask(&stack, &gw, "finance-agent", &["planner"], &pay(BETWEEN));
    assert_eq!(cohort["decision"], "allow", "{cohort:#}");
    assert_eq!(cohort["policy_version"], 2);
    assert_eq!(cohort["bundle_digest"], v2.digest.as_str());
    let outside = ask(&stack, &gw, "treasury-agent", &[], &balance());
    assert_eq!(outside["policy_version"], 1, "{outside:#}");
    let recorded = events(&stack, &gw, &[&cohort, &outside]);
    assert_eq!(recorded[0]["rollout_stage"], "partial");
    assert_eq!(recorded[0]["policy_version"], 2);
    assert_eq!(recorded[0]["shadow"]["policy_version"], 1);
    assert_eq!(recorded[0]["shadow"]["decision"], "approval_needed");
    assert_eq!(recorded[1]["rollout_stage"], "partial");
    assert_eq!(recorded[1]["policy_version"], 1);
    assert_eq!(recorded[1]["shadow"]["policy_version"], 2);

    // Partial by percentage: exactly the agents `in_cohort` places in it get the candidate.
    let mut s = state(3, &v1);
    s.candidate = Some(candidate(&v2, RolloutStage::Partial, &[], Some(40)));
    stack.publish_controls(ACME, &s);
    wait_status(&gw, "a 40% cohort", |t| t["candidate"]["percent"] == 40);
    let agents: Vec<String> = (0..16).map(|i| format!("agent-{i}")).collect();
    let mut placed = [0usize; 2];
    for agent in &agents {
        let id = AgentId::new(agent.clone()).unwrap();
        let inside = in_cohort(&id, &[], Some(40));
        let answer = ask(&stack, &gw, agent, &[], &balance());
        let expected = if inside { 2 } else { 1 };
        assert_eq!(
            answer["policy_version"], expected,
            "{agent} (in cohort: {inside}): {answer:#}"
        );
        placed[usize::from(inside)] += 1;
    }
    assert!(
        placed[0] > 0 && placed[1] > 0,
        "both groups tried: {placed:?}"
    );

    // Abort: no candidate any more, everyone is back on the stable version.
    stack.publish_controls(ACME, &state(4, &v1));
    wait_status(&gw, "no candidate", |t| t["candidate"].is_null());
    let back = ask(&stack, &gw, "finance-agent", &["planner"], &pay(BETWEEN));
    assert_eq!(
        (back["decision"].as_str(), back["policy_version"].as_u64()),
        (Some("approval_needed"), Some(1))
    );
    let r = &events(&stack, &gw, &[&back])[0];
    assert_eq!(r["rollout_stage"], "global", "{r:#}");
    assert!(r["shadow"].is_null(), "{r:#}");
    assert_eq!(metric(&gw, "aegis_candidate_version{tenant=\"acme\"}"), 0);

    // Promoted (v2 becomes the stable version, and the mark), then rolled back to v1: a
    // stable below the high-water mark, vouched for by the signed state.
    stack.publish_controls(ACME, &state(5, &v2));
    gw.wait_version(ACME, 2, WAIT).unwrap();
    stack.publish_controls(ACME, &state(6, &v1));
    gw.wait_version(ACME, 1, WAIT).unwrap();
    let low = ask(&stack, &gw, "finance-agent", &["planner"], &pay(BETWEEN));
    assert_eq!(low["policy_version"], 1, "{low:#}");
    assert!(
        tenant_status(&gw, ACME)["rejected"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A block and a freeze, then the gateway restarts while NATS is down: it serves v1 (below
    // the mark), still denies the blocked agent and still reports the freeze.
    let mut s = state(7, &v1);
    s.blocked_agents = vec![block("planner")];
    s.data_plane_frozen = Some(freeze());
    stack.publish_controls(ACME, &s);
    wait_status(&gw, "frozen", |t| !t["data_plane_frozen"].is_null());
    stack.server.kill().unwrap();
    gw.restart().unwrap();
    gw.wait_ready(WAIT).unwrap();
    let st = tenant_status(&gw, ACME);
    assert_eq!(st["version"], 1, "{st:#}");
    assert_eq!(st["controls_epoch"], EPOCH + 7, "{st:#}");
    assert_eq!(st["data_plane_frozen"]["reason"], "incident 42", "{st:#}");
    assert_eq!(st["blocked_agents"][0]["id"], "planner", "{st:#}");
    let denied = ask(&stack, &gw, "finance-agent", &["planner"], &pay(3000));
    assert_eq!(code(&denied), "agent_blocked", "{denied:#}");
    let other = ask(&stack, &gw, "treasury-agent", &[], &balance());
    assert_ne!(code(&other), "agent_blocked", "{other:#}");
}

#[test]
fn kill_switch_and_freeze_reach_five_gateways() {
    let mut stack = Stack::start();
    let gws: Vec<Gateway> = (1..=5)
        .map(|i| stack.gateway(&format!("gw-ks{i}")))
        .collect();
    let v1 = stack.bundle_ref(ACME, 1);
    let all = |what: &str, done: &dyn Fn(&Gateway) -> bool| {
        for gw in &gws {
            wait_until(WAIT, &format!("{}: {what}", gw.id), || done(gw));
        }
    };
    for gw in &gws {
        assert_eq!(
            pay_code(&stack, gw, "finance-agent", &["planner"]),
            "allowed"
        );
    }

    // Block the planner: every call with it in the chain is denied at once, everywhere.
    let mut s = state(1, &v1);
    s.blocked_agents = vec![block("planner")];
    stack.publish_controls(ACME, &s);
    all("planner blocked", &|gw| {
        pay_code(&stack, gw, "finance-agent", &["planner"]) == "agent_blocked"
    });
    let answer = ask(&stack, &gws[0], "finance-agent", &["planner"], &pay(3000));
    let message = answer["reasons"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("planner") && message.contains("alice") && message.contains("runs away"),
        "{message}"
    );
    assert_eq!(answer["decision"], "deny");
    let r = &events(&stack, &gws[0], &[&answer])[0];
    assert_eq!(r["reasons"][0]["code"], "agent_blocked", "{r:#}");
    assert!(metrics(&gws[0]).contains("aegis_blocked_agents{tenant=\"acme\"} 1"));
    // An agent without the planner in its chain is not touched.
    assert_ne!(
        pay_code(&stack, &gws[0], "treasury-agent", &[]),
        "agent_blocked"
    );

    // Block the payments tool instead.
    let mut s = state(2, &v1);
    s.blocked_tools = vec![block("payments")];
    stack.publish_controls(ACME, &s);
    all("payments blocked", &|gw| {
        pay_code(&stack, gw, "finance-agent", &["planner"]) == "tool_blocked"
    });

    // Unblock everything: allowed again.
    stack.publish_controls(ACME, &state(3, &v1));
    all("unblocked", &|gw| {
        pay_code(&stack, gw, "finance-agent", &["planner"]) == "allowed"
    });

    // An older state replayed (epoch 1, blocking the planner) is ignored.
    let mut old = state(1, &v1);
    old.blocked_agents = vec![block("planner")];
    stack.publish_controls(ACME, &old);
    all("the replay refused", &|gw| {
        metric(
            gw,
            "aegis_controls_rejected_total{tenant=\"acme\",reason=\"stale_epoch\"}",
        ) == 1
    });
    // A state signed by a key the gateways do not trust is ignored too.
    let mut forged = state(100, &v1);
    forged.blocked_agents = vec![block("planner")];
    stack.publish_controls_signed(ACME, &forged, &Keypair::from_seed(&[9; 32]));
    all("the forged state refused", &|gw| {
        metric(
            gw,
            "aegis_controls_rejected_total{tenant=\"acme\",reason=\"unknown_key\"}",
        ) == 1
    });
    for gw in &gws {
        assert_eq!(
            pay_code(&stack, gw, "finance-agent", &["planner"]),
            "allowed",
            "{}",
            gw.id
        );
        assert_eq!(tenant_status(gw, ACME)["controls_epoch"], EPOCH + 3);
    }

    // Freeze the data plane, then publish v2 globally: every gateway keeps v1.
    let mut s = state(4, &v1);
    s.data_plane_frozen = Some(freeze());
    stack.publish_controls(ACME, &s);
    all("frozen", &|gw| {
        !tenant_status(gw, ACME)["data_plane_frozen"].is_null()
    });
    let v2 = stack.publish_change(&finance_with_approval_limit(ACME, CANDIDATE_LIMIT));
    assert_eq!(v2, 2);
    all("v2 held back", &|gw| {
        tenant_status(gw, ACME)["held_back"]["version"] == 2
    });
    for gw in &gws {
        let st = tenant_status(gw, ACME);
        assert_eq!(st["version"], 1, "{st:#}");
        assert_eq!(st["held_back"]["reason"], "pinned by the data-plane freeze");
        assert_eq!(metric(gw, "aegis_bundles_pinned_total{tenant=\"acme\"}"), 1);
        let answer = ask(&stack, gw, "finance-agent", &["planner"], &pay(BETWEEN));
        assert_eq!(answer["policy_version"], 1, "{answer:#}");
    }

    // The kill switch still works while frozen.
    let mut s = state(5, &v1);
    s.data_plane_frozen = Some(freeze());
    s.blocked_agents = vec![block("planner")];
    stack.publish_controls(ACME, &s);
    all("planner blocked while frozen", &|gw| {
        pay_code(&stack, gw, "finance-agent", &["planner"]) == "agent_blocked"
    });
    for gw in &gws {
        assert_eq!(gw.version(ACME).unwrap(), Some(1));
    }

    // Unfreeze (and unblock), naming v2 as the stable version: everyone moves to it.
    let v2_ref = stack.bundle_ref(ACME, 2);
    stack.publish_controls(ACME, &state(6, &v2_ref));
    for gw in &gws {
        gw.wait_version(ACME, 2, WAIT).unwrap();
        let st = tenant_status(gw, ACME);
        assert!(
            st["data_plane_frozen"].is_null() && st["held_back"].is_null(),
            "{st:#}"
        );
        let answer = ask(&stack, gw, "finance-agent", &["planner"], &pay(BETWEEN));
        assert_eq!(
            (
                answer["decision"].as_str(),
                answer["policy_version"].as_u64()
            ),
            (Some("allow"), Some(2)),
            "{answer:#}"
        );
    }
}
