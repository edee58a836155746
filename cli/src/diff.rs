//! `aegisctl diff`: what became stricter, looser or merely changed between two policy sets.
//!
//! Each side is a policy tree or a bundle. A bundle is read without any trust check (the
//! archive rules and size limits still apply, and each file read must match the hash the
//! manifest lists): a diff is a review aid, not an admission decision.

use crate::exit::{CliError, CliResult, Exit};
use crate::output::{is_bundle, load_tree, plural, read_file, write_json};
use aegis_core::bundle::{DATA_PATH, SizeLimits, inspect, sha256_hex};
use aegis_core::diff::{Change, Direction, diff};
use aegis_core::policy::compile::CompiledData;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct DiffArgs {
    pub old: PathBuf,
    pub new: PathBuf,
    pub json: bool,
}

/// One side: the compiled data and the Rego modules.
#[derive(Debug, Clone)]
pub struct Side {
    pub data: CompiledData,
    pub modules: BTreeMap<String, Vec<u8>>,
}

/// Loads a policy tree (compiled for all tenants) or a bundle (untrusted read).
pub fn load_side(path: &Path, out: &mut dyn Write) -> Result<Side, CliError> {
    if is_bundle(path) {
        let files = read_bundle_untrusted(path)?;
        let data_bytes = files.get(DATA_PATH).ok_or_else(|| {
            CliError::failure(format!("{}: bundle has no {DATA_PATH}", path.display()))
        })?;
        let data: CompiledData = serde_json::from_slice(data_bytes).map_err(|e| {
            CliError::failure(format!(
                "{}: {DATA_PATH} is not Aegis compiled data: {e}",
                path.display()
            ))
        })?;
        let modules = files
            .into_iter()
            .filter(|(p, _)| p.ends_with(".rego"))
            .collect();
        Ok(Side { data, modules })
    } else {
        let set = load_tree(&[path.to_path_buf()], out)?;
        let compiled = set.compile();
        let modules = compiled
            .modules
            .iter()
            .map(|(p, t)| (p.clone(), t.as_bytes().to_vec()))
            .collect();
        Ok(Side {
            data: compiled.data,
            modules,
        })
    }
}

/// Reads the payload files of a bundle without checking its signature. The archive is first
/// checked by [`inspect`] (size limits, entry rules); every file returned matches the hash its
/// manifest lists.
pub fn read_bundle_untrusted(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, CliError> {
    let bytes = read_file(path)?;
    let fail =
        |e: String| CliError::failure(format!("{}: cannot read bundle: {e}", path.display()));
    let inspected = inspect(&bytes, &SizeLimits::default()).map_err(|e| fail(e.to_string()))?;
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    for entry in archive.entries().map_err(|e| fail(e.to_string()))? {
        let mut entry = entry.map_err(|e| fail(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| fail(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let Some(listed) = inspected.manifest.files.get(&name) else {
            continue;
        };
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| fail(e.to_string()))?;
        if &sha256_hex(&data) != listed {
            return Err(fail(format!(
                "{name} does not match the hash in the manifest"
            )));
        }
        files.insert(name, data);
    }
    Ok(files)
}

/// Module-level changes the data diff cannot see (shared or custom Rego text).
fn module_changes(old: &Side, new: &Side) -> Vec<String> {
    let paths: BTreeSet<&String> = old.modules.keys().chain(new.modules.keys()).collect();
    paths
        .into_iter()
        .filter_map(|p| match (old.modules.get(p), new.modules.get(p)) {
            (Some(_), None) => Some(format!("changed  module {p} removed")),
            (None, Some(_)) => Some(format!("changed  module {p} added")),
            (Some(a), Some(b)) if a != b => Some(format!("changed  module {p} text differs")),
            _ => None,
        })
        .collect()
}

/// Prints the changes grouped by tenant/agent and a summary. Always exit 0 when both sides load.
pub fn run(args: &DiffArgs, out: &mut dyn Write) -> CliResult {
    let old = load_side(&args.old, out)?;
    let new = load_side(&args.new, out)?;
    let changes = diff(&old.data, &new.data);
    let modules = module_changes(&old, &new);
    let count = |d: Direction| changes.iter().filter(|c| c.direction == d).count();
    let (stricter, looser, changed) = (
        count(Direction::Stricter),
        count(Direction::Looser),
        count(Direction::Changed) + modules.len(),
    );
    if args.json {
        write_json(
            out,
            &json!({"changes": changes, "modules": modules, "summary": {"stricter": stricter, "looser": looser, "changed": changed}}),
        )?;
        return Ok(Exit::Ok);
    }
    let mut group: Option<(String, String)> = None;
    for c in &changes {
        let key = (c.tenant.clone(), c.agent.clone());
        if group.as_ref() != Some(&key) {
            writeln!(out, "{}/{}:", c.tenant, c.agent)?;
            group = Some(key);
        }
        writeln!(out, "  {}", line(c))?;
    }
    if !modules.is_empty() {
        writeln!(out, "rego modules:")?;
        for m in &modules {
            writeln!(out, "  {m}")?;
        }
    }
    if changes.is_empty() && modules.is_empty() {
        writeln!(out, "no changes")?;
    } else {
        writeln!(
            out,
            "{}: {stricter} stricter, {looser} looser, {changed} changed",
            plural(changes.len() + modules.len(), "change")
        )?;
    }
    Ok(Exit::Ok)
}

/// `stricter payments:create_payment (rule pay): ...` (the tenant/agent is the group header).
fn line(c: &Change) -> String {
    let mut s = format!("{:<8}", c.direction.as_str());
    if let Some(t) = &c.tool {
        s.push(' ');
        s.push_str(t);
        if let Some(a) = &c.action {
            s.push(':');
            s.push_str(a);
        }
    }
    if let Some(r) = &c.rule {
        s.push_str(&format!(" (rule {r})"));
    }
    s.push_str(&format!(": {}", c.what));
    s
}
