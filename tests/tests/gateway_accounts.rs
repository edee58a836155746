//! A gateway under the shipped `nats/conf/accounts.conf`: logged in as `gateway-gw1`, with only
//! the permissions that file grants, it still gets and verifies bundles (consumer on
//! AEGIS_BUNDLES, object-store reads), ships its decisions on `aegis.decisions.<t>.gw1`, and
//! heartbeats into `aegis-gateways` under `<t>.gw1`, and counts global limits in
//! `aegis-limits` — so the file and the gateway agree.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_tests::stack::{ACME, Stack, WAIT, code, finance_policy_for, pay};
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn a_gateway_works_with_only_the_permissions_accounts_conf_gives_it() {
    let mut stack = Stack::start_with_accounts();
    let gw = stack.gateway("gw1");
    let token = stack.token("finance-agent", &["planner"]);

    let mut ids = BTreeSet::new();
    for (amount, expected) in [
        (50_000, "deny"),
        (3_000, "allow"),
        (6_000, "approval_needed"),
    ] {
        let (status, answer) = gw.decide(&token, &pay(amount)).unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["decision"], expected, "{amount}: {answer}");
        ids.insert(answer["decision_id"].as_str().unwrap().to_owned());
    }
    let (status, answer) = gw.decide("not-a-token", &pay(1)).unwrap();
    assert_eq!((status, code(&answer)), (401, "token_malformed"));
    ids.insert(answer["decision_id"].as_str().unwrap().to_owned());

    let records = stack.wait_decisions("aegis.decisions.>", &ids, Duration::from_secs(30));
    let gateways: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["gateway"].as_str())
        .collect();
    assert_eq!(gateways, BTreeSet::from(["gw1"]));
    let beat = stack.wait_heartbeat(ACME, "gw1", "a heartbeat with the version", |b| {
        b.version == Some(stack.version())
    });
    assert!(beat.ready, "{beat:?}");

    // A global budget: the payment is counted in KV aegis-limits (open, read, compare-and-set).
    let global = finance_policy_for(ACME).replace("scope: gateway\n", "scope: global\n");
    stack.publish_change(&global);
    gw.wait_version(ACME, stack.version(), WAIT).unwrap();
    for _ in 0..2 {
        let (status, answer) = gw.decide(&token, &pay(3_000)).unwrap();
        assert_eq!(
            (status, answer["decision"].as_str()),
            (200, Some("allow")),
            "{answer}"
        );
    }
    assert!(
        !gw.log().contains("Permissions Violation"),
        "the gateway hit a permission it does not have:\n{}",
        gw.log()
    );
}
