//! `aegisctl approvals list|grant|deny`: runtime approval requests from gateways.
//!
//! A gateway that answers `approval_needed` publishes an
//! [`ApprovalRequested`] on `aegis.approvals.<tenant>.<approval_id>` (stream
//! `AEGIS_APPROVALS`). An approver grants or denies it with a signed
//! `runtime_approval_granted` / `runtime_approval_denied` on
//! `aegis.changes.<tenant>.approval.<approval_id>`; the control plane checks the role and relays
//! the decision to gateways as a signed `runtime_approval_decided` on the approval's subject; a
//! gateway that lets the granted call through appends an [`ApprovalConsumed`].
//!
//! `list` reads the tenant's approval subjects with an ordered push consumer from the start
//! (what tenant-operator credentials allow) until it has caught up, and folds each subject's
//! messages into one [`Approval`] with its [`ApprovalState`]. `grant` and `deny` read the one
//! subject, refuse anything but a pending request, show what is being decided, and publish the
//! signed event like every other change event. Decisions are read as stored (the control
//! plane's signature is not checked here: gateways check it before they honour a grant).

use super::render::{Table, truncate};
use super::tail::{ConsumeError, ordered};
use super::{Client, outcome_exit, outcome_line};
use crate::duration::parse_duration;
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::approvals::{ApprovalConsumed, ApprovalMessage, ApprovalRequested};
use aegis_core::events::envelope::{format_time, parse_time};
use aegis_core::events::{
    Event, RuntimeApprovalDecided, RuntimeApprovalDenied, RuntimeApprovalGranted,
};
use aegis_core::ids::TenantId;
use aegis_core::keys::KeyId;
use aegis_core::query::EventRecord;
use aegis_nats::topology::{self, APPROVALS_STREAM};
use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::Ordered;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;
use time::OffsetDateTime;

/// How long reading the approvals stream may go without a message before it counts as stalled.
const READ_IDLE: Duration = Duration::from_secs(10);

/// Options for [`list`]; also the `aegisctl approvals list` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListArgs {
    /// Every approval (pending, granted, denied, used, expired), not only the pending ones
    #[arg(long)]
    pub all: bool,
    /// Print JSON lines: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for [`grant`]; also the `aegisctl approvals grant` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct GrantArgs {
    /// The approval id from the gateway's `approval_needed` answer (`apr-…`)
    #[arg(value_name = "APPROVAL_ID")]
    pub approval_id: String,
    /// How long the grant stays usable (once) before it lapses, e.g. 15m, 2h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "15m")]
    pub ttl: Duration,
    /// A note for the record (shown to auditors)
    #[arg(long)]
    pub comment: Option<String>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for [`deny`]; also the `aegisctl approvals deny` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DenyArgs {
    /// The approval id from the gateway's `approval_needed` answer (`apr-…`)
    #[arg(value_name = "APPROVAL_ID")]
    pub approval_id: String,
    #[arg(long)]
    pub reason: String,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Where one approval stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Requested, undecided, not expired.
    Pending,
    /// Granted, not used yet, the grant not expired.
    Granted,
    /// An approver turned it down.
    Denied,
    /// A gateway let the granted call through (a grant is good for one call).
    Used,
    /// Undecided past the request's `expires_at`, or granted and unused past the grant's.
    /// An expiry that cannot be read counts as passed.
    Expired,
    /// Nothing readable on the subject says what it is.
    Unreadable,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Granted => "granted",
            ApprovalState::Denied => "denied",
            ApprovalState::Used => "used",
            ApprovalState::Expired => "expired",
            ApprovalState::Unreadable => "unreadable",
        }
    }
}

/// The control plane's relay of a decision, with who signed the envelope.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    #[serde(flatten)]
    pub decided: RuntimeApprovalDecided,
    /// The envelope's id and signing key (the control plane's; not verified here).
    pub envelope_id: String,
    pub signed_by: KeyId,
    /// Stream sequence in `AEGIS_APPROVALS`.
    pub seq: u64,
}

/// Everything on one approval subject, folded.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub approval_id: String,
    pub state: ApprovalState,
    /// The gateway's request (None when the subject holds no readable request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<ApprovalRequested>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumed: Option<ApprovalConsumed>,
    /// Messages on the subject that were unreadable or did not fit (ignored for the state).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Approval {
    fn new(approval_id: &str) -> Approval {
        Approval {
            approval_id: approval_id.to_owned(),
            state: ApprovalState::Unreadable,
            request: None,
            decision: None,
            consumed: None,
            problems: Vec::new(),
        }
    }

    /// Takes one message of the subject, in stream order; what does not fit is noted in
    /// [`Approval::problems`] and otherwise ignored.
    fn apply(&mut self, tenant: &TenantId, seq: u64, payload: &[u8]) {
        if let Err(problem) = self.take(tenant, seq, payload) {
            self.problems.push(format!("seq {seq}: {problem}"));
        }
    }

    fn take(&mut self, tenant: &TenantId, seq: u64, payload: &[u8]) -> Result<(), String> {
        let id = self.approval_id.as_str();
        match ApprovalMessage::parse(payload).map_err(|e| format!("unreadable: {e}"))? {
            ApprovalMessage::Requested(r) => {
                if &r.tenant != tenant || r.approval_id != id {
                    return Err(format!(
                        "a request for {} in tenant {} on this subject; ignored",
                        r.approval_id, r.tenant
                    ));
                }
                if self.request.is_some() {
                    return Err("a second request; ignored".to_owned());
                }
                // (Cloned out through a reference: newer cores box the request.)
                self.request = Some(ApprovalRequested::clone(&r));
            }
            ApprovalMessage::Decided(envelope, d) => {
                let env = &envelope.envelope;
                if &env.tenant != tenant || d.approval_id != id {
                    return Err(format!(
                        "a decision for {} in tenant {} on this subject; ignored",
                        d.approval_id, env.tenant
                    ));
                }
                if self
                    .request
                    .as_ref()
                    .is_some_and(|r| r.call_digest != d.call_digest)
                {
                    return Err(format!(
                        "a decision for another call ({}); ignored",
                        d.call_digest
                    ));
                }
                if self.decision.is_some() {
                    return Err("a second decision; ignored".to_owned());
                }
                self.decision = Some(Decision {
                    envelope_id: env.id.to_string(),
                    signed_by: env.key_id.clone(),
                    decided: d,
                    seq,
                });
            }
            ApprovalMessage::Consumed(c) => {
                if &c.tenant != tenant || c.approval_id != id {
                    return Err(format!(
                        "a use of {} in tenant {} on this subject; ignored",
                        c.approval_id, c.tenant
                    ));
                }
                if !self.decision.as_ref().is_some_and(|d| d.decided.granted) {
                    return Err("a use without a grant before it; ignored".to_owned());
                }
                if self.consumed.is_some() {
                    return Err("a second use; ignored".to_owned());
                }
                self.consumed = Some(c);
            }
        }
        Ok(())
    }

    /// The state at `now` (see [`ApprovalState`]).
    pub fn state_at(&self, now: OffsetDateTime) -> ApprovalState {
        if self.consumed.is_some() {
            return ApprovalState::Used;
        }
        match (&self.decision, &self.request) {
            (Some(d), _) if !d.decided.granted => ApprovalState::Denied,
            (Some(d), _) => {
                if passed(d.decided.expires_at.as_deref(), now) {
                    ApprovalState::Expired
                } else {
                    ApprovalState::Granted
                }
            }
            (None, Some(r)) => {
                if passed(Some(&r.expires_at), now) {
                    ApprovalState::Expired
                } else {
                    ApprovalState::Pending
                }
            }
            (None, None) => ApprovalState::Unreadable,
        }
    }

    /// The expiry that matters now: the grant's once granted, else the request's.
    pub fn expires_at(&self) -> Option<&str> {
        match &self.decision {
            Some(d) if d.decided.granted => d.decided.expires_at.as_deref(),
            _ => self.request.as_ref().map(|r| r.expires_at.as_str()),
        }
    }
}

/// Whether `expires_at` is at or before `now`; a missing or unreadable time counts as passed
/// (an approval is never shown as usable on a time nobody can read).
fn passed(expires_at: Option<&str>, now: OffsetDateTime) -> bool {
    match expires_at.map(parse_time) {
        Some(Ok(t)) => t <= now,
        _ => true,
    }
}

/// Folds a tenant's approval messages, `(subject, stream sequence, payload)` in stream order,
/// into one [`Approval`] per approval id (sorted by request time, then id), with states at
/// `now`. Messages on subjects that are not `aegis.approvals.<tenant>.<id>` are skipped.
pub fn fold<'a>(
    tenant: &TenantId,
    messages: impl IntoIterator<Item = (&'a str, u64, &'a [u8])>,
    now: OffsetDateTime,
) -> Vec<Approval> {
    let prefix = format!("{}.{}.", topology::APPROVALS_PREFIX, tenant.as_str());
    let mut by_id: BTreeMap<String, Approval> = BTreeMap::new();
    for (subject, seq, payload) in messages {
        let Some(id) = subject.strip_prefix(&prefix) else {
            continue;
        };
        if id.is_empty() || id.contains('.') {
            continue;
        }
        by_id
            .entry(id.to_owned())
            .or_insert_with(|| Approval::new(id))
            .apply(tenant, seq, payload);
    }
    let mut all: Vec<Approval> = by_id
        .into_values()
        .map(|mut a| {
            a.state = a.state_at(now);
            a
        })
        .collect();
    all.sort_by(|a, b| {
        let at = |x: &Approval| x.request.as_ref().map(|r| r.requested_at.clone());
        at(a)
            .cmp(&at(b))
            .then_with(|| a.approval_id.cmp(&b.approval_id))
    });
    all
}

/// Why reading approvals failed.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalsError {
    #[error("{0}")]
    Consume(#[from] ConsumeError),
    #[error("reading {filter} stalled: {got} of {pending} messages after {idle:?} without one")]
    Stalled {
        filter: String,
        got: u64,
        pending: u64,
        idle: Duration,
    },
    #[error("reading {filter} failed: {detail}")]
    Read { filter: String, detail: String },
}

impl From<ApprovalsError> for CliError {
    fn from(e: ApprovalsError) -> CliError {
        match e {
            ApprovalsError::Consume(c) => c.into(),
            ApprovalsError::Stalled { .. } => CliError {
                exit: Exit::Unavailable,
                message: e.to_string(),
            },
            ApprovalsError::Read { .. } => CliError::failure(e.to_string()),
        }
    }
}

/// Every message on `filter` in `AEGIS_APPROVALS` that is there when it starts, as
/// `(subject, stream sequence, payload)`, read with an ordered push consumer from the start.
pub async fn read(
    js: &jetstream::Context,
    filter: &str,
) -> Result<Vec<(String, u64, Vec<u8>)>, ApprovalsError> {
    let (messages, pending) = ordered(
        js,
        APPROVALS_STREAM,
        filter,
        DeliverPolicy::All,
        "aegisctl-approvals",
    )
    .await?;
    drain(messages, pending, filter).await
}

async fn drain(
    messages: Ordered,
    pending: u64,
    filter: &str,
) -> Result<Vec<(String, u64, Vec<u8>)>, ApprovalsError> {
    let mut out = Vec::new();
    if pending == 0 {
        return Ok(out);
    }
    let read = |detail: String| ApprovalsError::Read {
        filter: filter.to_owned(),
        detail,
    };
    let mut messages = Box::pin(messages);
    loop {
        let message = match tokio::time::timeout(READ_IDLE, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(read(e.to_string())),
            Ok(None) => return Err(read("the consumer ended".to_owned())),
            Err(_) => {
                return Err(ApprovalsError::Stalled {
                    filter: filter.to_owned(),
                    got: out.len() as u64,
                    pending,
                    idle: READ_IDLE,
                });
            }
        };
        let info = message
            .info()
            .map_err(|e| read(format!("message without JetStream info: {e}")))?;
        let (seq, left) = (info.stream_sequence, info.pending);
        out.push((message.subject.to_string(), seq, message.payload.to_vec()));
        if left == 0 {
            return Ok(out);
        }
    }
}

/// The tenant's approvals, folded at `now`.
pub async fn read_approvals(
    js: &jetstream::Context,
    tenant: &TenantId,
    now: OffsetDateTime,
) -> Result<Vec<Approval>, CliError> {
    let filter =
        topology::approvals_filter(tenant).map_err(|e| CliError::invalid(e.to_string()))?;
    let messages = read(js, &filter).await?;
    Ok(fold(
        tenant,
        messages
            .iter()
            .map(|(s, seq, p)| (s.as_str(), *seq, p.as_slice())),
        now,
    ))
}

/// One approval, folded at `now`: None when its subject holds nothing.
pub async fn read_approval(
    js: &jetstream::Context,
    tenant: &TenantId,
    approval_id: &str,
    now: OffsetDateTime,
) -> Result<Option<Approval>, CliError> {
    let subject = approval_subject(tenant, approval_id)?;
    let messages = read(js, &subject).await?;
    Ok(fold(
        tenant,
        messages
            .iter()
            .map(|(s, seq, p)| (s.as_str(), *seq, p.as_slice())),
        now,
    )
    .into_iter()
    .next())
}

/// `aegis.approvals.<tenant>.<approval_id>`, or exit 2 when the id cannot be a subject token.
fn approval_subject(tenant: &TenantId, approval_id: &str) -> Result<String, CliError> {
    topology::approvals_subject(tenant, approval_id).map_err(|e| {
        CliError::invalid(format!(
            "{approval_id:?} is not an approval id (apr-…, from the gateway's approval_needed answer): {e}"
        ))
    })
}

/// `aegisctl approvals list`: pending approvals (every one with `--all`), as a table or JSON
/// lines.
pub async fn list(client: &Client, args: &ListArgs, out: &mut dyn Write) -> CliResult {
    let now = OffsetDateTime::now_utc();
    let approvals = read_approvals(client.jetstream(), client.tenant(), now).await?;
    let shown: Vec<&Approval> = approvals
        .iter()
        .filter(|a| args.all || a.state == ApprovalState::Pending)
        .collect();
    if args.json {
        for a in shown {
            let line = serde_json::to_string(a)
                .map_err(|e| CliError::failure(format!("cannot encode {}: {e}", a.approval_id)))?;
            writeln!(out, "{line}")?;
        }
        return Ok(Exit::Ok);
    }
    if shown.is_empty() {
        writeln!(
            out,
            "no {}approvals in tenant {}",
            if args.all { "" } else { "pending " },
            client.tenant()
        )?;
        return Ok(Exit::Ok);
    }
    write_table(&shown, out)?;
    for a in &shown {
        for p in &a.problems {
            writeln!(out, "note: {}: {p}", a.approval_id)?;
        }
    }
    Ok(Exit::Ok)
}

/// The table [`list`] prints.
pub fn write_table(approvals: &[&Approval], out: &mut dyn Write) -> std::io::Result<()> {
    let mut table = Table::new(&[
        "approval",
        "agent",
        "tool/action",
        "params",
        "reason",
        "state",
        "requested_at",
        "expires",
    ]);
    for a in approvals {
        let (agent, tool, params, reason, requested) = match &a.request {
            Some(r) => (
                agent_cell(r),
                format!("{}/{}", r.tool_id, r.action),
                truncate(&params_cell(&r.params), 40),
                truncate(&reasons_cell(r), 40),
                r.requested_at.clone(),
            ),
            None => (
                "(no request)".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ),
        };
        table.row(vec![
            a.approval_id.clone(),
            agent,
            tool,
            params,
            reason,
            a.state.as_str().to_owned(),
            requested,
            a.expires_at().unwrap_or("-").to_owned(),
        ]);
    }
    table.write(out)
}

/// `finance-agent`, or `finance-agent via user-portal>planner` (the chain in call order).
fn agent_cell(r: &ApprovalRequested) -> String {
    if r.call_chain.is_empty() {
        return r.agent_id.to_string();
    }
    let chain: Vec<&str> = r.call_chain.iter().map(|a| a.as_str()).collect();
    format!("{} via {}", r.agent_id, chain.join(">"))
}

/// `amount=6000 currency=USD`: scalar values bare, others as compact JSON.
fn params_cell(params: &serde_json::Map<String, Value>) -> String {
    if params.is_empty() {
        return "-".to_owned();
    }
    params
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The reasons' codes, or `-`.
fn reasons_cell(r: &ApprovalRequested) -> String {
    if r.reasons.is_empty() {
        return "-".to_owned();
    }
    r.reasons
        .iter()
        .map(|x| x.code.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The request in full, for the approver to read before the decision goes out.
pub fn write_request(a: &Approval, tenant: &TenantId, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "approval:  {} (tenant {tenant})", a.approval_id)?;
    let Some(r) = &a.request else {
        return Ok(());
    };
    writeln!(out, "agent:     {}", r.agent_id)?;
    if !r.call_chain.is_empty() {
        let chain: Vec<&str> = r.call_chain.iter().map(|a| a.as_str()).collect();
        writeln!(
            out,
            "chain:     {} (origin first, direct caller last)",
            chain.join(" > ")
        )?;
    }
    writeln!(out, "tool:      {}", r.tool_id)?;
    writeln!(out, "action:    {}", r.action)?;
    writeln!(out, "params:    {}", Value::Object(r.params.clone()))?;
    if !r.masked_params.is_empty() {
        writeln!(out, "masked:    {}", r.masked_params.join(", "))?;
    }
    for reason in &r.reasons {
        writeln!(out, "reason:    {}: {}", reason.code, reason.message)?;
    }
    let rule = [
        r.rule.as_ref().map(|x| format!("rule {x}")),
        r.policy_version.map(|v| format!("version {v}")),
    ];
    let rule: Vec<String> = rule.into_iter().flatten().collect();
    match (&r.policy, rule.is_empty()) {
        (Some(p), true) => writeln!(out, "policy:    {p}")?,
        (Some(p), false) => writeln!(out, "policy:    {p} ({})", rule.join(", "))?,
        (None, false) => writeln!(out, "policy:    ({})", rule.join(", "))?,
        (None, true) => {}
    }
    writeln!(out, "gateway:   {} (decision {})", r.gateway, r.decision_id)?;
    writeln!(out, "requested: {}", r.requested_at)?;
    writeln!(out, "expires:   {}", r.expires_at)?;
    writeln!(out, "call:      {}", r.call_digest)?;
    Ok(())
}

/// What [`grant`] and [`deny`] print with `--json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    approval: &'a Approval,
    event: &'a EventRecord,
    /// The control plane's `runtime_approval_decided` reached the approval subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    relayed_seq: Option<u64>,
}

/// The request for `approval_id`, still pending at `now`; otherwise an error that says where
/// it stands (exit 1).
async fn pending_request(
    client: &Client,
    approval_id: &str,
    now: OffsetDateTime,
) -> Result<(Approval, ApprovalRequested), CliError> {
    let tenant = client.tenant();
    let approval = read_approval(client.jetstream(), tenant, approval_id, now).await?;
    let Some(approval) = approval else {
        return Err(CliError::failure(format!(
            "no approval request {approval_id} in tenant {tenant}"
        )));
    };
    let Some(request) = approval.request.clone() else {
        return Err(CliError::failure(format!(
            "no approval request {approval_id} in tenant {tenant} (the subject holds {} other \
             message(s){})",
            approval.problems.len()
                + usize::from(approval.decision.is_some())
                + usize::from(approval.consumed.is_some()),
            approval
                .problems
                .first()
                .map(|p| format!(": {p}"))
                .unwrap_or_default()
        )));
    };
    let why = match approval.state {
        ApprovalState::Pending => return Ok((approval, request)),
        ApprovalState::Granted => {
            let d = approval.decision.as_ref().map(|d| &d.decided);
            format!(
                "was already granted by {} at {} (usable once until {})",
                d.map_or("?".to_owned(), |d| d.by.to_string()),
                d.map_or("?", |d| d.at.as_str()),
                approval.expires_at().unwrap_or("?")
            )
        }
        ApprovalState::Denied => {
            let d = approval.decision.as_ref().map(|d| &d.decided);
            format!(
                "was already denied by {} at {}{}",
                d.map_or("?".to_owned(), |d| d.by.to_string()),
                d.map_or("?", |d| d.at.as_str()),
                d.and_then(|d| d.note.as_ref())
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            )
        }
        ApprovalState::Used => {
            let c = approval.consumed.as_ref();
            format!(
                "was granted and already used by gateway {} at {}",
                c.map_or("?", |c| c.gateway.as_str()),
                c.map_or("?", |c| c.at.as_str())
            )
        }
        ApprovalState::Expired if approval.decision.is_some() => format!(
            "was granted, but the grant expired unused at {}",
            approval.expires_at().unwrap_or("?")
        ),
        ApprovalState::Expired => format!(
            "expired undecided at {}; the agent's next call gets a new approval id",
            request.expires_at
        ),
        ApprovalState::Unreadable => "cannot be read".to_owned(),
    };
    Err(CliError::failure(format!(
        "approval request {approval_id} in tenant {tenant} {why}"
    )))
}

/// Publishes `event`, waits for the control plane's verdict and, once accepted, for its relay
/// on the approval subject; prints the outcome.
async fn decide(
    client: &Client,
    approval: &Approval,
    event: Event,
    json: bool,
    out: &mut dyn Write,
) -> CliResult {
    let record = client.publish_event(event).await?;
    let exit = outcome_exit(&record.outcome);
    let relayed_seq = if exit == Exit::Ok {
        if !json {
            writeln!(out, "{}", outcome_line(&record.outcome))?;
            writeln!(
                out,
                "waiting for the control plane to relay it to gateways ..."
            )?;
            out.flush()?;
        }
        Some(wait_relayed(client, &approval.approval_id, &record.id).await?)
    } else {
        if !json {
            writeln!(out, "{}", outcome_line(&record.outcome))?;
        }
        None
    };
    if json {
        write_json(
            out,
            &Report {
                approval,
                event: &record,
                relayed_seq,
            },
        )?;
    } else if let Some(seq) = relayed_seq {
        writeln!(
            out,
            "relayed to gateways (AEGIS_APPROVALS stream sequence {seq})"
        )?;
    }
    Ok(exit)
}

/// Polls the last message on the approval subject (a direct get) until it is the control
/// plane's `runtime_approval_decided` for `event_id` (or a later use of it); returns its stream
/// sequence.
async fn wait_relayed(client: &Client, approval_id: &str, event_id: &str) -> Result<u64, CliError> {
    let subject = approval_subject(client.tenant(), approval_id)?;
    let js = client.jetstream();
    let subject_ref = subject.as_str();
    let seq = client
        .poll(
            format!("{event_id} was accepted, but its relay to gateways on {subject}"),
            || async move {
                let last = aegis_nats::last_message(js, APPROVALS_STREAM, subject_ref)
                    .await
                    .map_err(|e| super::ClientError::QueryFailed {
                        subject: subject_ref.to_owned(),
                        url: client.url().to_owned(),
                        detail: e.to_string(),
                    })?;
                Ok(
                    match last.map(|m| (m.sequence, ApprovalMessage::parse(&m.payload))) {
                        Some((seq, Ok(ApprovalMessage::Decided(_, d))))
                            if d.source_event.as_str() == event_id =>
                        {
                            super::Poll::Ready(seq)
                        }
                        Some((seq, Ok(ApprovalMessage::Consumed(_)))) => super::Poll::Ready(seq),
                        _ => super::Poll::Pending(Some(
                            "no runtime_approval_decided for it yet".to_owned(),
                        )),
                    },
                )
            },
        )
        .await?;
    Ok(seq)
}

/// `aegisctl approvals grant`: shows the pending request, then signs and publishes
/// `runtime_approval_granted` for exactly its call (its `call_digest`), usable once until now +
/// `--ttl`.
pub async fn grant(client: &Client, args: &GrantArgs, out: &mut dyn Write) -> CliResult {
    let now = OffsetDateTime::now_utc();
    if args.ttl.is_zero() {
        return Err(CliError::invalid("--ttl must be longer than 0"));
    }
    let ttl = time::Duration::try_from(args.ttl)
        .map_err(|_| CliError::invalid(format!("--ttl {:?} is too long", args.ttl)))?;
    let expires_at = now
        .checked_add(ttl)
        .ok_or_else(|| CliError::invalid(format!("--ttl {:?} is too long", args.ttl)))
        .and_then(|t| format_time(t).map_err(|e| CliError::invalid(format!("--ttl: {e}"))))?;
    let (approval, request) = pending_request(client, &args.approval_id, now).await?;
    if !args.json {
        write_request(&approval, client.tenant(), out)?;
        writeln!(out, "granting once, until {expires_at}")?;
    }
    let event = Event::RuntimeApprovalGranted(RuntimeApprovalGranted {
        approval_id: approval.approval_id.clone(),
        call_digest: request.call_digest.clone(),
        expires_at,
        comment: args.comment.clone(),
    });
    decide(client, &approval, event, args.json, out).await
}

/// `aegisctl approvals deny`: shows the pending request, then signs and publishes
/// `runtime_approval_denied`.
pub async fn deny(client: &Client, args: &DenyArgs, out: &mut dyn Write) -> CliResult {
    let now = OffsetDateTime::now_utc();
    let (approval, request) = pending_request(client, &args.approval_id, now).await?;
    if !args.json {
        write_request(&approval, client.tenant(), out)?;
        writeln!(out, "denying")?;
    }
    let event = Event::RuntimeApprovalDenied(RuntimeApprovalDenied {
        approval_id: approval.approval_id.clone(),
        call_digest: request.call_digest.clone(),
        reason: args.reason.clone(),
    });
    decide(client, &approval, event, args.json, out).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use aegis_core::approvals::{CONSUMED, REQUESTED};
    use aegis_core::decision::Reason;
    use aegis_core::events::Envelope;
    use aegis_core::ids::EventId;
    use aegis_core::keys::Keypair;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-26 10:00 UTC);

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    fn request(id: &str, requested_at: &str, expires_at: &str) -> ApprovalRequested {
        let mut params = serde_json::Map::new();
        params.insert("amount".into(), 6000.into());
        params.insert("currency".into(), "USD".into());
        ApprovalRequested {
            kind: REQUESTED.into(),
            approval_id: id.into(),
            tenant: acme(),
            gateway: "gw1".into(),
            decision_id: format!("dec-{id}"),
            agent_id: "finance-agent".parse().unwrap(),
            call_chain: vec!["user-portal".parse().unwrap(), "planner".parse().unwrap()],
            tool_id: "payments".parse().unwrap(),
            action: "create_payment".into(),
            params,
            masked_params: vec![],
            call_digest: format!("sha256:{}", "d".repeat(64)),
            reasons: vec![Reason {
                code: "approval_threshold".into(),
                message: "amount 6000 is above 5000".into(),
                policy: Some("finance-agent".into()),
                rule: Some("payments".into()),
            }],
            policy: Some("finance-agent".into()),
            rule: Some("payments".into()),
            policy_version: Some(3),
            requested_at: requested_at.into(),
            expires_at: expires_at.into(),
        }
    }

    fn decided(id: &str, granted: bool, expires_at: Option<&str>, digest: &str) -> Vec<u8> {
        let key = Keypair::from_seed(&[9; 32]);
        Envelope::sign(
            EventId::random().unwrap(),
            acme(),
            "control-plane".parse().unwrap(),
            &key,
            NOW,
            Event::RuntimeApprovalDecided(RuntimeApprovalDecided {
                approval_id: id.into(),
                call_digest: digest.into(),
                granted,
                expires_at: expires_at.map(str::to_owned),
                by: "bob".parse().unwrap(),
                at: "2026-11-26T09:58:00.000Z".into(),
                note: Some("ok".into()),
                source_event: EventId::random().unwrap(),
            }),
        )
        .unwrap()
        .to_bytes()
        .unwrap()
    }

    fn consumed(id: &str) -> Vec<u8> {
        serde_json::to_vec(&ApprovalConsumed {
            kind: CONSUMED.into(),
            approval_id: id.into(),
            tenant: acme(),
            gateway: "gw2".into(),
            decision_id: "dec-2".into(),
            call_digest: format!("sha256:{}", "d".repeat(64)),
            at: "2026-11-26T09:59:00.000Z".into(),
        })
        .unwrap()
    }

    fn subject(id: &str) -> String {
        format!("aegis.approvals.acme.{id}")
    }

    #[test]
    fn each_subject_folds_into_one_state() {
        let digest = format!("sha256:{}", "d".repeat(64));
        let later = "2026-11-26T10:30:00.000Z";
        let earlier = "2026-11-26T09:30:00.000Z";
        let req =
            |id: &str, at: &str, exp: &str| serde_json::to_vec(&request(id, at, exp)).unwrap();
        let messages: Vec<(String, Vec<u8>)> = vec![
            (
                subject("apr-pending"),
                req("apr-pending", "2026-11-26T09:50:00.000Z", later),
            ),
            (
                subject("apr-old"),
                req("apr-old", "2026-11-26T09:00:00.000Z", earlier),
            ),
            (
                subject("apr-granted"),
                req("apr-granted", "2026-11-26T09:51:00.000Z", later),
            ),
            (
                subject("apr-granted"),
                decided("apr-granted", true, Some(later), &digest),
            ),
            (
                subject("apr-lapsed"),
                req("apr-lapsed", "2026-11-26T09:52:00.000Z", later),
            ),
            (
                subject("apr-lapsed"),
                decided("apr-lapsed", true, Some(earlier), &digest),
            ),
            (
                subject("apr-denied"),
                req("apr-denied", "2026-11-26T09:53:00.000Z", later),
            ),
            (
                subject("apr-denied"),
                decided("apr-denied", false, None, &digest),
            ),
            (
                subject("apr-used"),
                req("apr-used", "2026-11-26T09:54:00.000Z", later),
            ),
            (
                subject("apr-used"),
                decided("apr-used", true, Some(later), &digest),
            ),
            (subject("apr-used"), consumed("apr-used")),
            // A second use, a decision for another call, garbage: noted, not counted.
            (subject("apr-used"), consumed("apr-used")),
            (
                subject("apr-pending"),
                decided("apr-pending", true, Some(later), "sha256:00"),
            ),
            (subject("apr-pending"), b"not json".to_vec()),
            // Another tenant's subject is not ours.
            (
                "aegis.approvals.globex.apr-x".to_owned(),
                req("apr-x", earlier, later),
            ),
        ];
        let all = fold(
            &acme(),
            messages
                .iter()
                .enumerate()
                .map(|(i, (s, p))| (s.as_str(), i as u64 + 1, p.as_slice())),
            NOW,
        );
        let states: Vec<(&str, ApprovalState)> = all
            .iter()
            .map(|a| (a.approval_id.as_str(), a.state))
            .collect();
        assert_eq!(
            states,
            [
                ("apr-old", ApprovalState::Expired),
                ("apr-pending", ApprovalState::Pending),
                ("apr-granted", ApprovalState::Granted),
                ("apr-lapsed", ApprovalState::Expired),
                ("apr-denied", ApprovalState::Denied),
                ("apr-used", ApprovalState::Used),
            ]
        );
        let pending = &all[1];
        assert_eq!(pending.problems.len(), 2, "{:?}", pending.problems);
        assert!(pending.problems[0].contains("another call"));
        assert!(pending.problems[1].contains("unreadable"));
        assert_eq!(all[5].problems.len(), 1);
        assert_eq!(all[2].expires_at(), Some(later));
        assert_eq!(all[3].expires_at(), Some(earlier));

        // The table: one row per approval, the agent with its chain, params inline.
        let mut out = Vec::new();
        write_table(&all.iter().collect::<Vec<_>>(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(lines[0].starts_with("approval"), "{text}");
        let row = lines[2];
        for cell in [
            "apr-pending",
            "finance-agent via user-portal>planner",
            "payments/create_payment",
            "amount=6000 currency=USD",
            "approval_threshold",
            "pending",
            "2026-11-26T09:50:00.000Z",
            later,
        ] {
            assert!(row.contains(cell), "{cell} missing in {row}");
        }

        // JSON carries everything.
        let json = serde_json::to_value(&all[5]).unwrap();
        assert_eq!(json["state"], "used");
        assert_eq!(json["request"]["call_digest"], digest.as_str());
        assert_eq!(json["decision"]["granted"], true);
        assert_eq!(json["decision"]["by"], "bob");
        assert_eq!(json["consumed"]["gateway"], "gw2");
    }

    #[test]
    fn an_unreadable_expiry_counts_as_passed() {
        assert!(passed(Some("soon"), NOW));
        assert!(passed(None, NOW));
        assert!(passed(Some("2026-11-26T10:00:00Z"), NOW));
        assert!(!passed(Some("2026-11-26T10:00:01Z"), NOW));
    }

    #[test]
    fn the_request_is_shown_in_full() {
        let mut a = Approval::new("apr-1");
        a.request = Some(request(
            "apr-1",
            "2026-11-26T09:50:00.000Z",
            "2026-11-26T10:50:00.000Z",
        ));
        let mut out = Vec::new();
        write_request(&a, &acme(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "approval:  apr-1 (tenant acme)",
            "agent:     finance-agent",
            "chain:     user-portal > planner",
            "tool:      payments",
            "action:    create_payment",
            r#"params:    {"amount":6000,"currency":"USD"}"#,
            "reason:    approval_threshold: amount 6000 is above 5000",
            "policy:    finance-agent (rule payments, version 3)",
            "gateway:   gw1 (decision dec-apr-1)",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
