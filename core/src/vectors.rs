//! Data-driven policy tests: files of `kind: TestVectors`, each vector an input and the
//! decision expected for it (`schemas/test-vectors.schema.json`).

use crate::decision::{DecideInput, Decision, DecisionKind};
use crate::eval::Evaluator;
use crate::policy::diagnostic::Diagnostics;
use crate::policy::source::SourceFile;
use crate::policy::validate::schema_diagnostics;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;

pub const VECTORS_KIND: &str = "TestVectors";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VectorDocument {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Option<Value>,
    vectors: Vec<Vector>,
}

/// One test: an input and what must come out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    pub name: String,
    pub input: DecideInput,
    pub expect: Expectation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub decision: DecisionKind,
    /// The exact set of reason codes, when given.
    #[serde(default)]
    pub reasons: Option<Vec<String>>,
    /// Sanitized params, when given.
    #[serde(default)]
    pub params: Option<Map<String, Value>>,
    /// Params as written to the decision log, when given.
    #[serde(default)]
    pub logged_params: Option<Map<String, Value>>,
    #[serde(default)]
    pub rule: Option<String>,
}

/// A vectors file.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorFile {
    pub path: PathBuf,
    pub vectors: Vec<Vector>,
    /// Line of each vector in the file, for failure reports.
    pub lines: Vec<Option<usize>>,
}

/// Validates a parsed source as a vectors file.
pub fn validate_vectors(src: &SourceFile) -> Result<VectorFile, Diagnostics> {
    let mut diags = schema_diagnostics(src, crate::schemas::test_vectors_validator());
    if !diags.is_empty() {
        diags.sort();
        return Err(diags);
    }
    match serde_json::from_value::<VectorDocument>(src.value.clone()) {
        Ok(doc) => {
            let lines = (0..doc.vectors.len())
                .map(|i| src.locator().locate(&format!("/vectors/{i}")).map(|p| p.0))
                .collect();
            Ok(VectorFile {
                path: src.path.clone(),
                vectors: doc.vectors,
                lines,
            })
        }
        Err(e) => {
            diags.push(src.locator().diagnostic(
                &src.path,
                "",
                format!("not a valid test vector file: {e}"),
                None,
            ));
            Err(diags)
        }
    }
}

/// What went wrong with one vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub what: &'static str,
    pub expected: String,
    pub actual: String,
}

/// Outcome of one vector.
#[derive(Debug, Clone)]
pub struct VectorResult {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub name: String,
    pub decision: Decision,
    pub mismatches: Vec<Mismatch>,
}

impl VectorResult {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Runs one vector against an evaluator.
pub fn check(eval: &Evaluator, v: &Vector) -> (Decision, Vec<Mismatch>) {
    let d = eval.decide(&v.input);
    let mut m = Vec::new();
    if d.decision != v.expect.decision {
        m.push(Mismatch {
            what: "decision",
            expected: v.expect.decision.to_string(),
            actual: d.decision.to_string(),
        });
    }
    if let Some(want) = &v.expect.reasons {
        let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
        let mut got = d.codes();
        want.sort_unstable();
        got.sort_unstable();
        if want != got {
            m.push(Mismatch {
                what: "reasons",
                expected: want.join(", "),
                actual: got.join(", "),
            });
        }
    }
    if let Some(want) = &v.expect.params
        && d.params.as_ref() != Some(want)
    {
        m.push(Mismatch {
            what: "params",
            expected: Value::Object(want.clone()).to_string(),
            actual: d
                .params
                .clone()
                .map(|p| Value::Object(p).to_string())
                .unwrap_or_else(|| "(none)".into()),
        });
    }
    if let Some(want) = &v.expect.logged_params {
        let got = d.logged_params(&v.input.params);
        if &got != want {
            m.push(Mismatch {
                what: "logged_params",
                expected: Value::Object(want.clone()).to_string(),
                actual: Value::Object(got).to_string(),
            });
        }
    }
    if let Some(want) = &v.expect.rule
        && d.rule.as_deref() != Some(want.as_str())
    {
        m.push(Mismatch {
            what: "rule",
            expected: want.clone(),
            actual: d.rule.clone().unwrap_or_else(|| "(none)".into()),
        });
    }
    (d, m)
}

/// Runs every vector of every file.
pub fn run_all(eval: &Evaluator, files: &[VectorFile]) -> Vec<VectorResult> {
    let mut out = Vec::new();
    for f in files {
        for (i, v) in f.vectors.iter().enumerate() {
            let (decision, mismatches) = check(eval, v);
            out.push(VectorResult {
                file: f.path.clone(),
                line: f.lines.get(i).copied().flatten(),
                name: v.name.clone(),
                decision,
                mismatches,
            });
        }
    }
    out
}
