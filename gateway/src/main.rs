//! `aegis-gateway`: argument parsing only; the gateway is the library.

use aegis_core::ids::TenantId;
use aegis_gateway::config::{GatewayConfig, OnSpoolFull};
use aegis_gateway::runtime;
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "aegis-gateway",
    version,
    about = "Aegis gateway: decides every agent→tool call from pushed, signed policy bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the decision API
    #[command(
        after_help = "Example:\n  aegis-gateway run --id gw1 --tenant acme --data ./gw1 --trust keys/cp.pub.json \\\n      --listen 127.0.0.1:8181 --nats nats://127.0.0.1:4222 --user gateway-gw1 --password ..."
    )]
    Run(Box<RunArgs>),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SpoolFull {
    Deny,
    Serve,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Gateway id: its decision subject is aegis.decisions.<tenant>.<id>, its KV key <tenant>.<id>
    #[arg(long, env = "AEGIS_GATEWAY_ID")]
    id: String,
    /// A tenant to serve (repeatable); ready only when each has a verified bundle
    #[arg(long = "tenant", required = true, value_name = "TENANT")]
    tenants: Vec<String>,
    /// Local state: last known-good bundles, high-water marks, the decision spool
    #[arg(long)]
    data: PathBuf,
    /// Control-plane public key file, or a directory of them, that bundles must be signed with
    #[arg(long)]
    trust: PathBuf,
    /// HTTP listen address (port 0: any free port; the bound address is written to <data>/gateway.addr)
    #[arg(long, default_value = "127.0.0.1:8181")]
    listen: SocketAddr,
    /// Site label reported in heartbeats and decision events
    #[arg(long)]
    site: Option<String>,
    /// NATS URL(s), comma-separated
    #[arg(long, env = "AEGIS_NATS_URL", default_value = aegis_nats::connect::DEFAULT_URL)]
    nats: String,
    /// NATS credentials file
    #[arg(long, env = "AEGIS_NATS_CREDS")]
    creds: Option<PathBuf>,
    /// NATS user (with --password / AEGIS_NATS_PASSWORD)
    #[arg(long, env = "AEGIS_NATS_USER")]
    user: Option<String>,
    #[arg(long, env = "AEGIS_NATS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// The audience (`aud`) agent tokens must carry
    #[arg(long, default_value = aegis_core::token::DEFAULT_AUDIENCE)]
    audience: String,
    /// Clock skew allowed on token expiry, seconds
    #[arg(long, default_value_t = 30)]
    token_leeway: i64,
    /// Seconds between heartbeats into KV aegis-gateways
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    /// Largest decision spool on disk, bytes
    #[arg(long, default_value_t = 1 << 30)]
    max_spool_bytes: u64,
    /// Decision events published and not yet acknowledged, at most
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// When the spool is full: deny new calls (fail closed) or serve and count what is unrecorded
    #[arg(long, value_enum, default_value = "deny")]
    on_spool_full: SpoolFull,
    /// Most VM instructions one evaluation may run
    #[arg(long, default_value_t = 200_000)]
    eval_max_instructions: usize,
    /// Wall-clock ceiling of one evaluation, milliseconds
    #[arg(long, default_value_t = 50)]
    eval_timeout_ms: u64,
    /// OTLP/HTTP endpoint for decision spans, e.g. http://127.0.0.1:4318 (default: $OTEL_EXPORTER_OTLP_ENDPOINT)
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// POST approval requests to this Slack-compatible incoming webhook (https:// or http://)
    #[arg(long, env = "AEGIS_APPROVAL_WEBHOOK")]
    approval_webhook: Option<String>,
    /// How long an approval request stays open for a decision, seconds
    #[arg(long, default_value_t = 15 * 60)]
    approval_ttl_secs: u64,
    /// Bound on checking (and consuming) a grant when a call is retried with an approval id, milliseconds
    #[arg(long, default_value_t = 2000)]
    approval_check_timeout_ms: u64,
    /// Log format on stderr
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Most milliseconds a call under a global rate limit or budget may spend on its KV
    /// counters; past it the call is denied (limit_unavailable)
    #[arg(long, default_value_t = 250)]
    global_limit_timeout_ms: u64,
    /// Serve POST /v1/noop, a constant answer through the same stack (benchmark baseline)
    #[arg(long, hide = true)]
    noop_endpoint: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let tenants = args
        .tenants
        .iter()
        .map(|t| TenantId::new(t.clone()).with_context(|| format!("--tenant {t}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = tenants.first().context("no --tenant given")?;
    if aegis_nats::topology::decisions_subject(first, &args.id).is_err() {
        bail!(
            "--id {:?} cannot be a NATS subject token (letters, digits, - and _ only)",
            args.id
        );
    }
    let mut nats = aegis_nats::ConnectOptions::new(args.nats.clone())
        .name(format!("aegis-gateway {}", args.id));
    nats.creds = args.creds.clone();
    nats.user = args.user.clone();
    nats.password = args.password.clone();
    nats.retry_on_initial_connect = true;

    let mut config = GatewayConfig::new(
        args.id.clone(),
        tenants,
        args.data.clone(),
        args.trust.clone(),
    );
    config.site = args.site.clone();
    config.listen = args.listen;
    config.audience = args.audience.clone();
    config.token_leeway_seconds = args.token_leeway;
    config.nats = nats;
    config.heartbeat_interval = Duration::from_secs(args.heartbeat_secs.max(1));
    config.max_spool_bytes = args.max_spool_bytes;
    config.max_in_flight = args.max_in_flight.max(1);
    config.on_spool_full = match args.on_spool_full {
        SpoolFull::Deny => OnSpoolFull::Deny,
        SpoolFull::Serve => OnSpoolFull::Serve,
    };
    config.eval_limits.max_instructions = args.eval_max_instructions;
    config.eval_limits.time_limit = Duration::from_millis(args.eval_timeout_ms);
    config.otlp_endpoint = args.otlp_endpoint.clone().filter(|e| !e.trim().is_empty());
    config.noop_endpoint = args.noop_endpoint;
    config.approval_ttl = Duration::from_secs(args.approval_ttl_secs.max(1));
    config.approvals.webhook = args
        .approval_webhook
        .clone()
        .filter(|w| !w.trim().is_empty());
    config.approvals.check_timeout = Duration::from_millis(args.approval_check_timeout_ms.max(1));
    config.global_limit_timeout = Duration::from_millis(args.global_limit_timeout_ms.max(1));

    let json = matches!(args.log_format, LogFormat::Json);
    runtime::init_logging(json)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("aegis-gateway")
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(runtime::run(config))?;
    Ok(())
}
