//! `aegisctl test`: run every test vector in a tree against the tree's policies.

use crate::exit::{CliError, CliResult, Exit};
use crate::output::{load_tree, plural};
use aegis_core::eval::{EvalLimits, Evaluator, Provenance};
use aegis_core::vectors::{VectorFile, VectorResult, run_all};
use std::io::Write;
use std::path::PathBuf;

/// Options for [`run`].
#[derive(Debug, Clone, Default)]
pub struct TestArgs {
    pub paths: Vec<PathBuf>,
    /// Run only vectors whose name (or file path) contains this.
    pub filter: Option<String>,
}

/// Loads, compiles all tenants and runs every vector. Exit 0 when all pass, 1 on any failure,
/// 2 when the tree is invalid.
pub fn run(args: &TestArgs, out: &mut dyn Write) -> CliResult {
    let set = load_tree(&args.paths, out)?;
    let eval = Evaluator::new(&set.compile(), Provenance::default(), EvalLimits::default())
        .map_err(|e| CliError::invalid(format!("policies do not compile: {e}")))?;
    let files = filter_vectors(&set.vectors, args.filter.as_deref());
    let results = run_all(&eval, &files);
    if report(&results, out)? {
        Ok(Exit::Ok)
    } else {
        Ok(Exit::Failure)
    }
}

/// Keeps only the vectors whose name or file contains `filter`.
pub fn filter_vectors(files: &[VectorFile], filter: Option<&str>) -> Vec<VectorFile> {
    filter_by(files, |f, name, _| {
        filter.is_none_or(|s| name.contains(s) || f.path.display().to_string().contains(s))
    })
}

/// Keeps the vectors for which `keep(file, name, vector)` holds (lines kept in step).
pub fn filter_by(
    files: &[VectorFile],
    keep: impl Fn(&VectorFile, &str, &aegis_core::vectors::Vector) -> bool,
) -> Vec<VectorFile> {
    files
        .iter()
        .map(|f| {
            let (vectors, lines) = f
                .vectors
                .iter()
                .zip(f.lines.iter().copied().chain(std::iter::repeat(None)))
                .filter(|(v, _)| keep(f, &v.name, v))
                .map(|(v, l)| (v.clone(), l))
                .unzip();
            VectorFile {
                path: f.path.clone(),
                vectors,
                lines,
            }
        })
        .filter(|f| !f.vectors.is_empty())
        .collect()
}

fn location(r: &VectorResult) -> String {
    match r.line {
        Some(l) => format!("{}:{l}", r.file.display()),
        None => r.file.display().to_string(),
    }
}

/// Prints results cargo-test style. Returns whether everything passed.
pub fn report(results: &[VectorResult], out: &mut dyn Write) -> Result<bool, CliError> {
    writeln!(out, "running {}", plural(results.len(), "vector"))?;
    for r in results {
        writeln!(
            out,
            "vector {} {} ... {}",
            location(r),
            r.name,
            if r.passed() { "ok" } else { "FAILED" }
        )?;
    }
    let failed: Vec<&VectorResult> = results.iter().filter(|r| !r.passed()).collect();
    if !failed.is_empty() {
        writeln!(out, "\nfailures:")?;
        for r in &failed {
            writeln!(out, "\n---- {} {} ----", location(r), r.name)?;
            for m in &r.mismatches {
                writeln!(
                    out,
                    "  {}:\n    expected: {}\n    actual:   {}",
                    m.what, m.expected, m.actual
                )?;
            }
            let reasons: Vec<String> = r
                .decision
                .reasons
                .iter()
                .map(|x| format!("{}: {}", x.code, x.message))
                .collect();
            if !reasons.is_empty() {
                writeln!(out, "  reasons given:")?;
                for x in reasons {
                    writeln!(out, "    {x}")?;
                }
            }
        }
        writeln!(out, "\nfailures:")?;
        for r in &failed {
            writeln!(out, "    {} {}", location(r), r.name)?;
        }
    }
    let passed = results.len() - failed.len();
    writeln!(
        out,
        "\ntest result: {}. {passed} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    )?;
    Ok(failed.is_empty())
}
