//! `aegisctl audit export|verify`: who changed what, when, who approved, which bundle; and a
//! check of the tenant's change stream against the signed hash-chain checkpoints.

use super::Client;
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::chain::{self, ChainReport, Finding, FindingKind, StreamMessage};
use aegis_core::events::{AuditCheckpoint, Event, EventType, ReceivedEnvelope};
use aegis_core::ids::{EventId, TenantId};
use aegis_core::keys::{PublicKey, TrustStore};
use aegis_core::query::{ChangeView, EventRecord, Outcome, VersionView};
use aegis_nats::topology::{self, AUDIT_STREAM, CHANGES_STREAM};
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push::OrderedConfig};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// export

/// Output format of [`export`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExportFormat {
    #[default]
    Json,
    Csv,
    /// A self-contained HTML page (the decision report only)
    Html,
}

/// Options for [`export`]; also the `aegisctl audit export` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
    pub format: ExportFormat,
    /// Write to FILE instead of stdout
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Export the decision report instead of the change history: decisions in a time range by
    /// agent, tool and outcome, the policy versions in force, and the runtime approvals
    /// requested with who decided them
    #[arg(long, requires = "since")]
    pub decisions: bool,
    /// Decision report: start of the range (RFC 3339, when NATS stored the decision)
    #[arg(long, value_name = "RFC3339", value_parser = super::slice_args::parse_time, requires = "decisions")]
    pub since: Option<time::OffsetDateTime>,
    /// Decision report: end of the range (RFC 3339); default: the end of the log when read
    #[arg(long, value_name = "RFC3339", value_parser = super::slice_args::parse_time, requires = "decisions")]
    pub until: Option<time::OffsetDateTime>,
    /// Decision report: the control plane's public key(s), to verify its signed approval
    /// decisions (otherwise they are reported `unverified`)
    #[arg(long, value_name = "PATH", requires = "decisions")]
    pub trust: Option<PathBuf>,
}

/// Writes an export with `write` to stdout, or to `output` (synced), then says on stdout
/// what was written where.
fn write_export(
    output: Option<&std::path::Path>,
    out: &mut dyn Write,
    write: impl Fn(&mut dyn Write) -> Result<(), CliError>,
    what: &str,
) -> Result<(), CliError> {
    match output {
        None => write(out),
        Some(path) => {
            let mut file = std::fs::File::create(path).map_err(|e| CliError::io(path, e))?;
            write(&mut file)?;
            file.sync_all().map_err(|e| CliError::io(path, e))?;
            writeln!(out, "wrote {what} to {}", path.display())?;
            Ok(())
        }
    }
}

/// What a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    /// A change event the control plane folded (accepted or rejected).
    Event,
    /// A published bundle version.
    Version,
}

impl RowKind {
    fn as_str(self) -> &'static str {
        match self {
            RowKind::Event => "event",
            RowKind::Version => "version",
        }
    }
}

/// One row of the audit export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    pub kind: RowKind,
    /// When (RFC 3339): the event's time, or the version's `created_at`.
    pub time: String,
    /// Who: the event's signer, or who published the version.
    pub actor: String,
    /// The event type, or `publish` / `rollback` for a version.
    pub action: String,
    /// `accepted` / `rejected` for an event; `announced` / `built` for a version.
    pub outcome: String,
    /// Why an event was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// What: the control plane's one-line summary, or the change's intent and policies.
    pub what: String,
    /// Who approved the change the row belongs to.
    pub approved_by: Vec<String>,
    /// The bundle version the row produced or the change ended up in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Its bundle digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Position in the audit hash chain, stream sequence and id (events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// The CSV header, in column order.
pub const CSV_HEADER: [&str; 15] = [
    "kind",
    "time",
    "actor",
    "action",
    "outcome",
    "reason",
    "change_id",
    "what",
    "approved_by",
    "version",
    "digest",
    "stage",
    "position",
    "seq",
    "event_id",
];

impl AuditRow {
    /// The CSV cells, in [`CSV_HEADER`] order; approvers are joined with `;`.
    pub fn csv_record(&self) -> [String; 15] {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
        [
            self.kind.as_str().to_owned(),
            self.time.clone(),
            self.actor.clone(),
            self.action.clone(),
            self.outcome.clone(),
            opt(&self.reason),
            opt(&self.change_id),
            self.what.clone(),
            self.approved_by.join(";"),
            num(self.version),
            opt(&self.digest),
            opt(&self.stage),
            num(self.position),
            num(self.seq),
            opt(&self.event_id),
        ]
    }
}

/// The change id in a change event's subject (`aegis.changes.<tenant>.change.<id>`).
fn change_of_subject(subject: &str) -> Option<&str> {
    let mut tokens = subject.splitn(5, '.');
    let (_, _, _, kind, rest) = (
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
        tokens.next()?,
    );
    (kind == "change").then_some(rest)
}

fn change_what(c: &ChangeView) -> String {
    let mut names: Vec<String> = c.documents.iter().map(|d| d.name.to_string()).collect();
    names.extend(c.deleted.iter().map(|d| format!("-{}", d.name)));
    if names.is_empty() {
        c.intent.clone()
    } else {
        format!("{} [{}]", c.intent, names.join(", "))
    }
}

/// One row per published version and per folded change event, in time order (events before
/// versions at the same instant).
pub fn build_rows(
    history: &[VersionView],
    changes: &[ChangeView],
    events: &[EventRecord],
) -> Vec<AuditRow> {
    let by_id: BTreeMap<&str, &ChangeView> =
        changes.iter().map(|c| (c.change_id.as_str(), c)).collect();
    let approvers = |c: &ChangeView| -> Vec<String> {
        c.approvals.iter().map(|a| a.actor.to_string()).collect()
    };
    let mut rows = Vec::with_capacity(history.len() + events.len());
    for e in events {
        let change_id = change_of_subject(&e.subject).map(str::to_owned);
        let change = change_id.as_deref().and_then(|id| by_id.get(id).copied());
        let published = change.and_then(|c| c.published.as_ref());
        let (outcome, reason) = match &e.outcome {
            Outcome::Accepted => ("accepted".to_owned(), None),
            Outcome::Rejected { reason } => ("rejected".to_owned(), Some(reason.clone())),
        };
        rows.push(AuditRow {
            kind: RowKind::Event,
            time: e.time.clone().unwrap_or_default(),
            actor: e
                .actor
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            action: e
                .event_type
                .map_or("not_an_envelope", EventType::as_str)
                .to_owned(),
            outcome,
            reason,
            change_id,
            what: e.summary.clone(),
            approved_by: change.map(approvers).unwrap_or_default(),
            version: published.map(|p| p.version),
            digest: published.map(|p| p.digest.clone()),
            stage: published.map(|p| p.stage.to_string()),
            position: Some(e.position),
            seq: Some(e.seq),
            event_id: Some(e.id.clone()),
        });
    }
    for v in history {
        let change = v
            .change_id
            .as_ref()
            .and_then(|id| by_id.get(id.as_str()).copied());
        let what = match (v.rollback_of, change) {
            (Some(to), _) => format!(
                "rollback to version {to}{}",
                if v.emergency { " (emergency)" } else { "" }
            ),
            (None, Some(c)) => change_what(c),
            (None, None) => v
                .change_id
                .as_ref()
                .map_or_else(String::new, |c| format!("change {c}")),
        };
        rows.push(AuditRow {
            kind: RowKind::Version,
            time: v.created_at.clone(),
            actor: v.published_by.to_string(),
            action: if v.rollback_of.is_some() {
                "rollback".to_owned()
            } else {
                "publish".to_owned()
            },
            outcome: if v.announced { "announced" } else { "built" }.to_owned(),
            reason: None,
            change_id: v.change_id.as_ref().map(ToString::to_string),
            what,
            approved_by: v.approved_by.iter().map(ToString::to_string).collect(),
            version: Some(v.version),
            digest: Some(v.digest.clone()),
            stage: Some(v.stage.to_string()),
            position: None,
            seq: None,
            event_id: None,
        });
    }
    rows.sort_by(|a, b| {
        (a.time.as_str(), a.kind, a.position, a.version).cmp(&(
            b.time.as_str(),
            b.kind,
            b.position,
            b.version,
        ))
    });
    rows
}

/// Writes the rows as CSV (header row, RFC 4180 quoting).
pub fn write_csv(rows: &[AuditRow], out: &mut dyn Write) -> Result<(), CliError> {
    let err = |e: csv::Error| CliError::failure(format!("cannot write CSV: {e}"));
    let mut w = csv::Writer::from_writer(out);
    w.write_record(CSV_HEADER).map_err(err)?;
    for r in rows {
        w.write_record(r.csv_record()).map_err(err)?;
    }
    w.flush()?;
    Ok(())
}

/// Writes the rows as a JSON array.
pub fn write_rows_json(rows: &[AuditRow], out: &mut dyn Write) -> Result<(), CliError> {
    write_json(out, &rows)
}

/// Builds the export from the `History`, `Changes` and `Events` queries.
pub async fn export(client: &Client, args: &ExportArgs, out: &mut dyn Write) -> CliResult {
    if args.decisions {
        return export_decisions(client, args, out).await;
    }
    if args.format == ExportFormat::Html {
        return Err(CliError::invalid(
            "--format html is for the decision report: add --decisions --since T",
        ));
    }
    let history = client.history().await?;
    let changes = client.changes(None).await?;
    let events = client.all_events().await?;
    let rows = build_rows(&history, &changes, &events);
    let write = |w: &mut dyn Write| -> Result<(), CliError> {
        match args.format {
            ExportFormat::Json => write_rows_json(&rows, w)?,
            ExportFormat::Csv => write_csv(&rows, w)?,
            ExportFormat::Html => {}
        }
        Ok(())
    };
    let what = format!(
        "{} rows ({} versions, {} events)",
        rows.len(),
        history.len(),
        events.len()
    );
    write_export(args.output.as_deref(), out, write, &what)?;
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// export --decisions

/// `aegisctl audit export --decisions`: streams the range of `AEGIS_DECISIONS`, reads the
/// tenant's approvals (see [`super::approvals::read`]) and writes the
/// [`DecisionReport`](aegis_replayer::DecisionReport) as JSON, CSV or HTML.
pub async fn export_decisions(
    client: &Client,
    args: &ExportArgs,
    out: &mut dyn Write,
) -> CliResult {
    use aegis_replayer::decision_report::{self, to_csv, to_html};
    use aegis_replayer::source::SourceError;
    use aegis_replayer::{Bounds, Filter, SliceSpec};
    let Some(since) = args.since else {
        return Err(CliError::invalid("--decisions needs --since RFC3339"));
    };
    if args.until.is_some_and(|u| u < since) {
        return Err(CliError::invalid("--until is before --since"));
    }
    let trust = args.trust.as_deref().map(load_trust).transpose()?;
    let tenant = client.tenant().clone();
    let spec = SliceSpec {
        tenant: tenant.clone(),
        bounds: Bounds::Time {
            since,
            until: args.until,
        },
        filter: Filter::default(),
    };
    let counter = decision_report::count(client.jetstream(), &spec)
        .await
        .map_err(|e| CliError {
            exit: match e {
                SourceError::TimedOut { .. } | SourceError::Stalled { .. } => Exit::Unavailable,
                _ => Exit::Failure,
            },
            message: e.to_string(),
        })?;
    let filter =
        topology::approvals_filter(&tenant).map_err(|e| CliError::invalid(e.to_string()))?;
    let messages = super::approvals::read(client.jetstream(), &filter).await?;
    let stamp = |t: time::OffsetDateTime| {
        aegis_core::events::envelope::format_time(t).map_err(|e| CliError::invalid(e.to_string()))
    };
    let since_s = stamp(since)?;
    let until_s = args.until.map(stamp).transpose()?;
    let approvals = decision_report::fold_approvals(
        &tenant,
        messages
            .iter()
            .map(|(s, seq, p)| (s.as_str(), *seq, p.as_slice())),
        trust.as_ref(),
        &since_s,
        until_s.as_deref(),
    );
    let report = counter.finish(&tenant, since_s, until_s, approvals);
    let write = |w: &mut dyn Write| -> Result<(), CliError> {
        match args.format {
            ExportFormat::Json => write_json(w, &report),
            ExportFormat::Csv => Ok(w.write_all(to_csv(&report).as_bytes())?),
            ExportFormat::Html => Ok(w.write_all(to_html(&report).as_bytes())?),
        }
    };
    let what = format!(
        "the decision report ({} decisions, {} policy versions, {} approvals)",
        report.decisions,
        report.policy_versions.len(),
        report.approvals.len()
    );
    write_export(args.output.as_deref(), out, write, &what)?;
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// verify

/// Why the streams could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadStreamError {
    #[error("{0}")]
    Subject(#[from] aegis_nats::TopologyError),
    #[error("cannot find the last message of {filter} in {stream}: {source}")]
    Last {
        stream: &'static str,
        filter: String,
        #[source]
        source: aegis_nats::ReadError,
    },
    #[error("cannot read {filter} from {stream}: {detail}")]
    Consumer {
        stream: &'static str,
        filter: String,
        detail: String,
    },
    #[error(
        "reading {filter} from {stream} stalled: {got} messages in {}s, the last at sequence \
         {last_seen}, expected up to {until}", idle.as_secs()
    )]
    Stalled {
        stream: &'static str,
        filter: String,
        got: usize,
        last_seen: u64,
        until: u64,
        idle: Duration,
    },
}

/// A checkpoint message that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadCheckpoint {
    pub seq: u64,
    pub event_id: String,
    pub detail: String,
}

/// What [`read_streams`] read.
#[derive(Debug, Clone, Default)]
pub struct AuditStreams {
    /// The tenant's `AEGIS_CHANGES` messages, in stream order, raw.
    pub messages: Vec<StreamMessage>,
    /// The well-formed checkpoints from `AEGIS_AUDIT`, in stream order.
    pub checkpoints: Vec<AuditCheckpoint>,
    /// Checkpoint messages that are not well-formed signed `audit_checkpoint` envelopes of the
    /// tenant (or, with a trust store, not signed by a trusted key).
    pub bad_checkpoints: Vec<BadCheckpoint>,
}

/// Every message on `filter` in `stream` up to its last one (when reading started), read with
/// an ordered push consumer (what tenant credentials allow). `idle` bounds the wait for each
/// message.
pub async fn read_all(
    js: &jetstream::Context,
    stream: &'static str,
    filter: &str,
    idle: Duration,
) -> Result<Vec<StreamMessage>, ReadStreamError> {
    let until = match aegis_nats::last_message(js, stream, filter).await {
        Ok(Some(last)) => last.sequence,
        Ok(None) => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReadStreamError::Last {
                stream,
                filter: filter.to_owned(),
                source,
            });
        }
    };
    let consumer_err = |detail: String| ReadStreamError::Consumer {
        stream,
        filter: filter.to_owned(),
        detail,
    };
    let name = EventId::random()
        .map(|id| format!("aegisctl-audit-{}", id.as_str().trim_start_matches("evt-")))
        .map_err(|e| consumer_err(e.to_string()))?;
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| consumer_err(e.to_string()))?;
    let consumer = handle
        .create_consumer(OrderedConfig {
            name: Some(name),
            filter_subject: filter.to_owned(),
            deliver_subject: js.client().new_inbox(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| consumer_err(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| consumer_err(e.to_string()))?;
    let mut out = Vec::new();
    let mut last_seen = 0;
    loop {
        let next = tokio::time::timeout(idle, messages.next()).await;
        let message = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(consumer_err(e.to_string())),
            Ok(None) => return Err(consumer_err("the consumer ended".to_owned())),
            Err(_) => {
                return Err(ReadStreamError::Stalled {
                    stream,
                    filter: filter.to_owned(),
                    got: out.len(),
                    last_seen,
                    until,
                    idle,
                });
            }
        };
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => return Err(consumer_err(format!("message without JetStream info: {e}"))),
        };
        last_seen = seq;
        out.push(StreamMessage {
            seq,
            raw: message.payload.to_vec(),
        });
        if seq >= until || pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// Turns `AEGIS_AUDIT` messages into checkpoints: each must be a well-formed signed
/// `audit_checkpoint` envelope of `tenant` (signature encoding checked; the signature itself
/// only when `trust` is given).
pub fn checkpoints_from(
    tenant: &TenantId,
    messages: &[StreamMessage],
    trust: Option<&TrustStore>,
) -> (Vec<AuditCheckpoint>, Vec<BadCheckpoint>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for m in messages {
        let event_id = chain::raw_event_id(&m.raw);
        let mut refuse = |detail: String| {
            bad.push(BadCheckpoint {
                seq: m.seq,
                event_id: event_id.clone(),
                detail,
            })
        };
        let received = match ReceivedEnvelope::parse(&m.raw) {
            Ok(r) => r,
            Err(e) => {
                refuse(format!("not a signed envelope: {e}"));
                continue;
            }
        };
        if &received.envelope.tenant != tenant {
            refuse(format!(
                "a checkpoint of tenant {} on tenant {tenant}'s subject",
                received.envelope.tenant
            ));
            continue;
        }
        if let Some(trust) = trust {
            let checked = trust
                .lookup(&received.envelope.key_id)
                .map_err(|e| e.to_string())
                .and_then(|key| received.verify(key).map_err(|e| e.to_string()));
            if let Err(e) = checked {
                refuse(format!("signature not accepted: {e}"));
                continue;
            }
        }
        match received.envelope.event {
            Event::AuditCheckpoint(cp) => good.push(cp),
            other => refuse(format!(
                "a {} event, expected {}",
                other.event_type(),
                EventType::AuditCheckpoint
            )),
        }
    }
    (good, bad)
}

/// Reads the tenant's change events and checkpoints (see [`read_all`]).
pub async fn read_streams(
    js: &jetstream::Context,
    tenant: &TenantId,
    trust: Option<&TrustStore>,
    idle: Duration,
) -> Result<AuditStreams, ReadStreamError> {
    let messages = read_all(js, CHANGES_STREAM, &topology::changes_filter(tenant)?, idle).await?;
    let raw_checkpoints =
        read_all(js, AUDIT_STREAM, &topology::audit_subject(tenant)?, idle).await?;
    let (checkpoints, bad_checkpoints) = checkpoints_from(tenant, &raw_checkpoints, trust);
    Ok(AuditStreams {
        messages,
        checkpoints,
        bad_checkpoints,
    })
}

/// Checks the streams against the checkpoints; unusable checkpoints become
/// `broken_checkpoint` findings.
pub fn verify_streams(tenant: &TenantId, streams: &AuditStreams) -> ChainReport {
    let mut report = chain::verify(tenant, &streams.messages, &streams.checkpoints);
    for b in &streams.bad_checkpoints {
        report.findings.push(Finding {
            kind: FindingKind::BrokenCheckpoint,
            position: 0,
            event_id: b.event_id.clone(),
            seq: b.seq,
            detail: format!("checkpoint at AEGIS_AUDIT sequence {}: {}", b.seq, b.detail),
        });
    }
    report
}

/// What `audit verify` prints for a report.
pub fn write_report(report: &ChainReport, out: &mut dyn Write) -> std::io::Result<()> {
    if report.ok() {
        writeln!(
            out,
            "chain intact: {} events, {} checkpointed, head {}",
            report.events,
            report.checkpointed,
            report.head.as_deref().unwrap_or("- (no checkpoint yet)")
        )?;
        if report.unverified_tail > 0 {
            writeln!(
                out,
                "{} events after the last checkpoint are not covered yet",
                report.unverified_tail
            )?;
        }
        return Ok(());
    }
    for f in &report.findings {
        let kind = serde_json::to_value(&f.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", f.kind));
        writeln!(
            out,
            "{kind}: position {}, event {}, seq {}: {}",
            f.position,
            if f.event_id.is_empty() {
                "-"
            } else {
                &f.event_id
            },
            f.seq,
            f.detail
        )?;
    }
    writeln!(
        out,
        "chain NOT intact: {} finding{} ({} events, {} checkpointed)",
        report.findings.len(),
        if report.findings.len() == 1 { "" } else { "s" },
        report.events,
        report.checkpointed
    )
}

/// A trust store from a trust file, a directory of `*.pub.json`, or one `*.pub.json` (the
/// control plane's key as `aegisctl keys generate` wrote it).
pub fn load_trust(path: &std::path::Path) -> Result<TrustStore, CliError> {
    let single = path.is_file()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".pub.json"));
    if single {
        let key = PublicKey::load(path).map_err(|e| CliError::invalid(e.to_string()))?;
        let mut trust = TrustStore::new();
        trust.trust(key);
        return Ok(trust);
    }
    TrustStore::load(path).map_err(|e| CliError::invalid(e.to_string()))
}

/// Options for [`verify`]; also the `aegisctl audit verify` arguments. The trust path is read
/// with [`load_trust`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VerifyArgs {
    /// The control plane's public key(s): also verify checkpoint signatures
    #[arg(long, value_name = "PATH")]
    pub trust: Option<PathBuf>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Reads the streams, verifies, prints `chain intact: …` (exit 0) or every finding (exit 1).
pub async fn verify(client: &Client, args: &VerifyArgs, out: &mut dyn Write) -> CliResult {
    let trust = match &args.trust {
        Some(path) => Some(load_trust(path)?),
        None => None,
    };
    let streams = read_streams(
        client.jetstream(),
        client.tenant(),
        trust.as_ref(),
        client.timeout(),
    )
    .await
    .map_err(|e| {
        let exit = if matches!(e, ReadStreamError::Stalled { .. }) {
            Exit::Unavailable
        } else {
            Exit::Failure
        };
        CliError {
            exit,
            message: format!("{e} (NATS at {})", client.url()),
        }
    })?;
    let report = verify_streams(client.tenant(), &streams);
    if args.json {
        write_json(out, &report)?;
    } else {
        write_report(&report, out)?;
    }
    Ok(if report.ok() { Exit::Ok } else { Exit::Failure })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use aegis_core::events::chain::{entries, genesis, link};
    use aegis_core::events::{ChangeApproved, Envelope, RolloutStage};
    use aegis_core::ids::{ActorId, ChangeId};
    use aegis_core::keys::{KeyId, Keypair};
    use aegis_core::policy::model::RiskTier;
    use aegis_core::query::{ActView, ChangeState, PublishedView};
    use time::OffsetDateTime;

    fn actor(a: &str) -> ActorId {
        ActorId::new(a).unwrap()
    }

    fn act(a: &str, at: &str, id: &str) -> ActView {
        ActView {
            actor: actor(a),
            at: at.into(),
            event_id: EventId::new(id).unwrap(),
            note: None,
        }
    }

    fn record(
        position: u64,
        ty: EventType,
        who: &str,
        subject: &str,
        outcome: Outcome,
    ) -> EventRecord {
        EventRecord {
            position,
            seq: position + 10,
            id: format!("evt-{position}"),
            event_type: Some(ty),
            actor: Some(actor(who)),
            time: Some(format!("2026-01-01T00:00:0{position}.000Z")),
            subject: subject.into(),
            outcome,
            summary: format!("{ty} by {who}, \"quoted\", with comma"),
            chain: chain::ChainEntry {
                position,
                seq: position + 10,
                id: format!("evt-{position}"),
                hash: "h".into(),
            },
        }
    }

    fn fixture() -> (Vec<VersionView>, Vec<ChangeView>, Vec<EventRecord>) {
        let chg = ChangeId::new("chg-1").unwrap();
        let change = ChangeView {
            change_id: chg.clone(),
            state: ChangeState::Published,
            intent: "Raise the limit, carefully".into(),
            ticket: None,
            proposed: act("alice", "2026-01-01T00:00:01.000Z", "evt-1"),
            documents: vec![aegis_core::events::ProposedDocument {
                name: "finance-agent".parse().unwrap(),
                format: Default::default(),
                document: String::new(),
                base_revision: 0,
            }],
            deleted: vec![],
            vectors: vec![],
            checks: None,
            risk_tier: RiskTier::High,
            required_approvals: 2,
            approvals: vec![
                act("bob", "2026-01-01T00:00:02.000Z", "evt-2"),
                act("dave", "2026-01-01T00:00:03.000Z", "evt-3"),
            ],
            shadow_reports: vec![],
            shadow_report_required: false,
            rejected: None,
            published: Some(PublishedView {
                by: act("carol", "2026-01-01T00:00:05.000Z", "evt-5"),
                version: 1,
                digest: "sha256:abc".into(),
                stage: RolloutStage::Global,
            }),
        };
        let events = vec![
            record(
                1,
                EventType::ChangeProposed,
                "alice",
                "aegis.changes.acme.change.chg-1",
                Outcome::Accepted,
            ),
            record(
                2,
                EventType::ChangeApproved,
                "bob",
                "aegis.changes.acme.change.chg-1",
                Outcome::Accepted,
            ),
            record(
                3,
                EventType::ChangeApproved,
                "dave",
                "aegis.changes.acme.change.chg-1",
                Outcome::Accepted,
            ),
            record(
                4,
                EventType::ChangeApproved,
                "alice",
                "aegis.changes.acme.change.chg-1",
                Outcome::Rejected {
                    reason: "alice may not approve her own change".into(),
                },
            ),
            record(
                5,
                EventType::ChangePublished,
                "carol",
                "aegis.changes.acme.change.chg-1",
                Outcome::Accepted,
            ),
            record(
                6,
                EventType::TenantFrozen,
                "carol",
                "aegis.changes.acme.control",
                Outcome::Accepted,
            ),
        ];
        let history = vec![VersionView {
            version: 1,
            digest: "sha256:abc".into(),
            size: 10,
            created_at: "2026-01-01T00:00:05.000Z".into(),
            expires_at: None,
            change_id: Some(chg),
            rollback_of: None,
            emergency: false,
            stage: RolloutStage::Global,
            published_by: actor("carol"),
            approved_by: vec![actor("bob"), actor("dave")],
            signer: KeyId::of(Keypair::from_seed(&[1; 32]).verifying_key()),
            announced: true,
        }];
        (history, vec![change], events)
    }

    #[test]
    fn rows_cover_every_event_and_version_in_time_order() {
        let (history, changes, events) = fixture();
        let rows = build_rows(&history, &changes, &events);
        assert_eq!(rows.len(), 7);
        let kinds: Vec<_> = rows.iter().map(|r| (r.kind, r.action.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (RowKind::Event, "change_proposed"),
                (RowKind::Event, "change_approved"),
                (RowKind::Event, "change_approved"),
                (RowKind::Event, "change_approved"),
                (RowKind::Event, "change_published"),
                (RowKind::Version, "publish"),
                (RowKind::Event, "tenant_frozen"),
            ]
        );
        let version = &rows[5];
        assert_eq!(version.actor, "carol");
        assert_eq!(version.approved_by, ["bob", "dave"]);
        assert_eq!(version.digest.as_deref(), Some("sha256:abc"));
        assert_eq!(version.what, "Raise the limit, carefully [finance-agent]");
        // Change events carry the change, its approvers and where it ended up.
        assert_eq!(rows[0].change_id.as_deref(), Some("chg-1"));
        assert_eq!(rows[0].digest.as_deref(), Some("sha256:abc"));
        assert_eq!(rows[3].outcome, "rejected");
        assert!(rows[3].reason.as_deref().unwrap().contains("own change"));
        assert!(rows[6].change_id.is_none());
        assert!(rows[6].approved_by.is_empty());
    }

    #[test]
    fn csv_has_a_header_and_quotes_properly() {
        let (history, changes, events) = fixture();
        let rows = build_rows(&history, &changes, &events);
        let mut out = Vec::new();
        write_csv(&rows, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        assert_eq!(lines[0], CSV_HEADER.join(","));
        // Commas and quotes inside a field: quoted, quotes doubled.
        assert!(
            lines[1].contains(r#""change_proposed by alice, ""quoted"", with comma""#),
            "{}",
            lines[1]
        );
        assert!(lines[6].starts_with("version,2026-01-01T00:00:05.000Z,carol,publish,announced,,chg-1,\"Raise the limit, carefully [finance-agent]\",bob;dave,1,sha256:abc,global,,,"), "{}", lines[6]);
        // Round trip through a CSV reader: every row has every column.
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 7);
        assert!(records.iter().all(|r| r.len() == CSV_HEADER.len()));
        assert_eq!(&records[3][5], "alice may not approve her own change");
    }

    #[test]
    fn json_rows_are_an_array_of_objects() {
        let (history, changes, events) = fixture();
        let rows = build_rows(&history, &changes, &events);
        let mut out = Vec::new();
        write_rows_json(&rows, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let array = value.as_array().unwrap();
        assert_eq!(array.len(), 7);
        assert_eq!(array[5]["kind"], "version");
        assert_eq!(array[5]["approved_by"], serde_json::json!(["bob", "dave"]));
        assert_eq!(array[5]["version"], 1);
        assert_eq!(array[0]["kind"], "event");
        assert_eq!(array[0]["position"], 1);
        assert!(array[0].get("reason").is_none());
    }

    fn checkpoint_envelope(tenant: &str, key: &Keypair, cp: AuditCheckpoint) -> Vec<u8> {
        Envelope::sign(
            EventId::random().unwrap(),
            TenantId::new(tenant).unwrap(),
            actor("controlplane"),
            key,
            OffsetDateTime::now_utc(),
            Event::AuditCheckpoint(cp),
        )
        .unwrap()
        .to_bytes()
        .unwrap()
    }

    #[test]
    fn checkpoints_are_checked_and_tampering_found() {
        let tenant = TenantId::new("acme").unwrap();
        let key = Keypair::from_seed(&[9; 32]);
        let messages: Vec<StreamMessage> = (1..=3)
            .map(|i| StreamMessage {
                seq: i * 2,
                raw: format!(r#"{{"id":"evt-{i}","n":{i}}}"#).into_bytes(),
            })
            .collect();
        let all = entries(&messages);
        let mut head = genesis(&tenant);
        for e in &all {
            head = link(&head, &e.hash);
        }
        let cp = AuditCheckpoint {
            from_position: 1,
            to_position: 3,
            previous_head: genesis(&tenant),
            head: head.clone(),
            entries: all.clone(),
        };
        let raw = vec![
            StreamMessage {
                seq: 1,
                raw: checkpoint_envelope("acme", &key, cp.clone()),
            },
            StreamMessage {
                seq: 2,
                raw: b"not json".to_vec(),
            },
        ];
        let mut trust = TrustStore::new();
        trust.trust(key.public_key().clone());
        let (good, bad) = checkpoints_from(&tenant, &raw, Some(&trust));
        assert_eq!(good.len(), 1);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].seq, 2);
        // An untrusted signer is refused when a trust store is given.
        let (good, bad) = checkpoints_from(&tenant, &raw[..1], Some(&TrustStore::new()));
        assert!(good.is_empty());
        assert!(bad[0].detail.contains("not trusted"), "{:?}", bad);

        let streams = AuditStreams {
            messages: messages.clone(),
            checkpoints: vec![cp.clone()],
            bad_checkpoints: vec![],
        };
        let report = verify_streams(&tenant, &streams);
        assert!(report.ok(), "{report:?}");
        let mut out = Vec::new();
        write_report(&report, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("chain intact: 3 events, 3 checkpointed, head {head}\n")
        );

        let mut edited = messages.clone();
        edited[1].raw = br#"{"id":"evt-2","n":99}"#.to_vec();
        let report = verify_streams(
            &tenant,
            &AuditStreams {
                messages: edited,
                checkpoints: vec![cp],
                bad_checkpoints: vec![BadCheckpoint {
                    seq: 2,
                    event_id: "-".into(),
                    detail: "not a signed envelope".into(),
                }],
            },
        );
        assert_eq!(report.findings.len(), 2, "{report:?}");
        let mut out = Vec::new();
        write_report(&report, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("edited: position 2, event evt-2, seq 4:"),
            "{text}"
        );
        assert!(
            text.contains("broken_checkpoint: position 0, event -, seq 2:"),
            "{text}"
        );
        assert!(text.contains("chain NOT intact: 2 findings"), "{text}");
    }

    #[test]
    fn change_ids_come_from_change_subjects_only() {
        assert_eq!(
            change_of_subject("aegis.changes.acme.change.chg-1"),
            Some("chg-1")
        );
        assert_eq!(change_of_subject("aegis.changes.acme.policy.p"), None);
        assert_eq!(change_of_subject("aegis.changes.acme.control"), None);
    }

    #[test]
    fn a_checkpoint_of_another_event_type_is_refused() {
        let tenant = TenantId::new("acme").unwrap();
        let key = Keypair::from_seed(&[9; 32]);
        let raw = Envelope::sign(
            EventId::random().unwrap(),
            tenant.clone(),
            actor("mallory"),
            &key,
            OffsetDateTime::now_utc(),
            Event::ChangeApproved(ChangeApproved {
                change_id: ChangeId::new("chg-1").unwrap(),
                comment: None,
            }),
        )
        .unwrap()
        .to_bytes()
        .unwrap();
        let (good, bad) = checkpoints_from(&tenant, &[StreamMessage { seq: 1, raw }], None);
        assert!(good.is_empty());
        assert!(
            bad[0].detail.contains("expected audit_checkpoint"),
            "{bad:?}"
        );
        let other = checkpoint_envelope(
            "globex",
            &key,
            AuditCheckpoint {
                from_position: 1,
                to_position: 0,
                previous_head: String::new(),
                head: String::new(),
                entries: vec![],
            },
        );
        let (_, bad) = checkpoints_from(&tenant, &[StreamMessage { seq: 2, raw: other }], None);
        assert!(bad[0].detail.contains("tenant globex"), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// replay

/// Options for [`replay`]; also the `aegisctl audit replay` arguments (the tenant and the
/// connection come from the online options).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayArgs {
    /// The control plane's public key(s) (trust file, directory of *.pub.json, or one
    /// *.pub.json): every recorded version is verified with it before it is evaluated
    #[arg(long, value_name = "KEY")]
    pub trust: PathBuf,
    /// The slice of the decision log
    #[command(flatten)]
    pub slice: super::slice_args::SliceArgs,
    /// Which recorded decisions of the slice count
    #[command(flatten)]
    pub filter: super::slice_args::FilterArgs,
    /// List at most N disagreements (the first ones in stream order) [default: all]; all are
    /// counted either way
    #[arg(long, value_name = "N")]
    pub max_disagreements: Option<usize>,
    /// Worker threads [default: one per core]
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

impl super::CommandArgs for ReplayArgs {
    fn set_json(&mut self, json: bool) {
        self.json = json;
    }
}

impl ReplayArgs {
    /// The slice the arguments describe.
    pub fn spec(&self, tenant: TenantId) -> Result<aegis_replayer::SliceSpec, CliError> {
        self.slice.spec(tenant, &self.filter)
    }
}

/// Re-evaluates each recorded decision of the slice against the version it records and prints
/// the verdict, the counts per version and every disagreement (text), or the report (JSON,
/// `schemas/audit-replay-report.schema.json`). Exit 0 when consistent, 9 on any disagreement
/// or unverifiable version; 2 (bad arguments or trust file), 6 (NATS not answering) or 1 (any
/// other failure) when the audit could not run.
pub async fn replay(client: &Client, args: &ReplayArgs, out: &mut dyn Write) -> CliResult {
    use aegis_replayer::source::SourceError;
    use aegis_replayer::{AuditError, AuditOptions, audit};
    let spec = args.spec(client.tenant().clone())?;
    let trust = load_trust(&args.trust)?;
    let options = AuditOptions {
        workers: args.workers,
        max_disagreements: args.max_disagreements,
        ..AuditOptions::default()
    };
    let report = aegis_replayer::audit_replay(client.jetstream(), &spec, &trust, options)
        .await
        .map_err(|e| {
            let exit = match &e {
                AuditError::Source(
                    SourceError::TimedOut { .. }
                    | SourceError::Stalled { .. }
                    | SourceError::NoStream,
                )
                | AuditError::Bundles(_) => Exit::Unavailable,
                _ => Exit::Failure,
            };
            CliError {
                exit,
                message: format!("audit replay failed: {e}"),
            }
        })?;
    if args.json {
        write_json(out, &report)?;
    } else {
        write!(out, "{}", audit::render_text(&report))?;
    }
    Ok(if report.is_consistent() {
        Exit::Ok
    } else {
        Exit::Inconsistent
    })
}
