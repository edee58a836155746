//! `aegisctl changes list|show`, `approve`, `reject`: reviewing proposed changes.

use super::render::{Table, approvals_cell, checks_cell, truncate, write_checks};
use super::{Client, submit};
use crate::exit::{CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::{ChangeApproved, ChangeRejected, Event};
use aegis_core::ids::ChangeId;
use aegis_core::query::{ActView, ChangeState, ChangeView};
use clap::builder::{EnumValueParser, TypedValueParser};
use std::io::{self, Write};

/// Options for [`list`]; also the `aegisctl changes list` arguments.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ListArgs {
    #[arg(long, value_parser = EnumValueParser::<StateArg>::new().map(ChangeState::from))]
    pub state: Option<ChangeState>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// The `--state` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StateArg {
    Open,
    Approved,
    Rejected,
    Published,
}

impl From<StateArg> for ChangeState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Open => ChangeState::Open,
            StateArg::Approved => ChangeState::Approved,
            StateArg::Rejected => ChangeState::Rejected,
            StateArg::Published => ChangeState::Published,
        }
    }
}

/// The changes, newest first: id, state, intent, proposer, risk, approvals, checks.
pub async fn list(client: &Client, args: &ListArgs, out: &mut dyn Write) -> CliResult {
    let changes = client.changes(args.state).await?;
    if args.json {
        write_json(out, &changes)?;
    } else {
        write_list(&changes, out)?;
    }
    Ok(Exit::Ok)
}

/// The table [`list`] prints.
pub fn write_list(changes: &[ChangeView], out: &mut dyn Write) -> io::Result<()> {
    if changes.is_empty() {
        return writeln!(out, "no changes");
    }
    let mut table = Table::new(&[
        "id",
        "state",
        "risk",
        "approvals",
        "checks",
        "proposer",
        "intent",
    ]);
    for c in changes {
        table.row(vec![
            c.change_id.to_string(),
            c.state.to_string(),
            c.risk_tier.as_str().to_owned(),
            approvals_cell(c),
            checks_cell(c.checks.as_ref()),
            c.proposed.actor.to_string(),
            truncate(&c.intent, 60),
        ]);
    }
    table.write(out)
}

/// Options for [`show`]; also the `aegisctl changes show` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    pub change_id: ChangeId,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Everything about one change: documents summarized, failing checks in full.
pub async fn show(client: &Client, args: &ShowArgs, out: &mut dyn Write) -> CliResult {
    let change = client.change(&args.change_id).await?;
    if args.json {
        write_json(out, &change)?;
    } else {
        write_change(&change, out)?;
    }
    Ok(Exit::Ok)
}

fn act(a: &ActView) -> String {
    let mut s = format!("{} at {} ({})", a.actor, a.at, a.event_id);
    if let Some(note) = &a.note {
        s.push_str(&format!(": {note}"));
    }
    s
}

/// What [`show`] prints.
pub fn write_change(c: &ChangeView, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "change:    {}", c.change_id)?;
    writeln!(out, "state:     {}", c.state)?;
    writeln!(out, "intent:    {}", c.intent)?;
    if let Some(ticket) = &c.ticket {
        writeln!(out, "ticket:    {ticket}")?;
    }
    writeln!(out, "proposed:  {}", act(&c.proposed))?;
    writeln!(out, "risk tier: {}", c.risk_tier.as_str())?;
    writeln!(
        out,
        "approvals: {} ({} required, never the proposer's own)",
        approvals_cell(c),
        c.required_approvals
    )?;
    for a in &c.approvals {
        writeln!(out, "  approved by {}", act(a))?;
    }
    write_shadow_reports(c, out)?;
    if let Some(r) = &c.rejected {
        writeln!(out, "rejected:  {}", act(r))?;
    }
    if let Some(p) = &c.published {
        writeln!(
            out,
            "published: version {} {} (stage {}) by {}",
            p.version,
            p.digest,
            p.stage,
            act(&p.by)
        )?;
    }
    writeln!(out, "documents: {}", c.documents.len())?;
    for d in &c.documents {
        let lines = d.document.lines().count();
        writeln!(
            out,
            "  write  {} ({}, {lines} lines, based on live revision {})",
            d.name,
            d.format.extension(),
            d.base_revision
        )?;
    }
    for d in &c.deleted {
        writeln!(
            out,
            "  delete {} (based on live revision {})",
            d.name, d.base_revision
        )?;
    }
    writeln!(out, "vectors:   {}", c.vectors.len())?;
    for v in &c.vectors {
        writeln!(out, "  {} ({})", v.name, v.format.extension())?;
    }
    match &c.checks {
        Some(checks) => write_checks(checks, c.required_approvals, out)?,
        None => writeln!(out, "checks: pending")?,
    }
    Ok(())
}

/// The shadow reports attached to a change (`aegisctl replay --change`), and whether the
/// tenant requires one before approval.
fn write_shadow_reports(c: &ChangeView, out: &mut dyn Write) -> io::Result<()> {
    if c.shadow_reports.is_empty() {
        if c.shadow_report_required {
            writeln!(
                out,
                "shadow:    none yet; required before approval (aegisctl replay --change {})",
                c.change_id
            )?;
        }
        return Ok(());
    }
    writeln!(out, "shadow reports: {}", c.shadow_reports.len())?;
    for v in &c.shadow_reports {
        let r = &v.report;
        let slice = match (r.slice.first_seq, r.slice.last_seq) {
            (Some(a), Some(b)) => format!(
                "seq {a}..={b} ({} .. {})",
                r.slice.first_time.as_deref().unwrap_or("?"),
                r.slice.last_time.as_deref().unwrap_or("?")
            ),
            _ => "an empty slice".to_owned(),
        };
        writeln!(out, "  by {}", act(&v.attached))?;
        writeln!(out, "    slice:      {slice}")?;
        writeln!(
            out,
            "    decisions:  {} ({} replayed, {} not replayable)",
            r.decisions, r.replayed, r.not_replayable
        )?;
        let pct = |n: u64| {
            if r.replayed == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}%", n as f64 * 100.0 / r.replayed as f64)
            }
        };
        writeln!(
            out,
            "    changed:    {} ({}); would deny {} ({})",
            r.changed,
            pct(r.changed),
            r.would_deny,
            pct(r.would_deny)
        )?;
        for t in r.transitions.iter().filter(|t| t.from != t.to) {
            writeln!(
                out,
                "    {} -> {}: {}",
                t.from.as_str(),
                t.to.as_str(),
                t.count
            )?;
        }
        writeln!(out, "    candidate:  {}", r.candidate_digest)?;
        writeln!(out, "    report:     {}", r.report_digest)?;
    }
    Ok(())
}

/// Options for [`approve`]; also the `aegisctl approve` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ApproveArgs {
    pub change_id: ChangeId,
    #[arg(long)]
    pub comment: Option<String>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// `change_approved` (never by the proposer: the control plane rejects self-approval).
pub async fn approve(client: &Client, args: &ApproveArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::ChangeApproved(ChangeApproved {
        change_id: args.change_id.clone(),
        comment: args.comment.clone(),
    });
    submit(client, event, args.json, out).await
}

/// Options for [`reject`]; also the `aegisctl reject` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RejectArgs {
    pub change_id: ChangeId,
    #[arg(long)]
    pub reason: String,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// `change_rejected`: the change can no longer be approved or published.
pub async fn reject(client: &Client, args: &RejectArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::ChangeRejected(ChangeRejected {
        change_id: args.change_id.clone(),
        reason: args.reason.clone(),
    });
    submit(client, event, args.json, out).await
}
