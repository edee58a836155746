//! `aegisctl tail`: follow the decision log.
//!
//! Reads `AEGIS_DECISIONS` with one ordered push consumer per `--tenant`, filtered to
//! `aegis.decisions.<tenant>.>` (or one on `aegis.decisions.>` without `--tenant`: that needs
//! credentials that may read every tenant). Ordered push consumers are what tenant-operator
//! credentials allow (`nats/conf/accounts.conf`): a named consumer whose filter is part of the
//! API subject, delivering to the user's own inbox, with nothing to acknowledge.
//!
//! The stream holds two kinds of record, told apart by `type`: `decision`
//! ([`DecisionEvent`](aegis_core::decision_log::DecisionEvent)) and `bundle_rejected`
//! ([`BundleRejected`](aegis_core::decision_log::BundleRejected)). `--format json` prints each
//! record exactly as stored, one per line; `--format table` one line per record. Records are
//! filtered and rendered from their JSON, not the typed structs, so a gateway that writes a
//! newer schema is still followed.

use super::render::truncate;
use crate::duration::parse_duration;
use crate::exit::{CliError, CliResult, Exit};
use aegis_core::decision::DecisionKind;
use aegis_core::decision_log::{BUNDLE_REJECTED_TYPE, DECISION_TYPE};
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegis_nats::ordered::{ConsumeError, ordered};
use aegis_nats::topology::{self, DECISIONS_PREFIX, DECISIONS_STREAM};
use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedErrorKind;
use futures::StreamExt;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;
use time::OffsetDateTime;

/// How `tail` prints records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailFormat {
    /// Each record exactly as stored, one JSON object per line (for SIEM pipes)
    Json,
    /// One aligned line per record, for people
    Table,
}

/// Options for [`run`]; also the `aegisctl tail` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TailArgs {
    /// Only this tenant's records (repeatable). Without it: every tenant, which needs
    /// credentials that may read all of aegis.decisions.> (tenant operators must give it)
    #[arg(
        long = "tenant",
        value_name = "T",
        env = "AEGIS_TENANT",
        value_delimiter = ','
    )]
    pub tenants: Vec<TenantId>,
    /// Only decisions on calls by this agent (repeatable: any of them)
    #[arg(long = "agent", value_name = "A")]
    pub agents: Vec<AgentId>,
    /// Only decisions on calls to this tool (repeatable: any of them)
    #[arg(long = "tool", value_name = "TOOL")]
    pub tools: Vec<ToolId>,
    /// Only these decisions: allow, deny, sanitize, approval_needed (repeatable: any of them)
    #[arg(long = "decision", value_name = "D", value_parser = parse_decision)]
    pub decisions: Vec<DecisionKind>,
    /// Start with the records of the last DURATION (e.g. 10m, 2h) [default: new records only]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "from_start")]
    pub since: Option<Duration>,
    /// Start with the oldest record still in the stream [default: new records only]
    #[arg(long)]
    pub from_start: bool,
    /// Output format [default: table on a terminal, json otherwise]
    #[arg(long, value_enum)]
    pub format: Option<TailFormat>,
    /// Exit after printing N matching records
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Exit once it has caught up with the stream (every stored record printed) instead of
    /// following new ones: with --from-start or --since, "what is there now"
    #[arg(long)]
    pub no_follow: bool,
}

fn parse_decision(text: &str) -> Result<DecisionKind, String> {
    DecisionKind::parse(text).ok_or_else(|| {
        format!("unknown decision {text:?}: use allow, deny, sanitize or approval_needed")
    })
}

impl TailArgs {
    /// The format asked for, else table when stdout is a terminal and JSON lines otherwise.
    pub fn effective_format(&self, stdout_is_terminal: bool) -> TailFormat {
        self.format.unwrap_or(if stdout_is_terminal {
            TailFormat::Table
        } else {
            TailFormat::Json
        })
    }

    /// Where the consumers start, with `now` as the end of `--since`.
    pub fn deliver_policy(&self, now: OffsetDateTime) -> DeliverPolicy {
        if self.from_start {
            DeliverPolicy::All
        } else if let Some(since) = self.since {
            let since = time::Duration::try_from(since).unwrap_or(time::Duration::MAX);
            DeliverPolicy::ByStartTime {
                start_time: now.checked_sub(since).unwrap_or(OffsetDateTime::UNIX_EPOCH),
            }
        } else {
            DeliverPolicy::New
        }
    }

    /// The consumer filters: one per distinct tenant, or every tenant's.
    pub fn filters(&self) -> Result<Vec<String>, CliError> {
        if self.tenants.is_empty() {
            return Ok(vec![format!("{DECISIONS_PREFIX}.>")]);
        }
        let mut filters = Vec::new();
        for tenant in &self.tenants {
            let filter =
                topology::decisions_filter(tenant).map_err(|e| CliError::invalid(e.to_string()))?;
            if !filters.contains(&filter) {
                filters.push(filter);
            }
        }
        Ok(filters)
    }

    /// Whether any of `--agent`, `--tool`, `--decision` is given.
    pub fn selects_decisions(&self) -> bool {
        !(self.agents.is_empty() && self.tools.is_empty() && self.decisions.is_empty())
    }

    /// Whether a record passes `--agent`, `--tool` and `--decision`. Those select decisions:
    /// with any of them given, `bundle_rejected` (and unknown) records are left out.
    pub fn matches(&self, record: &Value) -> bool {
        if !self.selects_decisions() {
            return true;
        }
        if text(record, "type") != Some(DECISION_TYPE) {
            return false;
        }
        let any_of = |wanted: &[&str], field: &str| {
            wanted.is_empty() || text(record, field).is_some_and(|v| wanted.contains(&v))
        };
        let agents: Vec<&str> = self.agents.iter().map(AgentId::as_str).collect();
        let tools: Vec<&str> = self.tools.iter().map(ToolId::as_str).collect();
        let decisions: Vec<&str> = self.decisions.iter().map(|d| d.as_str()).collect();
        any_of(&agents, "agent_id") && any_of(&tools, "tool_id") && any_of(&decisions, "decision")
    }
}

impl From<ConsumeError> for CliError {
    fn from(e: ConsumeError) -> CliError {
        let exit = match e {
            ConsumeError::TimedOut { .. } => Exit::Unavailable,
            _ => Exit::Failure,
        };
        CliError {
            exit,
            message: e.to_string(),
        }
    }
}

/// Follows the decision log as `args` say, printing records in `format` to `out`; problems that
/// do not stop the tail (a record that is not JSON in JSON mode, a consumer being recreated)
/// go to `warn`. Returns after `--limit` records, else runs until interrupted.
pub async fn run(
    js: &jetstream::Context,
    args: &TailArgs,
    format: TailFormat,
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> CliResult {
    let filters = args.filters()?;
    let policy = args.deliver_policy(OffsetDateTime::now_utc());
    let mut streams = Vec::new();
    // With --no-follow: the consumers that still have records stored before the start.
    let mut behind: BTreeSet<usize> = BTreeSet::new();
    for (i, filter) in filters.iter().enumerate() {
        let (messages, pending) =
            ordered(js, DECISIONS_STREAM, filter, policy, "aegisctl-tail").await?;
        if pending > 0 {
            behind.insert(i);
        }
        streams.push(Box::pin(messages.map(move |m| (i, m))));
    }
    if format == TailFormat::Table && !emit(out, &table_header())? {
        return Ok(Exit::Ok);
    }
    if args.limit == Some(0) || (args.no_follow && behind.is_empty()) {
        return Ok(Exit::Ok);
    }
    let mut all = futures::stream::select_all(streams);
    let mut shown: u64 = 0;
    while let Some((consumer, next)) = all.next().await {
        let caught_up = |m: &async_nats::jetstream::Message| {
            args.no_follow && m.info().is_ok_and(|i| i.pending == 0)
        };
        if let Ok(m) = &next
            && caught_up(m)
        {
            behind.remove(&consumer);
        }
        let done = args.no_follow && behind.is_empty();
        let message = match next {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), OrderedErrorKind::MissingHeartbeat) => {
                writeln!(
                    warn,
                    "warning: {DECISIONS_STREAM}: missed heartbeats, recreating the consumer"
                )?;
                continue;
            }
            Err(e) => {
                return Err(CliError {
                    exit: Exit::Unavailable,
                    message: format!("following {DECISIONS_STREAM} failed: {e}"),
                });
            }
        };
        let subject = message.subject.as_str();
        let raw: &[u8] = &message.payload;
        let seq = || message.info().map(|i| i.stream_sequence).unwrap_or(0);
        // (line, whether it counts towards --limit)
        let (line, counts) = match serde_json::from_slice::<Value>(raw) {
            Err(_) if format == TailFormat::Json => {
                writeln!(
                    warn,
                    "warning: {subject} (stream sequence {}) is not JSON; skipped",
                    seq()
                )?;
                if done {
                    return Ok(Exit::Ok);
                }
                continue;
            }
            Err(_) if args.selects_decisions() => (None, false),
            Err(_) => (Some(other_line(subject, "not JSON", seq())), false),
            Ok(record) if !args.matches(&record) => (None, false),
            Ok(record) => match format {
                TailFormat::Json => (Some(json_line(raw, &record)?), true),
                TailFormat::Table => (Some(table_line(subject, &record, seq())), true),
            },
        };
        if let Some(line) = line
            && !emit(out, &line)?
        {
            return Ok(Exit::Ok);
        }
        if counts {
            shown = shown.saturating_add(1);
        }
        if done || args.limit.is_some_and(|limit| shown >= limit) {
            return Ok(Exit::Ok);
        }
    }
    Err(CliError {
        exit: Exit::Unavailable,
        message: format!("the consumer on {DECISIONS_STREAM} ended (connection closed?)"),
    })
}

/// Writes one line and flushes it. `false` when the reader went away (`aegisctl tail | head`):
/// the tail then ends quietly with exit 0.
fn emit(out: &mut dyn Write, line: &str) -> Result<bool, CliError> {
    let written = writeln!(out, "{line}").and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The record as stored when it is one line of UTF-8, else re-serialized compactly.
fn json_line(raw: &[u8], record: &Value) -> Result<String, CliError> {
    let trimmed = raw.trim_ascii();
    match std::str::from_utf8(trimmed) {
        Ok(text) if !text.contains(['\n', '\r']) => Ok(text.to_owned()),
        _ => serde_json::to_string(record)
            .map_err(|e| CliError::failure(format!("cannot serialize a record: {e}"))),
    }
}

fn text<'a>(record: &'a Value, field: &str) -> Option<&'a str> {
    record.get(field).and_then(Value::as_str)
}

/// Column widths of the table; the last column (latency) is not padded.
const COLUMNS: [(&str, usize); 9] = [
    ("TIME", 24),
    ("TENANT", 10),
    ("GATEWAY", 10),
    ("AGENT", 18),
    ("CHAIN", 24),
    ("TOOL/ACTION", 30),
    ("DECISION", 15),
    ("REASONS", 32),
    ("VERSION", 7),
];

fn join_cells(cells: &[String], last: &str) -> String {
    let mut line = String::new();
    for (cell, (_, width)) in cells.iter().zip(COLUMNS.iter()) {
        let width = *width;
        line.push_str(&format!("{:<width$}  ", truncate(cell, width)));
    }
    line.push_str(last);
    line.trim_end().to_owned()
}

/// The table's header line.
pub fn table_header() -> String {
    let cells: Vec<String> = COLUMNS.iter().map(|(h, _)| (*h).to_owned()).collect();
    join_cells(&cells, "LATENCY")
}

/// `180µs`, `2.4ms`, `1.25s`.
pub fn latency(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

fn version_cell(v: Option<&Value>) -> String {
    v.and_then(Value::as_u64)
        .map_or_else(|| "-".to_owned(), |v| format!("v{v}"))
}

/// Tenant and gateway from `aegis.decisions.<tenant>.<gateway>`.
fn subject_parts(subject: &str) -> (String, String) {
    let mut tokens = subject.split('.').skip(2);
    let tenant = tokens.next().unwrap_or("-").to_owned();
    let gateway = tokens.next().unwrap_or("-").to_owned();
    (tenant, gateway)
}

fn other_line(subject: &str, what: &str, seq: u64) -> String {
    let (tenant, gateway) = subject_parts(subject);
    let cells = ["-".to_owned(), tenant, gateway];
    let mut line = String::new();
    for (cell, (_, width)) in cells.iter().zip(COLUMNS.iter()) {
        let width = *width;
        line.push_str(&format!("{:<width$}  ", truncate(cell, width)));
    }
    line.push_str(&format!("?? {what} ({subject}, stream sequence {seq})"));
    line
}

/// One table line for a record: a decision row, a distinct `BUNDLE REJECTED` line, or a `??`
/// line for a record of another type.
pub fn table_line(subject: &str, record: &Value, seq: u64) -> String {
    let (subject_tenant, subject_gateway) = subject_parts(subject);
    let field = |name: &str| text(record, name).map(str::to_owned);
    let time = field("time").unwrap_or_else(|| "-".to_owned());
    let tenant = field("tenant").unwrap_or(subject_tenant);
    let gateway = field("gateway").unwrap_or(subject_gateway);
    match text(record, "type") {
        Some(DECISION_TYPE) => {
            let mut agent = field("agent_id").unwrap_or_else(|| "-".to_owned());
            if record.get("identity_verified").and_then(Value::as_bool) == Some(false) {
                agent.push('?');
            }
            let chain: Vec<&str> = record
                .get("call_chain")
                .and_then(Value::as_array)
                .map(|c| c.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let chain = if chain.is_empty() {
                "-".to_owned()
            } else {
                chain.join(">")
            };
            let call = match (field("tool_id"), field("action")) {
                (Some(tool), Some(action)) => format!("{tool}:{action}"),
                (Some(tool), None) => tool,
                (None, _) => "-".to_owned(),
            };
            let mut decision = field("decision").unwrap_or_else(|| "-".to_owned());
            if let Some(shadow) = record
                .get("shadow")
                .and_then(|s| s.get("decision"))
                .and_then(Value::as_str)
                .filter(|s| Some(*s) != text(record, "decision"))
            {
                decision.push_str(&format!(" ({shadow})"));
            }
            let reasons: Vec<&str> = record
                .get("reasons")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(|r| r.get("code").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            let reasons = if reasons.is_empty() {
                "-".to_owned()
            } else {
                reasons.join(",")
            };
            let latency_cell = record
                .get("latency_us")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".to_owned(), latency);
            join_cells(
                &[
                    time,
                    tenant,
                    gateway,
                    agent,
                    chain,
                    call,
                    decision,
                    reasons,
                    version_cell(record.get("policy_version")),
                ],
                &latency_cell,
            )
        }
        Some(BUNDLE_REJECTED_TYPE) => {
            let digest = field("digest").unwrap_or_else(|| "-".to_owned());
            let kept = match record.get("kept_version").and_then(Value::as_u64) {
                Some(v) => format!("kept v{v}"),
                None => "kept none".to_owned(),
            };
            let rest = format!(
                "BUNDLE REJECTED {} {}: {}: {} ({kept})",
                version_cell(record.get("version")),
                truncate(&digest, 20),
                field("reason_code").unwrap_or_else(|| "-".to_owned()),
                field("reason").unwrap_or_default(),
            );
            let mut line = String::new();
            for (cell, (_, width)) in [time, tenant, gateway].iter().zip(COLUMNS.iter()) {
                let width = *width;
                line.push_str(&format!("{:<width$}  ", truncate(cell, width)));
            }
            line.push_str(&rest);
            line
        }
        other => {
            let what = match other {
                Some(kind) => format!("record of unknown type {kind:?}"),
                None => "record without a type".to_owned(),
            };
            other_line(subject, &what, seq)
        }
    }
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
    use serde_json::json;

    fn decision(agent: &str, tool: &str, decision: &str) -> Value {
        json!({
            "id": "dec-1", "type": "decision", "schema_version": 1,
            "time": "2026-11-26T10:00:00.123Z", "tenant": "acme", "gateway": "gw1",
            "identity_verified": true, "agent_id": agent, "call_chain": ["user-portal", "planner"],
            "tool_id": tool, "action": "create_payment", "params": {}, "params_digest": "sha256:00",
            "context": {}, "decision": decision,
            "reasons": [{"code": "over_limit", "message": "m", "policy": null, "rule": null}],
            "policy": null, "rule": null, "policy_version": 3, "bundle_digest": null,
            "approval_id": null, "latency_us": 2400, "rollout_stage": "global",
            "trace_id": null, "span_id": null
        })
    }

    fn rejected() -> Value {
        json!({
            "id": "rej-1", "type": "bundle_rejected", "schema_version": 1,
            "time": "2026-11-26T10:00:01.000Z", "tenant": "acme", "gateway": "gw2",
            "version": 4, "digest": "sha256:bbbb", "reason_code": "bad_signature",
            "reason": "manifest signature does not verify", "kept_version": 3
        })
    }

    #[test]
    fn filters_select_decisions() {
        let mut args = TailArgs::default();
        assert!(args.matches(&decision("finance-agent", "payments", "deny")));
        assert!(args.matches(&rejected()));
        args.decisions = vec![DecisionKind::Deny, DecisionKind::ApprovalNeeded];
        assert!(args.matches(&decision("finance-agent", "payments", "deny")));
        assert!(!args.matches(&decision("finance-agent", "payments", "allow")));
        assert!(!args.matches(&rejected()), "filters select decisions only");
        args.agents = vec!["hr-agent".parse().unwrap()];
        assert!(!args.matches(&decision("finance-agent", "payments", "deny")));
        assert!(args.matches(&decision("hr-agent", "payments", "deny")));
        args.tools = vec!["email".parse().unwrap()];
        assert!(!args.matches(&decision("hr-agent", "payments", "deny")));
        assert!(args.matches(&decision("hr-agent", "email", "deny")));
    }

    #[test]
    fn start_positions_and_filters() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut args = TailArgs::default();
        assert_eq!(args.deliver_policy(now), DeliverPolicy::New);
        args.since = Some(Duration::from_secs(600));
        assert_eq!(
            args.deliver_policy(now),
            DeliverPolicy::ByStartTime {
                start_time: OffsetDateTime::from_unix_timestamp(1_799_999_400).unwrap()
            }
        );
        args.from_start = true;
        assert_eq!(args.deliver_policy(now), DeliverPolicy::All);
        assert_eq!(args.filters().unwrap(), ["aegis.decisions.>"]);
        args.tenants = vec![
            "acme".parse().unwrap(),
            "globex".parse().unwrap(),
            "acme".parse().unwrap(),
        ];
        assert_eq!(
            args.filters().unwrap(),
            ["aegis.decisions.acme.>", "aegis.decisions.globex.>"]
        );
        assert_eq!(args.effective_format(true), TailFormat::Table);
        assert_eq!(args.effective_format(false), TailFormat::Json);
        args.format = Some(TailFormat::Json);
        assert_eq!(args.effective_format(true), TailFormat::Json);
    }

    #[test]
    fn table_lines() {
        let header = table_header();
        assert!(header.starts_with("TIME "), "{header}");
        assert!(header.ends_with("VERSION  LATENCY"), "{header}");
        let line = table_line(
            "aegis.decisions.acme.gw1",
            &decision("finance-agent", "payments", "deny"),
            7,
        );
        for part in [
            "2026-11-26T10:00:00.123Z",
            "finance-agent ",
            "user-portal>planner",
            "payments:create_payment",
            "deny",
            "over_limit",
            "v3",
            "2.4ms",
        ] {
            assert!(line.contains(part), "{part:?} missing in {line}");
        }
        // Columns line up with the header.
        assert_eq!(line.find("user-portal"), header.find("CHAIN"));
        assert_eq!(line.find("2.4ms"), header.find("LATENCY"));

        let mut unverified = decision("finance-agent", "payments", "deny");
        unverified["identity_verified"] = false.into();
        unverified["shadow"] = json!({"decision": "allow", "reasons": []});
        let line = table_line("aegis.decisions.acme.gw1", &unverified, 8);
        assert!(line.contains("finance-agent?"), "{line}");
        assert!(line.contains("deny (allow)"), "{line}");

        let line = table_line("aegis.decisions.acme.gw2", &rejected(), 9);
        assert!(
            line.contains(
                "BUNDLE REJECTED v4 sha256:bbbb: bad_signature: manifest signature does not verify (kept v3)"
            ),
            "{line}"
        );
        let line = table_line("aegis.decisions.acme.gw3", &json!({"type": "mystery"}), 10);
        assert!(line.contains("gw3"), "{line}");
        assert!(
            line.contains("?? record of unknown type \"mystery\""),
            "{line}"
        );
        assert_eq!(latency(180), "180µs");
        assert_eq!(latency(1_250_000), "1.25s");
    }

    #[test]
    fn json_lines_are_the_stored_bytes() {
        let raw = br#"{"b":1,"a":2}"#;
        let line = json_line(raw, &serde_json::from_slice(raw).unwrap()).unwrap();
        assert_eq!(line, r#"{"b":1,"a":2}"#);
        let pretty = b"{\n  \"a\": 2\n}\n";
        let line = json_line(pretty, &serde_json::from_slice(pretty).unwrap()).unwrap();
        assert_eq!(line, r#"{"a":2}"#);
    }
}
