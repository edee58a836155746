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

use super::render::Table;
use super::{Client, submit};
use crate::exit::{CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::{Event, RolloutAborted, RolloutStage, RolloutStageChanged};
use aegis_core::ids::{AgentId, TenantId};
use aegis_core::query::{TenantStatus, VersionView};
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

/// The tenant's rollout as `rollout status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    pub tenant: TenantId,
    /// What every agent outside a cohort runs. None before the first global version.
    pub stable: Option<RolloutVersion>,
    pub candidate: Option<RolloutVersion>,
    /// Whether the view comes from the history alone (see [`rollout_view`]): then the cohort
    /// is unknown and an aborted candidate still shows.
    pub derived_from_history: bool,
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

/// The tenant's stable version and candidate.
///
/// EXTEND (issue 5): the control plane's status query is getting the rollout (stable version,
/// candidate with stage and cohort) in `core/src/query.rs`. Until it is there this derives it
/// from the history: the stable version is the newest `global` one, the candidate the newest
/// `shadow`/`partial` version above it — without its cohort, and still shown after
/// `rollout abort`. Once `TenantStatus` carries the rollout, read it from `status` here and set
/// `derived_from_history: false`.
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
        derived_from_history: true,
    }
}

/// `rollout status`: the stable version and the candidate.
pub async fn status(client: &Client, args: &StatusArgs, out: &mut dyn Write) -> CliResult {
    let status = client.status().await?;
    let history = client.history().await?;
    let view = rollout_view(&status, &history);
    if args.json {
        write_json(out, &view)?;
    } else {
        write_view(&view, out)?;
    }
    Ok(Exit::Ok)
}

/// What `rollout status` prints.
pub fn write_view(view: &RolloutView, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "tenant: {}", view.tenant)?;
    let mut table = Table::new(&["role", "version", "stage", "cohort", "digest"]);
    for (role, v) in [("stable", &view.stable), ("candidate", &view.candidate)] {
        match v {
            Some(v) => table.row(vec![
                role.to_owned(),
                v.version.to_string(),
                v.stage.to_string(),
                cohort_cell(v, view.derived_from_history),
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
    if view.derived_from_history {
        writeln!(
            out,
            "(derived from the version history: the cohort is not shown, and an aborted \
             candidate still appears)"
        )?;
    }
    Ok(())
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
    use aegis_core::events::RequiredApprovals;
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

    fn status() -> TenantStatus {
        TenantStatus {
            tenant: TenantId::new("acme").unwrap(),
            frozen: None,
            latest: None,
            open_changes: 0,
            required_approvals: RequiredApprovals {
                low: 1,
                medium: 1,
                high: 2,
            },
            bundle_expiry_days: None,
            live_policies: vec![],
            chain_position: 0,
            chain_head: String::new(),
            applied_seq: 0,
        }
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
