//! `aegisctl init`: start a policy tree from a shipped template.

use crate::exit::{CliError, CliResult, Exit};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;

/// The shipped templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    Finance,
    Ehr,
    Cicd,
}

impl Template {
    pub const ALL: [Template; 3] = [Template::Finance, Template::Ehr, Template::Cicd];

    pub fn name(self) -> &'static str {
        match self {
            Template::Finance => "finance",
            Template::Ehr => "ehr",
            Template::Cicd => "cicd",
        }
    }

    /// `(file name, contents)` of every file of the template.
    pub fn files(self) -> [(&'static str, &'static str); 2] {
        match self {
            Template::Finance => [
                (
                    "policy.yaml",
                    include_str!("../../policies/templates/finance/policy.yaml"),
                ),
                (
                    "vectors.yaml",
                    include_str!("../../policies/templates/finance/vectors.yaml"),
                ),
            ],
            Template::Ehr => [
                (
                    "policy.yaml",
                    include_str!("../../policies/templates/ehr/policy.yaml"),
                ),
                (
                    "vectors.yaml",
                    include_str!("../../policies/templates/ehr/vectors.yaml"),
                ),
            ],
            Template::Cicd => [
                (
                    "policy.yaml",
                    include_str!("../../policies/templates/cicd/policy.yaml"),
                ),
                (
                    "vectors.yaml",
                    include_str!("../../policies/templates/cicd/vectors.yaml"),
                ),
            ],
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct InitArgs {
    pub template: Template,
    /// `None` = `./<template>`.
    pub dir: Option<PathBuf>,
}

/// Copies the template into the directory. Refuses (exit 1) if any file already exists.
pub fn run(args: &InitArgs, out: &mut dyn Write) -> CliResult {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(args.template.name()));
    let files = args.template.files();
    let existing: Vec<String> = files
        .iter()
        .map(|(n, _)| dir.join(n))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(CliError::failure(format!(
            "refusing to overwrite existing files: {}",
            existing.join(", ")
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|e| CliError::io(&dir, e))?;
    for (name, text) in files {
        let path = dir.join(name);
        // create_new: never clobber a file that appeared since the check above.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| CliError::io(&path, e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| CliError::io(&path, e))?;
        writeln!(out, "created {}", path.display())?;
    }
    writeln!(out, "\nnext steps:")?;
    writeln!(out, "  aegisctl lint {}", dir.display())?;
    writeln!(out, "  aegisctl test {}", dir.display())?;
    Ok(Exit::Ok)
}
