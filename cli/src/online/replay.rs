//! `aegisctl replay`: what a candidate policy would have decided for a slice of the tenant's
//! recorded decisions (a shadow diff), as JSON (`schemas/replay-report.schema.json`),
//! Markdown for a pull request, or a self-contained HTML file with charts. The work is done by the `aegis-replayer` crate; this module
//! turns arguments into a slice and a candidate, and errors into exit codes.

use super::audit::load_trust;
use super::{Client, outcome_exit, outcome_line};
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::bundle::sha256_hex;
use aegis_core::events::Event;
use aegis_core::ids::ChangeId;
use aegis_core::keys::TrustStore;
use aegis_replayer::engine::EngineOptions;
use aegis_replayer::source::SourceError;
use aegis_replayer::{Candidate, CandidateError, ReplayError, html, mark_thresholds, markdown};
use std::io::Write;
use std::path::PathBuf;

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayFormat {
    /// The report as one JSON document (schemas/replay-report.schema.json)
    Json,
    /// Markdown, for a pull request
    Markdown,
    /// One self-contained HTML file with charts (no script, nothing loaded from a network)
    Html,
}

/// `aegisctl replay` arguments (the tenant and connection come from the online options).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayArgs {
    /// Candidate: a bundle file, verified with --trust before it is evaluated
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Candidate: a policy tree (file or directory; repeatable), compiled for the tenant
    #[arg(long = "policies", value_name = "DIR")]
    pub policies: Vec<PathBuf>,
    /// Candidate: published version V (digest from the control plane's history, bytes from
    /// object store aegis-bundles), verified with --trust
    #[arg(long, value_name = "V")]
    pub version: Option<u64>,
    /// Candidate: proposed change ID (the control plane's candidate set: live policies with the
    /// change applied, pinned to the digest its checks compiled). The report's summary is then
    /// attached to the change as a signed `shadow_report_attached` event (needs --actor/--key),
    /// shown to approvers in `aegisctl changes show`
    #[arg(long, value_name = "ID")]
    pub change: Option<ChangeId>,
    /// With --change: only print the report, attach nothing
    #[arg(long, requires = "change")]
    pub no_attach: bool,
    /// Trust store (trust file, directory of *.pub.json, or one *.pub.json): required with
    /// --bundle and --version; with it, the recorded version's bundle is fetched too, so the
    /// thresholds the candidate moves are marked on the histograms
    #[arg(long, value_name = "KEY")]
    pub trust: Option<PathBuf>,
    /// The slice of the decision log
    #[command(flatten)]
    pub slice: super::slice_args::SliceArgs,
    /// Which recorded decisions of the slice count
    #[command(flatten)]
    pub filter: super::slice_args::FilterArgs,
    /// Output format [default: markdown, or json with --json]
    #[arg(long, value_enum)]
    pub format: Option<ReplayFormat>,
    /// Write the report to FILE instead of stdout
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Examples kept per changed transition
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub examples: usize,
    /// Worker threads [default: one per core]
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,
    #[arg(skip)]
    pub json: bool,
}

impl super::CommandArgs for ReplayArgs {
    fn set_json(&mut self, json: bool) {
        self.json = json;
    }
}

impl ReplayArgs {
    fn format(&self) -> ReplayFormat {
        self.format.unwrap_or(if self.json {
            ReplayFormat::Json
        } else {
            ReplayFormat::Markdown
        })
    }
}

fn candidate_error(e: CandidateError) -> CliError {
    let exit = match &e {
        CandidateError::Tree { .. } | CandidateError::NoPolicies { .. } => Exit::Invalid,
        CandidateError::History { .. } | CandidateError::ObjectStoreUnavailable { .. } => {
            Exit::Unavailable
        }
        _ => Exit::Failure,
    };
    CliError {
        exit,
        message: e.to_string(),
    }
}

fn replay_error(e: ReplayError) -> CliError {
    let exit = match &e {
        ReplayError::Source(SourceError::TimedOut { .. } | SourceError::Stalled { .. }) => {
            Exit::Unavailable
        }
        _ => Exit::Failure,
    };
    CliError {
        exit,
        message: format!("replay failed: {e}"),
    }
}

fn require_trust(trust: Option<&TrustStore>, what: &str) -> Result<(), CliError> {
    if trust.is_none() {
        return Err(CliError::invalid(format!(
            "{what} is verified before it is evaluated: give --trust KEY"
        )));
    }
    Ok(())
}

/// Runs the replay and prints the report. Exit 0 whatever the report says; 1 (bundle rejected,
/// read failure), 2 (bad arguments, policy tree problems) or 6 (NATS or the control plane not
/// answering) when it could not run; with `--change`, 5 when the control plane refused the
/// attachment.
pub async fn run(client: &Client, args: &ReplayArgs, out: &mut dyn Write) -> CliResult {
    let tenant = client.tenant().clone();
    let given = usize::from(args.bundle.is_some())
        + usize::from(!args.policies.is_empty())
        + usize::from(args.version.is_some())
        + usize::from(args.change.is_some());
    if given != 1 {
        return Err(CliError::invalid(
            "give exactly one candidate: --bundle FILE, --policies DIR, --version V or --change ID",
        ));
    }
    if args.change.is_some() && !args.no_attach && client.actor().is_none() {
        return Err(CliError::invalid(
            "--change attaches the report to the change as a signed event: give --actor and --key (or --no-attach to only print it)",
        ));
    }
    let spec = args.slice.spec(tenant.clone(), &args.filter)?;
    let trust = args.trust.as_deref().map(load_trust).transpose()?;
    let candidate = if let Some(file) = &args.bundle {
        require_trust(trust.as_ref(), "the bundle")?;
        let store = trust
            .as_ref()
            .ok_or_else(|| CliError::invalid("no trust"))?;
        Candidate::from_bundle_file(file, store, &tenant).map_err(candidate_error)?
    } else if let Some(version) = args.version {
        require_trust(trust.as_ref(), "the published version")?;
        let store = trust
            .as_ref()
            .ok_or_else(|| CliError::invalid("no trust"))?;
        Candidate::from_published(
            client.jetstream(),
            &tenant,
            version,
            store,
            client.timeout(),
        )
        .await
        .map_err(candidate_error)?
    } else if let Some(change_id) = &args.change {
        let set = client.candidate(change_id).await?;
        Candidate::from_change(&set, &tenant).map_err(candidate_error)?
    } else {
        Candidate::from_policy_tree(&args.policies, &tenant).map_err(candidate_error)?
    };
    let options = EngineOptions {
        workers: args.workers,
        examples: args.examples,
        ..EngineOptions::default()
    };
    let report = aegis_replayer::replay(client.jetstream(), &spec, &candidate, options)
        .await
        .map_err(replay_error)?;
    let report = mark_thresholds(client.jetstream(), report, &candidate, trust.as_ref()).await;
    let mut json = Vec::new();
    write_json(&mut json, &report)?;
    let text = match args.format() {
        ReplayFormat::Json => json.clone(),
        ReplayFormat::Markdown => markdown::render(&report).into_bytes(),
        ReplayFormat::Html => html::render(&report).into_bytes(),
    };
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .map_err(|e| CliError::failure(format!("cannot write {}: {e}", path.display())))?,
        None => out.write_all(&text)?,
    }
    match &args.change {
        Some(change_id) if !args.no_attach => attach(client, &report, change_id, &json).await,
        _ => Ok(Exit::Ok),
    }
}

/// Signs the report's summary as `shadow_report_attached` on the change and waits for the
/// control plane's verdict, reported on stderr (stdout carries the report). The digest is of
/// the JSON report exactly as `--format json` writes it.
async fn attach(
    client: &Client,
    report: &aegis_replayer::Report,
    change_id: &ChangeId,
    json: &[u8],
) -> CliResult {
    let digest = format!("sha256:{}", sha256_hex(json));
    let event = report.shadow_attachment(change_id.clone(), digest.clone());
    let record = client
        .publish_event(Event::ShadowReportAttached(event))
        .await?;
    eprintln!(
        "shadow report {digest} attached to change {change_id}: {}",
        outcome_line(&record.outcome)
    );
    Ok(outcome_exit(&record.outcome))
}
