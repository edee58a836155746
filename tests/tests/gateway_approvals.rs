#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Runtime approvals end to end, as real processes: nats-server, the control-plane binary and
//! `aegis-gateway` binaries ([`aegis_tests::stack::Stack`]).
//!
//! - a 6,000 payment needs approval: the request lands on `AEGIS_APPROVALS` naming the exact
//!   call (masked parameters, the digest of the unmasked call), and a webhook receives a
//!   Slack-compatible message with the grant command;
//! - retried with the approval id: pending until granted, then allowed once, then
//!   `approval_used`; another call (other amount, other chain) cannot use the grant;
//! - two gateways racing for one grant with many concurrent retries: exactly one allow;
//! - expired, denied and foreign-signed grants, unknown ids and lapsed requests are refused.
//!
//! Grants are published here as the control plane relays them: a `runtime_approval_decided`
//! envelope signed with the control plane's key on `aegis.approvals.<tenant>.<id>`.
//!
//! Needs the binaries: `cargo build --bins -p aegis-gateway -p aegis-controlplane -p aegisctl`.

use aegis_core::approvals::{
    ApprovalConsumed, ApprovalMessage, ApprovalRequested, CallIdentity, call_digest,
};
use aegis_core::events::envelope::format_time;
use aegis_core::events::{Envelope, Event, RuntimeApprovalDecided};
use aegis_core::ids::{ActorId, AgentId, EventId, TenantId, ToolId};
use aegis_core::keys::Keypair;
use aegis_nats::topology::{APPROVALS_STREAM, approvals_subject};
use aegis_tests::gateway::Gateway;
use aegis_tests::stack::{
    ACCOUNT, ACME, Stack, WAIT, assert_decision_event, code, metrics, pay, wait_until, with_id,
};
use aegis_tests::webhook::{bodies, webhook};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

/// The digest of a `pay(amount)` call as the gateway computes it.
fn pay_digest(agent: &str, chain: &[&str], amount: u64) -> String {
    let tenant = TenantId::new(ACME).unwrap();
    let agent = AgentId::new(agent).unwrap();
    let chain: Vec<AgentId> = chain.iter().map(|a| AgentId::new(*a).unwrap()).collect();
    let tool = ToolId::new("payments").unwrap();
    let params = pay(amount)["params"].as_object().unwrap().clone();
    call_digest(&CallIdentity {
        tenant: &tenant,
        agent_id: &agent,
        call_chain: &chain,
        tool_id: &tool,
        action: "create_payment",
        params: &params,
    })
}

/// `pay(amount)` carrying `approval_id`.
fn retry(amount: u64, approval_id: &str) -> Value {
    let mut body = pay(amount);
    body["approval_id"] = json!(approval_id);
    body
}

fn subject(approval_id: &str) -> String {
    approvals_subject(&TenantId::new(ACME).unwrap(), approval_id).unwrap()
}

/// The last message on an approval's subject, with its sequence.
fn last(stack: &Stack, approval_id: &str) -> Option<(u64, Value, ApprovalMessage)> {
    let message = stack
        .block_on(aegis_nats::last_message(
            &stack.js,
            APPROVALS_STREAM,
            &subject(approval_id),
        ))
        .unwrap()?;
    let value: Value = serde_json::from_slice(&message.payload).unwrap();
    let parsed = ApprovalMessage::parse(&message.payload).unwrap();
    Some((message.sequence, value, parsed))
}

/// Waits for the gateway's request to land on the approval's subject.
fn wait_requested(stack: &Stack, approval_id: &str) -> (Value, ApprovalRequested) {
    let mut found = None;
    wait_until(WAIT, "the approval request on AEGIS_APPROVALS", || {
        found = last(stack, approval_id);
        found.is_some()
    });
    let (_, value, parsed) = found.unwrap();
    let ApprovalMessage::Requested(requested) = parsed else {
        panic!("not a request: {value:#}");
    };
    (value, *requested)
}

/// Publishes a decision on `approval_id` as the control plane relays it, signed by `key`.
fn decide_approval(
    stack: &Stack,
    approval_id: &str,
    digest: &str,
    granted: bool,
    expires_in: time::Duration,
    key: &Keypair,
) {
    let now = time::OffsetDateTime::now_utc();
    let decided = RuntimeApprovalDecided {
        approval_id: approval_id.to_owned(),
        call_digest: digest.to_owned(),
        granted,
        expires_at: granted.then(|| format_time(now + expires_in).unwrap()),
        by: ActorId::new("bob").unwrap(),
        at: format_time(now).unwrap(),
        note: Some(
            if granted {
                "ok for the Q4 invoice"
            } else {
                "not this vendor"
            }
            .to_owned(),
        ),
        source_event: EventId::random().unwrap(),
    };
    let env = Envelope::sign(
        EventId::random().unwrap(),
        TenantId::new(ACME).unwrap(),
        ActorId::new("controlplane").unwrap(),
        key,
        now,
        Event::RuntimeApprovalDecided(decided),
    )
    .unwrap();
    let publish = aegis_nats::Publish::new(subject(approval_id), env.to_bytes().unwrap())
        .msg_id(env.id.to_string());
    stack
        .block_on(aegis_nats::publish(&stack.js, publish))
        .unwrap();
}

/// Asks for approval of a `pay(amount)`; returns the answer and the approval id.
fn needs_approval(gw: &Gateway, token: &str, amount: u64) -> (Value, String) {
    let (status, answer) = gw.decide(token, &pay(amount)).unwrap();
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["decision"], "approval_needed", "{answer:#}");
    assert_eq!(answer["approval"]["status"], "pending", "{answer:#}");
    let id = answer["approval"]["id"].as_str().unwrap().to_owned();
    (answer, id)
}

/// Asserts `value` is valid against a compiled schema of `aegis_core::schemas`.
macro_rules! assert_schema {
    ($validator:expr, $value:expr) => {{
        let value: &Value = $value;
        let errors: Vec<String> = $validator
            .unwrap()
            .iter_errors(value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{value:#}");
    }};
}

#[test]
fn an_approval_is_requested_posted_granted_and_used_once() {
    // The shipped accounts.conf: gateway-gw1 may publish requests and consumption (with an
    // expected sequence) and read approval subjects.
    let stack = Stack::start_with_accounts();
    let (url, received) = webhook();
    let options = stack
        .gateway_options("gw1")
        .arg("--approval-webhook")
        .arg(&url);
    let gw = Gateway::start(&options).unwrap();
    gw.wait_ready(WAIT).unwrap();
    let token = stack.token("finance-agent", &["planner"]);

    // 1. The 6,000 payment needs approval; the request lands on the stream.
    let (first, id) = needs_approval(&gw, &token, 6_000);
    assert_eq!(code(&first), "amount_requires_approval", "{first:#}");
    let (value, requested) = wait_requested(&stack, &id);
    assert_schema!(aegis_core::schemas::approval_requested_validator(), &value);
    let digest = pay_digest("finance-agent", &["planner"], 6_000);
    assert_eq!(
        requested.call_digest, digest,
        "the digest of the unmasked call"
    );
    assert_eq!(requested.params["account_number"], "[MASKED]");
    assert_eq!(requested.params["amount"], 6_000);
    assert_eq!(requested.masked_params, ["account_number"]);
    assert_eq!(
        requested.decision_id,
        first["decision_id"].as_str().unwrap()
    );
    assert_eq!(requested.gateway, "gw1");
    assert_eq!(requested.agent_id.as_str(), "finance-agent");
    assert_eq!(requested.call_chain, [AgentId::new("planner").unwrap()]);
    assert_eq!(requested.reasons[0].code, "amount_requires_approval");
    assert_eq!(
        requested.expires_at,
        first["approval"]["expires_at"].as_str().unwrap()
    );
    assert!(!value.to_string().contains(ACCOUNT), "{value:#}");

    // 2. The webhook receives a Slack-compatible message.
    wait_until(WAIT, "the webhook post", || {
        !received.lock().unwrap().is_empty()
    });
    let message = bodies(&received)[0].clone();
    let text = message["text"].as_str().unwrap();
    let grant_command = format!("aegisctl approvals grant {id} --tenant acme");
    assert!(
        text.contains(&id) && text.contains(&grant_command),
        "{text}"
    );
    let blocks = message["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert!(blocks.iter().all(|b| b["type"].is_string()), "{message:#}");
    let fields = blocks
        .iter()
        .find_map(|b| b["fields"].as_array())
        .expect("a section with fields");
    let fields: Vec<&str> = fields.iter().map(|f| f["text"].as_str().unwrap()).collect();
    for wanted in [
        "acme",
        "finance-agent",
        "planner",
        "payments/create_payment",
        id.as_str(),
    ] {
        assert!(
            fields.iter().any(|f| f.contains(wanted)),
            "{wanted}: {fields:?}"
        );
    }
    let body = message.to_string();
    assert!(body.contains(&grant_command), "{body}");
    assert!(
        body.contains("[MASKED]") && !body.contains(ACCOUNT),
        "{body}"
    );
    assert!(body.contains("amount_requires_approval"), "{body}");

    // 3. Retried before anyone decided: still pending, same id.
    let (status, pending) = gw.decide(&token, &retry(6_000, &id)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(pending["decision"], "approval_needed", "{pending:#}");
    assert_eq!(code(&pending), "approval_pending");
    assert_eq!(pending["approval"]["id"], id.as_str());
    assert_eq!(pending["approval"]["status"], "pending");

    // 4. Granted (relayed and signed as the control plane does).
    decide_approval(
        &stack,
        &id,
        &digest,
        true,
        time::Duration::minutes(10),
        &stack.keys.control_plane,
    );

    // Another call cannot use the grant: another amount, another chain.
    let (_, other_amount) = gw.decide(&token, &retry(7_000, &id)).unwrap();
    assert_eq!(other_amount["decision"], "deny", "{other_amount:#}");
    assert_eq!(code(&other_amount), "approval_call_mismatch");
    let via_ui = stack.token("finance-agent", &["treasury-ui"]);
    let (_, other_chain) = gw.decide(&via_ui, &retry(6_000, &id)).unwrap();
    assert_eq!(other_chain["decision"], "deny", "{other_chain:#}");
    assert_eq!(code(&other_chain), "approval_call_mismatch");

    // Another agent's call is not the approved one either (this policy denies it outright).
    let treasury = stack.token("treasury-agent", &["planner"]);
    let (_, other_agent) = gw.decide(&treasury, &retry(6_000, &id)).unwrap();
    assert_eq!(other_agent["decision"], "deny", "{other_agent:#}");

    // The approved call: allowed once, naming the approver.
    let (status, allowed) = gw.decide(&token, &retry(6_000, &id)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(allowed["decision"], "allow", "{allowed:#}");
    assert_eq!(code(&allowed), "approval_granted");
    assert!(
        allowed["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("bob"),
        "{allowed:#}"
    );
    assert_eq!(allowed["approval"]["id"], id.as_str());
    assert_eq!(allowed["approval"]["status"], "consumed");
    let (seq, consumed_value, consumed) = last(&stack, &id).unwrap();
    assert!(seq > 0);
    assert_schema!(
        aegis_core::schemas::approval_consumed_validator(),
        &consumed_value
    );
    let ApprovalMessage::Consumed(ApprovalConsumed {
        gateway,
        decision_id,
        call_digest,
        ..
    }) = consumed
    else {
        panic!("not a consumption: {consumed_value:#}");
    };
    assert_eq!(gateway, "gw1");
    assert_eq!(decision_id, allowed["decision_id"].as_str().unwrap());
    assert_eq!(call_digest, digest);

    // A second retry: used.
    let (_, again) = gw.decide(&token, &retry(6_000, &id)).unwrap();
    assert_eq!(again["decision"], "deny", "{again:#}");
    assert_eq!(code(&again), "approval_used");
    assert_eq!(again["approval"]["status"], "consumed");

    // An allowed call ignores an approval id; a denied one stays denied.
    let (_, small) = gw.decide(&token, &retry(3_000, &id)).unwrap();
    assert_eq!(
        (small["decision"].as_str(), code(&small)),
        (Some("allow"), "allowed")
    );
    let (_, big) = gw.decide(&token, &retry(50_000, &id)).unwrap();
    assert_eq!(
        (big["decision"].as_str(), code(&big)),
        (Some("deny"), "amount_over_limit")
    );

    // The decision events carry the approval id and the reasons.
    let answers = [
        &first,
        &pending,
        &other_amount,
        &other_chain,
        &allowed,
        &again,
    ];
    let ids: BTreeSet<String> = answers
        .iter()
        .map(|a| a["decision_id"].as_str().unwrap().to_owned())
        .collect();
    let records = stack.wait_decisions("aegis.decisions.acme.gw1", &ids, WAIT);
    for answer in answers {
        let record = with_id(&records, answer["decision_id"].as_str().unwrap())[0];
        assert_decision_event(record);
        assert_eq!(record["approval_id"], id.as_str(), "{record:#}");
        assert_eq!(record["decision"], answer["decision"]);
        assert_eq!(record["reasons"], answer["reasons"]);
    }
    let small_record = stack.wait_decisions(
        "aegis.decisions.acme.gw1",
        &BTreeSet::from([small["decision_id"].as_str().unwrap().to_owned()]),
        WAIT,
    );
    let small_record = with_id(&small_record, small["decision_id"].as_str().unwrap())[0];
    assert!(
        small_record["approval_id"].is_null(),
        "an ignored id is not recorded"
    );

    let text = metrics(&gw);
    assert!(
        text.contains("aegis_approval_webhook_posts_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("aegis_approval_requests_total{outcome=\"published\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("aegis_approval_retries_total{outcome=\"consumed\"} 1"),
        "{text}"
    );
}

#[test]
fn two_gateways_racing_for_one_grant_let_exactly_one_call_through() {
    let stack = Stack::start();
    let gateways = [stack.gateway("gw-a"), stack.gateway("gw-b")];
    let token = stack.token("finance-agent", &["planner"]);
    let (_, id) = needs_approval(&gateways[0], &token, 6_000);
    wait_requested(&stack, &id);
    let digest = pay_digest("finance-agent", &["planner"], 6_000);
    decide_approval(
        &stack,
        &id,
        &digest,
        true,
        time::Duration::minutes(10),
        &stack.keys.control_plane,
    );

    let per_thread = 5;
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let gw = &gateways[i % 2];
                let (token, id) = (&token, &id);
                scope.spawn(move || {
                    let mut client = gw.client().unwrap();
                    (0..per_thread)
                        .map(|_| client.decide(token, &retry(6_000, id)).unwrap().1)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(answers.len(), 8 * per_thread);
    let allowed: Vec<&Value> = answers
        .iter()
        .filter(|a| a["decision"] == "allow")
        .collect();
    assert_eq!(
        allowed.len(),
        1,
        "exactly one call uses the grant: {allowed:#?}"
    );
    assert_eq!(code(allowed[0]), "approval_granted");
    for a in answers.iter().filter(|a| a["decision"] != "allow") {
        assert_eq!(a["decision"], "deny", "{a:#}");
        assert_eq!(code(a), "approval_used", "{a:#}");
    }
    let (_, _, consumed) = last(&stack, &id).unwrap();
    let ApprovalMessage::Consumed(c) = consumed else {
        panic!("the grant was not consumed: {consumed:?}");
    };
    assert_eq!(c.decision_id, allowed[0]["decision_id"].as_str().unwrap());
}

#[test]
fn expired_denied_unknown_and_untrusted_approvals_are_refused() {
    let stack = Stack::start();
    // Requests lapse after 2 s on this gateway.
    let options = stack
        .gateway_options("gw-x")
        .arg("--approval-ttl-secs")
        .arg("2");
    let gw = Gateway::start(&options).unwrap();
    gw.wait_ready(WAIT).unwrap();
    let token = stack.token("finance-agent", &["planner"]);
    let digest = pay_digest("finance-agent", &["planner"], 6_000);
    let cp = &stack.keys.control_plane;
    let refused = |id: &str| {
        let (status, answer) = gw.decide(&token, &retry(6_000, id)).unwrap();
        assert_eq!(status, 200, "{answer:#}");
        assert_eq!(answer["decision"], "deny", "{answer:#}");
        assert_eq!(answer["approval"]["id"], id, "{answer:#}");
        answer
    };

    // A grant that lapsed unused.
    let (_, expired) = needs_approval(&gw, &token, 6_000);
    wait_requested(&stack, &expired);
    decide_approval(
        &stack,
        &expired,
        &digest,
        true,
        time::Duration::seconds(-5),
        cp,
    );
    let a = refused(&expired);
    assert_eq!(code(&a), "approval_expired");
    assert_eq!(a["approval"]["status"], "expired");

    // A denial.
    let (_, denied) = needs_approval(&gw, &token, 6_000);
    wait_requested(&stack, &denied);
    decide_approval(&stack, &denied, &digest, false, time::Duration::ZERO, cp);
    let a = refused(&denied);
    assert_eq!(code(&a), "approval_denied");
    assert!(
        a["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not this vendor"),
        "{a:#}"
    );

    // A grant signed by a key the gateway does not trust.
    let (_, forged) = needs_approval(&gw, &token, 6_000);
    wait_requested(&stack, &forged);
    decide_approval(
        &stack,
        &forged,
        &digest,
        true,
        time::Duration::minutes(10),
        &Keypair::generate().unwrap(),
    );
    let a = refused(&forged);
    assert_eq!(code(&a), "approval_unavailable");
    assert!(
        a["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not trust"),
        "{a:#}"
    );
    let (_, still) = gw.decide(&token, &retry(6_000, &forged)).unwrap();
    assert_eq!(
        still["decision"], "deny",
        "a forged grant never lets the call through"
    );

    // An id nobody requested.
    let unknown = format!("apr-{}", "5".repeat(32));
    assert_eq!(code(&refused(&unknown)), "approval_unknown");

    // A request nobody decided in time.
    let (_, lapsed) = needs_approval(&gw, &token, 6_000);
    wait_requested(&stack, &lapsed);
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(code(&refused(&lapsed)), "approval_expired");

    let text = metrics(&gw);
    assert!(
        text.contains("aegis_approval_retries_total{outcome=\"consumed\"} 0"),
        "{text}"
    );
}
