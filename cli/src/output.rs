//! Output helpers shared by the commands.

use crate::exit::CliError;
use aegis_core::policy::{Diagnostic, PolicySet};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `1 file`, `2 files`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A diagnostic as a JSON object.
pub fn diagnostic_json(d: &Diagnostic) -> Value {
    json!({
        "file": d.file.display().to_string(),
        "line": d.line,
        "column": d.column,
        "field": d.field,
        "message": d.message,
        "hint": d.hint,
    })
}

/// Writes `value` as pretty JSON and a newline.
pub fn write_json(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failure(format!("cannot serialize output: {e}")))?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// Loads a policy tree; on problems prints every diagnostic and a summary and returns an
/// exit-2 error.
pub fn load_tree(paths: &[PathBuf], out: &mut dyn Write) -> Result<PolicySet, CliError> {
    match PolicySet::load(paths) {
        Ok(set) => Ok(set),
        Err(diags) => {
            for d in diags.iter() {
                writeln!(out, "{d}")?;
            }
            Err(CliError::invalid(format!(
                "{} in the policy tree; run `aegisctl lint` for details",
                plural(diags.len(), "problem")
            )))
        }
    }
}

/// Whether `path` names a bundle file rather than a policy tree.
pub fn is_bundle(path: &Path) -> bool {
    path.is_file()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".tar.gz") || n.ends_with(".tgz"))
}

/// Reads a whole file, mapping errors to exit 1.
pub fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::io(path, e))
}
