//! The engine, the report and its schema on in-memory records: decisions made by the finance
//! template, replayed against the same policy and against a stricter one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::decision::DecisionKind;
use aegis_core::decision_log::{self, DecisionEvent};
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegis_replayer::engine::{Engine, EngineOptions, NotReplayable, Transition};
use aegis_replayer::report::{Report, ThresholdStatus, validate};
use aegis_replayer::source::{Record, SkipCause, SliceStats};
use aegis_replayer::thresholds::changed_thresholds;
use aegis_replayer::{Candidate, SliceSpec, markdown};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

const FINANCE: &str = include_str!("../../policies/templates/finance/policy.yaml");

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

/// A policy tree holding one finance policy, rewritten by `edit`.
fn tree(dir: &Path, edit: impl Fn(String) -> String) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("policy.yaml");
    std::fs::write(&path, edit(FINANCE.to_owned())).unwrap();
    vec![path]
}

fn unmasked(p: String) -> String {
    let p = p.replace("  log_masking:\n    params: [account_number]\n", "");
    assert!(!p.contains("log_masking"));
    p
}

fn stricter(p: String) -> String {
    assert!(p.contains("lte: 5000\n"));
    unmasked(p).replace("lte: 5000\n", "lte: 1000\n")
}

/// The event a gateway enforcing `recorder` writes for a call (masking as the policy says).
fn event(recorder: &Candidate, n: usize, agent: &str, params: Value) -> DecisionEvent {
    let params: Map<String, Value> = params.as_object().unwrap().clone();
    let input = aegis_core::decision::DecideInput {
        tenant: tenant(),
        agent_id: AgentId::new(agent).unwrap(),
        call_chain: vec![AgentId::new("planner").unwrap()],
        tool_id: ToolId::new("payments").unwrap(),
        action: "create_payment".into(),
        params: params.clone(),
        context: Map::new(),
    };
    let decision = recorder.evaluator.decide(&input);
    let (logged, masked) = decision_log::mask_params(&params, &decision.obligations.log_mask);
    DecisionEvent {
        id: format!("dec-{n:032x}"),
        kind: decision_log::DECISION_TYPE.into(),
        schema_version: decision_log::SCHEMA_VERSION,
        time: "2026-11-26T10:00:00.000Z".into(),
        tenant: tenant(),
        gateway: "gw1".into(),
        site: None,
        request_id: None,
        identity_verified: true,
        agent_id: Some(input.agent_id.clone()),
        call_chain: input.call_chain.clone(),
        tool_id: Some(input.tool_id.clone()),
        action: Some(input.action.clone()),
        params_digest: decision_log::params_digest(&params),
        params: logged,
        masked_params: masked,
        context: Map::new(),
        decision: decision.decision,
        reasons: decision.reasons.clone(),
        policy: decision.policy.clone(),
        rule: decision.rule.clone(),
        policy_version: Some(1),
        bundle_digest: Some(format!("sha256:{}", "a".repeat(64))),
        approval_id: None,
        latency_us: 100,
        rollout_stage: None,
        shadow: None,
        trace_id: None,
        span_id: None,
    }
}

fn pay(amount: u64) -> Value {
    json!({"amount": amount, "currency": "USD", "account_number": "DE89370400440532013000"})
}

const AMOUNTS: [u64; 7] = [100, 900, 1500, 3000, 5000, 7000, 30000];

/// Records of the finance policy without masking, one masked record, a call by an agent with
/// no policy, and a bundle rejection.
fn records(dir: &Path) -> (Vec<Record>, Vec<DecisionEvent>) {
    let recorder = Candidate::from_policy_tree(&tree(dir, unmasked), &tenant()).unwrap();
    let masking = Candidate::from_policy_tree(&tree(&dir.join("m"), |p| p), &tenant());
    let mut events: Vec<DecisionEvent> = AMOUNTS
        .iter()
        .enumerate()
        .map(|(i, a)| event(&recorder, i, "finance-agent", pay(*a)))
        .collect();
    events.push(event(&recorder, 100, "research-agent", pay(10)));
    let mut records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Record::Decision {
            sequence: i as u64 + 1,
            event: Box::new(e.clone()),
        })
        .collect();
    let masked = event(&masking.unwrap(), 200, "finance-agent", pay(2000));
    assert_eq!(masked.masked_params, ["account_number"]);
    records.push(Record::Decision {
        sequence: 50,
        event: Box::new(masked),
    });
    records.push(Record::Skipped {
        sequence: 51,
        cause: SkipCause::BundleRejected,
    });
    (records, events)
}

fn report_of(candidate: &Candidate, records: Vec<Record>, examples: usize) -> Report {
    let engine = Engine::new(
        candidate.evaluator.clone(),
        EngineOptions {
            workers: 3,
            queue: 2,
            examples,
        },
    );
    let tally = engine.replay_iter(records).unwrap();
    Report::build(
        &SliceSpec::all(tenant()),
        candidate.info.clone(),
        SliceStats::default(),
        tally,
    )
}

fn assert_valid(report: &Report) {
    let value = serde_json::to_value(report).unwrap();
    if let Err(errors) = validate(&value) {
        panic!("{errors:#?}\n{value:#}");
    }
    let back: Report = serde_json::from_value(value).unwrap();
    assert_eq!(&back, report);
}

#[test]
fn the_same_policy_changes_nothing_and_masked_inputs_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (records, events) = records(dir.path());
    std::fs::create_dir_all(dir.path().join("same")).unwrap();
    let same =
        Candidate::from_policy_tree(&tree(&dir.path().join("same"), unmasked), &tenant()).unwrap();
    let report = report_of(&same, records, 10);
    assert_eq!(report.counts.decisions, events.len() as u64 + 1);
    assert_eq!(report.counts.replayed, events.len() as u64);
    assert_eq!(report.counts.changed, 0);
    assert_eq!(report.counts.reasons_changed, 0);
    assert_eq!(report.counts.unchanged, events.len() as u64);
    assert_eq!(
        report.counts.not_replayable_by_cause[&NotReplayable::MaskedParams],
        1
    );
    assert_eq!(report.counts.skipped[&SkipCause::BundleRejected], 1);
    assert!(report.examples.is_empty());
    assert!(
        report.histograms.is_empty(),
        "no changed call, no histogram"
    );
    // 30000 and the agent without a policy are denied: 2 of 8.
    assert_eq!(report.would_deny_rate, Some(0.25));
    assert_eq!(report.would_deny_rate, report.recorded_deny_rate);
    assert_eq!(report.by_agent["research-agent"].candidate_denies, 1);
    assert_valid(&report);
}

#[test]
fn a_stricter_limit_shows_exactly_the_calls_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (records, events) = records(dir.path());
    std::fs::create_dir_all(dir.path().join("strict")).unwrap();
    let strict =
        Candidate::from_policy_tree(&tree(&dir.path().join("strict"), stricter), &tenant())
            .unwrap();
    let report = report_of(&strict, records, 100);

    // 1500, 3000 and 5000 were allowed and now need approval; nothing else changes.
    let expected: Vec<&str> = events
        .iter()
        .filter(|e| {
            let a = e.params.get("amount").and_then(Value::as_u64).unwrap_or(0);
            e.agent_id.as_ref().unwrap().as_str() == "finance-agent" && a > 1000 && a <= 5000
        })
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(expected.len(), 3);
    assert_eq!(report.counts.changed, 3);
    assert_eq!(
        report.transition(DecisionKind::Allow, DecisionKind::ApprovalNeeded),
        3
    );
    assert_eq!(report.examples.len(), 1);
    let t = &report.examples[0];
    assert_eq!(
        (t.from, t.to),
        (DecisionKind::Allow, DecisionKind::ApprovalNeeded)
    );
    let ids: Vec<&str> = t.examples.iter().map(|e| e.decision_id.as_str()).collect();
    assert_eq!(ids, expected, "examples are in stream order");
    for e in &t.examples {
        assert_eq!(e.recorded_reasons, ["allowed"]);
        assert_eq!(e.candidate_reasons, ["amount_requires_approval"]);
    }
    assert_eq!(report.counts.unchanged, events.len() as u64 - 3);

    // The amount histogram, with the moved bound marked once thresholds are compared.
    assert_eq!(report.histograms.len(), 1);
    assert_eq!(report.histograms[0].param, "amount");
    assert_eq!(report.thresholds.status, ThresholdStatus::Unavailable);
    let recorder_data = Candidate::from_policy_tree(&tree(dir.path(), unmasked), &tenant())
        .unwrap()
        .data
        .unwrap();
    let changes = changed_thresholds(&tenant(), &recorder_data, strict.data.as_ref().unwrap());
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].param, "amount");
    assert_eq!(
        (changes[0].recorded, changes[0].candidate),
        (Some(5000.0), Some(1000.0))
    );
    let report = report.with_thresholds(changes, "test".into());
    assert_eq!(report.histograms[0].thresholds.len(), 1);
    let changed_in_buckets: u64 = report.histograms[0]
        .buckets
        .iter()
        .map(|b| b.counts.changed)
        .sum();
    assert_eq!(changed_in_buckets, 3);
    assert_valid(&report);

    let md = markdown::render(&report);
    assert!(md.contains("| recorded | candidate | count |"), "{md}");
    assert!(md.contains("| allow | approval_needed | **3** |"), "{md}");
    assert!(md.contains("new bound 1000"), "{md}");
    for id in expected {
        assert!(md.contains(id), "{md}");
    }
}

#[test]
fn examples_are_capped_per_transition_across_workers() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Candidate::from_policy_tree(&tree(dir.path(), unmasked), &tenant()).unwrap();
    std::fs::create_dir_all(dir.path().join("s")).unwrap();
    let strict =
        Candidate::from_policy_tree(&tree(&dir.path().join("s"), stricter), &tenant()).unwrap();
    let records: Vec<Record> = (0..50)
        .map(|i| Record::Decision {
            sequence: i + 1,
            event: Box::new(event(&recorder, i as usize, "finance-agent", pay(2000))),
        })
        .collect();
    let report = report_of(&strict, records, 4);
    assert_eq!(report.counts.changed, 50);
    let t = &report.examples[0];
    assert_eq!(t.count, 50);
    let seqs: Vec<u64> = t.examples.iter().map(|e| e.sequence).collect();
    assert_eq!(
        seqs,
        [1, 2, 3, 4],
        "the first examples, whichever worker had them"
    );
    let _ = Transition {
        from: DecisionKind::Allow,
        to: DecisionKind::Deny,
    };
}

#[test]
fn what_the_policy_alone_did_not_decide_is_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Candidate::from_policy_tree(&tree(dir.path(), unmasked), &tenant()).unwrap();
    let base = event(&recorder, 1, "finance-agent", pay(100));
    assert_eq!(NotReplayable::of(&base), None);

    let mut limited = base.clone();
    limited.decision = DecisionKind::Deny;
    limited.reasons[0].code = "rate_limited".into();
    let mut unverified = base.clone();
    unverified.identity_verified = false;
    let mut no_tool = base.clone();
    no_tool.tool_id = None;
    let cases = [
        (limited, NotReplayable::DecidedByGateway),
        (unverified, NotReplayable::UnverifiedIdentity),
        (no_tool, NotReplayable::MissingInput),
    ];
    for (e, cause) in &cases {
        assert_eq!(NotReplayable::of(e), Some(*cause));
    }
    let records = cases
        .iter()
        .enumerate()
        .map(|(i, (e, _))| Record::Decision {
            sequence: i as u64 + 1,
            event: Box::new(e.clone()),
        });
    let report = report_of(&recorder, records.collect(), 10);
    assert_eq!(report.counts.replayed, 0);
    assert_eq!(report.counts.not_replayable, 3);
    assert_eq!(report.would_deny_rate, None, "nothing replayed, no rate");
    for cause in NotReplayable::ALL
        .iter()
        .filter(|c| **c != NotReplayable::MaskedParams)
    {
        assert_eq!(report.counts.not_replayable_by_cause[cause], 1, "{cause:?}");
    }
    assert_valid(&report);
}
