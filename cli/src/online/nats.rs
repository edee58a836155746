//! `aegisctl nats init`: create (or check) the streams, object store and KV bucket.

use crate::exit::{CliError, CliResult, Exit};
use aegis_nats::{ProvisionError, ProvisionOptions, Topology, provision_with};
use async_nats::jetstream;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use std::io::Write;

/// Options for [`init`]; also the `aegisctl nats init` arguments. Without `fix_drift`, a
/// resource whose config drifted is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct InitArgs {
    /// 1 for a single server, 3 for a cluster
    #[arg(
        long,
        default_value = "1",
        value_parser = PossibleValuesParser::new(["1", "3"]).try_map(|n| n.parse::<usize>())
    )]
    pub replicas: usize,
    /// Update drifted resources in place
    #[arg(long)]
    pub fix_drift: bool,
}

impl Default for InitArgs {
    fn default() -> Self {
        InitArgs {
            replicas: 1,
            fix_drift: false,
        }
    }
}

/// Provisions the topology and prints one line per resource (`created`, `unchanged`,
/// `updated`). Drift without `fix_drift` is an error naming the stream and field (exit 1).
pub async fn init(js: &jetstream::Context, args: &InitArgs, out: &mut dyn Write) -> CliResult {
    let topology = Topology::single()
        .with_replicas(args.replicas)
        .map_err(|e| CliError::invalid(e.to_string()))?;
    let report = provision_with(
        js,
        &topology,
        ProvisionOptions {
            fix_drift: args.fix_drift,
        },
    )
    .await
    .map_err(|e| match e {
        e @ ProvisionError::Drift { .. } => {
            CliError::failure(format!("{e} (aegisctl: re-run with --fix-drift)"))
        }
        e => CliError::failure(e.to_string()),
    })?;
    write!(out, "{report}")?;
    writeln!(
        out,
        "{}",
        if report.all_unchanged() {
            "topology ok: nothing to change"
        } else {
            "topology provisioned"
        }
    )?;
    Ok(Exit::Ok)
}
