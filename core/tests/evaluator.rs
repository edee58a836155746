//! The evaluator end to end: policy text → validation → compile → RVM → typed decision.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::decision::{DecideInput, DecisionKind};
use aegis_core::eval::{EvalLimits, Evaluator, Provenance};
use aegis_core::policy::PolicySet;
use aegis_core::policy::set::parse_document;
use proptest::prelude::*;
use serde_json::json;
use std::path::PathBuf;

const FINANCE: &str = r#"
apiVersion: aegis.dev/v1
kind: AgentPolicy
metadata: {tenant: acme, name: finance, owner: pay@acme.example, risk_tier: high}
spec:
  agent_id: finance-agent
  callers: {allowed_direct: [planner], never: [scraper], max_depth: 3}
  log_masking: {params: [account_number]}
  rules:
    - id: pay
      tool_id: payments
      actions: [create_payment]
      conditions:
        - {param: currency, one_of: [USD, EUR], code: currency_not_allowed}
        - {param: amount, gt: 0, code: amount_invalid}
        - {param: amount, lte: 5000, on_violation: approval_needed, code: amount_requires_approval}
        - {param: amount, lte: 25000, code: amount_over_limit}
      sanitize:
        - drop: debug
        - mask: {pattern: "[0-9]{8,}", replacement: "****", params: [memo]}
      budgets: [{param: amount, max: 100000, window_seconds: 86400}]
      rate_limits: [{calls: 10, window_seconds: 60}]
    - id: read
      tool_id: payments
      actions: ["*"]
"#;

fn evaluator(docs: &[&str]) -> Evaluator {
    let docs = docs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = PathBuf::from(format!("doc{i}.yaml"));
            let d = parse_document(&p, (*t).to_owned()).unwrap_or_else(|e| panic!("{e}"));
            (p, d)
        })
        .collect();
    let set = PolicySet::from_documents(docs).unwrap();
    Evaluator::new(
        &set.compile(),
        Provenance {
            policy_version: Some(7),
            bundle_digest: Some("sha256:ab".into()),
        },
        EvalLimits::default(),
    )
    .unwrap()
}

fn input(v: serde_json::Value) -> DecideInput {
    let mut base = json!({"tenant": "acme", "agent_id": "finance-agent", "call_chain": ["planner"], "tool_id": "payments", "action": "create_payment",
        "params": {"amount": 3000, "currency": "USD", "account_number": "DE89370400440532013000"}, "context": {}});
    for (k, val) in v.as_object().unwrap() {
        base[k] = val.clone();
    }
    serde_json::from_value(base).unwrap()
}

#[test]
fn thresholds_give_allow_approval_and_deny() {
    let e = evaluator(&[FINANCE]);
    let allow = e.decide(&input(json!({})));
    assert_eq!(allow.decision, DecisionKind::Allow, "{allow:?}");
    assert_eq!(allow.codes(), ["allowed"]);
    assert_eq!(allow.policy.as_deref(), Some("acme/finance"));
    assert_eq!(allow.rule.as_deref(), Some("pay"));
    assert_eq!(allow.policy_version, Some(7));
    assert_eq!(allow.bundle_digest.as_deref(), Some("sha256:ab"));
    assert_eq!(allow.obligations.budgets.len(), 1);
    assert_eq!(allow.obligations.rate_limits[0].calls, 10);

    let approval = e.decide(&input(
        json!({"params": {"amount": 6000, "currency": "USD"}}),
    ));
    assert_eq!(approval.decision, DecisionKind::ApprovalNeeded);
    assert_eq!(approval.codes(), ["amount_requires_approval"]);
    assert_eq!(
        approval.obligations.approval.as_ref().unwrap().codes,
        ["amount_requires_approval"]
    );

    let deny = e.decide(&input(
        json!({"params": {"amount": 50000, "currency": "USD"}}),
    ));
    assert_eq!(deny.decision, DecisionKind::Deny);
    assert_eq!(
        deny.codes(),
        ["amount_over_limit"],
        "deny wins and approval reasons are not mixed in"
    );
    assert!(
        deny.reasons[0].message.contains("at most 25000"),
        "{:?}",
        deny.reasons
    );
}

#[test]
fn every_violation_is_reported() {
    let e = evaluator(&[FINANCE]);
    let d = e.decide(&input(json!({"call_chain": ["scraper", "planner"], "params": {"amount": 50000, "currency": "XYZ"}})));
    assert_eq!(d.decision, DecisionKind::Deny);
    let mut codes = d.codes();
    codes.sort_unstable();
    assert_eq!(
        codes,
        [
            "amount_over_limit",
            "currency_not_allowed",
            "forbidden_caller"
        ]
    );
}

#[test]
fn caller_constraints() {
    let e = evaluator(&[FINANCE]);
    assert_eq!(
        e.decide(&input(json!({"call_chain": ["mallory"]}))).codes(),
        ["caller_not_allowed"]
    );
    assert_eq!(
        e.decide(&input(json!({"call_chain": ["a", "b", "c", "planner"]})))
            .codes(),
        ["chain_too_deep"]
    );
    assert_eq!(
        e.decide(&input(json!({"call_chain": []}))).decision,
        DecisionKind::Allow
    );
}

#[test]
fn missing_and_mistyped_values_violate() {
    let e = evaluator(&[FINANCE]);
    let d = e.decide(&input(json!({"params": {"currency": "USD"}})));
    assert_eq!(d.decision, DecisionKind::Deny);
    assert!(
        d.reasons.iter().any(|r| r.message.contains("is required")),
        "{d:?}"
    );
    let d = e.decide(&input(
        json!({"params": {"amount": "3000", "currency": "USD"}}),
    ));
    assert_eq!(
        d.decision,
        DecisionKind::Deny,
        "a string is not a number: {d:?}"
    );
}

#[test]
fn sanitize_changes_params() {
    let e = evaluator(&[FINANCE]);
    let d = e.decide(&input(json!({"params": {"amount": 10, "currency": "USD", "debug": true, "memo": "ref 1234567890"}})));
    assert_eq!(d.decision, DecisionKind::Sanitize, "{d:?}");
    let p = d.params.unwrap();
    assert!(!p.contains_key("debug"));
    assert_eq!(p["memo"], "ref ****");
    assert_eq!(p["amount"], 10);
}

#[test]
fn log_masking() {
    let e = evaluator(&[FINANCE]);
    let i = input(json!({}));
    let d = e.decide(&i);
    let logged = d.logged_params(&i.params);
    assert_eq!(logged["account_number"], "[MASKED]");
    assert_eq!(logged["amount"], 3000);
}

#[test]
fn wildcard_action_and_default_deny() {
    let e = evaluator(&[FINANCE]);
    let d = e.decide(&input(json!({"action": "get_balance", "params": {}})));
    assert_eq!(
        (d.decision, d.rule.as_deref()),
        (DecisionKind::Allow, Some("read"))
    );
    for (field, value) in [
        ("tool_id", "ledger"),
        ("agent_id", "other-agent"),
        ("tenant", "globex"),
    ] {
        let d = e.decide(&input(json!({field: value})));
        assert_eq!(d.decision, DecisionKind::Deny);
        assert_eq!(d.codes(), ["no_policy"]);
        assert!(d.reasons[0].message.contains(value), "{d:?}");
    }
}

#[test]
fn custom_rego_adds_reasons() {
    let doc = r#"
apiVersion: aegis.dev/v1
kind: AgentPolicy
metadata: {tenant: acme, name: mailer, owner: o, risk_tier: low}
spec:
  agent_id: mailer
  rules:
    - {id: send, tool_id: email, actions: [send]}
  custom_rego: |
    package aegis.custom.mailer
    import rego.v1
    deny contains {"code": "external_recipient", "message": "mail leaves the company"} if {
      not endswith(input.params.to, "@acme.example")
    }
    approval_needed contains "large attachment" if input.params.size > 1000000
"#;
    let e = evaluator(&[doc]);
    let base = json!({"tenant": "acme", "agent_id": "mailer", "tool_id": "email", "action": "send", "call_chain": []});
    let mk = |params: serde_json::Value| {
        let mut v = base.clone();
        v["params"] = params;
        serde_json::from_value::<DecideInput>(v).unwrap()
    };
    assert_eq!(
        e.decide(&mk(json!({"to": "a@acme.example", "size": 1})))
            .decision,
        DecisionKind::Allow
    );
    assert_eq!(
        e.decide(&mk(json!({"to": "x@evil.example", "size": 1})))
            .codes(),
        ["external_recipient"]
    );
    assert_eq!(
        e.decide(&mk(json!({"to": "a@acme.example", "size": 5000000})))
            .codes(),
        ["custom_policy"]
    );
}

#[test]
fn runaway_custom_policy_is_an_evaluation_error_not_an_allow() {
    let doc = r#"
apiVersion: aegis.dev/v1
kind: AgentPolicy
metadata: {tenant: acme, name: spin, owner: o, risk_tier: low}
spec:
  agent_id: spin
  rules:
    - {id: r, tool_id: t, actions: [a]}
  custom_rego: |
    package aegis.custom.spin
    import rego.v1
    deny contains "too many" if {
      count([x | some x in numbers.range(1, 100000000); x % 7 == 0]) < 0
    }
"#;
    let e = evaluator(&[doc]);
    let i: DecideInput = serde_json::from_value(
        json!({"tenant": "acme", "agent_id": "spin", "tool_id": "t", "action": "a"}),
    )
    .unwrap();
    let d = e.decide(&i);
    assert_eq!(d.decision, DecisionKind::Deny, "{d:?}");
    assert_eq!(d.codes(), ["evaluation_error"]);
}

#[test]
fn evaluators_work_across_threads() {
    let e = evaluator(&[FINANCE]);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || {
                let amount = 1000 * (i + 1);
                (0..50).all(|_| {
                    e.decide(&input(
                        json!({"params": {"amount": amount, "currency": "EUR"}}),
                    ))
                    .decision
                        == DecisionKind::Allow
                })
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap());
    }
}

fn arb_call() -> impl Strategy<Value = (String, String, String, i64, Vec<String>)> {
    (
        prop::sample::select(vec!["finance-agent", "other", "planner"]),
        prop::sample::select(vec!["payments", "ledger", "email"]),
        prop::sample::select(vec!["create_payment", "refund", "get_balance", "send"]),
        -10i64..60_000,
        prop::collection::vec(
            prop::sample::select(vec![
                "planner".to_owned(),
                "scraper".to_owned(),
                "mallory".to_owned(),
            ]),
            0..5,
        ),
    )
        .prop_map(|(a, t, ac, amt, chain)| (a.to_owned(), t.to_owned(), ac.to_owned(), amt, chain))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A call no rule covers is always denied with `no_policy`.
    #[test]
    fn uncovered_calls_are_denied((agent, tool, action, amount, chain) in arb_call()) {
        let e = evaluator(&[FINANCE]);
        let covered = agent == "finance-agent" && tool == "payments";
        let d = e.decide(&input(json!({"agent_id": agent, "tool_id": tool, "action": action, "call_chain": chain, "params": {"amount": amount, "currency": "USD"}})));
        if !covered {
            prop_assert_eq!(d.decision, DecisionKind::Deny);
            prop_assert_eq!(d.codes(), vec!["no_policy"]);
        }
    }

    /// Adding a deny condition never turns a deny into anything else, and never loosens.
    #[test]
    fn adding_a_deny_condition_never_loosens((agent, tool, action, amount, chain) in arb_call(), limit in 0i64..30_000) {
        let base = evaluator(&[FINANCE]);
        let stricter_doc = FINANCE.replace(
            "        - {param: amount, lte: 25000, code: amount_over_limit}",
            &format!("        - {{param: amount, lte: 25000, code: amount_over_limit}}\n        - {{param: amount, gte: {limit}, code: extra_limit}}"),
        );
        let stricter = evaluator(&[&stricter_doc]);
        let i = input(json!({"agent_id": agent, "tool_id": tool, "action": action, "call_chain": chain, "params": {"amount": amount, "currency": "USD"}}));
        let (a, b) = (base.decide(&i).decision, stricter.decide(&i).decision);
        let rank = |k: DecisionKind| match k { DecisionKind::Deny => 0, DecisionKind::ApprovalNeeded => 1, DecisionKind::Sanitize | DecisionKind::Allow => 2 };
        prop_assert!(rank(b) <= rank(a), "base {a:?} became {b:?}");
    }
}

#[test]
fn uncovered_calls_of_a_known_agent_still_mask_the_log() {
    let e = evaluator(&[FINANCE]);
    let i = input(json!({"tool_id": "ledger"}));
    let d = e.decide(&i);
    assert_eq!(d.codes(), ["no_policy"]);
    assert_eq!(d.logged_params(&i.params)["account_number"], "[MASKED]");
}

#[test]
fn redact_keeps_falsy_parameters_redacted_not_dropped() {
    let doc = FINANCE.replace(
        "        - drop: debug\n",
        "        - drop: debug\n        - redact: flag\n",
    );
    let e = evaluator(&[&doc]);
    let d = e.decide(&input(
        json!({"params": {"amount": 10, "currency": "USD", "flag": false}}),
    ));
    assert_eq!(d.decision, DecisionKind::Sanitize, "{d:?}");
    assert_eq!(d.params.unwrap()["flag"], "[REDACTED]");
}
