//! Policy coverage end to end: a decision log recorded by driving the real gateway (real
//! nats-server, real control plane), read by `aegis_replayer::coverage` and by the
//! `aegisctl coverage` binary.
//!
//! Version 1 is the finance template (tier high; its `balance` rule low). Version 2 adds a
//! rule for tool `ledger` at tier medium. The finance agent pays (covered by rule `pay`),
//! refunds (no rule for that action: default deny), sends e-mail (no rule for that tool) and
//! reads the ledger (default deny under version 1, covered under version 2); the research
//! agent has no policy at all. Tiers come from version 2, the newest in the slice.
//!
//! Needs the binaries: `cargo build -p aegis-gateway -p aegis-controlplane -p aegisctl --bins`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::ids::{AgentId, TenantId};
use aegis_replayer::coverage::{
    self, CoverageReport, CoverageStatus, PolicySourceStatus, Tier, validate,
};
use aegis_replayer::{Filter, SliceSpec};
use aegis_tests::stack::{ACME, Stack, WAIT, finance_policy_for, pay};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const LEDGER_RULE: &str = "    - id: ledger-read\n      tool_id: ledger\n      actions: [read]\n      risk_tier: medium\n\n";
const MASKING_COMMENT: &str = "  # Account numbers never reach the decision log in clear.\n";

/// The finance policy with a medium-tier rule for `ledger`/`read`.
fn with_ledger() -> String {
    let policy = finance_policy_for(ACME);
    assert_eq!(
        policy.matches(MASKING_COMMENT).count(),
        1,
        "the template changed"
    );
    policy.replace(MASKING_COMMENT, &format!("{LEDGER_RULE}{MASKING_COMMENT}"))
}

fn call(tool: &str, action: &str, params: Value) -> Value {
    json!({"tool_id": tool, "action": action, "params": params, "context": {}})
}

fn assert_valid(value: &Value) {
    if let Err(errors) = validate(value) {
        panic!("{errors:#?}\n{value:#}");
    }
}

/// (calls, covered, default deny, coverage percent).
fn counts(c: &coverage::Counts) -> (u64, u64, u64, Option<f64>) {
    (c.calls, c.covered, c.default_deny, c.coverage_percent)
}

#[test]
fn coverage_by_agent_and_tool_with_critical_tools_first() {
    let mut stack = Stack::start();
    let gw = stack.gateway("gw-coverage");
    let finance = stack.token("finance-agent", &["planner"]);
    let research = stack.token("research-agent", &["planner"]);
    let mut ids = BTreeSet::new();
    let mut decide = |token: &str, body: Value, expected: &str| {
        let (status, answer) = gw.decide(token, &body).unwrap();
        assert_eq!(status, 200, "{answer:#}");
        assert_eq!(answer["decision"], expected, "{body}: {answer:#}");
        ids.insert(answer["decision_id"].as_str().unwrap().to_owned());
        answer
    };

    // Version 1 has no rule for the ledger: default deny.
    let answer = decide(&finance, call("ledger", "read", json!({})), "deny");
    assert_eq!(answer["reasons"][0]["code"], "no_policy", "{answer:#}");

    let v2 = stack.publish_change(&with_ledger());
    assert_eq!(v2, 2);
    gw.wait_version(ACME, v2, WAIT).unwrap();

    // The finance agent under version 2.
    decide(&finance, pay(100), "allow");
    decide(&finance, pay(200), "allow");
    decide(&finance, pay(7000), "approval_needed");
    decide(&finance, pay(30000), "deny");
    decide(
        &finance,
        call("payments", "refund", json!({"amount": 10})),
        "deny",
    );
    decide(&finance, call("ledger", "read", json!({})), "allow");
    decide(
        &finance,
        call("email", "send", json!({"to": "cfo@acme.example"})),
        "deny",
    );
    // An agent without any policy.
    decide(&research, pay(10), "deny");
    decide(
        &research,
        call("web", "search", json!({"query": "x"})),
        "deny",
    );
    stack.wait_decisions(&format!("aegis.decisions.{ACME}.>"), &ids, WAIT);
    assert_eq!(ids.len(), 10);

    let tenant = TenantId::new(ACME).unwrap();
    let trust = aegisctl::online::audit::load_trust(&stack.trust_file).unwrap();
    let report = stack
        .block_on(coverage::coverage(
            &stack.js,
            &SliceSpec::all(tenant.clone()),
            Some(&trust),
            Duration::from_secs(10),
        ))
        .unwrap();

    // The tiers come from version 2, verified.
    assert_eq!(
        report.policy_source.status,
        PolicySourceStatus::Verified,
        "{:#?}",
        report.policy_source
    );
    assert_eq!(report.policy_source.version, Some(2));
    assert_eq!(
        report.policy_source.digest.as_deref(),
        Some(stack.current().digest.as_str())
    );

    // Totals: 5 covered, 5 default deny.
    assert_eq!(report.totals.decision_events, 10);
    assert_eq!(report.totals.unattributed, 0);
    assert_eq!(counts(&report.totals.counts), (10, 5, 5, Some(50.0)));
    assert_eq!(report.totals.counts.other, 0);

    // Agents, lowest coverage first: the agent without a policy at 0%.
    let agents: Vec<_> = report
        .agents
        .iter()
        .map(|a| (a.agent.as_str(), a.policy.as_deref(), a.risk_tier))
        .collect();
    assert_eq!(
        agents,
        [
            ("research-agent", None, Tier::Unknown),
            ("finance-agent", Some("acme/finance-agent"), Tier::High),
        ]
    );
    assert_eq!(
        counts(&report.agent("research-agent").unwrap().counts),
        (2, 0, 2, Some(0.0))
    );
    let fin = &report.agent("finance-agent").unwrap().counts;
    assert_eq!(counts(fin), (8, 5, 3, Some(62.5)));
    assert_eq!(
        fin.decisions,
        [("allow", 3), ("approval_needed", 1), ("deny", 4)]
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect()
    );

    // Tools, critical first: payments (high), ledger (medium), then the tools no rule names.
    let tools: Vec<_> = report
        .tools
        .iter()
        .map(|t| (t.tool.as_str(), t.risk_tier, counts(&t.counts)))
        .collect();
    assert_eq!(
        tools,
        [
            ("payments", Tier::High, (6, 4, 2, Some(66.67))),
            ("ledger", Tier::Medium, (2, 1, 1, Some(50.0))),
            ("email", Tier::Unknown, (1, 0, 1, Some(0.0))),
            ("web", Tier::Unknown, (1, 0, 1, Some(0.0))),
        ]
    );
    assert_eq!(
        report.tool("payments").unwrap().agents,
        ["finance-agent", "research-agent"]
    );

    // Per agent, tool and action.
    let pay_calls = report
        .call("finance-agent", "payments", "create_payment")
        .unwrap();
    assert_eq!(
        (
            pay_calls.status,
            pay_calls.rule.as_deref(),
            pay_calls.risk_tier
        ),
        (CoverageStatus::Covered, Some("pay"), Tier::High)
    );
    assert_eq!(counts(&pay_calls.counts), (4, 4, 0, Some(100.0)));
    let refund = report.call("finance-agent", "payments", "refund").unwrap();
    assert_eq!(
        (refund.status, refund.rule.as_deref(), refund.risk_tier),
        (CoverageStatus::DefaultDeny, None, Tier::High)
    );
    assert_eq!(counts(&refund.counts), (1, 0, 1, Some(0.0)));
    let ledger = report.call("finance-agent", "ledger", "read").unwrap();
    assert_eq!(
        (ledger.status, ledger.rule.as_deref(), ledger.risk_tier),
        (CoverageStatus::Partial, Some("ledger-read"), Tier::Medium)
    );
    let email = report.call("finance-agent", "email", "send").unwrap();
    assert_eq!(
        (email.status, email.risk_tier),
        (CoverageStatus::DefaultDeny, Tier::Unknown)
    );
    let research_pay = report
        .call("research-agent", "payments", "create_payment")
        .unwrap();
    assert_eq!(
        (research_pay.status, research_pay.risk_tier),
        (CoverageStatus::DefaultDeny, Tier::Unknown)
    );
    assert_eq!(report.calls.len(), 6);
    assert_eq!(report.calls[0].tool, "payments", "critical calls first");

    // The balance rule decided nothing.
    let unexercised: Vec<_> = report
        .unexercised_rules
        .iter()
        .map(|r| {
            (
                r.agent.as_str(),
                r.rule.as_str(),
                r.tool.as_str(),
                r.risk_tier,
            )
        })
        .collect();
    assert_eq!(
        unexercised,
        [("finance-agent", "balance", "payments", Tier::Low)]
    );
    assert_valid(&serde_json::to_value(&report).unwrap());

    // Filtered to one agent.
    let only_research = stack
        .block_on(coverage::coverage(
            &stack.js,
            &SliceSpec {
                filter: Filter {
                    agents: vec![AgentId::new("research-agent").unwrap()],
                    ..Filter::default()
                },
                ..SliceSpec::all(tenant)
            },
            Some(&trust),
            Duration::from_secs(10),
        ))
        .unwrap();
    assert_eq!(counts(&only_research.totals.counts), (2, 0, 2, Some(0.0)));
    assert_eq!(
        only_research.totals.skipped[&aegis_replayer::SkipCause::FilteredOut],
        8
    );
    assert!(only_research.unexercised_rules.is_empty());

    // The binary: JSON valid against the schema, the same counts; the tables by default.
    let url = stack.server.url();
    let trust_path = stack.trust_file.display().to_string();
    let base = [
        "coverage",
        "--tenant",
        ACME,
        "--nats",
        &url,
        "--trust",
        &trust_path,
    ];
    let run = aegis_tests::cli::run(&[&base[..], &["--json"]].concat(), &[]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let value: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_valid(&value);
    let from_cli: CoverageReport = serde_json::from_value(value).unwrap();
    assert_eq!(from_cli.tools, report.tools);
    assert_eq!(from_cli.agents, report.agents);
    assert_eq!(from_cli.calls, report.calls);

    let run = aegis_tests::cli::run(&[&base[..], &["--agent", "finance-agent"]].concat(), &[]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let table = &run.stdout;
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| {
            l.starts_with("| high |") || l.starts_with("| medium |") || l.starts_with("| unknown |")
        })
        .take(3)
        .collect();
    assert_eq!(
        rows,
        [
            "| high | payments | 5 | 4 | 1 | 0 | 80.00% | finance-agent |",
            "| medium | ledger | 2 | 1 | 1 | 0 | 50.00% | finance-agent |",
            "| unknown | email | 1 | 0 | 1 | 0 | 0.00% | finance-agent |",
        ],
        "{table}"
    );
    assert!(
        table.contains("| finance-agent | acme/finance-agent | high | 8 | 5 | 3 | 0 | 62.50% |"),
        "{table}"
    );
    assert!(
        table.contains("| low | finance-agent | balance | payments | get_balance |"),
        "{table}"
    );
    assert!(!table.contains("research-agent"), "{table}");

    // A trust store that did not sign the bundle: the counts, every tier unknown, a warning.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.pub.json");
    aegis_core::keys::Keypair::generate()
        .unwrap()
        .public_key()
        .write(&other)
        .unwrap();
    let other = other.display().to_string();
    let run = aegis_tests::cli::run(
        &[
            "coverage", "--tenant", ACME, "--nats", &url, "--trust", &other, "--json",
        ],
        &[],
    );
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stderr.contains("warning: version 2"), "{}", run.stderr);
    let untrusted: CoverageReport = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        untrusted.policy_source.status,
        PolicySourceStatus::Unavailable
    );
    assert!(untrusted.tools.iter().all(|t| t.risk_tier == Tier::Unknown));
    assert_eq!(counts(&untrusted.totals.counts), (10, 5, 5, Some(50.0)));
}
