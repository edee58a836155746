#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Who is calling, through the real gateway binary: agent tokens that do not verify (expired,
//! wrong audience, unknown key, forged signature, `alg: none`, malformed, missing) are 401 denies
//! recorded with `identity_verified: false`; a body claiming another identity than its token is
//! 401 `identity_mismatch`; and each tenant's token issuer keys speak only for that tenant, also
//! on a gateway serving two tenants.
//!
//! Needs the binaries: `cargo build --bins -p aegis-gateway -p aegis-controlplane -p aegisctl`.

use aegis_core::keys::Keypair;
use aegis_core::token::{self, TokenRequest};
use aegis_tests::gateway::{Gateway, GatewayOptions};
use aegis_tests::stack::{
    ACME, Stack, WAIT, assert_decision_event, balance, code, decide_raw, pay, with_id,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// base64url without padding (RFC 4648 §5), for hand-made tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A token with `header` and the claims of `claims_of` (a real token), signed by `key`
/// (no signature at all when `key` is None).
fn hand_made(header: &Value, claims_of: &str, key: Option<&Keypair>) -> String {
    let claims = claims_of.split('.').nth(1).unwrap();
    let input = format!("{}.{claims}", b64url(header.to_string().as_bytes()));
    let signature = key.map_or_else(String::new, |k| {
        b64url(&k.sign(input.as_bytes()).to_bytes())
    });
    format!("{input}.{signature}")
}

#[test]
fn b64url_matches_rfc4648() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64url(plain.as_bytes()), encoded);
    }
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

#[test]
fn tokens_that_do_not_verify_and_bodies_that_lie_are_401_and_recorded() {
    let stack = Stack::start();
    let gw = stack.gateway("gw-id");
    let issuer = &stack.acme().issuer;
    let kid = issuer.key_id().to_string();
    let good: TokenRequest = stack.token_request(ACME, "finance-agent", &["planner"]);
    let good_token = token::issue(&good, issuer).unwrap();
    let now = good.issued_at;
    let rogue = Keypair::generate().unwrap();

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "expired",
            Some(
                token::issue(
                    &TokenRequest {
                        issued_at: now - 3_600,
                        ttl_seconds: 60,
                        ..good.clone()
                    },
                    issuer,
                )
                .unwrap(),
            ),
            "token_expired",
        ),
        (
            "wrong audience",
            Some(
                token::issue(
                    &TokenRequest {
                        audience: "another-service".into(),
                        ..good.clone()
                    },
                    issuer,
                )
                .unwrap(),
            ),
            "token_wrong_audience",
        ),
        (
            "unknown key",
            Some(token::issue(&good, &rogue).unwrap()),
            "token_unknown_key",
        ),
        (
            "bad signature (another key, the registered kid)",
            Some(hand_made(
                &json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"}),
                &good_token,
                Some(&rogue),
            )),
            "token_bad_signature",
        ),
        (
            "alg none",
            Some(hand_made(
                &json!({"alg": "none", "kid": kid, "typ": "JWT"}),
                &good_token,
                None,
            )),
            "token_unsupported_algorithm",
        ),
        ("malformed", Some("not-a-jwt".to_owned()), "token_malformed"),
        ("missing", None, "token_missing"),
    ];

    // Sanity: the good token is accepted, and the hand-made encoding is right (a hand-made
    // token signed by the issuer is accepted too).
    let resigned = hand_made(
        &json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"}),
        &good_token,
        Some(issuer),
    );
    for t in [&good_token, &resigned] {
        let (status, answer) = gw.decide(t, &balance()).unwrap();
        assert_eq!(
            (status, &answer["decision"]),
            (200, &json!("allow")),
            "{answer:#}"
        );
    }

    let mut refused = Vec::new();
    for (what, token, expected) in &cases {
        let auth = token.as_ref().map(|t| format!("Bearer {t}"));
        let mut body = pay(3_000);
        body["request_id"] = json!(format!("req-{what}"));
        let (status, answer) = decide_raw(&gw, auth.as_deref(), body.to_string().as_bytes());
        assert_eq!(status, 401, "{what}: {answer:#}");
        assert_eq!(answer["decision"], "deny", "{what}: {answer:#}");
        assert_eq!(code(&answer), *expected, "{what}: {answer:#}");
        assert!(answer["policy_version"].is_null(), "{what}: {answer:#}");
        refused.push((*what, *expected, answer));
    }

    // Each refusal is on the stream once, as a deny with an unverified identity.
    let ids: BTreeSet<String> = refused
        .iter()
        .map(|(_, _, a)| a["decision_id"].as_str().unwrap().to_owned())
        .collect();
    let records = stack.wait_decisions("aegis.decisions.>", &ids, WAIT);
    for (what, expected, answer) in &refused {
        let found = with_id(&records, answer["decision_id"].as_str().unwrap());
        assert_eq!(found.len(), 1, "{what}");
        let e = found[0];
        assert_decision_event(e);
        assert_eq!(e["identity_verified"], false, "{what}: {e:#}");
        assert_eq!(e["decision"], "deny");
        assert_eq!(e["reasons"][0]["code"], *expected);
        assert_eq!(e["gateway"], "gw-id");
        assert!(e["policy_version"].is_null(), "{what}: {e:#}");
        // Filed under the tenant the token claims when it is served, else `_unauthenticated`.
        let filed = if matches!(*what, "malformed" | "missing") {
            "_unauthenticated"
        } else {
            ACME
        };
        assert_eq!(e["tenant"], filed, "{what}: {e:#}");
    }

    // A verified token, but a body naming someone else.
    let token = stack.token("finance-agent", &["planner"]);
    let mut lies = Vec::new();
    for (field, value) in [
        ("tenant", json!("globex")),
        ("agent_id", json!("treasury-agent")),
        ("call_chain", json!(["treasury-ui"])),
        ("call_chain", json!(["user-portal", "planner"])),
    ] {
        let mut body = pay(3_000);
        body[field] = value.clone();
        let (status, answer) = gw.decide(&token, &body).unwrap();
        assert_eq!(status, 401, "{field}={value}: {answer:#}");
        assert_eq!(answer["decision"], "deny");
        assert_eq!(code(&answer), "identity_mismatch", "{answer:#}");
        lies.push(answer["decision_id"].as_str().unwrap().to_owned());
    }
    // The same claims, true, are fine.
    let mut honest = pay(3_000);
    honest["tenant"] = json!(ACME);
    honest["agent_id"] = json!("finance-agent");
    honest["call_chain"] = json!(["planner"]);
    let (status, answer) = gw.decide(&token, &honest).unwrap();
    assert_eq!(
        (status, &answer["decision"]),
        (200, &json!("allow")),
        "{answer:#}"
    );

    // A body that is not a decide request (unparseable, incomplete, unknown field, over the
    // size limit): 400, recorded under the verified identity.
    let auth = format!("Bearer {token}");
    for body in [
        b"{".to_vec(),
        br#"{"tool_id":"payments"}"#.to_vec(),
        br#"{"tool_id":"payments","action":"get_balance","extra":1}"#.to_vec(),
        vec![b' '; 2 << 20],
    ] {
        let (status, answer) = decide_raw(&gw, Some(&auth), &body);
        assert_eq!(status, 400, "{answer:#}");
        assert_eq!(
            (&answer["decision"], code(&answer)),
            (&json!("deny"), "bad_request")
        );
        lies.push(answer["decision_id"].as_str().unwrap().to_owned());
    }

    let ids: BTreeSet<String> = lies.iter().cloned().collect();
    let records = stack.wait_decisions("aegis.decisions.acme.gw-id", &ids, WAIT);
    for id in &lies {
        let found = with_id(&records, id);
        assert_eq!(found.len(), 1);
        let e = found[0];
        assert_decision_event(e);
        assert_eq!(e["decision"], "deny");
        assert!(
            ["identity_mismatch", "bad_request"]
                .contains(&e["reasons"][0]["code"].as_str().unwrap()),
            "{e:#}"
        );
        // The token did verify: the event records who it proved, not what the body claimed.
        assert_eq!(e["identity_verified"], true, "{e:#}");
        assert_eq!(e["agent_id"], "finance-agent");
        assert_eq!(e["call_chain"], json!(["planner"]));
    }
}

/// A token for `tenant`'s finance agent, signed by the issuer key of tenant `key_of` (with that
/// issuer's name).
fn mint(stack: &Stack, tenant: &str, key_of: &str) -> String {
    let mut request = stack.token_request(tenant, "finance-agent", &["planner"]);
    request.issuer = stack.tenants[key_of].issuer_name();
    token::issue(&request, &stack.tenants[key_of].issuer).unwrap()
}

/// A gateway of `tenants` trusting the stack's control plane (started, not waited for).
fn gateway_of(stack: &Stack, id: &str, tenants: &[&str]) -> Gateway {
    Gateway::start(&GatewayOptions::new(
        id,
        tenants,
        &stack.trust_file,
        &stack.server.url(),
    ))
    .unwrap()
}

/// The digest of `tenant`'s `version`.
fn digest_of(stack: &Stack, tenant: &str, version: u64) -> String {
    stack
        .history(tenant)
        .into_iter()
        .find(|v| v.version == version)
        .unwrap()
        .digest
}

/// `token` is allowed a small payment by `gw`, decided by the bundle `digest` of `tenant`.
fn assert_allowed_by(gw: &Gateway, token: &str, tenant: &str, digest: &str) {
    let (status, answer) = gw.decide(token, &pay(3_000)).unwrap();
    assert_eq!(
        (status, &answer["decision"]),
        (200, &json!("allow")),
        "{tenant}: {answer:#}"
    );
    assert_eq!(answer["bundle_digest"], digest, "{tenant}");
}

#[test]
fn a_tenants_issuer_keys_speak_only_for_that_tenant() {
    let mut stack = Stack::start();
    stack.add_tenant("globex");
    let both = gateway_of(&stack, "gw-two", &[ACME, "globex"]);
    both.wait_ready(WAIT).unwrap();
    both.wait_version(ACME, 1, WAIT).unwrap();
    both.wait_version("globex", 1, WAIT).unwrap();
    let acme_only = stack.gateway("gw-acme");
    let acme_digest = stack.current().digest;
    let globex_digest = digest_of(&stack, "globex", 1);
    assert_ne!(acme_digest, globex_digest);

    // Each tenant's own tokens: decided by its own bundle.
    for (tenant, digest) in [(ACME, &acme_digest), ("globex", &globex_digest)] {
        let t = stack.token_for(tenant, "finance-agent", &["planner"]);
        assert_allowed_by(&both, &t, tenant, digest);
    }

    // One tenant's issuer key minting a token for the other: refused, both ways.
    let mut ids = BTreeSet::new();
    for (claimed, key_of) in [("globex", ACME), (ACME, "globex")] {
        let t = mint(&stack, claimed, key_of);
        let (status, answer) = both.decide(&t, &pay(3_000)).unwrap();
        assert_eq!(status, 401, "{key_of}'s key claiming {claimed}: {answer:#}");
        assert_eq!(code(&answer), "token_wrong_tenant", "{answer:#}");
        ids.insert(answer["decision_id"].as_str().unwrap().to_owned());
    }
    let records = stack.wait_decisions("aegis.decisions.*.gw-two", &ids, WAIT);
    for id in &ids {
        let e = with_id(&records, id)[0];
        assert_decision_event(e);
        assert_eq!(e["identity_verified"], false);
        assert_eq!(e["reasons"][0]["code"], "token_wrong_tenant");
    }

    // globex registers acme's key too: a token it signs now verifies for the tenant it names,
    // for either tenant, each decided by its own bundle.
    let acme_key = stack.acme().issuer.clone();
    let v = stack.register_issuer("globex", &stack.acme().issuer_name(), &acme_key);
    both.wait_version("globex", v, WAIT).unwrap();
    let globex_digest = digest_of(&stack, "globex", v);
    for (tenant, digest) in [(ACME, &acme_digest), ("globex", &globex_digest)] {
        assert_allowed_by(&both, &mint(&stack, tenant, ACME), tenant, digest);
    }
    // ... but globex's own key still does not speak for acme.
    let (status, answer) = both
        .decide(&mint(&stack, ACME, "globex"), &pay(3_000))
        .unwrap();
    assert_eq!(
        (status, code(&answer)),
        (401, "token_wrong_tenant"),
        "{answer:#}"
    );

    // A gateway for acme and a tenant with no published bundle: not ready, and it says which
    // tenant it waits for, while acme's calls are decided.
    let half = gateway_of(&stack, "gw-half", &[ACME, "initech"]);
    half.wait_version(ACME, 1, WAIT).unwrap();
    let (ready, body) = half.get("/readyz").unwrap();
    assert_eq!(ready, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["waiting_for"], json!(["initech"]), "{body}");
    let t = stack.token("finance-agent", &["planner"]);
    let (status, answer) = half.decide(&t, &pay(3_000)).unwrap();
    assert_eq!(
        (status, &answer["decision"]),
        (200, &json!("allow")),
        "{answer:#}"
    );

    // A gateway that serves only acme knows nothing of globex's keys.
    let t = stack.token_for("globex", "finance-agent", &["planner"]);
    let (status, answer) = acme_only.decide(&t, &pay(3_000)).unwrap();
    assert_eq!(status, 401, "{answer:#}");
    assert_eq!(code(&answer), "token_unknown_key", "{answer:#}");
    let t = mint(&stack, "globex", ACME);
    let (status, answer) = acme_only.decide(&t, &pay(3_000)).unwrap();
    assert_eq!(status, 401, "{answer:#}");
    assert_eq!(code(&answer), "token_wrong_tenant", "{answer:#}");
}
