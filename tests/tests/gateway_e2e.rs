#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The gateway end to end, as real processes: nats-server, the control-plane binary and
//! `aegis-gateway` binaries, with policies published through the change workflow
//! ([`aegis_tests::stack::Stack`]).
//!
//! - the finance story through a gateway, and each answer's event in `AEGIS_DECISIONS`;
//! - a new version reaching five gateways (the time it takes is printed);
//! - tampered, downgraded and foreign-signed bundles refused by every gateway, reported in
//!   `/v1/status`, `/metrics`, the KV heartbeat and as `bundle_rejected` records, while the
//!   version in force keeps deciding;
//! - a bundle that expires while in force: denied (`bundle_expired`) and not ready until a
//!   newer one arrives.
//!
//! Needs the binaries: `cargo build --bins -p aegis-gateway -p aegis-controlplane -p aegisctl`.

use aegis_core::bundle::{BundleSpec, VerifyPolicy, build, verify};
use aegis_core::ids::TenantId;
use aegis_core::keys::{Keypair, TrustStore};
use aegis_tests::bundles::retar;
use aegis_tests::gateway::Gateway;
use aegis_tests::stack::{
    ACME, Stack, WAIT, assert_bundle_rejected, assert_decision_event, code,
    finance_with_approval_limit, metrics, pay, tenant_status, wait_until, with_id,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[test]
fn the_finance_story_through_a_real_gateway_and_its_events() {
    let stack = Stack::start();
    let gw = stack.gateway("gw-finance");
    let v1 = stack.current();
    assert_eq!(v1.version, 1);
    let token = stack.token("finance-agent", &["planner"]);
    let mut client = gw.client().unwrap();

    let cases = [
        (50_000, "deny", "amount_over_limit"),
        (3_000, "allow", "allowed"),
        (6_000, "approval_needed", "amount_requires_approval"),
    ];
    let mut answers = Vec::new();
    for (amount, decision, reason) in cases {
        let mut body = pay(amount);
        body["request_id"] = json!(format!("req-{amount}"));
        let (status, answer) = client.decide(&token, &body).unwrap();
        assert_eq!(status, 200, "{amount}: {answer:#}");
        assert_eq!(answer["decision"], decision, "{amount}: {answer:#}");
        assert_eq!(code(&answer), reason, "{amount}: {answer:#}");
        assert_eq!(answer["reasons"][0]["rule"], "pay", "{answer:#}");
        assert_eq!(answer["policy_version"], 1);
        assert_eq!(answer["bundle_digest"], v1.digest.as_str());
        let id = answer["decision_id"].as_str().unwrap();
        assert!(id.starts_with("dec-") && id.len() == 36, "{id}");
        if decision == "approval_needed" {
            let approval = &answer["approval"];
            assert!(
                approval["id"].as_str().unwrap().starts_with("apr-"),
                "{answer:#}"
            );
            assert_eq!(approval["status"], "pending");
        } else {
            assert!(
                answer.get("approval").is_none_or(Value::is_null),
                "{answer:#}"
            );
        }
        answers.push((amount, answer));
    }

    let ids: BTreeSet<String> = answers
        .iter()
        .map(|(_, a)| a["decision_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "decision ids are unique");
    let records = stack.wait_decisions("aegis.decisions.acme.gw-finance", &ids, WAIT);
    for (amount, answer) in &answers {
        let id = answer["decision_id"].as_str().unwrap();
        let found = with_id(&records, id);
        assert_eq!(found.len(), 1, "{id} is on the stream exactly once");
        let e = found[0];
        assert_decision_event(e);
        assert_eq!(e["type"], "decision");
        assert_eq!(e["tenant"], ACME);
        assert_eq!(e["gateway"], "gw-finance");
        assert_eq!(e["request_id"], format!("req-{amount}"));
        assert_eq!(e["identity_verified"], true);
        assert_eq!(e["agent_id"], "finance-agent");
        assert_eq!(e["call_chain"], json!(["planner"]));
        assert_eq!(
            (&e["tool_id"], &e["action"]),
            (&json!("payments"), &json!("create_payment"))
        );
        assert_eq!(e["decision"], answer["decision"]);
        assert_eq!(e["reasons"], answer["reasons"]);
        assert_eq!(e["policy_version"], answer["policy_version"]);
        assert_eq!(e["bundle_digest"], answer["bundle_digest"]);
        assert_eq!(e["params"]["account_number"], "[MASKED]", "{e:#}");
        assert_eq!(e["masked_params"], json!(["account_number"]));
        assert_eq!(e["params"]["amount"], *amount);
        assert_eq!(e["params"]["currency"], "USD");
        assert!(
            !e.to_string().contains(aegis_tests::stack::ACCOUNT),
            "the account leaks: {e}"
        );
        assert_eq!(e["rollout_stage"], "global");
        assert_eq!(
            e["approval_id"],
            answer["approval"].get("id").cloned().unwrap_or(Value::Null)
        );
    }
}

#[test]
fn a_new_version_reaches_five_gateways() {
    let mut stack = Stack::start();
    let options: Vec<_> = (1..=5)
        .map(|i| stack.gateway_options(&format!("gw-{i}")))
        .collect();
    let gateways: Vec<Gateway> = options.iter().map(|o| Gateway::start(o).unwrap()).collect();
    for gw in &gateways {
        gw.wait_version(ACME, 1, WAIT).unwrap();
    }
    let token = stack.token("finance-agent", &["planner"]);

    // 5,200: above version 1's approval bound (5,000), within version 2's (5,500).
    for gw in &gateways {
        let (status, answer) = gw.decide(&token, &pay(5_200)).unwrap();
        assert_eq!(
            (status, &answer["decision"]),
            (200, &json!("approval_needed")),
            "{answer:#}"
        );
        assert_eq!(answer["policy_version"], 1);
    }

    let target = stack.version() + 1;
    let new_policy = finance_with_approval_limit(ACME, 5_500);
    let (version, acked, published, enforced) = std::thread::scope(|s| {
        let watchers: Vec<_> = gateways
            .iter()
            .map(|gw| {
                s.spawn(move || {
                    let deadline = Instant::now() + WAIT * 2;
                    let mut client = gw.client().unwrap();
                    loop {
                        let (_, body) = client.request("GET", "/v1/status", &[], b"").unwrap();
                        let status: Value = serde_json::from_str(&body).unwrap();
                        if status["tenants"][0]["version"].as_u64() >= Some(target) {
                            return Instant::now();
                        }
                        assert!(Instant::now() < deadline, "{} never got v{target}", gw.id);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        let (version, acked) = stack.publish_change_timed(ACME, &new_policy);
        let published = Instant::now();
        let enforced: Vec<Instant> = watchers.into_iter().map(|h| h.join().unwrap()).collect();
        (version, acked, published, enforced)
    });
    assert_eq!(version, target);
    let lags: Vec<Duration> = enforced
        .iter()
        .map(|t| t.saturating_duration_since(acked))
        .collect();
    let last = lags.iter().max().unwrap();
    eprintln!(
        "propagation: change_published acked -> last of 5 gateways enforcing v{version}: {last:?} \
         (per gateway: {lags:?}; the test saw the announcement after {:?})",
        published.saturating_duration_since(acked)
    );

    let digest = stack.current().digest;
    for gw in &gateways {
        let (status, answer) = gw.decide(&token, &pay(5_200)).unwrap();
        assert_eq!(
            (status, &answer["decision"]),
            (200, &json!("allow")),
            "{}: {answer:#}",
            gw.id
        );
        assert_eq!(answer["policy_version"], version);
        assert_eq!(answer["bundle_digest"], digest.as_str());
        let t = tenant_status(gw, ACME);
        assert_eq!(
            (&t["digest"], &t["source"]),
            (&json!(digest), &json!("nats"))
        );
        assert_eq!(t["rejected"], json!([]));
        // The fleet view (KV aegis-gateways) says so too.
        let beat = stack.wait_heartbeat(ACME, &gw.id, &format!("v{version}"), |b| {
            b.version == Some(version)
        });
        assert_eq!(beat.digest.as_deref(), Some(digest.as_str()));
        assert!(beat.ready, "{beat:?}");
    }
}

/// What the gateways answer for a few calls (decision, reason, version).
fn answers(gw: &Gateway, token: &str) -> Vec<Value> {
    [5_200, 6_000]
        .into_iter()
        .map(|amount| {
            let (status, a) = gw.decide(token, &pay(amount)).unwrap();
            assert_eq!(status, 200, "{a:#}");
            json!([
                a["decision"],
                code(&a),
                a["policy_version"],
                a["bundle_digest"]
            ])
        })
        .collect()
}

#[test]
fn tampered_downgraded_and_foreign_bundles_are_refused_by_every_gateway() {
    let mut stack = Stack::start();
    let v2 = stack.publish_change(&finance_with_approval_limit(ACME, 5_500));
    assert_eq!(v2, 2);
    let gateways = [stack.gateway("gw-t1"), stack.gateway("gw-t2")];
    let token = stack.token("finance-agent", &["planner"]);
    let before: Vec<Vec<Value>> = gateways.iter().map(|gw| answers(gw, &token)).collect();
    assert_eq!(before[0][0][0], "allow");
    assert_eq!(before[0][1][0], "approval_needed");
    let in_force = stack.current();

    // The files of the version in force, to build bundles from as the control plane would.
    let mut trust = TrustStore::new();
    trust.trust(stack.keys.control_plane.public_key().clone());
    let now = time::OffsetDateTime::now_utc();
    let verified = verify(
        &stack.bundle_bytes(&in_force.digest),
        &trust,
        &VerifyPolicy::new(now),
    )
    .unwrap();
    let mut files = verified.files.clone();
    files.remove(".manifest");
    let fmt = |t: time::OffsetDateTime| aegis_core::events::envelope::format_time(t).unwrap();
    let spec = |version: u64| BundleSpec {
        tenant: TenantId::new(ACME).unwrap(),
        version,
        created_at: fmt(now),
        expires_at: Some(fmt(now + time::Duration::days(30))),
        author: "controlplane".into(),
        source_change: None,
    };
    let cp = &stack.keys.control_plane;

    // Each refusal must show on every gateway's /v1/status, in order.
    let mut expected_codes: Vec<&str> = Vec::new();
    let mut digests: Vec<String> = Vec::new();
    let mut refused = |code: &'static str, digest: String| {
        expected_codes.push(code);
        digests.push(digest);
        for gw in &gateways {
            let n = expected_codes.len();
            wait_until(
                WAIT,
                &format!("{} to refuse a bundle ({code})", gw.id),
                || {
                    tenant_status(gw, ACME)["rejected"]
                        .as_array()
                        .is_some_and(|r| r.len() >= n)
                },
            );
            let t = tenant_status(gw, ACME);
            let rejected = t["rejected"].as_array().unwrap();
            let codes: Vec<&str> = rejected
                .iter()
                .map(|r| r["reason_code"].as_str().unwrap())
                .collect();
            assert_eq!(codes, expected_codes, "{}: {t:#}", gw.id);
            let last = rejected.last().unwrap();
            assert_eq!(last["digest"], digests.last().unwrap().as_str());
            assert!(!last["reason"].as_str().unwrap().is_empty());
            assert!(last["at"].is_string());
            assert_eq!(
                (&t["version"], &t["digest"]),
                (&json!(v2), &json!(in_force.digest))
            );
        }
    };

    // (a) data.json changed, the original (signed) manifest kept.
    let genuine = build(&spec(v2 + 1), &files, cp).unwrap();
    let tampered = retar(&genuine.bytes, |files| {
        let data = files.get_mut("data.json").unwrap();
        let text = String::from_utf8(data.clone()).unwrap();
        assert!(text.contains("5500"), "{text}");
        *data = text.replacen("5500", "9500", 1).into_bytes();
    });
    let digest = stack.announce_bundle(ACME, v2 + 1, &tampered, cp);
    refused("hash_mismatch", digest);

    // (c) a well-formed bundle signed by a key the gateways do not trust (the announcement is
    // signed by the control plane's key, so it is the manifest's signer that is refused).
    let rogue = Keypair::generate().unwrap();
    let foreign = build(&spec(v2 + 1), &files, &rogue).unwrap();
    let digest = stack.announce_bundle(ACME, v2 + 1, &foreign.bytes, cp);
    refused("unknown_key", digest);

    // (b) correctly signed by the control plane, but a lower version than the one in force.
    // Last, so that the newest announcement on the subject is below what the control plane will
    // announce next.
    let downgrade = build(&spec(v2 - 1), &files, cp).unwrap();
    let digest = stack.announce_bundle(ACME, v2 - 1, &downgrade.bytes, cp);
    refused("version_not_above", digest);

    for (gw, before) in gateways.iter().zip(&before) {
        assert_eq!(&answers(gw, &token), before, "{} decides as before", gw.id);
        let text = metrics(gw);
        for code in ["hash_mismatch", "unknown_key", "version_not_above"] {
            let line =
                format!("aegis_bundles_rejected_total{{tenant=\"acme\",reason=\"{code}\"}} 1");
            assert!(text.contains(&line), "{}: no {line:?} in\n{text}", gw.id);
        }
        let subject = format!("aegis.decisions.acme.{}", gw.id);
        let mut rejections = Vec::new();
        wait_until(
            WAIT,
            &format!("3 bundle_rejected records on {subject}"),
            || {
                rejections = stack
                    .decision_records(&subject)
                    .into_iter()
                    .filter(|r| r["type"] == "bundle_rejected")
                    .collect();
                rejections.len() >= 3
            },
        );
        assert_eq!(rejections.len(), 3, "{rejections:#?}");
        let codes: Vec<&str> = rejections
            .iter()
            .map(|r| r["reason_code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["hash_mismatch", "unknown_key", "version_not_above"]);
        for r in &rejections {
            assert_bundle_rejected(r);
            assert_eq!(r["gateway"], gw.id.as_str());
            assert_eq!(r["kept_version"], v2);
        }
        assert_eq!(rejections[2]["version"], v2 - 1);
        assert_eq!(rejections[0]["version"], v2 + 1);
        for (r, d) in rejections.iter().zip(&digests) {
            assert_eq!(r["digest"], d.as_str());
        }
        let beat = stack.wait_heartbeat(ACME, &gw.id, "3 refusals", |b| b.rejected == 3);
        assert_eq!(beat.version, Some(v2));
        let last = beat.last_rejection.unwrap_or_default();
        assert!(
            last.starts_with(&format!("v{} version_not_above", v2 - 1)),
            "{last}"
        );
    }

    // The gateways are not wedged: the next real version applies everywhere.
    let v3 = stack.publish_change(&finance_with_approval_limit(ACME, 5_100));
    for gw in &gateways {
        gw.wait_version(ACME, v3, WAIT).unwrap();
        let (_, a) = gw.decide(&token, &pay(5_200)).unwrap();
        assert_eq!(
            (&a["decision"], &a["policy_version"]),
            (&json!("approval_needed"), &json!(v3))
        );
    }
}

#[test]
fn a_bundle_that_expires_in_force_stops_deciding_until_a_newer_one_arrives() {
    let stack = Stack::start();
    let gw = stack.gateway("gw-expiry");
    let token = stack.token("finance-agent", &["planner"]);
    let mut trust = TrustStore::new();
    trust.trust(stack.keys.control_plane.public_key().clone());
    let now = time::OffsetDateTime::now_utc();
    let v1 = stack.current();
    let mut files = verify(
        &stack.bundle_bytes(&v1.digest),
        &trust,
        &VerifyPolicy::new(now),
    )
    .unwrap()
    .files;
    files.remove(".manifest");
    let fmt = |t: time::OffsetDateTime| aegis_core::events::envelope::format_time(t).unwrap();
    let spec = |version: u64, expires: time::OffsetDateTime| BundleSpec {
        tenant: TenantId::new(ACME).unwrap(),
        version,
        created_at: fmt(now - time::Duration::seconds(5)),
        expires_at: Some(fmt(expires)),
        author: "controlplane".into(),
        source_change: None,
    };
    let cp = &stack.keys.control_plane;

    // Version 2 lives for ten seconds (as the control plane signs it).
    let short = build(&spec(2, now + time::Duration::seconds(10)), &files, cp).unwrap();
    stack.announce_bundle(ACME, 2, &short.bytes, cp);
    gw.wait_version(ACME, 2, WAIT).unwrap();
    let (status, answer) = gw.decide(&token, &pay(3_000)).unwrap();
    assert_eq!(
        (status, &answer["decision"]),
        (200, &json!("allow")),
        "{answer:#}"
    );

    // Past its expiry: denied, not ready.
    wait_until(WAIT, "the gateway to stop being ready", || {
        gw.get("/readyz").map(|(s, _)| s == 503).unwrap_or(false)
    });
    let (status, answer) = gw.decide(&token, &pay(3_000)).unwrap();
    assert_eq!(status, 503, "{answer:#}");
    assert_eq!(
        (&answer["decision"], code(&answer)),
        (&json!("deny"), "bundle_expired")
    );

    // A newer version: deciding and ready again.
    let fresh = build(&spec(3, now + time::Duration::days(30)), &files, cp).unwrap();
    stack.announce_bundle(ACME, 3, &fresh.bytes, cp);
    gw.wait_version(ACME, 3, WAIT).unwrap();
    gw.wait_ready(WAIT).unwrap();
    let (status, answer) = gw.decide(&token, &pay(3_000)).unwrap();
    assert_eq!(
        (status, &answer["decision"]),
        (200, &json!("allow")),
        "{answer:#}"
    );
    assert_eq!(answer["policy_version"], 3);
}

/// A forged announcement of a high version (signed by a key nobody trusts) is refused by the
/// gateways — and must not make the control plane believe that version is already announced:
/// the next real publish still reaches every gateway.
#[test]
fn a_forged_high_announcement_does_not_silence_the_next_real_one() {
    let mut stack = Stack::start();
    let gw = stack.gateway("gw-f1");
    let in_force = stack.current();
    let rogue = Keypair::generate().unwrap();
    let bytes = stack.bundle_bytes(&in_force.digest);
    let digest = stack.announce_bundle(ACME, 99, &bytes, &rogue);
    wait_until(WAIT, "the forged announcement to be refused", || {
        tenant_status(&gw, ACME)["rejected"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["digest"] == digest.as_str()))
    });
    let v2 = stack.publish_change(&finance_with_approval_limit(ACME, 5_500));
    gw.wait_version(ACME, v2, WAIT).unwrap();
}
