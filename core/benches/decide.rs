//! `decide` against raw regorus on the same compiled policy and input, in the same run.
//!
//! The bundle: 1,000 agents × 10 tools, each rule with caller constraints and three conditions
//! (one approval threshold). Baselines:
//! - `raw_rvm`: regorus' RVM executing the same program on a pre-built input value — exactly
//!   what `decide` runs, minus Aegis' input conversion and decision decoding;
//! - `raw_interpreter`: regorus' tree-walking `CompiledPolicy::eval_with_input`, for reference.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use aegis_core::decision::DecideInput;
use aegis_core::eval::{ENTRYPOINT, EvalLimits, Evaluator, Provenance, to_rego};
use aegis_core::policy::PolicySet;
use aegis_core::policy::set::parse_document;
use criterion::{Criterion, criterion_group, criterion_main};
use regorus::languages::rego::compiler::Compiler;
use std::hint::black_box;
use std::path::PathBuf;

const AGENTS: usize = 1000;
const TOOLS: usize = 10;

fn policy(agent: usize) -> String {
    let mut rules = String::new();
    for t in 0..TOOLS {
        rules.push_str(&format!(
            "    - id: r{t}\n      tool_id: tool-{t}\n      actions: [call, read]\n      conditions:\n        - {{param: amount, lte: 5000, on_violation: approval_needed}}\n        - {{param: amount, lte: 25000}}\n        - {{param: currency, one_of: [USD, EUR, GBP]}}\n"
        ));
    }
    format!(
        "apiVersion: aegis.dev/v1\nkind: AgentPolicy\nmetadata: {{tenant: bench, name: p{agent}, owner: o, risk_tier: medium}}\nspec:\n  agent_id: agent-{agent}\n  callers: {{allowed_direct: [planner], never: [scraper], max_depth: 4}}\n  rules:\n{rules}"
    )
}

fn bench(c: &mut Criterion) {
    let docs = (0..AGENTS)
        .map(|a| {
            let p = PathBuf::from(format!("agent-{a}.yaml"));
            (p.clone(), parse_document(&p, policy(a)).unwrap())
        })
        .collect();
    let set = PolicySet::from_documents(docs).unwrap();
    let compiled = set.compile();
    let eval = Evaluator::new(&compiled, Provenance::default(), EvalLimits::default()).unwrap();

    let input: DecideInput = serde_json::from_value(serde_json::json!({
        "tenant": "bench", "agent_id": "agent-517", "call_chain": ["planner"], "tool_id": "tool-7", "action": "call",
        "params": {"amount": 3000, "currency": "EUR", "memo": "invoice 1234"}, "context": {"purpose": "ops"}
    }))
    .unwrap();
    assert_eq!(
        eval.decide(&input).decision,
        aegis_core::decision::DecisionKind::Allow
    );

    // The same program, driven directly.
    let mut engine = regorus::Engine::new();
    for (path, text) in &compiled.modules {
        engine.add_policy(path.clone(), text.clone()).unwrap();
    }
    engine.add_data(to_rego(&compiled.data.to_value())).unwrap();
    let policy = engine.compile_with_entrypoint(&ENTRYPOINT.into()).unwrap();
    let program = Compiler::compile_from_policy(&policy, &[ENTRYPOINT]).unwrap();
    let mut vm = regorus::rvm::RegoVM::new_with_policy(policy.clone());
    vm.load_program(program);
    vm.set_data(to_rego(&compiled.data.to_value())).unwrap();
    let raw_input = to_rego(&serde_json::to_value(&input).unwrap());

    let mut g = c.benchmark_group("decide_1000_agents_x_10_tools");
    g.bench_function("aegis_decide", |b| {
        b.iter(|| black_box(eval.decide(black_box(&input))))
    });
    g.bench_function("raw_rvm", |b| {
        b.iter(|| {
            vm.set_input(black_box(raw_input.clone()));
            black_box(vm.execute().unwrap())
        })
    });
    g.bench_function("raw_interpreter", |b| {
        b.iter(|| {
            black_box(
                policy
                    .eval_with_input(black_box(raw_input.clone()))
                    .unwrap(),
            )
        })
    });
    let uncovered: DecideInput = serde_json::from_value(
        serde_json::json!({"tenant": "bench", "agent_id": "nobody", "tool_id": "x", "action": "y"}),
    )
    .unwrap();
    g.bench_function("aegis_decide_default_deny", |b| {
        b.iter(|| black_box(eval.decide(black_box(&uncovered))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
