//! `aegisctl tenant configure`: required approvals per risk tier, bundle expiry.

use super::{Client, submit};
use crate::exit::CliResult;
use aegis_core::events::{Event, RequiredApprovals, TenantConfigured};
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
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// The settings `args` asks for, starting from the current ones.
pub fn configured(
    current: RequiredApprovals,
    current_expiry: Option<u32>,
    args: &ConfigureArgs,
) -> TenantConfigured {
    TenantConfigured {
        required_approvals: RequiredApprovals {
            low: args.low.unwrap_or(current.low),
            medium: args.medium.unwrap_or(current.medium),
            high: args.high.unwrap_or(current.high),
        },
        bundle_expiry_days: if args.no_bundle_expiry {
            None
        } else {
            args.bundle_expiry_days.or(current_expiry)
        },
    }
}

/// Reads the current settings (`Status`), applies the flags and publishes `tenant_configured`.
pub async fn configure(client: &Client, args: &ConfigureArgs, out: &mut dyn Write) -> CliResult {
    let status = client.status().await?;
    let event = configured(status.required_approvals, status.bundle_expiry_days, args);
    if !args.json {
        writeln!(
            out,
            "required approvals: low {}, medium {}, high {}; bundle expiry: {}",
            event.required_approvals.low,
            event.required_approvals.medium,
            event.required_approvals.high,
            event
                .bundle_expiry_days
                .map(|d| format!("{d} days"))
                .unwrap_or_else(|| "none".to_owned())
        )?;
    }
    submit(client, Event::TenantConfigured(event), args.json, out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_flags_keep_the_current_settings() {
        let current = RequiredApprovals::default();
        let e = configured(
            current,
            Some(30),
            &ConfigureArgs {
                high: Some(3),
                ..ConfigureArgs::default()
            },
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
        let e = configured(
            current,
            Some(30),
            &ConfigureArgs {
                no_bundle_expiry: true,
                ..ConfigureArgs::default()
            },
        );
        assert_eq!(e.bundle_expiry_days, None);
    }
}
