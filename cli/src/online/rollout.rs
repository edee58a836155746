//! `aegisctl rollout shadow|partial|global|abort|status`: staged rollout of a published version.
//!
//! Per tenant there is a stable version (what every agent outside a cohort runs) and at most one
//! candidate in `shadow` (gateways enforce the stable version, evaluate the candidate too and
//! record both results) or `partial` (the candidate is enforced for a cohort: listed agents,
//! and/or a percentage of agents hashed on the agent id; the stable version for the rest).
//! `global` makes the candidate the stable version everywhere; `abort` calls the candidate off.
//! Each is one signed change event (`rollout_stage_changed`, `rollout_aborted`) that goes
//! through the control plane's RBAC (publisher or admin) and is refused while the tenant is
//! frozen.
//!
//! `rollout status` shows the control plane's last signed `tenant_controls` state (what
//! gateways apply: stable and candidate versions with the cohort, the kill switch, the
//! data-plane freeze), read with a direct get of `aegis.bundles.<tenant>.controls`; before the
//! control plane publishes one it derives the versions from the history ([`rollout_view`]).
//! With a candidate it also shows its readiness for promotion, from the control plane's status
//! query: candidate since, the latest `rollout_readiness_measured`, the tenant's thresholds, the
//! verdict with every unmet condition, and the promotion approvals.
//!
//! Promotion (`rollout global`) by a publisher alone is accepted when the candidate meets the
//! tenant's readiness thresholds; below them another actor must first run `rollout approve`
//! (`rollout_promotion_approved`; approver, publisher or admin). `rollout readiness` measures
//! the candidate right now, client-side, from the decision stream (the same tally the control
//! plane's readiness task publishes) and prints the verdict.

use super::render::Table;
use super::{Client, submit};
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::{
    BlockEntry, DataPlaneFreeze, Event, ReadinessThresholds, ReceivedEnvelope, RolloutAborted,
    RolloutPromotionApproved, RolloutStage, RolloutStageChanged, TenantControls,
};
use aegis_core::ids::{AgentId, TenantId};
use aegis_core::keys::KeyId;
use aegis_core::query::{ReadinessView, TenantStatus, VersionView};
use aegis_core::readiness::{Counts, ReadinessEntry, Tally, Verdict, percent, verdict};
use aegis_nats::topology::{self, BUNDLES_STREAM};
use serde::Serialize;
use std::io::{self, Write};

/// Options for `rollout shadow` and `rollout global`.
#[derive(Debug, Clone, clap::Args)]
pub struct StageArgs {
    /// The published version to move
    #[arg(long, value_name = "V")]
    pub version: u64,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for `rollout partial`: the cohort is `--agents`, `--percent`, or both (an agent in
/// either gets the candidate).
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("cohort")
        .args(["agents", "percent"])
        .required(true)
        .multiple(true)
))]
pub struct PartialArgs {
    /// The published version to enforce for the cohort
    #[arg(long, value_name = "V")]
    pub version: u64,
    /// Agents that get the version (comma-separated, or repeated)
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub agents: Vec<AgentId>,
    /// Percentage of agents (0-100, hashed on the agent id) that get the version
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub percent: Option<u8>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for `rollout abort`.
#[derive(Debug, Clone, clap::Args)]
pub struct AbortArgs {
    /// The candidate version being called off (must be the current candidate)
    #[arg(long, value_name = "V")]
    pub version: u64,
    #[arg(long)]
    pub reason: String,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for `rollout status`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct StatusArgs {
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for `rollout approve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApproveArgs {
    /// The candidate version whose promotion to global you approve
    #[arg(long, value_name = "V")]
    pub version: u64,
    /// Why, for the record
    #[arg(long)]
    pub comment: Option<String>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

impl super::CommandArgs for ApproveArgs {
    fn set_json(&mut self, json: bool) {
        self.json = json;
    }
}

/// Options for `rollout readiness`.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ReadinessArgs {
    /// The version to measure (default: the current candidate)
    #[arg(long, value_name = "V")]
    pub version: Option<u64>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

impl super::CommandArgs for ReadinessArgs {
    fn set_json(&mut self, json: bool) {
        self.json = json;
    }
}

/// The `rollout_stage_changed` event for `stage`.
pub fn stage_event(
    version: u64,
    stage: RolloutStage,
    agents: Vec<AgentId>,
    percent: Option<u8>,
) -> Event {
    Event::RolloutStageChanged(RolloutStageChanged {
        version,
        stage,
        agents,
        percent,
    })
}

/// `rollout shadow`: gateways keep enforcing the stable version and evaluate `--version` too.
pub async fn shadow(client: &Client, args: &StageArgs, out: &mut dyn Write) -> CliResult {
    let event = stage_event(args.version, RolloutStage::Shadow, Vec::new(), None);
    submit(client, event, args.json, out).await
}

/// `rollout partial`: `--version` is enforced for the cohort.
pub async fn partial(client: &Client, args: &PartialArgs, out: &mut dyn Write) -> CliResult {
    let event = stage_event(
        args.version,
        RolloutStage::Partial,
        args.agents.clone(),
        args.percent,
    );
    submit(client, event, args.json, out).await
}

/// `rollout global`: `--version` becomes the stable version everywhere.
pub async fn global(client: &Client, args: &StageArgs, out: &mut dyn Write) -> CliResult {
    let event = stage_event(args.version, RolloutStage::Global, Vec::new(), None);
    submit(client, event, args.json, out).await
}

/// `rollout approve`: approve promoting the candidate `--version` below the thresholds.
pub async fn approve(client: &Client, args: &ApproveArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::RolloutPromotionApproved(RolloutPromotionApproved {
        version: args.version,
        comment: args.comment.clone(),
    });
    submit(client, event, args.json, out).await
}

/// `rollout abort`: every agent back on the stable version.
pub async fn abort(client: &Client, args: &AbortArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::RolloutAborted(RolloutAborted {
        version: args.version,
        reason: args.reason.clone(),
    });
    submit(client, event, args.json, out).await
}

/// A version in [`RolloutView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutVersion {
    pub version: u64,
    pub digest: String,
    pub stage: RolloutStage,
    /// For `partial`: agents that get the candidate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentId>,
    /// For `partial`: percentage of agents that get the candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

/// Where a [`RolloutView`] comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ViewSource {
    /// The control plane's last `tenant_controls` on `aegis.bundles.<tenant>.controls`: what
    /// gateways apply. Read as stored; gateways check its signature.
    TenantControls { epoch: u64, signed_by: KeyId },
    /// The version history (no `tenant_controls` published yet): the cohort is unknown and an
    /// aborted candidate still shows; blocks and the data-plane freeze are not known.
    History,
}

/// The tenant's rollout as `rollout status` shows it, with the kill switch and the data-plane
/// freeze when the source has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    pub tenant: TenantId,
    /// What every agent outside a cohort runs. None before the first global version.
    pub stable: Option<RolloutVersion>,
    pub candidate: Option<RolloutVersion>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked_agents: Vec<BlockEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked_tools: Vec<BlockEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_plane_frozen: Option<DataPlaneFreeze>,
    pub source: ViewSource,
    /// Why the `tenant_controls` message could not be used, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The candidate's readiness for promotion (from the control plane's status query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessView>,
}

impl RolloutView {
    /// The view of a `tenant_controls` state.
    pub fn from_controls(
        tenant: TenantId,
        controls: &TenantControls,
        signed_by: KeyId,
    ) -> RolloutView {
        RolloutView {
            tenant,
            stable: controls.stable.as_ref().map(|b| RolloutVersion {
                version: b.version,
                digest: b.digest.clone(),
                stage: RolloutStage::Global,
                agents: Vec::new(),
                percent: None,
            }),
            candidate: controls.candidate.as_ref().map(|c| RolloutVersion {
                version: c.bundle.version,
                digest: c.bundle.digest.clone(),
                stage: c.stage,
                agents: c.agents.clone(),
                percent: c.percent,
            }),
            blocked_agents: controls.blocked_agents.clone(),
            blocked_tools: controls.blocked_tools.clone(),
            data_plane_frozen: controls.data_plane_frozen.clone(),
            source: ViewSource::TenantControls {
                epoch: controls.epoch,
                signed_by,
            },
            note: None,
            readiness: None,
        }
    }
}

fn from_version(v: &VersionView) -> RolloutVersion {
    RolloutVersion {
        version: v.version,
        digest: v.digest.clone(),
        stage: v.stage,
        agents: Vec::new(),
        percent: None,
    }
}

/// The tenant's stable version and candidate from the version history alone, for a control
/// plane that publishes no `tenant_controls` yet: the stable version is the newest `global`
/// one, the candidate the newest `shadow`/`partial` version above it — without its cohort, and
/// still shown after `rollout abort`.
///
/// EXTEND (issue 5): the control plane's status query is getting the rollout in
/// `core/src/query.rs`; once `TenantStatus` carries it, read it from `status` here instead.
pub fn rollout_view(status: &TenantStatus, history: &[VersionView]) -> RolloutView {
    let stable = history
        .iter()
        .filter(|v| v.stage == RolloutStage::Global)
        .max_by_key(|v| v.version);
    let above = stable.map_or(0, |v| v.version);
    let candidate = history
        .iter()
        .filter(|v| v.version > above && v.stage != RolloutStage::Global)
        .max_by_key(|v| v.version);
    RolloutView {
        tenant: status.tenant.clone(),
        stable: stable.map(from_version),
        candidate: candidate.map(from_version),
        blocked_agents: Vec::new(),
        blocked_tools: Vec::new(),
        data_plane_frozen: None,
        source: ViewSource::History,
        note: None,
        readiness: status.readiness.clone(),
    }
}

/// The last `tenant_controls` of `tenant` (a direct get of `aegis.bundles.<tenant>.controls`),
/// with the key that signed it: Ok(None) when there is none, Err(why) when it cannot be used.
pub async fn read_controls(client: &Client) -> Result<Option<(TenantControls, KeyId)>, String> {
    let tenant = client.tenant();
    let subject = topology::controls_subject(tenant).map_err(|e| e.to_string())?;
    let last = aegis_nats::last_message(client.jetstream(), BUNDLES_STREAM, &subject)
        .await
        .map_err(|e| e.to_string())?;
    let Some(last) = last else {
        return Ok(None);
    };
    let received = ReceivedEnvelope::parse(&last.payload)
        .map_err(|e| format!("the last message on {subject} is not a readable envelope: {e}"))?;
    let env = received.envelope;
    if &env.tenant != tenant {
        return Err(format!(
            "the last message on {subject} is for tenant {}",
            env.tenant
        ));
    }
    match env.event {
        Event::TenantControls(c) => Ok(Some((c, env.key_id))),
        other => Err(format!(
            "the last message on {subject} is a {}, not tenant_controls",
            other.event_type()
        )),
    }
}

/// `rollout status`: the stable version and the candidate, from the control plane's last
/// `tenant_controls` (with the blocks and the data-plane freeze in force), else derived from the
/// history.
pub async fn status(client: &Client, args: &StatusArgs, out: &mut dyn Write) -> CliResult {
    let view = match read_controls(client).await {
        Ok(Some((controls, key))) => {
            let mut view = RolloutView::from_controls(client.tenant().clone(), &controls, key);
            // The readiness comes from the control plane; the rest does not need it.
            match client.status().await {
                // Only while the control plane's candidate is the one gateways run.
                Ok(status) => {
                    view.readiness = status.readiness.filter(|r| {
                        view.candidate
                            .as_ref()
                            .is_some_and(|c| c.version == r.version)
                    });
                }
                Err(e) if view.candidate.is_some() => {
                    view.note = Some(format!("the candidate's readiness is unknown: {e}"));
                }
                Err(_) => {}
            }
            view
        }
        other => {
            let status = client.status().await?;
            let history = client.history().await?;
            let mut view = rollout_view(&status, &history);
            view.note = other.err();
            view
        }
    };
    if args.json {
        write_json(out, &view)?;
    } else {
        write_view(&view, out)?;
    }
    Ok(Exit::Ok)
}

/// What `rollout status` prints.
pub fn write_view(view: &RolloutView, out: &mut dyn Write) -> io::Result<()> {
    let derived = view.source == ViewSource::History;
    match &view.source {
        ViewSource::TenantControls { epoch, signed_by } => writeln!(
            out,
            "tenant: {} (tenant_controls epoch {epoch}, signed by {signed_by})",
            view.tenant
        )?,
        ViewSource::History => writeln!(out, "tenant: {}", view.tenant)?,
    }
    let mut table = Table::new(&["role", "version", "stage", "cohort", "digest"]);
    for (role, v) in [("stable", &view.stable), ("candidate", &view.candidate)] {
        match v {
            Some(v) => table.row(vec![
                role.to_owned(),
                v.version.to_string(),
                v.stage.to_string(),
                cohort_cell(v, derived),
                v.digest.clone(),
            ]),
            None => table.row(vec![
                role.to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                if role == "stable" {
                    "no global version yet".to_owned()
                } else {
                    "none".to_owned()
                },
            ]),
        }
    }
    table.write(out)?;
    if let Some(r) = &view.readiness {
        write_readiness(r, out)?;
    }
    if derived {
        writeln!(
            out,
            "(derived from the version history: the cohort is not shown, an aborted candidate \
             still appears, blocks and the data-plane freeze are not known)"
        )?;
        if let Some(note) = &view.note {
            writeln!(out, "note: {note}")?;
        }
        return Ok(());
    }
    if let Some(note) = &view.note {
        writeln!(out, "note: {note}")?;
    }
    match &view.data_plane_frozen {
        Some(f) => writeln!(
            out,
            "data plane: FROZEN by {} at {}: {}",
            f.by, f.at, f.reason
        )?,
        None => writeln!(out, "data plane: not frozen")?,
    }
    for (what, entries) in [
        ("agents", &view.blocked_agents),
        ("tools", &view.blocked_tools),
    ] {
        if entries.is_empty() {
            writeln!(out, "blocked {what}: none")?;
            continue;
        }
        writeln!(out, "blocked {what}:")?;
        for e in entries {
            writeln!(out, "  {} by {} at {}: {}", e.id, e.by, e.at, e.reason)?;
        }
    }
    Ok(())
}

/// The thresholds in words.
fn thresholds_line(t: &ReadinessThresholds) -> String {
    format!(
        "at least {} day(s) as candidate, at least {} decision(s) compared, at most {} disagreement",
        t.min_shadow_days,
        t.min_decisions,
        percent(u64::from(t.max_disagreement_basis_points))
    )
}

/// One line of counts.
fn counts_line(c: &Counts) -> String {
    format!(
        "{} decision(s) compared, {} disagree ({}), {} would be denied by the candidate only",
        c.decisions,
        c.disagreements,
        percent(c.disagreement_basis_points()),
        c.would_deny
    )
}

fn write_entries(what: &str, entries: &[ReadinessEntry], out: &mut dyn Write) -> io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{} {}/{} ({} would-deny)",
                e.id, e.disagreements, e.decisions, e.would_deny
            )
        })
        .collect();
    writeln!(out, "  most disagreements by {what}: {}", list.join(", "))
}

/// What a verdict means for `rollout global`.
fn promotion_line(version: u64, verdict: &Verdict, approvers: &[String]) -> String {
    if verdict.ready {
        "promotion: a publisher alone may promote it (`aegisctl rollout global`)".to_owned()
    } else if approvers.is_empty() {
        format!(
            "promotion: needs an approval by someone other than the promoter first (`aegisctl rollout approve --version {version}`)"
        )
    } else {
        format!(
            "promotion: anyone with the publisher role other than {} may promote it (approved)",
            approvers.join(", ")
        )
    }
}

/// The readiness part of `rollout status`.
pub fn write_readiness(r: &ReadinessView, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "readiness of candidate {} (candidate since {}):",
        r.version, r.since
    )?;
    match &r.measurement {
        Some(m) => {
            writeln!(
                out,
                "  measured: {} (decision stream {}..={}, at {})",
                counts_line(&m.counts()),
                m.from_sequence,
                m.to_sequence,
                m.measured_at
            )?;
            write_entries("agent", &m.top_agents, out)?;
            write_entries("tool", &m.top_tools, out)?;
        }
        None => writeln!(
            out,
            "  measured: not yet (the control plane measures every --readiness-interval once decisions carry both answers)"
        )?,
    }
    writeln!(out, "  thresholds: {}", thresholds_line(&r.thresholds))?;
    writeln!(out, "  verdict (as of {}): {}", r.as_of, r.verdict)?;
    let approvers: Vec<String> = r.approvals.iter().map(|a| a.actor.to_string()).collect();
    if r.approvals.is_empty() {
        writeln!(out, "  promotion approvals: none")?;
    } else {
        writeln!(out, "  promotion approvals:")?;
        for a in &r.approvals {
            match &a.note {
                Some(n) => writeln!(out, "    {} at {}: {n}", a.actor, a.at)?,
                None => writeln!(out, "    {} at {}", a.actor, a.at)?,
            }
        }
    }
    writeln!(out, "{}", promotion_line(r.version, &r.verdict, &approvers))
}

/// What `rollout readiness` measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Measured {
    pub tenant: TenantId,
    pub version: u64,
    /// When the version became the candidate (its publish).
    pub since: String,
    /// The decision-stream sequences read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_sequence: Option<u64>,
    #[serde(flatten)]
    pub counts: Counts,
    pub disagreement_basis_points: u64,
    pub top_agents: Vec<ReadinessEntry>,
    pub top_tools: Vec<ReadinessEntry>,
    pub thresholds: ReadinessThresholds,
    /// As of now, with these counts.
    pub verdict: Verdict,
    pub as_of: String,
}

/// `rollout readiness`: measures the candidate (or `--version`) right now from the decision
/// stream and prints the verdict against the tenant's thresholds. Exit 0 whether ready or not.
pub async fn readiness(client: &Client, args: &ReadinessArgs, out: &mut dyn Write) -> CliResult {
    let status = client.status().await?;
    let version = match (args.version, &status.candidate) {
        (Some(v), _) => v,
        (None, Some(c)) => c.version,
        (None, None) => {
            return Err(CliError::invalid(format!(
                "tenant `{}` has no rollout in progress; name a version with --version",
                status.tenant
            )));
        }
    };
    let history = client.history().await?;
    let Some(view) = history.iter().find(|v| v.version == version) else {
        return Err(CliError::invalid(format!(
            "tenant `{}` has no version {version}",
            status.tenant
        )));
    };
    let since = aegis_core::events::envelope::parse_time(&view.created_at)
        .map_err(|e| CliError::failure(format!("version {version}: {e}")))?;
    let mut tally = Tally::new(version);
    let bounds = aegis_replayer::slice::Bounds::Time {
        since: since - time::Duration::minutes(10),
        until: None,
    };
    aegis_replayer::readiness::read_into(
        client.jetstream(),
        client.tenant(),
        bounds,
        std::time::Duration::from_secs(30),
        &mut tally,
    )
    .await
    .map_err(|e| CliError {
        exit: Exit::Unavailable,
        message: e.to_string(),
    })?;
    let now = time::OffsetDateTime::now_utc();
    let counts = tally.counts();
    let range = tally.range();
    let measured = Measured {
        tenant: status.tenant.clone(),
        version,
        since: view.created_at.clone(),
        from_sequence: range.map(|r| r.0),
        to_sequence: range.map(|r| r.1),
        counts,
        disagreement_basis_points: counts.disagreement_basis_points(),
        top_agents: tally.top_agents(),
        top_tools: tally.top_tools(),
        thresholds: status.rollout_readiness,
        verdict: verdict(&status.rollout_readiness, since, now, &counts),
        as_of: aegis_core::events::envelope::format_time(now).unwrap_or_default(),
    };
    if args.json {
        write_json(out, &measured)?;
        return Ok(Exit::Ok);
    }
    writeln!(
        out,
        "tenant: {}, version {version} (candidate since {})",
        measured.tenant, measured.since
    )?;
    match range {
        Some((from, to)) => writeln!(out, "decision stream read: {from}..={to}")?,
        None => writeln!(
            out,
            "decision stream read: nothing since the version's publish"
        )?,
    }
    writeln!(out, "measured now: {}", counts_line(&counts))?;
    write_entries("agent", &measured.top_agents, out)?;
    write_entries("tool", &measured.top_tools, out)?;
    writeln!(out, "thresholds: {}", thresholds_line(&measured.thresholds))?;
    writeln!(out, "verdict: {}", measured.verdict)?;
    let approvers: Vec<String> = status
        .readiness
        .iter()
        .filter(|r| r.version == version)
        .flat_map(|r| r.approvals.iter().map(|a| a.actor.to_string()))
        .collect();
    writeln!(
        out,
        "{}",
        promotion_line(version, &measured.verdict, &approvers)
    )?;
    Ok(Exit::Ok)
}

fn cohort_cell(v: &RolloutVersion, derived: bool) -> String {
    match v.stage {
        RolloutStage::Global => "everyone".to_owned(),
        RolloutStage::Shadow => "nobody (evaluated only)".to_owned(),
        RolloutStage::Partial => {
            let mut parts = Vec::new();
            if !v.agents.is_empty() {
                let agents: Vec<&str> = v.agents.iter().map(AgentId::as_str).collect();
                parts.push(format!("agents {}", agents.join(",")));
            }
            if let Some(p) = v.percent {
                parts.push(format!("{p}% of agents"));
            }
            if parts.is_empty() {
                if derived { "unknown" } else { "-" }.to_owned()
            } else {
                parts.join(" + ")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use aegis_core::ids::ActorId;
    use aegis_core::keys::KeyId;

    fn version(n: u64, stage: RolloutStage) -> VersionView {
        VersionView {
            version: n,
            digest: format!("sha256:{n}"),
            size: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            change_id: None,
            rollback_of: None,
            emergency: false,
            stage,
            published_by: ActorId::new("carol").unwrap(),
            approved_by: vec![],
            signer: KeyId::new(format!("ed25519:{}", "a".repeat(16))).unwrap(),
            announced: true,
        }
    }

    /// A status with no rollout fields (read from JSON, so fields the query grows default).
    fn status() -> TenantStatus {
        serde_json::from_value(serde_json::json!({
            "tenant": "acme",
            "open_changes": 0,
            "required_approvals": {"low": 1, "medium": 1, "high": 2},
            "live_policies": [],
            "chain_position": 0,
            "chain_head": "",
            "applied_seq": 0,
        }))
        .unwrap()
    }

    #[test]
    fn stable_is_the_newest_global_and_the_candidate_a_newer_staged_version() {
        let history = vec![
            version(1, RolloutStage::Global),
            version(2, RolloutStage::Shadow),
            version(3, RolloutStage::Global),
            version(4, RolloutStage::Partial),
        ];
        let view = rollout_view(&status(), &history);
        assert_eq!(view.stable.as_ref().unwrap().version, 3);
        let candidate = view.candidate.as_ref().unwrap();
        assert_eq!(
            (candidate.version, candidate.stage),
            (4, RolloutStage::Partial)
        );
        let mut out = Vec::new();
        write_view(&view, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("candidate  4"), "{text}");
        assert!(text.contains("unknown"), "{text}");

        let view = rollout_view(&status(), &history[..3]);
        assert!(view.candidate.is_none());
        let view = rollout_view(&status(), &[version(1, RolloutStage::Shadow)]);
        assert!(view.stable.is_none());
        assert_eq!(view.candidate.unwrap().version, 1);
    }

    #[test]
    fn tenant_controls_give_the_cohort_blocks_and_the_data_plane_freeze() {
        use aegis_core::events::{BundleRef, RolloutCandidate};
        let bundle = |version: u64| BundleRef {
            version,
            digest: format!("sha256:{version}"),
            size: 1,
        };
        let controls = TenantControls {
            epoch: 42,
            stable: Some(bundle(3)),
            candidate: Some(RolloutCandidate {
                bundle: bundle(4),
                stage: RolloutStage::Partial,
                agents: vec![AgentId::new("planner").unwrap()],
                percent: Some(10),
            }),
            blocked_agents: vec![BlockEntry {
                id: "planner".into(),
                reason: "INC-7".into(),
                by: ActorId::new("carol").unwrap(),
                at: "2026-11-26T10:00:00.000Z".into(),
            }],
            blocked_tools: vec![],
            data_plane_frozen: Some(DataPlaneFreeze {
                reason: "hold".into(),
                by: ActorId::new("carol").unwrap(),
                at: "2026-11-26T10:01:00.000Z".into(),
            }),
        };
        let key = KeyId::new(format!("ed25519:{}", "b".repeat(16))).unwrap();
        let view = RolloutView::from_controls(TenantId::new("acme").unwrap(), &controls, key);
        let mut out = Vec::new();
        write_view(&view, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "tenant: acme (tenant_controls epoch 42, signed by ed25519:bbbbbbbbbbbbbbbb)",
            "stable     3        global   everyone",
            "candidate  4        partial  agents planner + 10% of agents",
            "data plane: FROZEN by carol at 2026-11-26T10:01:00.000Z: hold",
            "blocked agents:\n  planner by carol at 2026-11-26T10:00:00.000Z: INC-7",
            "blocked tools: none",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["source"]["kind"], "tenant_controls");
        assert_eq!(json["candidate"]["percent"], 10);
        assert_eq!(json["blocked_agents"][0]["id"], "planner");
    }

    #[test]
    fn readiness_reads_as_measurement_thresholds_verdict_and_approvals() {
        use aegis_core::events::RolloutReadinessMeasured;
        use aegis_core::query::ActView;
        let measurement = RolloutReadinessMeasured {
            version: 5,
            from_sequence: 3,
            to_sequence: 40,
            decisions: 200,
            disagreements: 3,
            would_deny: 2,
            measured_at: "2026-11-26T10:00:00.000Z".into(),
            top_agents: vec![ReadinessEntry {
                id: "finance-agent".into(),
                decisions: 150,
                disagreements: 3,
                would_deny: 2,
            }],
            top_tools: vec![],
        };
        let thresholds = ReadinessThresholds::default();
        let since = time::macros::datetime!(2026-11-25 10:00 UTC);
        let mut view = ReadinessView {
            version: 5,
            since: "2026-11-25T10:00:00.000Z".into(),
            thresholds,
            verdict: verdict(
                &thresholds,
                since,
                since + time::Duration::days(1),
                &measurement.counts(),
            ),
            measurement: Some(measurement),
            approvals: vec![],
            as_of: "2026-11-26T10:00:00.000Z".into(),
        };
        let text = |view: &ReadinessView| {
            let mut out = Vec::new();
            write_readiness(view, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let t = text(&view);
        for needle in [
            "readiness of candidate 5 (candidate since 2026-11-25T10:00:00.000Z):",
            "measured: 200 decision(s) compared, 3 disagree (1.50%), 2 would be denied by the candidate only (decision stream 3..=40",
            "most disagreements by agent: finance-agent 3/150 (2 would-deny)",
            "thresholds: at least 7 day(s) as candidate, at least 100 decision(s) compared, at most 1.00% disagreement",
            "not ready: candidate for 1d 0h 0m, at least 7 day(s) needed; disagreement 1.50% (3 of 200 decisions), at most 1.00% allowed",
            "promotion approvals: none",
            "`aegisctl rollout approve --version 5`",
        ] {
            assert!(t.contains(needle), "{needle:?} in\n{t}");
        }
        view.approvals.push(ActView {
            actor: aegis_core::ids::ActorId::new("carol").unwrap(),
            at: "2026-11-26T09:00:00.000Z".into(),
            event_id: aegis_core::ids::EventId::new("evt-1").unwrap(),
            note: Some("intended".into()),
        });
        let t = text(&view);
        assert!(
            t.contains("    carol at 2026-11-26T09:00:00.000Z: intended"),
            "{t}"
        );
        assert!(t.contains("other than carol may promote it"), "{t}");
    }

    #[test]
    fn cohorts_read_as_agents_and_percent() {
        let mut v = RolloutVersion {
            version: 4,
            digest: "sha256:4".into(),
            stage: RolloutStage::Partial,
            agents: vec![AgentId::new("planner").unwrap()],
            percent: Some(10),
        };
        assert_eq!(cohort_cell(&v, false), "agents planner + 10% of agents");
        v.agents.clear();
        assert_eq!(cohort_cell(&v, false), "10% of agents");
    }
}
