//! `aegis-controlplane`: argument parsing only; the control plane is the library.

use aegis_controlplane::{FoldConfig, RunConfig, Store};
use aegis_core::ids::ActorId;
use aegis_core::keys::{Keypair, PublicKey};
use aegis_nats::{ConnectOptions, Topology};
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "aegis-controlplane",
    version,
    about = "Aegis control plane: folds AEGIS_CHANGES into RocksDB, publishes signed bundles, answers queries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start
enum Command {
    /// Run: provision the topology, fold events, publish bundles and checkpoints, answer queries
    #[command(
        after_help = "Example:\n  aegis-controlplane run --data ./cp-data --key keys/cp.key.json \\\n      --root-admin root=keys/root.pub.json --nats nats://127.0.0.1:4222"
    )]
    Run(RunArgs),
    /// Print the digest of the RocksDB state (identical for identical state)
    StateDigest {
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// RocksDB directory (created if missing)
    #[arg(long)]
    data: PathBuf,
    /// The control plane's signing key (bundles, checks, checkpoints); replicas share it
    #[arg(long)]
    key: PathBuf,
    /// A root administrator, admin of every tenant: NAME=PUBLIC_KEY_FILE (repeatable)
    #[arg(long = "root-admin", value_name = "NAME=FILE", required = true)]
    root_admins: Vec<String>,
    /// The actor name the control plane signs as
    #[arg(long, default_value = "control-plane")]
    actor: String,
    /// NATS URL(s), comma-separated
    #[arg(long, env = "AEGIS_NATS_URL", default_value = aegis_nats::connect::DEFAULT_URL)]
    nats: String,
    /// NATS credentials file
    #[arg(long, env = "AEGIS_NATS_CREDS")]
    creds: Option<PathBuf>,
    /// NATS user (with AEGIS_NATS_PASSWORD)
    #[arg(long, env = "AEGIS_NATS_USER")]
    user: Option<String>,
    #[arg(long, env = "AEGIS_NATS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Stream replicas when provisioning (1 single node, 3 cluster)
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Do not provision streams at start
    #[arg(long)]
    no_provision: bool,
    /// Publish an audit checkpoint every N chain entries…
    #[arg(long, default_value_t = 256)]
    checkpoint_every: u64,
    /// …or after this many milliseconds without new events
    #[arg(long, default_value_t = 1000)]
    checkpoint_idle_ms: u64,
    /// Exit once everything in the stream at start is folded (a rebuild)
    #[arg(long)]
    until_caught_up: bool,
    /// Fold only: publish nothing (no checks, bundles or checkpoints) and answer no queries
    #[arg(long)]
    fold_only: bool,
    /// Measure rollout candidates on live decisions every this many seconds and publish
    /// `rollout_readiness_measured` when the counts change (0: never)
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    readiness_interval: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::StateDigest { data } => {
            let store =
                Store::open(&data).with_context(|| format!("opening {}", data.display()))?;
            println!("{}", serde_json::to_string(&store.state_digest()?)?);
            Ok(())
        }
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(args))
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what `kill`, systemd and container runtimes send),
/// so both stop the control plane cleanly: the fold thread drains, RocksDB is flushed, exit 0.
///
/// The handlers are installed when this is called (right before the run starts), not when the
/// future is first polled: a signal that arrives while the run is still opening its store is
/// remembered instead of killing the process. (Before that, while connecting and provisioning,
/// there is nothing to flush and the default action, exiting, is what one wants.)
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle {name}");
                None
            }
        };
        (
            install(SignalKind::interrupt(), "SIGINT"),
            install(SignalKind::terminate(), "SIGTERM"),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let (int, term) = signals;
            tokio::select! {
                () = recv(int) => tracing::info!("SIGINT received: shutting down"),
                () = recv(term) => tracing::info!("SIGTERM received: shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            tracing::info!("Ctrl-C received: shutting down");
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let signing_key = Keypair::load(&args.key)
        .with_context(|| format!("loading the signing key {}", args.key.display()))?;
    let mut root_admins: BTreeMap<ActorId, Vec<PublicKey>> = BTreeMap::new();
    for spec in &args.root_admins {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--root-admin {spec:?}: expected NAME=PUBLIC_KEY_FILE");
        };
        let actor = ActorId::new(name).with_context(|| format!("--root-admin {spec:?}"))?;
        let key = PublicKey::load(std::path::Path::new(file))
            .with_context(|| format!("--root-admin {spec:?}: loading {file}"))?;
        root_admins.entry(actor).or_default().push(key);
    }
    let mut opts = ConnectOptions::new(args.nats.clone()).name("aegis-controlplane");
    opts.creds = args.creds.clone();
    if let (Some(u), Some(p)) = (&args.user, &args.password) {
        opts = opts.user_and_password(u, p);
    }
    let client = aegis_nats::connect(&opts)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats))?;
    let js = aegis_nats::jetstream(client);
    if !args.no_provision {
        let topo = Topology::single().with_replicas(args.replicas)?;
        let report = aegis_nats::provision(&js, &topo)
            .await
            .context("provisioning the NATS topology")?;
        tracing::info!(report = %report, "topology provisioned");
    }
    let config = RunConfig {
        data_dir: args.data.clone(),
        fold: FoldConfig {
            root_admins,
            control_plane_actor: ActorId::new(args.actor.clone())?,
            signing_key,
        },
        effects: !args.fold_only,
        serve_queries: !args.fold_only,
        until_caught_up: args.until_caught_up,
        checkpoint_every: args.checkpoint_every.max(1),
        checkpoint_idle: Duration::from_millis(args.checkpoint_idle_ms),
        readiness_interval: (args.readiness_interval > 0)
            .then(|| Duration::from_secs(args.readiness_interval)),
    };
    let shutdown = shutdown_signal();
    let summary = aegis_controlplane::run(js, config, shutdown).await?;
    tracing::info!(
        applied_seq = summary.applied_seq,
        folded = summary.folded,
        "stopped"
    );
    println!(
        "{}",
        serde_json::json!({"applied_seq": summary.applied_seq, "folded": summary.folded})
    );
    Ok(())
}
