//! `aegisctl status` and `aegisctl history`.

use super::Client;
use super::render::Table;
use crate::exit::{CliResult, Exit};
use crate::output::write_json;
use aegis_core::query::{TenantStatus, VersionView};
use std::io::{self, Write};

/// Options for [`status`] and [`history`]; `aegisctl status|history` have no arguments of
/// their own.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ViewArgs {
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// The tenant at a glance.
pub async fn status(client: &Client, args: &ViewArgs, out: &mut dyn Write) -> CliResult {
    let status = client.status().await?;
    if args.json {
        write_json(out, &status)?;
    } else {
        write_status(&status, out)?;
    }
    Ok(Exit::Ok)
}

/// What [`status`] prints.
pub fn write_status(s: &TenantStatus, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "tenant:   {}", s.tenant)?;
    match &s.frozen {
        Some(f) => writeln!(out, "frozen:   yes, by {} at {}: {}", f.by, f.at, f.reason)?,
        None => writeln!(out, "frozen:   no")?,
    }
    match &s.latest {
        Some(v) => writeln!(
            out,
            "latest:   version {} {} (stage {}, created {}{})",
            v.version,
            v.digest,
            v.stage,
            v.created_at,
            if v.announced {
                ""
            } else {
                ", not announced yet"
            }
        )?,
        None => writeln!(out, "latest:   no version published")?,
    }
    writeln!(out, "open changes: {}", s.open_changes)?;
    writeln!(
        out,
        "required approvals: low {}, medium {}, high {}",
        s.required_approvals.low, s.required_approvals.medium, s.required_approvals.high
    )?;
    writeln!(
        out,
        "bundle expiry: {}",
        s.bundle_expiry_days
            .map(|d| format!("{d} days"))
            .unwrap_or_else(|| "none".to_owned())
    )?;
    writeln!(out, "live policies: {}", s.live_policies.len())?;
    for p in &s.live_policies {
        writeln!(
            out,
            "  {} (revision {}, risk {})",
            p.name,
            p.revision,
            p.risk_tier.as_str()
        )?;
    }
    writeln!(
        out,
        "audit chain: position {}, head {}",
        s.chain_position, s.chain_head
    )?;
    writeln!(out, "applied up to stream sequence {}", s.applied_seq)?;
    Ok(())
}

/// Every published version, oldest first.
pub async fn history(client: &Client, args: &ViewArgs, out: &mut dyn Write) -> CliResult {
    let history = client.history().await?;
    if args.json {
        write_json(out, &history)?;
    } else {
        write_history(&history, out)?;
    }
    Ok(Exit::Ok)
}

/// The table [`history`] prints.
pub fn write_history(history: &[VersionView], out: &mut dyn Write) -> io::Result<()> {
    if history.is_empty() {
        return writeln!(out, "no version published yet");
    }
    let mut table = Table::new(&[
        "version",
        "created_at",
        "digest",
        "change",
        "rollback_of",
        "published_by",
        "approved_by",
        "stage",
    ]);
    for v in history {
        let approved: Vec<String> = v.approved_by.iter().map(ToString::to_string).collect();
        let mut stage = v.stage.to_string();
        if v.emergency {
            stage.push_str(" (emergency)");
        }
        if !v.announced {
            stage.push_str(" (not announced)");
        }
        table.row(vec![
            v.version.to_string(),
            v.created_at.clone(),
            v.digest.clone(),
            v.change_id
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            v.rollback_of
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            v.published_by.to_string(),
            if approved.is_empty() {
                "-".to_owned()
            } else {
                approved.join(",")
            },
            stage,
        ]);
    }
    table.write(out)
}
