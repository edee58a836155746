//! Data-driven: every policy and example under `policies/` validates, every test vector there
//! passes, and every decision and input matches its published JSON Schema.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::eval::{EvalLimits, Evaluator, Provenance};
use aegis_core::policy::PolicySet;
use aegis_core::schemas;
use aegis_core::vectors::run_all;
use std::path::PathBuf;

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

#[test]
fn every_shipped_policy_validates_and_every_vector_passes() {
    let set = PolicySet::load(&[policies_dir()])
        .unwrap_or_else(|d| panic!("shipped policies do not validate:\n{d}"));
    for t in ["finance", "ehr", "cicd"] {
        let dir = policies_dir().join("templates").join(t);
        assert!(
            set.policies.iter().any(|p| p.path.starts_with(&dir)),
            "template {t} has no policy"
        );
        assert!(
            set.vectors.iter().any(|v| v.path.starts_with(&dir)),
            "template {t} has no vectors"
        );
    }
    let eval =
        Evaluator::new(&set.compile(), Provenance::default(), EvalLimits::default()).unwrap();
    let results = run_all(&eval, &set.vectors);
    assert!(
        results.len() >= 15,
        "expected a real vector suite, found {}",
        results.len()
    );
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            format!(
                "{}:{:?} {}: {:?} (got {:?} {:?})",
                r.file.display(),
                r.line,
                r.name,
                r.mismatches,
                r.decision.decision,
                r.decision.codes()
            )
        })
        .collect();
    assert!(failed.is_empty(), "failing vectors:\n{}", failed.join("\n"));

    let decision_schema = schemas::decision_validator().unwrap();
    let input_schema = schemas::decide_input_validator().unwrap();
    for (r, v) in results
        .iter()
        .zip(set.vectors.iter().flat_map(|f| f.vectors.iter()))
    {
        let d = serde_json::to_value(&r.decision).unwrap();
        let errs: Vec<String> = decision_schema
            .iter_errors(&d)
            .map(|e| format!("{} at {}", e, e.instance_path().as_str()))
            .collect();
        assert!(
            errs.is_empty(),
            "decision for {} does not match decision.schema.json: {errs:?}\n{d}",
            r.name
        );
        let i = serde_json::to_value(&v.input).unwrap();
        let errs: Vec<String> = input_schema
            .iter_errors(&i)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errs.is_empty(),
            "input of {} does not match decide-input.schema.json: {errs:?}",
            r.name
        );
    }
}

#[test]
fn each_tenant_compiles_to_its_own_index() {
    let set = PolicySet::load(&[policies_dir()]).unwrap();
    for tenant in set.tenants() {
        let c = set.compile_tenant(&tenant);
        assert_eq!(
            c.data.aegis.policies.keys().collect::<Vec<_>>(),
            vec![&tenant]
        );
        assert!(c.files().contains_key("data.json") && c.files().contains_key("policy.rego"));
    }
}
