//! What the gateway benchmarks in `tests/benches` share: full or smoke run and the settings the
//! environment overrides, the real `aegis-gateway` as a child process, an async hyper load
//! generator (open and closed loop, every answer counted by the benchmark's [`Tally`]), medians
//! and percentiles, and the machine and process CPU figures printed beside the results.
//!
//! `cargo bench` passes `--bench`: a full run. `cargo test --all-targets` runs the benchmarks
//! without it: a smoke run (a few hundred requests against the debug binaries), skipped with a
//! message when the binaries are not built.
//!
//! Test support: JSON answers are read by indexing `serde_json::Value` (a missing field is null;
//! it does not panic).
#![allow(clippy::indexing_slicing)]

use crate::controlplane::binary;
use crate::gateway::{GatewayError, HttpClient, free_port};
use crate::stack::{ACME, Stack};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, InvalidHeaderValue};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The id of the benchmarked gateway.
pub const GATEWAY_ID: &str = "gw-bench";

/// What went wrong in a benchmark's setup or its load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{name}={value:?} is not a number")]
    NotANumber {
        name: String,
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error(transparent)]
    OutOfRange(#[from] std::num::TryFromIntError),
    /// A full run without the binaries: what is missing and how to build it.
    #[error("{missing}\nbuild them first: {build}")]
    NotBuilt { missing: String, build: String },
    #[error("starting {bin}")]
    Start {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("aegis-gateway exited during start ({status}); log:\n{log}")]
    ExitedDuringStart { status: ExitStatus, log: String },
    #[error("aegis-gateway not ready after {timeout:?}; log:\n{log}")]
    NotReady { timeout: Duration, log: String },
    #[error("aegis-gateway exited ({status}); log:\n{log}")]
    Exited { status: ExitStatus, log: String },
    #[error("aegis-gateway not on version {version} after {timeout:?}; log:\n{log}")]
    NotOnVersion {
        version: u64,
        timeout: Duration,
        log: String,
    },
    #[error("decision log not drained after {timeout:?}: {decision_log}")]
    NotDrained {
        timeout: Duration,
        decision_log: Value,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
    #[error(transparent)]
    Header(#[from] InvalidHeaderValue),
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Token(#[from] aegis_core::token::TokenError),
}

type Result<T> = std::result::Result<T, LoadError>;

// ---------------------------------------------------------------------------------------------
// Full or smoke run, settings

/// `cargo bench` passes `--bench`; `cargo test --all-targets` does not (a smoke run).
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A positive integer from the environment, if set.
pub fn env_number(name: &str) -> Result<Option<u64>> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(v) => {
            let v = v.to_string_lossy();
            v.trim()
                .parse()
                .map(Some)
                .map_err(|source| LoadError::NotANumber {
                    name: name.to_owned(),
                    value: v.into_owned(),
                    source,
                })
        }
    }
}

/// A count from the environment (at least 1), if set.
pub fn env_count(name: &str) -> Result<Option<usize>> {
    match env_number(name)? {
        Some(n) => Ok(Some(usize::try_from(n)?.max(1))),
        None => Ok(None),
    }
}

/// The closed-loop settings of a gateway benchmark and its rounds; the environment overrides
/// them (`AEGIS_BENCH_SECS`, `AEGIS_BENCH_CONNS`, `AEGIS_BENCH_ROUNDS`).
#[derive(Debug, Clone)]
pub struct LoadParams {
    /// A full run (`cargo bench`), or a smoke run.
    pub full: bool,
    /// Length of each closed-loop phase.
    pub phase: Duration,
    /// Requests per closed-loop phase at most (smoke runs).
    pub max_requests: Option<u64>,
    /// Warm-up requests per target (closed loop, not recorded).
    pub warmup: u64,
    /// Connections sending at the same time.
    pub conns: usize,
    pub rounds: usize,
}

impl LoadParams {
    /// A full run: 10 s phases, 3 rounds (warm-up and connections per benchmark).
    pub const FULL: LoadParams = LoadParams {
        full: true,
        phase: Duration::from_secs(10),
        max_requests: None,
        warmup: 0,
        conns: 1,
        rounds: 3,
    };

    /// A smoke run: 100 requests per phase (10 s at the most), one round.
    pub const SMOKE: LoadParams = LoadParams {
        full: false,
        phase: Duration::from_secs(10),
        max_requests: Some(100),
        warmup: 0,
        conns: 1,
        rounds: 1,
    };

    /// `full` under `cargo bench`, else `smoke`; then the environment's overrides.
    pub fn from_env(full: LoadParams, smoke: LoadParams) -> Result<LoadParams> {
        let mut p = if full_run() { full } else { smoke };
        if let Some(n) = env_number("AEGIS_BENCH_SECS")? {
            p.phase = Duration::from_secs(n.max(1));
        }
        if let Some(n) = env_count("AEGIS_BENCH_CONNS")? {
            p.conns = n;
        }
        if let Some(n) = env_count("AEGIS_BENCH_ROUNDS")? {
            p.rounds = n;
        }
        Ok(p)
    }

    /// `"full"` or `"smoke"`, as the reports say.
    pub fn mode(&self) -> &'static str {
        if self.full { "full" } else { "smoke" }
    }
}

/// The gateway binary a benchmark runs: `$<gateway_env>` when that is set, else `aegis-gateway`
/// next to this executable (`target/release` under `cargo bench`); `aegis-controlplane` must be
/// there too. Without them a full run is an error that says how to build them (`build`), and a
/// smoke run is skipped: `Ok(None)`, with a message on stderr.
pub fn gateway_binary(
    bench: &str,
    full: bool,
    gateway_env: Option<&str>,
    build: &str,
) -> Result<Option<PathBuf>> {
    let gateway = match gateway_env.and_then(std::env::var_os) {
        Some(p) => Ok(PathBuf::from(p)),
        None => binary("aegis-gateway").map_err(|e| e.to_string()),
    };
    let controlplane = binary("aegis-controlplane").map_err(|e| e.to_string());
    match (gateway, controlplane) {
        (Ok(gateway), Ok(_)) => Ok(Some(gateway)),
        (Err(missing), _) | (_, Err(missing)) => {
            if full {
                return Err(LoadError::NotBuilt {
                    missing,
                    build: build.to_owned(),
                });
            }
            eprintln!("{bench} smoke run skipped: {missing}");
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process

/// `aegis-gateway run` as a child process (id [`GATEWAY_ID`], tenant `acme`, `--noop-endpoint`,
/// JSON logs, `RUST_LOG=warn`) with its own data directory; killed on drop.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts it; [`GatewayProcess::wait_ready`] or [`GatewayProcess::wait_version`] waits
    /// until it serves.
    pub fn start(bin: &Path, nats_url: &str, trust: &Path) -> Result<GatewayProcess> {
        let dir = tempfile::Builder::new()
            .prefix("aegis-bench-gw-")
            .tempdir()?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.path().join("gateway.log");
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .args(["run", "--id", GATEWAY_ID, "--tenant", ACME, "--data"])
            .arg(dir.path().join("data"))
            .arg("--trust")
            .arg(trust)
            .args(["--listen", &addr.to_string(), "--nats", nats_url])
            .args(["--noop-endpoint", "--log-format", "json"])
            .env("RUST_LOG", "warn")
            // As in production: no backtrace capture. With RUST_BACKTRACE=1 (which test
            // environments often export) every `anyhow` error built on the decision path
            // captures one (see gateway/README.md, "Benchmarks").
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .env_remove("AEGIS_NATS_CREDS")
            .env_remove("AEGIS_NATS_USER")
            .env_remove("AEGIS_NATS_PASSWORD")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| LoadError::Start {
                bin: bin.display().to_string(),
                source,
            })?;
        Ok(GatewayProcess {
            child: Some(child),
            addr,
            log,
            _dir: dir,
        })
    }

    /// The process id, for [`CpuMeter`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last 30 lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        crate::stack::tail(&text, 30)
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        Ok(HttpClient::connect(self.addr)?.request("GET", path, &[], b"")?)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Value> {
        let (_, body) = self.get("/v1/status")?;
        Ok(serde_json::from_str(&body)?)
    }

    /// `/v1/status`'s `decision_log` counters (null when it does not answer).
    pub fn decision_log(&self) -> Value {
        self.status()
            .map(|s| s["decision_log"].clone())
            .unwrap_or_default()
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Until `/readyz` answers 200 (the bundle verified and in force).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                let log = self.log_tail();
                return Err(LoadError::ExitedDuringStart { status, log });
            }
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log_tail();
                return Err(LoadError::NotReady { timeout, log });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Until `acme`'s bundle in force is at least `version`.
    pub fn wait_version(&mut self, version: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                let log = self.log_tail();
                return Err(LoadError::Exited { status, log });
            }
            let v = self
                .status()
                .ok()
                .and_then(|s| s["tenants"][0]["version"].as_u64());
            if v.is_some_and(|v| v >= version) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log_tail();
                return Err(LoadError::NotOnVersion {
                    version,
                    timeout,
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Until every decision event is shipped (nothing spooled or in flight); how long that took.
    pub fn wait_drained(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let decision_log = self.status()?["decision_log"].clone();
            if decision_log["spool_events"] == 0 && decision_log["in_flight"] == 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(LoadError::NotDrained {
                    timeout,
                    decision_log,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A day-long token for `finance-agent` called by `planner` in `acme`, from the stack's issuer.
pub fn finance_token(stack: &Stack) -> Result<String> {
    let mut request = stack.token_request(ACME, "finance-agent", &["planner"]);
    request.ttl_seconds = 24 * 3600;
    Ok(aegis_core::token::issue(&request, &stack.acme().issuer)?)
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// The load generator's runtime: one thread (`threads` ≤ 1) or a multi-thread runtime.
pub fn client_runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    })
}

/// What every request of a phase is made of: a `POST` to one endpoint with a bearer token, the
/// bodies in turn (request `i` sends body `i mod n`), each with the decision it must get.
#[derive(Debug)]
pub struct Target {
    /// What the reports call it.
    pub name: &'static str,
    pub path: &'static str,
    pub addr: SocketAddr,
    host: HeaderValue,
    authorization: HeaderValue,
    calls: Vec<(Bytes, &'static str)>,
}

impl Target {
    /// `calls`: the JSON bodies and the decision each must get.
    pub fn new(
        name: &'static str,
        path: &'static str,
        addr: SocketAddr,
        token: &str,
        calls: Vec<(Bytes, &'static str)>,
    ) -> Result<Target> {
        Ok(Target {
            name,
            path,
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            authorization: HeaderValue::from_str(&format!("Bearer {token}"))?,
            calls,
        })
    }

    fn call_of(&self, i: u64) -> Option<&(Bytes, &'static str)> {
        let n = self.calls.len() as u64;
        self.calls.get(usize::try_from(i.checked_rem(n)?).ok()?)
    }

    /// The decision request `i` must get.
    pub fn expected(&self, i: u64) -> &'static str {
        self.call_of(i).map_or("", |c| c.1)
    }
}

/// An answer's status and body, or the error that left the request without one.
pub type Answer = Result<(u16, Bytes)>;

/// How a benchmark judges and counts the answers of a phase.
pub trait Tally: Default + Send + 'static {
    /// Counts the answer to a request that must get the decision `expected`.
    fn add(&mut self, answer: &Answer, expected: &str);
    /// Adds the counts of another connection.
    fn merge(&mut self, other: &Self);
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Request `i` on a keep-alive connection: status and body.
async fn call(sender: &mut Sender, t: &Target, i: u64) -> Answer {
    sender.ready().await?;
    let body = t.call_of(i).map(|c| c.0.clone()).unwrap_or_default();
    let request = hyper::Request::post(t.path)
        .header(HOST, t.host.clone())
        .header(AUTHORIZATION, t.authorization.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// What one connection measured.
#[derive(Debug, Default)]
struct ConnResult<T> {
    latencies_ns: Vec<u64>,
    tally: T,
    /// Open loop: the generator's own lateness (send time after the later of the scheduled
    /// time and the connection becoming free), summed and at most.
    lateness_sum_ns: u64,
    lateness_max_ns: u64,
    last_done: Option<Instant>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One open-loop connection: requests `c`, `c + conns`, ... of `total`, each scheduled at
/// `start + i × interval`.
async fn open_conn<T: Tally>(
    target: Arc<Target>,
    c: usize,
    conns: usize,
    total: u64,
    start: Instant,
    interval_ns: f64,
) -> Result<ConnResult<T>> {
    let mut sender = connect(target.addr).await?;
    let mut out = ConnResult::<T> {
        latencies_ns: Vec::with_capacity((total / conns as u64 + 1) as usize),
        ..ConnResult::default()
    };
    let mut free_at = start;
    let mut i = c as u64;
    while i < total {
        let scheduled = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
        if Instant::now() < scheduled {
            tokio::time::sleep_until(scheduled.into()).await;
        }
        let sent = Instant::now();
        let result = call(&mut sender, &target, i).await;
        let done = Instant::now();
        // Waiting for an earlier answer on this connection is the server's doing: charged.
        // Waking up late from the timer is the generator's: not charged, reported.
        let queued = free_at.saturating_duration_since(scheduled);
        out.latencies_ns
            .push(nanos(done.duration_since(sent) + queued));
        let late = nanos(sent.saturating_duration_since(scheduled.max(free_at)));
        out.lateness_sum_ns += late;
        out.lateness_max_ns = out.lateness_max_ns.max(late);
        if result.is_err() {
            sender = connect(target.addr).await?;
        }
        out.tally.add(&result, target.expected(i));
        free_at = done;
        out.last_done = Some(done);
        i += conns as u64;
    }
    Ok(out)
}

/// One closed-loop connection: back to back until `deadline` (or the shared budget is spent).
async fn closed_conn<T: Tally>(
    target: Arc<Target>,
    c: usize,
    conns: usize,
    deadline: Instant,
    budget: Option<Arc<AtomicU64>>,
) -> Result<ConnResult<T>> {
    let mut sender = connect(target.addr).await?;
    let mut out = ConnResult::<T>::default();
    let mut i = c as u64;
    while Instant::now() < deadline {
        if let Some(b) = &budget
            && b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let sent = Instant::now();
        let result = call(&mut sender, &target, i).await;
        let done = Instant::now();
        out.latencies_ns.push(nanos(done.duration_since(sent)));
        if result.is_err() {
            sender = connect(target.addr).await?;
        }
        out.tally.add(&result, target.expected(i));
        out.last_done = Some(done);
        i += conns as u64;
    }
    Ok(out)
}

/// A phase's merged results.
#[derive(Debug, Clone, Default)]
pub struct Phase<T> {
    /// Requests answered or failed.
    pub requests: u64,
    /// From the start of the phase to its last answer.
    pub secs: f64,
    /// Sorted.
    pub latencies_ns: Vec<u64>,
    pub tally: T,
    /// Open loop: the generator's lateness (not charged to the server), mean and max.
    pub lateness_mean_us: f64,
    pub lateness_max_us: f64,
    /// CPU seconds during the phase of each process measured (NaN: unknown).
    pub cpu: Vec<f64>,
}

impl<T> Phase<T> {
    /// `count` per second of the phase.
    pub fn per_sec_of(&self, count: u64) -> f64 {
        if self.secs > 0.0 {
            count as f64 / self.secs
        } else {
            0.0
        }
    }
    /// Answers per second (any answer).
    pub fn per_sec(&self) -> f64 {
        self.per_sec_of(self.requests)
    }
    /// The `q` quantile of the latency, µs.
    pub fn q_us(&self, q: f64) -> f64 {
        quantile(&self.latencies_ns, q) as f64 / 1e3
    }
    /// The highest latency, µs.
    pub fn max_us(&self) -> f64 {
        self.latencies_ns.last().copied().unwrap_or(0) as f64 / 1e3
    }
    /// CPU µs per request of process `which` (in the order of the pids measured).
    pub fn cpu_us_per_request(&self, which: usize) -> f64 {
        self.cpu.get(which).copied().unwrap_or(f64::NAN) * 1e6 / self.requests.max(1) as f64
    }
}

/// The latency percentiles of a phase, or the median of each over phases, µs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latencies {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latencies {
    /// One phase's.
    pub fn of<T>(phase: &Phase<T>) -> Latencies {
        Latencies {
            p50: phase.q_us(0.50),
            p90: phase.q_us(0.90),
            p99: phase.q_us(0.99),
            p999: phase.q_us(0.999),
            max: phase.max_us(),
        }
    }

    /// The median of each over `phases`.
    pub fn median_of<T>(phases: &[Phase<T>]) -> Latencies {
        let all: Vec<Latencies> = phases.iter().map(Latencies::of).collect();
        Latencies {
            p50: median_by(&all, |l| l.p50),
            p90: median_by(&all, |l| l.p90),
            p99: median_by(&all, |l| l.p99),
            p999: median_by(&all, |l| l.p999),
            max: median_by(&all, |l| l.max),
        }
    }

    /// A report table's cells `p50 | p90 | p99 | p99.9 | max`: right-aligned in columns of 6,
    /// 6, 6, 6 and 7.
    pub fn cells(&self) -> String {
        format!(
            "{:>6.0} | {:>6.0} | {:>6.0} | {:>6.0} | {:>7.0}",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }

    /// Adds `p50_us`, `p90_us`, `p99_us`, `p999_us` and `max_us` to a JSON object.
    pub fn add_to(&self, json: &mut Value) {
        if let Value::Object(map) = json {
            map.insert("p50_us".into(), self.p50.into());
            map.insert("p90_us".into(), self.p90.into());
            map.insert("p99_us".into(), self.p99.into());
            map.insert("p999_us".into(), self.p999.into());
            map.insert("max_us".into(), self.max.into());
        }
    }
}

fn merge<T: Tally>(results: Vec<ConnResult<T>>, start: Instant, cpu: Vec<f64>) -> Phase<T> {
    let mut phase = Phase::<T> {
        cpu,
        ..Phase::default()
    };
    let mut end = start;
    let (mut late_sum, mut late_max) = (0u64, 0u64);
    for r in results {
        phase.latencies_ns.extend(r.latencies_ns);
        phase.tally.merge(&r.tally);
        late_sum += r.lateness_sum_ns;
        late_max = late_max.max(r.lateness_max_ns);
        if let Some(d) = r.last_done {
            end = end.max(d);
        }
    }
    phase.latencies_ns.sort_unstable();
    phase.requests = phase.latencies_ns.len() as u64;
    phase.secs = end.duration_since(start).as_secs_f64();
    phase.lateness_mean_us = late_sum as f64 / phase.requests.max(1) as f64 / 1e3;
    phase.lateness_max_us = late_max as f64 / 1e3;
    phase
}

/// Open loop: `total` requests at `rate` per second over `conns` connections (request `i`
/// scheduled at `start + i / rate` on connection `i mod conns`); latency counts from the
/// scheduled send when the connection was still busy then (no coordinated omission). CPU time
/// of `pids` (`None`: this process) is measured over the phase.
pub async fn open_loop<T: Tally>(
    target: Arc<Target>,
    rate: u64,
    total: u64,
    conns: usize,
    pids: &[Option<u32>],
) -> Result<Phase<T>> {
    let interval_ns = 1e9 / rate as f64;
    // Connections are opened before the first scheduled send.
    let start = Instant::now() + Duration::from_millis(20);
    let cpu = CpuMeter::start(pids);
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            tokio::spawn(open_conn(
                target.clone(),
                c,
                conns,
                total,
                start,
                interval_ns,
            ))
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    Ok(merge(results, start, cpu.stop()))
}

/// Closed loop: `conns` connections send back to back for `duration` (and `max` requests in
/// all at most). CPU time of `pids` (`None`: this process) is measured over the phase.
pub async fn closed_loop<T: Tally>(
    target: Arc<Target>,
    duration: Duration,
    max: Option<u64>,
    conns: usize,
    pids: &[Option<u32>],
) -> Result<Phase<T>> {
    let budget = max.map(|n| Arc::new(AtomicU64::new(n)));
    let cpu = CpuMeter::start(pids);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            tokio::spawn(closed_conn(
                target.clone(),
                c,
                conns,
                deadline,
                budget.clone(),
            ))
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    Ok(merge(results, start, cpu.stop()))
}

// ---------------------------------------------------------------------------------------------
// Figures

/// The median (the mean of the two middle values for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s.get(n / 2).copied().unwrap_or(0.0),
        n => {
            (s.get(n / 2 - 1).copied().unwrap_or(0.0) + s.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

/// The median of `f` over `items`.
pub fn median_by<T>(items: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&items.iter().map(f).collect::<Vec<_>>())
}

/// The `q` quantile (0..=1) of sorted values, nearest rank; 0 for none.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// The CPU model, from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// The CPUs this process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The machine a benchmark ran on and how loaded it was (shared machines): the load average
/// when the benchmark started and when its load ended.
#[derive(Debug, Clone)]
pub struct Machine {
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl Machine {
    /// Reads the load average at the start.
    pub fn start() -> Machine {
        Machine {
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }

    /// Reads the load average at the end.
    pub fn end(&mut self) {
        self.loadavg_end = loadavg();
    }

    /// The report's `machine:` line.
    pub fn line(&self) -> String {
        format!(
            "machine: {} x {}; load average {} at start, {} at end (shared machine)",
            cpus(),
            cpu_model(),
            self.loadavg_start,
            self.loadavg_end
        )
    }

    /// Adds `cpus`, `cpu`, `loadavg_start` and `loadavg_end` to a JSON object.
    pub fn add_to(&self, json: &mut Value) {
        if let Value::Object(map) = json {
            map.insert("cpus".into(), cpus().into());
            map.insert("cpu".into(), cpu_model().into());
            map.insert("loadavg_start".into(), self.loadavg_start.clone().into());
            map.insert("loadavg_end".into(), self.loadavg_end.clone().into());
        }
    }
}

/// CPU time (user + system, all threads) a process has used so far, from `/proc/<pid>/stat`
/// (clock ticks of 10 ms; `None`: this process); `None` when it cannot be read (not Linux,
/// process gone).
pub fn process_cpu(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the line; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    const TICKS_PER_SEC: u64 = 100;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SEC,
    ))
}

/// CPU time used by a set of processes between two readings.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<Option<u32>>,
    start: Vec<Option<Duration>>,
}

impl CpuMeter {
    /// Starts measuring `pids` (`None`: this process).
    pub fn start(pids: &[Option<u32>]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            start: pids.iter().map(|p| process_cpu(*p)).collect(),
        }
    }

    /// CPU seconds each process used since [`CpuMeter::start`] (NaN when unknown).
    pub fn stop(&self) -> Vec<f64> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(pid, start)| match (start, process_cpu(*pid)) {
                (Some(a), Some(b)) => b.saturating_sub(*a).as_secs_f64(),
                _ => f64::NAN,
            })
            .collect()
    }
}
