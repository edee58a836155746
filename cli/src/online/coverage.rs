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
use aegis_replayer::{Filter, SliceSpec};
use std::io::Write;
use std::path::PathBuf;

/// `aegisctl coverage` arguments (the tenant and connection come from the online options).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CoverageArgs {
    /// Trust store (trust file, directory of *.pub.json, or one *.pub.json): the version in
    /// force is verified with it before its risk tiers are read
    #[arg(long, value_name = "KEY")]
    pub trust: PathBuf,
    /// The slice of the decision log
    #[command(flatten)]
    pub slice: super::slice_args::SliceArgs,
    /// Only calls of this agent (repeatable: any of them)
    #[arg(long = "agent", value_name = "A")]
    pub agents: Vec<AgentId>,
    #[arg(skip)]
    pub json: bool,
}

impl super::CommandArgs for CoverageArgs {
    fn set_json(&mut self, json: bool) {
        self.json = json;
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
    let bounds = args.slice.bounds()?;
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
