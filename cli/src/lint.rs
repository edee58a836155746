//! `aegisctl lint`: load and validate a policy tree, printing every problem.

use crate::exit::{CliResult, Exit};
use crate::output::{diagnostic_json, plural, write_json};
use aegis_core::policy::PolicySet;
use aegis_core::policy::source::discover;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

/// Options for [`run`].
#[derive(Debug, Clone, Default)]
pub struct LintArgs {
    pub paths: Vec<PathBuf>,
    /// Print the diagnostics as a JSON array instead of text.
    pub json: bool,
}

/// Lints the tree. Exit 0 when clean, 2 when there are problems.
pub fn run(args: &LintArgs, out: &mut dyn Write) -> CliResult {
    let files = discover(&args.paths).map(|f| f.len()).unwrap_or(0);
    match PolicySet::load(&args.paths) {
        Ok(set) => {
            if args.json {
                write_json(out, &Value::Array(Vec::new()))?;
            } else {
                writeln!(out, "{}, 0 problems", plural(files, "file"))?;
                writeln!(
                    out,
                    "ok: {}, {}",
                    policies(set.policies.len()),
                    plural(set.vectors.len(), "vector file")
                )?;
            }
            Ok(Exit::Ok)
        }
        Err(diags) => {
            if args.json {
                write_json(
                    out,
                    &Value::Array(diags.iter().map(diagnostic_json).collect()),
                )?;
            } else {
                for d in diags.iter() {
                    writeln!(out, "{d}")?;
                }
                writeln!(
                    out,
                    "{}, {}",
                    plural(files, "file"),
                    plural(diags.len(), "problem")
                )?;
            }
            Ok(Exit::Invalid)
        }
    }
}

fn policies(n: usize) -> String {
    if n == 1 {
        "1 policy".to_owned()
    } else {
        format!("{n} policies")
    }
}
