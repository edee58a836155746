//! The checks a proposed change must pass: its documents validate, the candidate policy set
//! (live set with the change applied) compiles, and every test vector — the change's and the
//! tenant's existing ones — passes against it.
//!
//! Checks are a pure function of the live set and the change, with an instruction limit and no
//! wall-clock limit, so every control plane (and every rebuild) reaches the same verdict.

use crate::records::LiveSet;
use aegis_core::bundle::sha256_hex;
use aegis_core::eval::{EvalLimits, Evaluator, Provenance};
use aegis_core::events::{ChangeProposed, CheckResult, ChecksCompleted, DocumentFormat};
use aegis_core::ids::{PolicyName, TenantId};
use aegis_core::policy::model::{PolicyDocument, RiskTier};
use aegis_core::policy::set::{CompiledPolicies, PolicySet, parse_document};
use aegis_core::policy::source;
use aegis_core::query::LiveDocument;
use aegis_core::vectors::{VectorFile, run_all, validate_vectors};
use std::path::PathBuf;
use std::time::Duration;

/// Evaluation limits for checks: instructions only, so the verdict never depends on load.
pub fn limits() -> EvalLimits {
    EvalLimits {
        time_limit: Duration::from_secs(3600),
        ..EvalLimits::default()
    }
}

/// The file name a document is reported under: `<name>.<yaml|json>`.
pub fn doc_path(name: &str, format: DocumentFormat) -> PathBuf {
    PathBuf::from(format!("{name}.{}", format.extension()))
}

/// The live set with `change` applied. Revisions of written policies are set to `revision`.
pub fn apply_change(live: &LiveSet, change: &ChangeProposed, revision: u64) -> LiveSet {
    let mut next = live.clone();
    for d in &change.deleted {
        next.policies.remove(&d.name);
    }
    for d in &change.documents {
        let risk_tier = parse_document(&doc_path(d.name.as_str(), d.format), d.document.clone())
            .map(|doc| highest_tier(&doc))
            .unwrap_or(RiskTier::High);
        next.policies.insert(
            d.name.clone(),
            LiveDocument {
                name: d.name.clone(),
                revision,
                risk_tier,
                format: d.format,
                document: d.document.clone(),
            },
        );
    }
    for v in &change.vectors {
        next.vectors.insert(v.name.clone(), v.clone());
    }
    next
}

/// The highest risk tier a document declares (its own or any rule's).
pub fn highest_tier(doc: &PolicyDocument) -> RiskTier {
    doc.spec
        .rules
        .iter()
        .filter_map(|r| r.risk_tier)
        .fold(doc.metadata.risk_tier, Ord::max)
}

/// Parses and cross-checks a whole live set; `Err` lists every problem, one per line.
pub fn load(tenant: &TenantId, set: &LiveSet) -> Result<(PolicySet, Vec<VectorFile>), Vec<String>> {
    let mut problems = Vec::new();
    let mut docs = Vec::new();
    for p in set.policies.values() {
        let path = doc_path(p.name.as_str(), p.format);
        match parse_document(&path, p.document.clone()) {
            Ok(doc) => {
                if &doc.metadata.tenant != tenant {
                    problems.push(format!(
                        "{}: metadata.tenant is `{}`, but this change is for tenant `{tenant}`",
                        path.display(),
                        doc.metadata.tenant
                    ));
                }
                if doc.metadata.name != p.name {
                    problems.push(format!(
                        "{}: metadata.name is `{}`, but the document is proposed as `{}`",
                        path.display(),
                        doc.metadata.name,
                        p.name
                    ));
                }
                docs.push((path, doc));
            }
            Err(diags) => problems.extend(diags.0.iter().map(ToString::to_string)),
        }
    }
    let mut vectors = Vec::new();
    for v in set.vectors.values() {
        let path = PathBuf::from(&v.name);
        match source::parse(&path, v.document.clone()) {
            Ok(src) => match validate_vectors(&src) {
                Ok(file) => vectors.push(file),
                Err(diags) => problems.extend(diags.0.iter().map(ToString::to_string)),
            },
            Err(d) => problems.push(d.to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    match PolicySet::from_documents(docs) {
        Ok(set) => Ok((set, vectors)),
        Err(diags) => Err(diags.0.iter().map(ToString::to_string).collect()),
    }
}

/// Compiles a loaded set for `tenant` into an evaluator.
pub fn compile(
    tenant: &TenantId,
    set: &PolicySet,
) -> Result<(CompiledPolicies, Evaluator), String> {
    let compiled = set.compile_tenant(tenant);
    let eval =
        Evaluator::new(&compiled, Provenance::default(), limits()).map_err(|e| e.to_string())?;
    Ok((compiled, eval))
}

/// Runs every check on `change` against `live`.
pub fn run(tenant: &TenantId, live: &LiveSet, change: &ChangeProposed) -> ChecksCompleted {
    let candidate = apply_change(live, change, 0);
    let risk_tier = touched_tier(live, &candidate, change);
    let mut results = Vec::new();
    let mut vectors_run = 0u32;
    let mut vectors_failed = 0u32;
    let mut candidate_digest = None;

    match load(tenant, &candidate) {
        Err(problems) => {
            results.push(CheckResult {
                check: "validate".into(),
                passed: false,
                details: problems,
            });
            results.push(skipped("compile"));
            results.push(skipped("vectors"));
        }
        Ok((set, vector_files)) => {
            results.push(CheckResult {
                check: "validate".into(),
                passed: true,
                details: Vec::new(),
            });
            match compile(tenant, &set) {
                Err(e) => {
                    results.push(CheckResult {
                        check: "compile".into(),
                        passed: false,
                        details: vec![e],
                    });
                    results.push(skipped("vectors"));
                }
                Ok((compiled, eval)) => {
                    if let Some(data) = compiled.files().get("data.json") {
                        candidate_digest = Some(format!("sha256:{}", sha256_hex(data)));
                    }
                    results.push(CheckResult {
                        check: "compile".into(),
                        passed: true,
                        details: Vec::new(),
                    });
                    let outcomes = run_all(&eval, &vector_files);
                    let mut details = Vec::new();
                    for r in &outcomes {
                        vectors_run += 1;
                        if !r.passed() {
                            vectors_failed += 1;
                            let what: Vec<String> = r
                                .mismatches
                                .iter()
                                .map(|m| {
                                    format!("{}: expected {}, got {}", m.what, m.expected, m.actual)
                                })
                                .collect();
                            details.push(format!(
                                "{}{}: vector `{}`: {}",
                                r.file.display(),
                                r.line.map(|l| format!(":{l}")).unwrap_or_default(),
                                r.name,
                                what.join("; ")
                            ));
                        }
                    }
                    results.push(CheckResult {
                        check: "vectors".into(),
                        passed: vectors_failed == 0,
                        details,
                    });
                }
            }
        }
    }
    ChecksCompleted {
        change_id: change.change_id.clone(),
        passed: results.iter().all(|r| r.passed),
        results,
        risk_tier,
        vectors_run,
        vectors_failed,
        candidate_digest,
    }
}

fn skipped(check: &str) -> CheckResult {
    CheckResult {
        check: check.into(),
        passed: false,
        details: vec!["not run: an earlier check failed".into()],
    }
}

/// The highest tier among the policies the change touches, before and after.
fn touched_tier(live: &LiveSet, candidate: &LiveSet, change: &ChangeProposed) -> RiskTier {
    let names: Vec<&PolicyName> = change
        .documents
        .iter()
        .map(|d| &d.name)
        .chain(change.deleted.iter().map(|d| &d.name))
        .collect();
    names
        .into_iter()
        .flat_map(|n| [live.policies.get(n), candidate.policies.get(n)])
        .flatten()
        .map(|p| p.risk_tier)
        .max()
        .unwrap_or(RiskTier::Low)
}
