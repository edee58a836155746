//! A real `nats-server` process with JetStream, for tests.
//!
//! [`NatsServer::start`] finds the binary, checks its version, writes a config into a fresh
//! temporary directory (loopback-only client and monitoring ports, a JetStream store that
//! fsyncs every write), starts the process and waits until it accepts clients with JetStream
//! enabled. Dropping the value kills the process, waits for it and removes the directory.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Environment variable naming the `nats-server` binary to use.
pub const ENV_BINARY: &str = "AEGIS_NATS_SERVER";

/// The command that installs a suitable `nats-server` (named in every "not found" error).
pub const INSTALL_HINT: &str = "./scripts/setup.sh";

/// Oldest server version the fixture accepts.
pub const MIN_VERSION: Version = Version {
    major: 2,
    minor: 10,
    patch: 0,
};

/// Where `scripts/setup.sh` links the binary it installs, relative to the workspace root.
const WORKSPACE_BINARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/bin/nats-server");

/// How often a port conflict (a free port taken between picking and binding) is retried.
const PORT_ATTEMPTS: usize = 5;

/// What can go wrong while finding, starting or talking to a `nats-server`.
///
/// `Debug` prints the same text as `Display`, so `.unwrap()` in a test shows the readable
/// message (install hint, server log) rather than the struct.
#[derive(thiserror::Error)]
pub enum NatsServerError {
    /// No binary in `$AEGIS_NATS_SERVER`, `tools/bin/` or on `PATH`.
    #[error(
        "nats-server not found (looked in: {searched}); install it with `{INSTALL_HINT}` \
         or point {ENV_BINARY} at a nats-server >= {MIN_VERSION} binary"
    )]
    NotFound {
        /// The places that were looked at, comma separated.
        searched: String,
    },
    /// `$AEGIS_NATS_SERVER` is set but does not name a file.
    #[error(
        "{ENV_BINARY}={path} does not exist; install nats-server with `{INSTALL_HINT}` \
         or unset {ENV_BINARY}"
    )]
    EnvBinaryMissing {
        /// The value of the variable.
        path: PathBuf,
    },
    /// The binary's version is below [`MIN_VERSION`].
    #[error("{path} is nats-server {found}, need >= {MIN_VERSION}; run `{INSTALL_HINT}`")]
    TooOld {
        /// The binary.
        path: PathBuf,
        /// Its version.
        found: Version,
    },
    /// `nats-server --version` printed something unexpected.
    #[error("could not read a version from `{path} --version` (printed {output:?})")]
    UnknownVersion {
        /// The binary.
        path: PathBuf,
        /// What it printed.
        output: String,
    },
    /// A path that cannot be written into a server config (not UTF-8).
    #[error("path {0:?} is not valid UTF-8")]
    NonUtf8Path(PathBuf),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before it became ready.
    #[error("nats-server exited during startup ({status}); log:\n{log}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The end of its log and stderr.
        log: String,
    },
    /// The process did not become ready in time.
    #[error("nats-server not ready after {timeout:?} (last problem: {last}); log:\n{log}")]
    NotReady {
        /// The startup timeout.
        timeout: Duration,
        /// The last readiness probe failure.
        last: String,
        /// The end of its log and stderr.
        log: String,
    },
    /// The server speaks, but JetStream is not enabled.
    #[error("nats-server at {addr} is up but JetStream is not enabled; INFO: {info}")]
    JetStreamDisabled {
        /// The client address.
        addr: SocketAddr,
        /// The INFO JSON it sent.
        info: String,
    },
    /// The server sent something that is not a NATS `INFO` line.
    #[error("unexpected greeting from {addr}: {line:?}")]
    BadInfo {
        /// The client address.
        addr: SocketAddr,
        /// The first line it sent.
        line: String,
    },
    /// The monitoring endpoint sent something that is not an HTTP response.
    #[error("unexpected HTTP response from {url}: {head:?}")]
    BadHttp {
        /// The URL that was requested.
        url: String,
        /// The start of what came back.
        head: String,
    },
    /// An operation that needs a running process was called after [`NatsServer::kill`].
    #[error("nats-server is not running")]
    NotRunning,
    /// A cluster node index out of range.
    #[error("no node {index} in a cluster of {size}")]
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// The cluster size.
        size: usize,
    },
    /// A cluster size the fixture does not start.
    #[error("a cluster needs 1 to 5 nodes, not {0}")]
    BadClusterSize(usize),
    /// The cluster's nodes run, but JetStream has no meta leader or a node is not healthy.
    #[error("nats cluster not ready after {timeout:?} (last problem: {last}); logs:\n{logs}")]
    ClusterNotReady {
        /// The timeout.
        timeout: Duration,
        /// The last readiness probe failure.
        last: String,
        /// The end of every node's log.
        logs: String,
    },
}

impl fmt::Debug for NatsServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl NatsServerError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// True when startup failed because a picked port was taken in the meantime.
    pub(crate) fn is_port_conflict(&self) -> bool {
        match self {
            Self::Exited { log, .. } | Self::NotReady { log, .. } => {
                log.contains("address already in use")
            }
            _ => false,
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = NatsServerError> = std::result::Result<T, E>;

/// A `nats-server` version, `major.minor.patch` (pre-release suffixes are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Patch version.
    pub patch: u64,
}

impl Version {
    /// Reads the first `X.Y.Z` in `text`, e.g. `nats-server: v2.15.1`, `2.12.0-RC.1`.
    pub fn parse(text: &str) -> Option<Self> {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find_map(|word| {
                let mut parts = word.split('.');
                let major = parts.next()?.parse().ok()?;
                let minor = parts.next()?.parse().ok()?;
                let patch = parts.next()?.parse().ok()?;
                Some(Self {
                    major,
                    minor,
                    patch,
                })
            })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Finds the `nats-server` binary: `$AEGIS_NATS_SERVER`, then `<workspace>/tools/bin/nats-server`
/// (where `scripts/setup.sh` puts it), then `PATH`.
pub fn find_binary() -> Result<PathBuf> {
    if let Some(value) = std::env::var_os(ENV_BINARY).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(NatsServerError::EnvBinaryMissing { path })
        };
    }
    let mut searched = vec![format!("${ENV_BINARY} (unset)")];
    let workspace = PathBuf::from(WORKSPACE_BINARY);
    if workspace.is_file() {
        return Ok(workspace);
    }
    searched.push(workspace.display().to_string());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    searched.push("PATH".to_owned());
    Err(NatsServerError::NotFound {
        searched: searched.join(", "),
    })
}

/// [`find_binary`], then checks its version is at least [`MIN_VERSION`].
pub fn checked_binary() -> Result<(PathBuf, Version)> {
    let binary = find_binary()?;
    let version = binary_version(&binary)?;
    if version < MIN_VERSION {
        return Err(NatsServerError::TooOld {
            path: binary,
            found: version,
        });
    }
    Ok((binary, version))
}

/// Runs `<binary> --version` and parses the answer.
pub fn binary_version(binary: &Path) -> Result<Version> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(NatsServerError::io(format!(
            "running {} --version",
            binary.display()
        )))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Version::parse(&text).ok_or_else(|| NatsServerError::UnknownVersion {
        path: binary.to_owned(),
        output: text.trim().to_owned(),
    })
}

/// Connects to a NATS client port and returns the JSON of the `INFO` line it greets with.
pub fn read_info(addr: SocketAddr, timeout: Duration) -> Result<Value> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(NatsServerError::io(format!("connecting to {addr}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(NatsServerError::io("setting a read timeout"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(64 * 1024)
        .read_line(&mut line)
        .map_err(NatsServerError::io(format!("reading INFO from {addr}")))?;
    let json = line
        .strip_prefix("INFO ")
        .ok_or_else(|| NatsServerError::BadInfo {
            addr,
            line: line.clone(),
        })?;
    serde_json::from_str(json.trim_end()).map_err(|_| NatsServerError::BadInfo {
        addr,
        line: line.clone(),
    })
}

/// A plain HTTP/1.0 GET against `addr`; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let url = format!("http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(NatsServerError::io(format!("connecting to {url}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(NatsServerError::io("setting a read timeout"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(NatsServerError::io("setting a write timeout"))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(NatsServerError::io(format!("sending GET {url}")))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(NatsServerError::io(format!("reading {url}")))?;
    let bad = |response: &str| NatsServerError::BadHttp {
        url: url.clone(),
        head: response.chars().take(200).collect(),
    };
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(&response))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad(&response))?;
    Ok((status, body.to_owned()))
}

/// Options for [`NatsServer::start_with`].
#[derive(Debug, Clone)]
pub struct NatsServerOptions {
    /// How long to wait for the server to accept clients with JetStream enabled.
    pub startup_timeout: Duration,
    /// Extra lines appended to the generated config (accounts, limits, ...): for example the
    /// text of `nats/conf/accounts.conf` (`aegis_nats::conf::ACCOUNTS_CONF`).
    pub extra_config: String,
    /// Environment variables set for the server process (the passwords `accounts.conf`
    /// refers to as `$AEGIS_NATS_..._PASSWORD`).
    pub env: Vec<(String, String)>,
    /// `sync_interval: always` (fsync every write before acknowledging it, as shipped in
    /// `nats/conf/single.conf`). Off only for benchmarks that load data to measure reads.
    pub sync_always: bool,
}

impl Default for NatsServerOptions {
    fn default() -> Self {
        Self {
            startup_timeout: Duration::from_secs(30),
            extra_config: String::new(),
            env: Vec::new(),
            sync_always: true,
        }
    }
}

impl NatsServerOptions {
    /// Appends `text` to [`NatsServerOptions::extra_config`].
    pub fn with_config(mut self, text: &str) -> Self {
        self.extra_config.push_str(text);
        self.extra_config.push('\n');
        self
    }

    /// Lets the server acknowledge writes before they are fsynced (see
    /// [`NatsServerOptions::sync_always`]).
    pub fn without_sync_always(mut self) -> Self {
        self.sync_always = false;
        self
    }

    /// Adds an environment variable for the server process.
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

/// The cluster part of a node's config (see [`crate::NatsCluster`]).
#[derive(Debug, Clone)]
pub(crate) struct ClusterSpec {
    /// Cluster name, shared by every node.
    pub name: String,
    /// This node's route port.
    pub port: u16,
    /// Every node's route port (this one included).
    pub routes: Vec<u16>,
}

/// What one server's generated config is made of.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    pub server_name: String,
    pub port: u16,
    pub monitor_port: u16,
    pub cluster: Option<ClusterSpec>,
}

/// A running `nats-server` with JetStream, owned by a test. See the module docs.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    version: Version,
    port: u16,
    monitor_port: u16,
    config_file: PathBuf,
    store_dir: PathBuf,
    log_file: PathBuf,
    stderr_file: PathBuf,
    info: Value,
    startup_timeout: Duration,
    env: Vec<(String, String)>,
    // Last, so the directory is removed after the process is gone (see `Drop`).
    dir: Option<TempDir>,
}

impl NatsServer {
    /// Starts a single JetStream server on free loopback ports with default options.
    pub fn start() -> Result<Self> {
        Self::start_with(NatsServerOptions::default())
    }

    /// Starts a single JetStream server on free loopback ports.
    pub fn start_with(options: NatsServerOptions) -> Result<Self> {
        let (binary, version) = checked_binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(&binary, version, &options) {
                Err(error) if error.is_port_conflict() && attempt < PORT_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    fn try_start(binary: &Path, version: Version, options: &NatsServerOptions) -> Result<Self> {
        let (port, monitor_port) = free_port_pair()?;
        let spec = NodeSpec {
            server_name: format!("aegis-test-{port}"),
            port,
            monitor_port,
            cluster: None,
        };
        let mut server = Self::prepare(binary, version, &spec, options)?;
        // On error `server` is dropped here, which kills the process and removes the dir.
        server.spawn_and_wait()?;
        Ok(server)
    }

    /// Creates the temp dir, store and config of one server, without starting it.
    pub(crate) fn prepare(
        binary: &Path,
        version: Version,
        spec: &NodeSpec,
        options: &NatsServerOptions,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("aegis-nats-")
            .tempdir()
            .map_err(NatsServerError::io("creating a temp dir for nats-server"))?;
        let root = dir.path().to_owned();
        let store_dir = root.join("jetstream");
        let log_file = root.join("nats-server.log");
        let stderr_file = root.join("nats-server.stderr");
        let config_file = root.join("nats-server.conf");
        fs::create_dir(&store_dir).map_err(NatsServerError::io(format!(
            "creating {}",
            store_dir.display()
        )))?;

        let cluster = match &spec.cluster {
            None => String::new(),
            Some(cluster) => {
                let routes: Vec<String> = cluster
                    .routes
                    .iter()
                    .map(|port| quote(&format!("nats-route://127.0.0.1:{port}")))
                    .collect();
                format!(
                    "cluster {{\n  name: {name}\n  listen: \"127.0.0.1:{port}\"\n  \
                     routes: [{routes}]\n}}\n",
                    name = quote(&cluster.name),
                    port = cluster.port,
                    routes = routes.join(", "),
                )
            }
        };
        let config = format!(
            "# generated by aegis-tests\n\
             server_name: {name}\n\
             listen: \"127.0.0.1:{port}\"\n\
             http: \"127.0.0.1:{monitor_port}\"\n\
             log_file: {log}\n\
             jetstream {{\n  store_dir: {store}\n{sync}}}\n\
             {cluster}\
             {extra}\n",
            name = quote(&spec.server_name),
            port = spec.port,
            monitor_port = spec.monitor_port,
            log = quote_path(&log_file)?,
            store = quote_path(&store_dir)?,
            sync = if options.sync_always {
                "  sync_interval: always\n"
            } else {
                ""
            },
            extra = options.extra_config,
        );
        fs::write(&config_file, config).map_err(NatsServerError::io(format!(
            "writing {}",
            config_file.display()
        )))?;

        Ok(Self {
            child: None,
            binary: binary.to_owned(),
            version,
            port: spec.port,
            monitor_port: spec.monitor_port,
            config_file,
            store_dir,
            log_file,
            stderr_file,
            info: Value::Null,
            startup_timeout: options.startup_timeout,
            env: options.env.clone(),
            dir: Some(dir),
        })
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        self.spawn()?;
        self.info = self.wait_ready()?;
        Ok(())
    }

    /// Starts the process without waiting for it to be ready.
    pub(crate) fn spawn(&mut self) -> Result<()> {
        let stderr = fs::File::create(&self.stderr_file).map_err(NatsServerError::io(format!(
            "creating {}",
            self.stderr_file.display()
        )))?;
        let stdout = stderr
            .try_clone()
            .map_err(NatsServerError::io("duplicating the stderr file"))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config_file)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(NatsServerError::io(format!(
                "starting {}",
                self.binary.display()
            )))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits for a started process (see [`NatsServer::spawn`]) and records its INFO.
    pub(crate) fn wait_started(&mut self) -> Result<()> {
        self.info = self.wait_ready()?;
        Ok(())
    }

    /// Polls until the client port greets with an INFO that has `"jetstream":true` and the
    /// monitoring `/healthz?js-enabled-only=true` answers 200.
    fn wait_ready(&mut self) -> Result<Value> {
        let started = Instant::now();
        let probe = Duration::from_millis(500);
        loop {
            if let Some(child) = self.child.as_mut() {
                let status = child
                    .try_wait()
                    .map_err(NatsServerError::io("checking on nats-server"))?;
                if let Some(status) = status {
                    self.child = None;
                    return Err(NatsServerError::Exited {
                        status,
                        log: self.log_tail(),
                    });
                }
            } else {
                return Err(NatsServerError::NotRunning);
            }
            let last = match read_info(self.addr(), probe) {
                Ok(info) if info.get("jetstream") == Some(&Value::Bool(true)) => {
                    match http_get(self.monitor_addr(), "/healthz?js-enabled-only=true", probe) {
                        Ok((200, _)) => return Ok(info),
                        Ok((status, body)) => format!("/healthz answered {status}: {body}"),
                        Err(error) => error.to_string(),
                    }
                }
                Ok(info) => NatsServerError::JetStreamDisabled {
                    addr: self.addr(),
                    info: info.to_string(),
                }
                .to_string(),
                Err(error) => error.to_string(),
            };
            if started.elapsed() >= self.startup_timeout {
                return Err(NatsServerError::NotReady {
                    timeout: self.startup_timeout,
                    last,
                    log: self.log_tail(),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (SIGKILL) and waits for it, keeping the store, config and ports, so
    /// that [`NatsServer::restart`] can bring the same server back. Killing twice is a no-op.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // The process may already have exited on its own; that is fine.
            let _ = child.kill();
            child
                .wait()
                .map_err(NatsServerError::io("waiting for nats-server to exit"))?;
        }
        Ok(())
    }

    /// Starts the server again after [`NatsServer::kill`]: same ports, config and JetStream
    /// store. Waits until it is ready, like [`NatsServer::start`].
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn_and_wait()
    }

    /// Kills the process, waits for it and removes the temp dir, reporting any error
    /// (dropping does the same silently).
    pub fn stop(mut self) -> Result<()> {
        self.kill()?;
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            dir.close()
                .map_err(NatsServerError::io(format!("removing {}", path.display())))?;
        }
        Ok(())
    }

    /// `nats://127.0.0.1:<port>`, for clients.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring (HTTP) address.
    pub fn monitor_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.monitor_port))
    }

    /// The monitoring (HTTP) port.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// `http://127.0.0.1:<monitor port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// GET a monitoring endpoint (`/varz`, `/jsz`, `/healthz`, ...): status and body.
    pub fn monitor_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.monitor_addr(), path, Duration::from_secs(5))
    }

    /// A fresh `INFO` from the running server.
    pub fn read_info(&self) -> Result<Value> {
        if self.child.is_none() {
            return Err(NatsServerError::NotRunning);
        }
        read_info(self.addr(), Duration::from_secs(5))
    }

    /// The `INFO` JSON the server sent when it became ready.
    pub fn info(&self) -> &Value {
        &self.info
    }

    /// The binary that was started.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Its version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The JetStream store directory (inside the temp dir; removed on drop).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The generated config file.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// The server's log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The server's log and stderr so far (empty strings where unreadable).
    pub fn log(&self) -> String {
        let log = fs::read_to_string(&self.log_file).unwrap_or_default();
        let stderr = fs::read_to_string(&self.stderr_file).unwrap_or_default();
        if stderr.trim().is_empty() {
            log
        } else {
            format!("{log}--- stderr ---\n{stderr}")
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let skip = lines.len().saturating_sub(40);
        lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
        // `TempDir`'s own drop removes the directory; do it explicitly after the kill.
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// `count` distinct free loopback ports: bound to `127.0.0.1:0` together, then released.
pub(crate) fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(NatsServerError::io(
                "binding 127.0.0.1:0 to find a free port",
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|addr| addr.port())
                .map_err(NatsServerError::io("reading a bound port"))
        })
        .collect()
}

/// Two distinct free loopback ports: bound to `127.0.0.1:0` together, then released.
fn free_port_pair() -> Result<(u16, u16)> {
    match free_ports(2)?.as_slice() {
        [first, second] => Ok((*first, *second)),
        _ => Err(NatsServerError::io("finding two free ports")(
            std::io::Error::other("fewer ports than asked for"),
        )),
    }
}

/// A double-quoted config string.
pub(crate) fn quote(text: &str) -> String {
    // JSON string escaping is what the NATS config parser accepts in double quotes.
    Value::String(text.to_owned()).to_string()
}

fn quote_path(path: &Path) -> Result<String> {
    path.to_str()
        .map(quote)
        .ok_or_else(|| NatsServerError::NonUtf8Path(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::{NatsServerError, Version};
    use std::path::PathBuf;

    #[test]
    fn missing_binary_errors_name_the_setup_script() {
        let not_found = NatsServerError::NotFound {
            searched: "PATH".to_owned(),
        };
        assert!(
            not_found.to_string().contains("./scripts/setup.sh"),
            "{not_found}"
        );
        let env_missing = NatsServerError::EnvBinaryMissing {
            path: PathBuf::from("/nope/nats-server"),
        };
        assert!(
            env_missing.to_string().contains("./scripts/setup.sh"),
            "{env_missing}"
        );
    }

    #[test]
    fn parses_versions() {
        let v = |major, minor, patch| Version {
            major,
            minor,
            patch,
        };
        assert_eq!(Version::parse("nats-server: v2.15.1"), Some(v(2, 15, 1)));
        assert_eq!(Version::parse("v2.12.0-RC.1\n"), Some(v(2, 12, 0)));
        assert_eq!(Version::parse("2.10.22"), Some(v(2, 10, 22)));
        assert_eq!(Version::parse("nats-server version unknown"), None);
        assert_eq!(Version::parse("2.10"), None);
        assert!(v(2, 9, 25) < super::MIN_VERSION);
        assert!(v(2, 10, 0) >= super::MIN_VERSION);
    }
}
