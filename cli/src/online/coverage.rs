//! `aegisctl coverage`: for each agent and tool seen in a slice of the tenant's decision log,
//! how many calls an explicit rule decided and how many fell to default deny (`no_policy`),
//! the coverage percentage by tool, agent and action, critical tools (risk tier high) first.
//! The tiers come from the newest version that decided a call of the slice, fetched from
//! object store `aegis-bundles` and verified with `--trust`. The work is done by
//! `aegis_replayer::coverage`.

use super::Client;
use super::audit::load_trust;
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::ids::AgentId;
use aegis_replayer::coverage::{self, CoverageError, PolicySourceStatus};
use aegis_replayer::source::SourceError;
use aegis_replayer::{Bounds, Filter, SliceSpec};
use std::io::Write;
use std::path::PathBuf;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `aegisctl coverage` arguments (the tenant and connection come from the online options).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CoverageArgs {
    /// Trust store (trust file, directory of *.pub.json, or one *.pub.json): the version in
    /// force is verified with it before its risk tiers are read
    #[arg(long, value_name = "KEY")]
    pub trust: PathBuf,
    /// First stream sequence of the slice
    #[arg(long, value_name = "N", conflicts_with_all = ["since", "until"])]
    pub from_seq: Option<u64>,
    /// Last stream sequence of the slice [default: the last one when reading starts]
    #[arg(long, value_name = "M", conflicts_with_all = ["since", "until"])]
    pub to_seq: Option<u64>,
    /// Start of the slice (RFC 3339, when NATS stored the record)
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub since: Option<OffsetDateTime>,
    /// End of the slice (RFC 3339) [default: the last record when reading starts]
    #[arg(long, value_name = "RFC3339", value_parser = parse_time, requires = "since")]
    pub until: Option<OffsetDateTime>,
    /// Only calls of this agent (repeatable: any of them)
    #[arg(long = "agent", value_name = "A")]
    pub agents: Vec<AgentId>,
    #[arg(skip)]
    pub json: bool,
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (e.g. 2026-11-26T08:00:00Z): {e}"))
}

impl super::CommandArgs for CoverageArgs {
    fn set_json(&mut self, json: bool) {
        self.json = json;
    }
}

impl CoverageArgs {
    /// The slice the arguments describe.
    pub fn bounds(&self) -> Result<Bounds, CliError> {
        match (self.since, self.from_seq.or(self.to_seq)) {
            (Some(since), None) => {
                if self.until.is_some_and(|u| u < since) {
                    return Err(CliError::invalid("--until is before --since"));
                }
                Ok(Bounds::Time {
                    since,
                    until: self.until,
                })
            }
            (None, _) => {
                let from = self.from_seq.unwrap_or(1);
                if self.to_seq.is_some_and(|to| to < from) {
                    return Err(CliError::invalid("--to-seq is below --from-seq"));
                }
                Ok(Bounds::Sequence {
                    from,
                    to: self.to_seq,
                })
            }
            (Some(_), Some(_)) => Err(CliError::invalid(
                "give a sequence range (--from-seq/--to-seq) or a time range (--since/--until), not both",
            )),
        }
    }
}

fn coverage_error(e: CoverageError) -> CliError {
    let exit = match &e {
        CoverageError::Source(SourceError::TimedOut { .. } | SourceError::Stalled { .. }) => {
            Exit::Unavailable
        }
        CoverageError::Source(_) => Exit::Failure,
    };
    CliError {
        exit,
        message: format!("coverage failed: {e}"),
    }
}

/// Reads the slice and prints the coverage tables (or the report as JSON with `--json`).
/// Exit 0 when the slice was read, whatever it shows; when the version in force cannot be
/// fetched or verified the report says so (tiers `unknown`) and stderr carries a warning.
/// Exit 1 when reading fails, 2 on bad arguments, 6 when NATS does not answer.
pub async fn run(client: &Client, args: &CoverageArgs, out: &mut dyn Write) -> CliResult {
    let bounds = args.bounds()?;
    let trust = load_trust(&args.trust)?;
    let spec = SliceSpec {
        tenant: client.tenant().clone(),
        bounds,
        filter: Filter {
            agents: args.agents.clone(),
            ..Filter::default()
        },
    };
    let report = coverage::coverage(client.jetstream(), &spec, Some(&trust), client.timeout())
        .await
        .map_err(coverage_error)?;
    if report.policy_source.status == PolicySourceStatus::Unavailable {
        eprintln!("warning: {}", report.policy_source.note);
    }
    if args.json {
        write_json(out, &report)?;
    } else {
        write!(out, "{}", coverage::render(&report))?;
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bounds_come_from_sequences_or_times() {
        let args = CoverageArgs {
            from_seq: Some(3),
            to_seq: Some(9),
            ..CoverageArgs::default()
        };
        assert_eq!(
            args.bounds().unwrap(),
            Bounds::Sequence {
                from: 3,
                to: Some(9)
            }
        );
        let args = CoverageArgs {
            from_seq: Some(9),
            to_seq: Some(3),
            ..CoverageArgs::default()
        };
        assert_eq!(args.bounds().unwrap_err().exit, Exit::Invalid);
        assert_eq!(CoverageArgs::default().bounds().unwrap(), Bounds::all());
    }
}
