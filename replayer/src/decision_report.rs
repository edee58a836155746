//! The decision report of `aegisctl audit export --decisions`: for one tenant and a time range
//! of `AEGIS_DECISIONS`, decisions counted by agent, tool and outcome, the policy versions in
//! force, and the runtime approvals requested in the range with who decided them and which
//! decision used each grant. JSON (`schemas/decision-report.schema.json`), CSV and a
//! self-contained HTML page.
//!
//! Decisions are streamed with a [`SliceReader`] (nothing but counters is kept). Approvals are
//! folded from the tenant's messages on `aegis.approvals.<tenant>.>` (read by the caller, e.g.
//! `aegisctl`'s approvals reader) with [`fold_approvals`], which uses the one fold of approval
//! subjects that `aegisctl approvals` uses too ([`aegis_core::approvals::fold`]): the request,
//! the control plane's signed `runtime_approval_decided` (its signature checked here when a
//! trust store is given, otherwise reported `unverified`) and the gateway's
//! `approval_consumed`, with the state at the report's end (a lapsed grant reads `expired`).

use crate::html::escape;
use crate::slice::SliceSpec;
use crate::source::{Record, SliceReader, SourceError};
use aegis_core::approvals::{self, Approval, ApprovalState, Decision};
use aegis_core::decision_log::DecisionEvent;
use aegis_core::events::envelope::parse_time;
use aegis_core::ids::TenantId;
use aegis_core::keys::TrustStore;
use aegis_nats::topology;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use time::OffsetDateTime;

/// `schemas/decision-report.schema.json`.
pub const SCHEMA: &str = include_str!("../../schemas/decision-report.schema.json");

/// Label used for a decision without an agent or a tool (an unverified token, a bad request).
pub const NONE_LABEL: &str = "(none)";

/// Decisions per outcome (`allow`, `deny`, `sanitize`, `approval_needed`).
pub type Outcomes = BTreeMap<String, u64>;

/// One agent × tool × outcome cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub agent: String,
    pub tool: String,
    pub outcome: String,
    pub count: u64,
}

/// A policy version that answered decisions in the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInForce {
    /// None for decisions made without a bundle (e.g. before the first one arrived).
    pub version: Option<u64>,
    pub digest: Option<String>,
    /// Gateway time of the first and last decision it answered in the range.
    pub first_decision: String,
    pub last_decision: String,
    pub decisions: u64,
}

/// Whether the control plane's signature on a relayed approval decision was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureCheck {
    /// Checked against the trust store: good.
    Verified,
    /// No trust store was given.
    Unverified,
    /// Checked and bad, or signed by a key the trust store does not hold (or revoked).
    Invalid,
}

impl SignatureCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureCheck::Verified => "verified",
            SignatureCheck::Unverified => "unverified",
            SignatureCheck::Invalid => "invalid",
        }
    }
}

/// One runtime approval requested in the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalEntry {
    pub approval_id: String,
    pub requested_at: String,
    pub agent: String,
    pub tool: String,
    pub action: String,
    /// The decision that answered `approval_needed`.
    pub request_decision: String,
    /// At the report's end: `pending` (undecided), `granted` (unused, the grant not expired),
    /// `denied`, `used`, or `expired` (undecided past the request's expiry, or granted and
    /// unused past the grant's).
    pub state: ApprovalState,
    /// The approver (from the control plane's signed relay), when decided.
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub note: Option<String>,
    /// Whether the relay's signature was verified; None when undecided.
    pub signature: Option<SignatureCheck>,
    /// The decision the grant let through.
    pub consumed_by: Option<String>,
    pub consumed_at: Option<String>,
    /// Messages on the subject that were unreadable or did not fit.
    pub problems: Vec<String>,
}

/// The report (`schemas/decision-report.schema.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionReport {
    pub tenant: String,
    /// The requested range (RFC 3339; `until` None = up to the end of the log when read).
    pub since: String,
    pub until: Option<String>,
    /// Decisions counted.
    pub decisions: u64,
    /// Other records of the range (rejected bundles, unreadable records).
    pub skipped: u64,
    pub by_outcome: Outcomes,
    pub by_agent: BTreeMap<String, Outcomes>,
    pub by_tool: BTreeMap<String, Outcomes>,
    /// Agent × tool × outcome, sorted.
    pub cells: Vec<Cell>,
    /// Sorted by first decision.
    pub policy_versions: Vec<VersionInForce>,
    /// Sorted by request time.
    pub approvals: Vec<ApprovalEntry>,
}

/// Accumulates decisions, one at a time.
#[derive(Debug, Default)]
pub struct Counter {
    decisions: u64,
    skipped: u64,
    by_outcome: Outcomes,
    by_agent: BTreeMap<String, Outcomes>,
    by_tool: BTreeMap<String, Outcomes>,
    cells: BTreeMap<(String, String, String), u64>,
    versions: BTreeMap<(Option<u64>, Option<String>), VersionInForce>,
}

fn bump(map: &mut Outcomes, key: &str) {
    let n = map.entry(key.to_owned()).or_insert(0);
    *n = n.saturating_add(1);
}

impl Counter {
    pub fn new() -> Counter {
        Counter::default()
    }

    /// Counts one decision.
    pub fn add(&mut self, event: &DecisionEvent) {
        self.decisions = self.decisions.saturating_add(1);
        let outcome = event.decision.as_str();
        let agent = event
            .agent_id
            .as_ref()
            .map_or(NONE_LABEL, |a| a.as_str())
            .to_owned();
        let tool = event
            .tool_id
            .as_ref()
            .map_or(NONE_LABEL, |t| t.as_str())
            .to_owned();
        bump(&mut self.by_outcome, outcome);
        bump(self.by_agent.entry(agent.clone()).or_default(), outcome);
        bump(self.by_tool.entry(tool.clone()).or_default(), outcome);
        let n = self
            .cells
            .entry((agent, tool, outcome.to_owned()))
            .or_insert(0);
        *n = n.saturating_add(1);
        let key = (event.policy_version, event.bundle_digest.clone());
        let v = self.versions.entry(key).or_insert_with(|| VersionInForce {
            version: event.policy_version,
            digest: event.bundle_digest.clone(),
            first_decision: event.time.clone(),
            last_decision: event.time.clone(),
            decisions: 0,
        });
        v.decisions = v.decisions.saturating_add(1);
        // Times are fixed-width RFC 3339 UTC: they compare as strings.
        if event.time < v.first_decision {
            v.first_decision.clone_from(&event.time);
        }
        if event.time > v.last_decision {
            v.last_decision.clone_from(&event.time);
        }
    }

    /// Counts a record that is not a decision.
    pub fn skip(&mut self) {
        self.skipped = self.skipped.saturating_add(1);
    }

    /// The report, with `approvals` (see [`fold_approvals`]).
    pub fn finish(
        self,
        tenant: &TenantId,
        since: String,
        until: Option<String>,
        approvals: Vec<ApprovalEntry>,
    ) -> DecisionReport {
        let mut policy_versions: Vec<VersionInForce> = self.versions.into_values().collect();
        policy_versions.sort_by(|a, b| {
            a.first_decision
                .cmp(&b.first_decision)
                .then_with(|| a.version.cmp(&b.version))
        });
        DecisionReport {
            tenant: tenant.as_str().to_owned(),
            since,
            until,
            decisions: self.decisions,
            skipped: self.skipped,
            by_outcome: self.by_outcome,
            by_agent: self.by_agent,
            by_tool: self.by_tool,
            cells: self
                .cells
                .into_iter()
                .map(|((agent, tool, outcome), count)| Cell {
                    agent,
                    tool,
                    outcome,
                    count,
                })
                .collect(),
            policy_versions,
            approvals,
        }
    }
}

/// Streams the slice's decisions into a [`Counter`].
pub async fn count(
    js: &async_nats::jetstream::Context,
    spec: &SliceSpec,
) -> Result<Counter, SourceError> {
    let mut reader = SliceReader::open(js, spec).await?;
    let mut counter = Counter::new();
    while let Some(record) = reader.next().await {
        match record? {
            Record::Decision { event, .. } => counter.add(&event),
            Record::Skipped { .. } => counter.skip(),
        }
    }
    Ok(counter)
}

/// Folds a tenant's approval messages, `(subject, stream sequence, payload)` in stream order,
/// into the approvals requested within `[since, until]` (request times), with their states at
/// the report's end: `until`, or now when `until` is open or later (see
/// [`fold_approvals_at`]).
pub fn fold_approvals<'a>(
    tenant: &TenantId,
    messages: impl IntoIterator<Item = (&'a str, u64, &'a [u8])>,
    trust: Option<&TrustStore>,
    since: &str,
    until: Option<&str>,
) -> Vec<ApprovalEntry> {
    fold_approvals_at(
        tenant,
        messages,
        trust,
        since,
        until,
        OffsetDateTime::now_utc(),
    )
}

/// [`fold_approvals`] with `now` given. Each subject is folded by the shared fold
/// ([`aegis_core::approvals::fold`]: the first request, the first decision for the same call,
/// the first use after a grant; the rest is noted in `problems`) and evaluated at `until`, or
/// at `now` when that is earlier or `until` is open: a grant unused past its expiry, like a
/// request undecided past its own, is `expired`. Subjects without a request are left out.
/// With `trust`, the control plane's signature on each decision is checked.
pub fn fold_approvals_at<'a>(
    tenant: &TenantId,
    messages: impl IntoIterator<Item = (&'a str, u64, &'a [u8])>,
    trust: Option<&TrustStore>,
    since: &str,
    until: Option<&str>,
    now: OffsetDateTime,
) -> Vec<ApprovalEntry> {
    let at = until
        .and_then(|u| parse_time(u).ok())
        .map_or(now, |u| u.min(now));
    let by_id = messages.into_iter().filter_map(|(subject, seq, payload)| {
        Some((topology::approval_id_of(tenant, subject)?, seq, payload))
    });
    approvals::fold(tenant, by_id, at)
        .into_iter()
        .filter_map(|a| entry(a, trust))
        .filter(|e| in_range(&e.requested_at, since, until))
        .collect()
}

/// The report's row for a folded approval; None without a request.
fn entry(a: Approval, trust: Option<&TrustStore>) -> Option<ApprovalEntry> {
    let r = a.request?;
    let d = a.decision.as_ref();
    Some(ApprovalEntry {
        approval_id: a.approval_id,
        requested_at: r.requested_at,
        agent: r.agent_id.as_str().to_owned(),
        tool: r.tool_id.as_str().to_owned(),
        action: r.action,
        request_decision: r.decision_id,
        state: a.state,
        decided_by: d.map(|d| d.decided.by.as_str().to_owned()),
        decided_at: d.map(|d| d.decided.at.clone()),
        note: d.and_then(|d| d.decided.note.clone()),
        signature: d.map(|d| signature(d, trust)),
        consumed_by: a.consumed.as_ref().map(|c| c.decision_id.clone()),
        consumed_at: a.consumed.map(|c| c.at),
        problems: a.problems,
    })
}

/// The control plane's signature on a relayed decision, against `trust`.
fn signature(d: &Decision, trust: Option<&TrustStore>) -> SignatureCheck {
    let Some(trust) = trust else {
        return SignatureCheck::Unverified;
    };
    match trust.lookup(&d.envelope.envelope.key_id) {
        Ok(key) if d.envelope.verify(key).is_ok() => SignatureCheck::Verified,
        _ => SignatureCheck::Invalid,
    }
}

fn in_range(at: &str, since: &str, until: Option<&str>) -> bool {
    let (Ok(t), Ok(s)) = (parse_time(at), parse_time(since)) else {
        return false;
    };
    let before_end = match until.map(parse_time) {
        None => true,
        Some(Ok(u)) => t <= u,
        Some(Err(_)) => false,
    };
    t >= s && before_end
}

static CHECK: crate::schema_check::EmbeddedSchema =
    crate::schema_check::EmbeddedSchema::new("decision report", SCHEMA);

/// Validates a report (as JSON) against [`SCHEMA`]; the errors, if any.
pub fn validate(report: &Value) -> Result<(), Vec<String>> {
    CHECK.validate(report)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

/// CSV: one table with a leading `section` column, so every row has the same nine columns:
/// `section,agent,tool,outcome,count,version,digest,first,last` for `decision` rows
/// (agent × tool × outcome) and `version` rows (version, digest, first/last decision, count),
/// then a blank line and the `approval` section with its own header
/// `section,approval_id,requested_at,agent,tool,action,state,decided_by,decided_at,signature,consumed_by,request_decision`.
pub fn to_csv(report: &DecisionReport) -> String {
    let mut out = String::new();
    out.push_str("section,agent,tool,outcome,count,version,digest,first,last\n");
    for c in &report.cells {
        let _ = writeln!(
            out,
            "decision,{},{},{},{},,,,",
            csv_field(&c.agent),
            csv_field(&c.tool),
            csv_field(&c.outcome),
            c.count
        );
    }
    for v in &report.policy_versions {
        let _ = writeln!(
            out,
            "version,,,,{},{},{},{},{}",
            v.decisions,
            v.version.map(|n| n.to_string()).unwrap_or_default(),
            csv_field(opt(&v.digest)),
            csv_field(&v.first_decision),
            csv_field(&v.last_decision)
        );
    }
    out.push('\n');
    out.push_str("section,approval_id,requested_at,agent,tool,action,state,decided_by,decided_at,signature,consumed_by,request_decision\n");
    for a in &report.approvals {
        let _ = writeln!(
            out,
            "approval,{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&a.approval_id),
            csv_field(&a.requested_at),
            csv_field(&a.agent),
            csv_field(&a.tool),
            csv_field(&a.action),
            a.state.as_str(),
            csv_field(opt(&a.decided_by)),
            csv_field(opt(&a.decided_at)),
            a.signature.map(SignatureCheck::as_str).unwrap_or(""),
            csv_field(opt(&a.consumed_by)),
            csv_field(&a.request_decision)
        );
    }
    out
}

const OUTCOMES: [&str; 4] = ["allow", "deny", "sanitize", "approval_needed"];

fn outcome_table(out: &mut String, title: &str, rows: &BTreeMap<String, Outcomes>) {
    let _ = write!(
        out,
        "<h2>{}</h2><table><tr><th>{}</th>",
        escape(title),
        escape(title.trim_start_matches("By ")),
    );
    for o in OUTCOMES {
        let _ = write!(out, "<th>{}</th>", escape(o));
    }
    out.push_str("<th>total</th></tr>");
    for (key, counts) in rows {
        let _ = write!(out, "<tr><td>{}</td>", escape(key));
        for o in OUTCOMES {
            let _ = write!(out, "<td>{}</td>", counts.get(o).copied().unwrap_or(0));
        }
        let total: u64 = counts.values().copied().fold(0, u64::saturating_add);
        let _ = write!(out, "<td>{total}</td></tr>");
    }
    out.push_str("</table>");
}

/// A self-contained HTML page: inline CSS, no scripts, no external resources; every value
/// from the log is escaped.
pub fn to_html(report: &DecisionReport) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = write!(
        out,
        "<title>Decision report: {}</title>",
        escape(&report.tenant)
    );
    out.push_str(
        "<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin-bottom:1.5em}\
         th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#f0f0f0}\
         .unverified{color:#a60}.invalid{color:#c00;font-weight:bold}</style></head><body>",
    );
    let _ = write!(
        out,
        "<h1>Decision report: {}</h1><p>From {} to {}: {} decisions ({} other records).</p>",
        escape(&report.tenant),
        escape(&report.since),
        escape(report.until.as_deref().unwrap_or("the end of the log")),
        report.decisions,
        report.skipped
    );
    out.push_str("<h2>By outcome</h2><table><tr><th>outcome</th><th>decisions</th></tr>");
    for (o, n) in &report.by_outcome {
        let _ = write!(out, "<tr><td>{}</td><td>{n}</td></tr>", escape(o));
    }
    out.push_str("</table>");
    outcome_table(&mut out, "By agent", &report.by_agent);
    outcome_table(&mut out, "By tool", &report.by_tool);
    out.push_str("<h2>By agent, tool and outcome</h2><table><tr><th>agent</th><th>tool</th><th>outcome</th><th>decisions</th></tr>");
    for c in &report.cells {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.agent),
            escape(&c.tool),
            escape(&c.outcome),
            c.count
        );
    }
    out.push_str("</table><h2>Policy versions in force</h2><table><tr><th>version</th><th>digest</th><th>first decision</th><th>last decision</th><th>decisions</th></tr>");
    for v in &report.policy_versions {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            v.version
                .map_or_else(|| "none".to_owned(), |n| format!("v{n}")),
            escape(opt(&v.digest)),
            escape(&v.first_decision),
            escape(&v.last_decision),
            v.decisions
        );
    }
    out.push_str("</table><h2>Runtime approvals</h2><table><tr><th>approval</th><th>requested</th><th>agent</th><th>tool</th><th>action</th><th>state</th><th>decided by</th><th>signature</th><th>used by decision</th></tr>");
    for a in &report.approvals {
        let sig = a.signature.map(SignatureCheck::as_str).unwrap_or("");
        let by = match (&a.decided_by, a.state) {
            (Some(who), ApprovalState::Denied) => format!("denied by {}", escape(who)),
            (Some(who), _) => format!("granted by {}", escape(who)),
            (None, _) => String::new(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{by}</td><td class=\"{sig}\">{sig}</td><td>{}</td></tr>",
            escape(&a.approval_id),
            escape(&a.requested_at),
            escape(&a.agent),
            escape(&a.tool),
            escape(&a.action),
            a.state.as_str(),
            escape(opt(&a.consumed_by)),
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn event(agent: &str, tool: &str, decision: &str, version: u64, time: &str) -> DecisionEvent {
        serde_json::from_value(serde_json::json!({
            "id": format!("dec-{time}"), "type": "decision", "schema_version": 1, "time": time,
            "tenant": "acme", "gateway": "gw1", "identity_verified": true,
            "agent_id": agent, "tool_id": tool, "action": "a", "params_digest": "sha256:00",
            "decision": decision, "reasons": [], "policy": null, "rule": null,
            "policy_version": version, "bundle_digest": format!("sha256:{version}"),
            "approval_id": null, "latency_us": 1, "rollout_stage": null,
            "trace_id": null, "span_id": null
        }))
        .unwrap()
    }

    fn sample() -> DecisionReport {
        let mut c = Counter::new();
        c.add(&event(
            "finance-agent",
            "payments",
            "allow",
            1,
            "2026-11-26T10:00:00.000Z",
        ));
        c.add(&event(
            "finance-agent",
            "payments",
            "allow",
            1,
            "2026-11-26T10:00:01.000Z",
        ));
        c.add(&event(
            "planner",
            "payments",
            "deny",
            2,
            "2026-11-26T10:00:02.000Z",
        ));
        c.skip();
        let approval = ApprovalEntry {
            approval_id: "apr-1".into(),
            requested_at: "2026-11-26T10:00:00.500Z".into(),
            agent: "finance-agent".into(),
            tool: "payments".into(),
            action: "<script>alert(1)</script>".into(),
            request_decision: "dec-0".into(),
            state: ApprovalState::Used,
            decided_by: Some("carol".into()),
            decided_at: Some("2026-11-26T10:00:00.700Z".into()),
            note: Some("a, \"quoted\" note".into()),
            signature: Some(SignatureCheck::Unverified),
            consumed_by: Some("dec-9".into()),
            consumed_at: Some("2026-11-26T10:00:00.900Z".into()),
            problems: vec![],
        };
        c.finish(
            &"acme".parse().unwrap(),
            "2026-11-26T09:00:00.000Z".into(),
            None,
            vec![approval],
        )
    }

    #[test]
    fn counts_versions_and_validates() {
        let r = sample();
        assert_eq!((r.decisions, r.skipped), (3, 1));
        assert_eq!(r.by_outcome["allow"], 2);
        assert_eq!(r.by_agent["planner"]["deny"], 1);
        assert_eq!(r.by_tool["payments"].values().sum::<u64>(), 3);
        assert_eq!(r.cells.len(), 2);
        assert_eq!(r.policy_versions.len(), 2);
        assert_eq!(r.policy_versions[0].version, Some(1));
        assert_eq!(r.policy_versions[0].decisions, 2);
        assert_eq!(
            r.policy_versions[0].last_decision,
            "2026-11-26T10:00:01.000Z"
        );
        let json = serde_json::to_value(&r).unwrap();
        validate(&json).unwrap();
        let mut bad = json.clone();
        bad["approvals"][0]["state"] = "maybe".into();
        assert!(validate(&bad).is_err());
        // Every state a requested approval can be in is in the schema.
        for state in ["pending", "granted", "denied", "used", "expired"] {
            let mut ok = json.clone();
            ok["approvals"][0]["state"] = state.into();
            validate(&ok).unwrap();
            let back: DecisionReport = serde_json::from_value(ok).unwrap();
            assert_eq!(back.approvals[0].state.as_str(), state);
        }
    }

    #[test]
    fn csv_has_sections_and_html_escapes() {
        let r = sample();
        let csv = to_csv(&r);
        assert!(
            csv.contains("decision,finance-agent,payments,allow,2,,,,\n"),
            "{csv}"
        );
        assert!(csv.contains("version,,,,2,1,sha256:1,"), "{csv}");
        assert!(csv.contains("approval,apr-1,"), "{csv}");
        assert!(csv.contains(",used,carol,"), "{csv}");
        let html = to_html(&r);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("granted by carol"));
        assert!(!html.contains("http"));
    }

    /// A gateway's request on its subject, as read from the stream.
    fn requested(tenant: &str, id: &str, at: &str, expires: &str) -> (String, Vec<u8>) {
        let body = format!(
            r#"{{"type":"approval_requested","approval_id":"{id}","tenant":"{tenant}","gateway":"gw1","decision_id":"dec-{id}","agent_id":"finance-agent","call_chain":[],"tool_id":"payments","action":"create_payment","params":{{}},"call_digest":"sha256:00","reasons":[],"policy":null,"rule":null,"policy_version":1,"requested_at":"{at}","expires_at":"{expires}"}}"#
        );
        (format!("aegis.approvals.{tenant}.{id}"), body.into_bytes())
    }

    #[test]
    fn approvals_are_folded_once_and_judged_at_the_end_of_the_report() {
        let messages = [
            requested(
                "acme",
                "apr-a",
                "2026-11-26T10:00:00.000Z",
                "2026-11-26T10:30:00.000Z",
            ),
            requested(
                "acme",
                "apr-b",
                "2026-11-26T10:10:00.000Z",
                "2026-11-26T11:30:00.000Z",
            ),
            ("aegis.approvals.acme.apr-b".to_owned(), b"garbage".to_vec()),
            requested(
                "acme",
                "apr-late",
                "2026-11-26T12:00:00.000Z",
                "2026-11-26T13:00:00.000Z",
            ),
            requested(
                "globex",
                "apr-g",
                "2026-11-26T10:00:00.000Z",
                "2026-11-26T10:30:00.000Z",
            ),
        ];
        let fold_until = |until: Option<&str>, now: OffsetDateTime| {
            let states: Vec<(String, ApprovalState, usize)> = fold_approvals_at(
                &"acme".parse().unwrap(),
                messages
                    .iter()
                    .zip(1u64..)
                    .map(|((s, p), seq)| (s.as_str(), seq, p.as_slice())),
                None,
                "2026-11-26T09:00:00.000Z",
                until,
                now,
            )
            .into_iter()
            .map(|e| (e.approval_id, e.state, e.problems.len()))
            .collect();
            states
        };
        let (a, b) = ("apr-a".to_owned(), "apr-b".to_owned());
        let now = time::macros::datetime!(2026-11-26 12:30 UTC);
        // At the end of the range (before now): apr-a lapsed, apr-b still pending; apr-late
        // was requested after the range, globex's is another tenant's.
        let until = Some("2026-11-26T11:00:00.000Z");
        assert_eq!(
            fold_until(until, now),
            [
                (a.clone(), ApprovalState::Expired, 0),
                (b.clone(), ApprovalState::Pending, 1)
            ]
        );
        // A range ending after now is judged now.
        let early = time::macros::datetime!(2026-11-26 10:20 UTC);
        assert_eq!(
            fold_until(until, early),
            [
                (a.clone(), ApprovalState::Pending, 0),
                (b.clone(), ApprovalState::Pending, 1)
            ]
        );
        // An open range is judged now, and holds every later request.
        let all = fold_until(None, now);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[1], (b, ApprovalState::Expired, 1));
        assert_eq!(all[2], ("apr-late".to_owned(), ApprovalState::Pending, 0));
    }

    #[test]
    fn approvals_outside_the_range_are_left_out() {
        assert!(in_range(
            "2026-11-26T10:00:00.000Z",
            "2026-11-26T09:00:00.000Z",
            Some("2026-11-26T11:00:00.000Z")
        ));
        assert!(!in_range(
            "2026-11-26T12:00:00.000Z",
            "2026-11-26T09:00:00.000Z",
            Some("2026-11-26T11:00:00.000Z")
        ));
        assert!(!in_range("garbage", "2026-11-26T09:00:00.000Z", None));
    }
}
