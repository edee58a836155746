//! `aegisctl approvals list|grant|deny`: runtime approval requests from gateways.
//!
//! A gateway that answers `approval_needed` publishes an
//! [`ApprovalRequested`] on `aegis.approvals.<tenant>.<approval_id>` (stream
//! `AEGIS_APPROVALS`). An approver grants or denies it with a signed
//! `runtime_approval_granted` / `runtime_approval_denied` on
//! `aegis.changes.<tenant>.approval.<approval_id>`; the control plane checks the role and relays
//! the decision to gateways as a signed `runtime_approval_decided` on the approval's subject; a
//! gateway that lets the granted call through appends an
//! [`ApprovalConsumed`](aegis_core::approvals::ApprovalConsumed).
//!
//! `list` reads the tenant's approval subjects with an ordered push consumer from the start
//! (what tenant-operator credentials allow) until it has caught up, and folds each subject's
//! messages into one [`Approval`] with its [`ApprovalState`] — the shared fold of
//! [`aegis_core::approvals`], which the decision report (`audit export --decisions`) uses too.
//! `grant` and `deny` read the one
//! subject, refuse anything but a pending request, show what is being decided, and publish the
//! signed event like every other change event. Decisions are read as stored (the control
//! plane's signature is not checked here: gateways check it before they honour a grant).

use super::render::{Table, truncate};
use super::{Client, outcome_exit, outcome_line};
use crate::duration::parse_duration;
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::approvals::{ApprovalMessage, ApprovalRequested};
use aegis_core::events::envelope::format_time;
use aegis_core::events::{Event, RuntimeApprovalDenied, RuntimeApprovalGranted};
use aegis_core::ids::TenantId;
use aegis_core::query::EventRecord;
use aegis_nats::ordered::{ConsumeError, ordered};
use aegis_nats::topology::{self, APPROVALS_STREAM};
use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::Ordered;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
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

pub use aegis_core::approvals::{Approval, ApprovalState, Decision};

/// Folds messages read from `AEGIS_APPROVALS` (see [`read`]) with the shared fold
/// ([`aegis_core::approvals::fold`]), at `now`. Messages on subjects that are not
/// `aegis.approvals.<tenant>.<id>` are skipped.
pub fn fold(
    tenant: &TenantId,
    messages: &[(String, u64, Vec<u8>)],
    now: OffsetDateTime,
) -> Vec<Approval> {
    let by_id = messages.iter().filter_map(|(subject, seq, payload)| {
        Some((
            topology::approval_id_of(tenant, subject)?,
            *seq,
            payload.as_slice(),
        ))
    });
    aegis_core::approvals::fold(tenant, by_id, now)
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
    Ok(fold(tenant, &messages, now))
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
    Ok(fold(tenant, &messages, now).into_iter().next())
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
    use aegis_core::approvals::REQUESTED;
    use aegis_core::decision::Reason;
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

    /// Gateway-style messages as read from the stream, for `acme` and another tenant.
    fn read_messages() -> Vec<(String, u64, Vec<u8>)> {
        let later = "2026-11-26T10:30:00.000Z";
        let mut other = request("apr-x", "2026-11-26T09:40:00.000Z", later);
        other.tenant = TenantId::new("globex").unwrap();
        [
            (
                "acme.apr-pending",
                request("apr-pending", "2026-11-26T09:50:00.000Z", later),
            ),
            (
                "acme.apr-old",
                request(
                    "apr-old",
                    "2026-11-26T09:00:00.000Z",
                    "2026-11-26T09:30:00.000Z",
                ),
            ),
            ("globex.apr-x", other),
        ]
        .into_iter()
        .zip(1u64..)
        .map(|((subject, r), seq)| {
            let payload = serde_json::to_vec(&r).unwrap();
            (format!("aegis.approvals.{subject}"), seq, payload)
        })
        .collect()
    }

    #[test]
    fn the_table_has_one_row_per_approval_of_the_tenant() {
        // Only acme's subjects are folded (the shared fold's own tests cover every state).
        let all = fold(&acme(), &read_messages(), NOW);
        let ids: Vec<&str> = all.iter().map(|a| a.approval_id.as_str()).collect();
        assert_eq!(ids, ["apr-old", "apr-pending"]);

        // The table: one row per approval, the agent with its chain, params inline.
        let mut out = Vec::new();
        write_table(&all.iter().collect::<Vec<_>>(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
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
            "2026-11-26T10:30:00.000Z",
        ] {
            assert!(row.contains(cell), "{cell} missing in {row}");
        }
        assert!(lines[1].contains("expired"), "{text}");
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
