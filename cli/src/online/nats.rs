//! `aegisctl nats init`: create (or check) the streams, object store and KV bucket.

use crate::exit::{CliError, CliResult, Exit};
use aegis_nats::{ProvisionError, ProvisionOptions, Topology, provision_with};
use async_nats::jetstream;
use std::io::Write;

/// Options for [`init`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitArgs {
    /// 1 (single server) or 3 (cluster).
    pub replicas: usize,
    /// Update resources whose config drifted instead of failing.
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
