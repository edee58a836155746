//! `aegisctl tenant configure`: required approvals per risk tier, bundle expiry, from which
//! risk tier a change needs a shadow report before approval, and the rollout readiness
//! thresholds.

use super::{Client, submit};
use crate::exit::CliResult;
use aegis_core::events::{Event, ReadinessThresholds, RequiredApprovals, TenantConfigured};
use aegis_core::policy::model::RiskTier;
use aegis_core::query::TenantStatus;
use aegis_core::readiness::percent;
use std::io::Write;

/// Options for [`configure`]; also the `aegisctl tenant configure` arguments. Unset fields
/// keep the tenant's current value; `no_bundle_expiry` clears `bundle_expiry_days`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigureArgs {
    #[arg(long)]
    pub low: Option<u32>,
    #[arg(long)]
    pub medium: Option<u32>,
    #[arg(long)]
    pub high: Option<u32>,
    #[arg(long, value_name = "D")]
    pub bundle_expiry_days: Option<u32>,
    /// Published bundles never expire
    #[arg(long, conflicts_with = "bundle_expiry_days")]
    pub no_bundle_expiry: bool,
    /// Changes at this risk tier or above (low, medium, high) cannot be approved until a
    /// shadow report is attached (`aegisctl replay --change`)
    #[arg(long, value_name = "TIER", value_parser = parse_tier)]
    pub shadow_report_required: Option<RiskTier>,
    /// No change needs a shadow report
    #[arg(long, conflicts_with = "shadow_report_required")]
    pub no_shadow_report_required: bool,
    /// Rollout readiness: days a candidate must have been in shadow or partial before a
    /// publisher alone may promote it (default 7)
    #[arg(long, value_name = "D")]
    pub min_shadow_days: Option<u32>,
    /// Rollout readiness: most disagreement between candidate and stable, in basis points of
    /// the decisions compared (100 = 1%; default 100)
    #[arg(long, value_name = "BP", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub max_disagreement_basis_points: Option<u32>,
    /// Rollout readiness: fewest decisions compared (default 100)
    #[arg(long, value_name = "N")]
    pub min_decisions: Option<u64>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

fn parse_tier(text: &str) -> Result<RiskTier, String> {
    match text {
        "low" => Ok(RiskTier::Low),
        "medium" => Ok(RiskTier::Medium),
        "high" => Ok(RiskTier::High),
        _ => Err(format!(
            "unknown risk tier {text:?}: use low, medium or high"
        )),
    }
}

/// The settings `args` asks for, starting from the current ones.
pub fn configured(status: &TenantStatus, args: &ConfigureArgs) -> TenantConfigured {
    let current = status.required_approvals;
    let readiness = status.rollout_readiness;
    TenantConfigured {
        required_approvals: RequiredApprovals {
            low: args.low.unwrap_or(current.low),
            medium: args.medium.unwrap_or(current.medium),
            high: args.high.unwrap_or(current.high),
        },
        bundle_expiry_days: if args.no_bundle_expiry {
            None
        } else {
            args.bundle_expiry_days.or(status.bundle_expiry_days)
        },
        shadow_report_required: if args.no_shadow_report_required {
            None
        } else {
            args.shadow_report_required
                .or(status.shadow_report_required)
        },
        rollout_readiness: ReadinessThresholds {
            min_shadow_days: args.min_shadow_days.unwrap_or(readiness.min_shadow_days),
            max_disagreement_basis_points: args
                .max_disagreement_basis_points
                .unwrap_or(readiness.max_disagreement_basis_points),
            min_decisions: args.min_decisions.unwrap_or(readiness.min_decisions),
        },
    }
}

/// Reads the current settings (`Status`), applies the flags and publishes `tenant_configured`.
pub async fn configure(client: &Client, args: &ConfigureArgs, out: &mut dyn Write) -> CliResult {
    let status = client.status().await?;
    let event = configured(&status, args);
    if !args.json {
        writeln!(
            out,
            "required approvals: low {}, medium {}, high {}; bundle expiry: {}; shadow report required from: {}",
            event.required_approvals.low,
            event.required_approvals.medium,
            event.required_approvals.high,
            event
                .bundle_expiry_days
                .map(|d| format!("{d} days"))
                .unwrap_or_else(|| "none".to_owned()),
            event
                .shadow_report_required
                .map(|t| format!("{} risk", t.as_str()))
                .unwrap_or_else(|| "never".to_owned())
        )?;
        let r = &event.rollout_readiness;
        writeln!(
            out,
            "rollout readiness (promotion by a publisher alone): at least {} day(s) as candidate, at least {} decision(s) compared, at most {} disagreement",
            r.min_shadow_days,
            r.min_decisions,
            percent(u64::from(r.max_disagreement_basis_points))
        )?;
    }
    submit(client, Event::TenantConfigured(event), args.json, out).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(expiry: Option<u32>, shadow: Option<&str>) -> TenantStatus {
        serde_json::from_value(serde_json::json!({
            "tenant": "acme",
            "open_changes": 0,
            "required_approvals": {"low": 0, "medium": 1, "high": 2},
            "bundle_expiry_days": expiry,
            "shadow_report_required": shadow,
            "live_policies": [],
            "chain_position": 0,
            "chain_head": "x",
            "applied_seq": 0,
        }))
        .unwrap()
    }

    #[test]
    fn unset_flags_keep_the_current_settings() {
        let current = status(Some(30), Some("high"));
        let e = configured(
            &current,
            &ConfigureArgs {
                high: Some(3),
                min_decisions: Some(10),
                ..ConfigureArgs::default()
            },
        );
        assert_eq!(
            e.rollout_readiness,
            ReadinessThresholds {
                min_decisions: 10,
                ..ReadinessThresholds::default()
            }
        );
        assert_eq!(
            e.required_approvals,
            RequiredApprovals {
                low: 0,
                medium: 1,
                high: 3
            }
        );
        assert_eq!(e.bundle_expiry_days, Some(30));
        assert_eq!(e.shadow_report_required, Some(RiskTier::High));
        let e = configured(
            &current,
            &ConfigureArgs {
                no_bundle_expiry: true,
                shadow_report_required: Some(RiskTier::Medium),
                ..ConfigureArgs::default()
            },
        );
        assert_eq!(e.bundle_expiry_days, None);
        assert_eq!(e.shadow_report_required, Some(RiskTier::Medium));
        let e = configured(
            &current,
            &ConfigureArgs {
                no_shadow_report_required: true,
                ..ConfigureArgs::default()
            },
        );
        assert_eq!(e.shadow_report_required, None);
    }
}
