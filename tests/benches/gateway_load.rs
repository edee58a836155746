#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Benchmark: `POST /v1/decide` under load against the real `aegis-gateway` binary, next to
//! `POST /v1/noop` (a constant answer through the same axum/hyper stack) in the same run.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p aegis-tests --bench gateway_load
//! ```
//!
//! The deployment is `aegis_tests::stack::Stack`: one `nats-server` (JetStream,
//! `sync_interval: always`), the real control plane, a token issuer registered for `acme` and
//! the finance template published as version 1. One gateway is started from the binaries next
//! to this executable (`target/release` under `cargo bench`) with `--noop-endpoint
//! --log-format json`, `RUST_LOG=warn` and no `RUST_BACKTRACE`; a token for `finance-agent`
//! called by `planner` is minted from the stack's issuer key.
//!
//! The load generator runs in this process on a two-thread tokio runtime (hyper 1 client,
//! HTTP/1.1 keep-alive, one request at a time per connection; one thread in smoke runs). Decide requests rotate over the
//! finance template's three payments: 3,000 (allow), 6,000 (approval_needed), 50,000 (deny);
//! every answer is checked (status 200 and the expected decision). The noop endpoint gets the
//! same requests. Two modes, for each endpoint, alternating which endpoint goes first, 3
//! rounds:
//!
//! - **open loop** at a fixed rate (2,000 requests/s for 10 s, 8 connections, request *i* of
//!   the phase scheduled at `start + i / rate` on connection `i mod 8`). Latency counts from
//!   the scheduled send time when the connection was still busy with an earlier request then
//!   (no coordinated omission: a stall is charged to every request that queued behind it); the
//!   generator's own timer lateness (tokio timers have 1 ms resolution) is not charged, and is
//!   reported. p50/p90/p99/p99.9/max.
//! - **closed loop**: 8 connections send back to back for 10 s; correct answers per second and
//!   latency.
//!
//! After each decide phase the benchmark waits until `AEGIS_DECISIONS` holds exactly one event
//! per recorded decide answer so far (more is an error, fewer after 5 minutes is an error), and
//! reports how long after the phase the last one was stored, so no phase pays for an earlier
//! phase's shipping. A `decision_log_full` refusal (the shipper's hand-off queue full) is not
//! recorded by design; it fails a smoke run and fails the "every decision recorded" goal of a
//! full run. CPU time of the gateway, nats-server and the load generator (from `/proc`) is
//! reported per request.
//!
//! Prints the tables, the goal checks (decide p99 < 1 ms at 2,000 requests/s; decide
//! throughput ≥ 50% of noop; every decision recorded at that rate) and one JSON line
//! (`{"bench":"gateway_load",...}`). Without `--bench` (what `cargo test --all-targets` runs) it
//! is a smoke run of a few hundred requests against the debug binaries, without goal checks; it
//! is skipped with a message when the binaries are not built. Environment overrides:
//! `AEGIS_BENCH_RATE`, `AEGIS_BENCH_SECS`, `AEGIS_BENCH_CONNS`, `AEGIS_BENCH_ROUNDS`,
//! `AEGIS_BENCH_CLIENT_THREADS`.

#[path = "common/mod.rs"]
mod common;

use aegis_nats::topology::DECISIONS_STREAM;
use aegis_tests::controlplane::binary;
use aegis_tests::gateway::{HttpClient, free_port};
use aegis_tests::stack::{ACCOUNT, ACME, Stack};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use common::{CpuMeter, median, quantile};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const GATEWAY_ID: &str = "gw-bench";
/// The three finance payments and the decision each must get.
const CALLS: [(u64, &str); 3] = [
    (3_000, "allow"),
    (6_000, "approval_needed"),
    (50_000, "deny"),
];

#[derive(Debug, Clone)]
struct Params {
    full: bool,
    /// Open-loop rate, requests/s.
    rate: u64,
    /// Length of each open-loop phase.
    open: Duration,
    /// Length of each closed-loop phase.
    closed: Duration,
    /// Requests per closed-loop phase at most (smoke runs).
    closed_max: Option<u64>,
    /// Warm-up requests per endpoint (closed loop, not recorded).
    warmup: u64,
    conns: usize,
    rounds: usize,
    client_threads: usize,
}

impl Params {
    fn from_env() -> anyhow::Result<Params> {
        let full = common::full_run();
        let mut p = if full {
            Params {
                full,
                rate: 2_000,
                open: Duration::from_secs(10),
                closed: Duration::from_secs(10),
                closed_max: None,
                warmup: 5_000,
                conns: 8,
                rounds: 3,
                // One thread cannot saturate the noop endpoint (it was the limit at ~100k
                // req/s); two share the machine's cores with the gateway.
                client_threads: 2,
            }
        } else {
            // A few hundred requests against the debug binary: 100 open loop at 500/s and
            // 100 closed loop per endpoint.
            Params {
                full,
                rate: 500,
                open: Duration::from_millis(200),
                closed: Duration::from_secs(10),
                closed_max: Some(100),
                warmup: 30,
                conns: 4,
                rounds: 1,
                client_threads: 1,
            }
        };
        if let Some(n) = common::env_number("AEGIS_BENCH_RATE")? {
            p.rate = n.max(1);
        }
        if let Some(n) = common::env_number("AEGIS_BENCH_SECS")? {
            p.open = Duration::from_secs(n.max(1));
            p.closed = Duration::from_secs(n.max(1));
        }
        if let Some(n) = common::env_number("AEGIS_BENCH_CONNS")? {
            p.conns = usize::try_from(n)?.max(1);
        }
        if let Some(n) = common::env_number("AEGIS_BENCH_ROUNDS")? {
            p.rounds = usize::try_from(n)?.max(1);
        }
        if let Some(n) = common::env_number("AEGIS_BENCH_CLIENT_THREADS")? {
            p.client_threads = usize::try_from(n)?.max(1);
        }
        Ok(p)
    }

    fn open_requests(&self) -> u64 {
        (self.rate as f64 * self.open.as_secs_f64())
            .round()
            .max(1.0) as u64
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process

/// `aegis-gateway run` as a child process with its own data directory; killed on drop.
struct GatewayProcess {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    fn start(bin: &Path, nats_url: &str, trust: &Path) -> anyhow::Result<GatewayProcess> {
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
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut gw = GatewayProcess {
            child: Some(child),
            addr,
            log,
            _dir: dir,
        };
        gw.wait_ready(Duration::from_secs(60))?;
        Ok(gw)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        aegis_tests::stack::tail(&text, 30)
    }

    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        Ok(HttpClient::connect(self.addr)?.request("GET", path, &[], b"")?)
    }

    /// Until `/readyz` answers 200 (the finance bundle verified and in force).
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "aegis-gateway exited during start ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "aegis-gateway not ready after {timeout:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/v1/status`'s `decision_log` counters.
    fn decision_log(&self) -> serde_json::Value {
        self.get("/v1/status")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .map(|s| s["decision_log"].clone())
            .unwrap_or_default()
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

// ---------------------------------------------------------------------------------------------
// The load generator

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Noop,
    Decide,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Noop => "/v1/noop",
            Endpoint::Decide => "/v1/decide",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Endpoint::Noop => "noop",
            Endpoint::Decide => "decide",
        }
    }
}

/// What every request of a phase is made of.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    endpoint: Endpoint,
    host: HeaderValue,
    authorization: HeaderValue,
    bodies: Vec<Bytes>,
}

impl Target {
    fn new(addr: SocketAddr, endpoint: Endpoint, token: &str) -> anyhow::Result<Target> {
        let bodies = CALLS
            .iter()
            .enumerate()
            .map(|(k, (amount, _))| {
                Bytes::from(
                    serde_json::json!({
                        "tool_id": "payments",
                        "action": "create_payment",
                        "params": {"amount": amount, "currency": "USD", "account_number": ACCOUNT},
                        "request_id": format!("bench-{k}"),
                    })
                    .to_string(),
                )
            })
            .collect();
        Ok(Target {
            addr,
            endpoint,
            host: HeaderValue::from_str(&addr.to_string())?,
            authorization: HeaderValue::from_str(&format!("Bearer {token}"))?,
            bodies,
        })
    }

    /// The decision request `i` must get.
    fn expected(&self, i: u64) -> &'static str {
        match self.endpoint {
            Endpoint::Noop => "allow",
            Endpoint::Decide => CALLS[(i % CALLS.len() as u64) as usize].1,
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request on a keep-alive connection: status and body.
async fn call(sender: &mut Sender, t: &Target, i: u64) -> anyhow::Result<(u16, Bytes)> {
    sender.ready().await?;
    let body = t.bodies[(i % t.bodies.len() as u64) as usize].clone();
    let request = hyper::Request::post(t.endpoint.path())
        .header(HOST, t.host.clone())
        .header(AUTHORIZATION, t.authorization.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The decision in an answer body (`"decision":"<kind>"`), without parsing all of it.
fn decision_of(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"decision\":\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = body.get(at..)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    std::str::from_utf8(rest.get(..end)?).ok()
}

/// How the answers of a phase came out.
#[derive(Debug, Default, Clone)]
struct Tally {
    answered: u64,
    /// Status 200 with the expected decision.
    correct: u64,
    /// Answers by status code and reason, when not the expected 200 decision.
    wrong: BTreeMap<String, u64>,
    /// Requests that got no answer (connection errors).
    failed: u64,
    /// 503 `decision_log_full` answers: refused and not recorded.
    unrecorded: u64,
    /// The first reason message of each kind of wrong answer.
    samples: BTreeMap<String, String>,
}

/// Wrong answers a gateway gives by design when it is overloaded (fail closed), rather than
/// by a bug: the decision log cannot take the event, or an evaluation ran out of its limits.
const LOAD_DENIALS: [&str; 2] = ["decision_log_full", "evaluation_error"];

impl Tally {
    fn add(&mut self, result: &anyhow::Result<(u16, Bytes)>, expected: &str) {
        match result {
            Ok((status, body)) => {
                self.answered += 1;
                let decision = decision_of(body);
                if *status == 200 && decision == Some(expected) {
                    self.correct += 1;
                } else {
                    let text = String::from_utf8_lossy(body);
                    if text.contains("decision_log_full") {
                        self.unrecorded += 1;
                    }
                    let answer = serde_json::from_str::<serde_json::Value>(&text).ok();
                    let reason = |field: &str| {
                        answer
                            .as_ref()
                            .and_then(|v| v["reasons"][0][field].as_str().map(str::to_owned))
                            .unwrap_or_default()
                    };
                    let key = format!("{status} {} {}", decision.unwrap_or("?"), reason("code"));
                    self.samples.entry(key.clone()).or_insert_with(|| {
                        if answer.is_some() {
                            reason("message")
                        } else {
                            text.chars().take(200).collect()
                        }
                    });
                    *self.wrong.entry(key).or_insert(0) += 1;
                }
            }
            Err(_) => self.failed += 1,
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.answered += other.answered;
        self.correct += other.correct;
        self.failed += other.failed;
        self.unrecorded += other.unrecorded;
        for (k, v) in &other.wrong {
            *self.wrong.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.samples {
            self.samples.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    fn all_correct(&self) -> bool {
        self.failed == 0 && self.wrong.is_empty()
    }

    /// Wrong answers other than [`LOAD_DENIALS`], or failed requests: a bug, not load.
    fn has_bugs(&self) -> bool {
        self.failed > 0
            || self
                .wrong
                .keys()
                .any(|k| !LOAD_DENIALS.iter().any(|code| k.ends_with(code)))
    }
}

/// What one connection measured.
#[derive(Debug, Default)]
struct ConnResult {
    latencies_ns: Vec<u64>,
    tally: Tally,
    /// Open loop: the generator's own lateness (send time after the later of the scheduled
    /// time and the connection becoming free), summed and at most.
    lateness_sum_ns: u64,
    lateness_max_ns: u64,
    last_done: Option<Instant>,
}

/// One open-loop connection: requests `c`, `c + conns`, ... of `total`, each scheduled at
/// `start + i × interval`.
async fn open_conn(
    target: Arc<Target>,
    c: usize,
    conns: usize,
    total: u64,
    start: Instant,
    interval_ns: f64,
) -> anyhow::Result<ConnResult> {
    let mut sender = connect(target.addr).await?;
    let mut out = ConnResult {
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
        let latency = done.duration_since(sent) + queued;
        out.latencies_ns
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        let late = u64::try_from(
            sent.saturating_duration_since(scheduled.max(free_at))
                .as_nanos(),
        )
        .unwrap_or(u64::MAX);
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
async fn closed_conn(
    target: Arc<Target>,
    c: usize,
    conns: usize,
    deadline: Instant,
    budget: Option<Arc<AtomicU64>>,
) -> anyhow::Result<ConnResult> {
    let mut sender = connect(target.addr).await?;
    let mut out = ConnResult::default();
    let mut i = c as u64;
    loop {
        if Instant::now() >= deadline {
            break;
        }
        if let Some(b) = &budget
            && b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let sent = Instant::now();
        let result = call(&mut sender, &target, i).await;
        let done = Instant::now();
        out.latencies_ns
            .push(u64::try_from(done.duration_since(sent).as_nanos()).unwrap_or(u64::MAX));
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
struct Phase {
    requests: u64,
    secs: f64,
    /// Sorted.
    latencies_ns: Vec<u64>,
    tally: Tally,
    lateness_mean_us: f64,
    lateness_max_us: f64,
    /// CPU seconds during the phase: gateway, nats-server, this process.
    cpu: [f64; 3],
}

impl Phase {
    /// Answers per second (any answer).
    fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.requests as f64 / self.secs
        } else {
            0.0
        }
    }
    /// Correct answers (200 and the expected decision) per second: the throughput.
    fn good_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.tally.correct as f64 / self.secs
        } else {
            0.0
        }
    }
    fn q_us(&self, q: f64) -> f64 {
        quantile(&self.latencies_ns, q) as f64 / 1e3
    }
    fn max_us(&self) -> f64 {
        self.latencies_ns.last().copied().unwrap_or(0) as f64 / 1e3
    }
    fn cpu_us_per_request(&self, which: usize) -> f64 {
        self.cpu[which] * 1e6 / self.requests.max(1) as f64
    }
}

fn merge(results: Vec<ConnResult>, start: Instant, cpu: [f64; 3]) -> Phase {
    let mut phase = Phase {
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

fn cpu_array(v: &[f64]) -> [f64; 3] {
    [
        v.first().copied().unwrap_or(f64::NAN),
        v.get(1).copied().unwrap_or(f64::NAN),
        v.get(2).copied().unwrap_or(f64::NAN),
    ]
}

async fn open_loop(
    target: Arc<Target>,
    rate: u64,
    total: u64,
    conns: usize,
    pids: &[Option<u32>],
) -> anyhow::Result<Phase> {
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
    Ok(merge(results, start, cpu_array(&cpu.stop())))
}

async fn closed_loop(
    target: Arc<Target>,
    duration: Duration,
    max: Option<u64>,
    conns: usize,
    pids: &[Option<u32>],
) -> anyhow::Result<Phase> {
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
    Ok(merge(results, start, cpu_array(&cpu.stop())))
}

// ---------------------------------------------------------------------------------------------
// The run

/// Events in `AEGIS_DECISIONS`.
fn stream_messages(stack: &Stack) -> anyhow::Result<u64> {
    stack.block_on(async {
        let mut stream = stack.js.get_stream(DECISIONS_STREAM).await?;
        Ok(stream.info().await?.state.messages)
    })
}

/// Waits until `AEGIS_DECISIONS` holds `expected` events; how long that took.
fn wait_shipped(
    stack: &Stack,
    gw: &GatewayProcess,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let n = stream_messages(stack)?;
        if n == expected {
            return Ok(start.elapsed());
        }
        if n > expected {
            bail!(
                "AEGIS_DECISIONS holds {n} events, more than the {expected} decide answers recorded"
            );
        }
        if start.elapsed() > timeout {
            bail!(
                "AEGIS_DECISIONS holds {n} of {expected} events {timeout:?} after the load \
                 stopped: the shipper did not keep up; decision log {}; gateway log:\n{}",
                gw.decision_log(),
                gw.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The results of one endpoint over the rounds.
#[derive(Debug, Default)]
struct Results {
    open: Vec<Phase>,
    closed: Vec<Phase>,
    /// Decide only: time from the end of a phase until every event was in the stream.
    drain_open: Vec<f64>,
    drain_closed: Vec<f64>,
    /// Decide only: the phase's events over the time from its start until the last was
    /// stored, events/s (what JetStream took while the gateway was loaded).
    stored_open: Vec<f64>,
    stored_closed: Vec<f64>,
}

fn main() -> anyhow::Result<()> {
    let params = Params::from_env()?;
    let mode = if params.full { "full" } else { "smoke" };
    // Release binaries under `cargo bench`, debug ones under `cargo test` (next to this file).
    let bins = ["aegis-gateway", "aegis-controlplane"].map(binary);
    if let Some(Err(e)) = bins.iter().find(|b| b.is_err()) {
        if params.full {
            bail!("{e}\nbuild them first: cargo build --release --bins");
        }
        eprintln!("gateway_load smoke run skipped: {e}");
        return Ok(());
    }
    let gateway_bin = bins[0]
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .clone();
    eprintln!(
        "gateway_load ({mode}): {} against {}",
        if params.full {
            format!(
                "{} rounds of open loop {} req/s x {:?} and closed loop {} connections x {:?}",
                params.rounds, params.rate, params.open, params.conns, params.closed
            )
        } else {
            "a few hundred requests".to_owned()
        },
        gateway_bin.display()
    );
    let load_start = common::loadavg();

    let stack = Stack::start();
    let gw = GatewayProcess::start(&gateway_bin, &stack.server.url(), &stack.trust_file)?;
    let token = {
        let mut request = stack.token_request(ACME, "finance-agent", &["planner"]);
        request.ttl_seconds = 24 * 3600;
        aegis_core::token::issue(&request, &stack.acme().issuer)?
    };
    let pids = [gw.pid(), stack.server.pid(), None];
    let client = if params.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(params.client_threads)
            .enable_all()
            .build()?
    };
    let targets =
        [Endpoint::Noop, Endpoint::Decide].map(|e| Target::new(gw.addr, e, &token).map(Arc::new));
    let [noop, decide] = targets;
    let (noop, decide) = (noop?, decide?);

    // Every decide answer except a `decision_log_full` refusal is one event in the stream.
    let mut recorded = stream_messages(&stack)?;
    let mut all = Tally::default();
    let warm_deadline = Duration::from_secs(30);
    for target in [&noop, &decide] {
        let w = client.block_on(closed_loop(
            target.clone(),
            warm_deadline,
            Some(params.warmup),
            params.conns,
            &pids,
        ))?;
        if target.endpoint == Endpoint::Decide {
            recorded += w.tally.answered - w.tally.unrecorded;
        }
        all.merge(&w.tally);
    }
    wait_shipped(&stack, &gw, recorded, Duration::from_secs(120))?;

    let mut results: BTreeMap<&'static str, Results> = BTreeMap::new();
    for round in 0..params.rounds {
        // Alternate which endpoint goes first.
        let order = if round % 2 == 0 {
            [&noop, &decide]
        } else {
            [&decide, &noop]
        };
        for target in order {
            let e = target.endpoint;
            for open in [true, false] {
                let phase = if open {
                    client.block_on(open_loop(
                        target.clone(),
                        params.rate,
                        params.open_requests(),
                        params.conns,
                        &pids,
                    ))?
                } else {
                    client.block_on(closed_loop(
                        target.clone(),
                        params.closed,
                        params.closed_max,
                        params.conns,
                        &pids,
                    ))?
                };
                all.merge(&phase.tally);
                let r = results.entry(e.key()).or_default();
                let mut drain = None;
                if e == Endpoint::Decide {
                    let events = phase.tally.answered - phase.tally.unrecorded;
                    recorded += events;
                    let d = wait_shipped(&stack, &gw, recorded, Duration::from_secs(300))?
                        .as_secs_f64();
                    drain = Some(d);
                    let stored = events as f64 / (phase.secs + d).max(1e-9);
                    if open {
                        r.stored_open.push(stored);
                    } else {
                        r.stored_closed.push(stored);
                    }
                }
                eprintln!(
                    "round {} {:<6} {}: {:>7.0} req/s, p50 {:>6.0} µs, p99 {:>6.0} µs, max {:>7.0} µs, gateway CPU {:>5.1} µs/req{}{}",
                    round + 1,
                    e.key(),
                    if open { "open  " } else { "closed" },
                    if open {
                        phase.per_sec()
                    } else {
                        phase.good_per_sec()
                    },
                    phase.q_us(0.50),
                    phase.q_us(0.99),
                    phase.max_us(),
                    phase.cpu_us_per_request(0),
                    drain.map_or(String::new(), |d| format!(
                        ", events all in the stream {d:.2} s after the phase"
                    )),
                    if phase.tally.all_correct() {
                        String::new()
                    } else {
                        format!(
                            ", NOT ALL CORRECT: {:?} failed {}",
                            phase.tally.wrong, phase.tally.failed
                        )
                    }
                );
                if open {
                    r.open.push(phase);
                    if let Some(d) = drain {
                        r.drain_open.push(d);
                    }
                } else {
                    r.closed.push(phase);
                    if let Some(d) = drain {
                        r.drain_closed.push(d);
                    }
                }
            }
        }
    }
    let decision_log = gw.decision_log();
    let load_end = common::loadavg();
    let empty = Results::default();
    let noop_r = results.get("noop").unwrap_or(&empty);
    let decide_r = results.get("decide").unwrap_or(&empty);

    // Report.
    let med = |phases: &[Phase], f: &dyn Fn(&Phase) -> f64| {
        median(&phases.iter().map(f).collect::<Vec<_>>())
    };
    println!();
    println!(
        "Aegis gateway load benchmark ({mode}): POST /v1/decide (finance template: 3,000 allow / \
         6,000 approval_needed / 50,000 deny, in turn) next to POST /v1/noop, same server, {} \
         round(s), medians",
        params.rounds
    );
    println!(
        "machine: {} x {}; load average {load_start} at start, {load_end} at end (shared machine)",
        common::cpus(),
        common::cpu_model()
    );
    println!(
        "gateway: {} (RUST_LOG=warn, JSON logs); nats-server {} (JetStream, sync_interval: \
         always); load generator: hyper 1 HTTP/1.1 keep-alive, {} connection(s), {} client thread(s)",
        gateway_bin.display(),
        stack.server.version(),
        params.conns,
        params.client_threads
    );
    println!();
    println!(
        "open loop at {} requests/s for {:.1} s ({} requests; latency from the scheduled send, µs):",
        params.rate,
        params.open.as_secs_f64(),
        params.open_requests()
    );
    println!(
        "| endpoint     | achieved req/s |    p50 |    p90 |    p99 |  p99.9 |     max | gateway CPU µs/req | nats CPU µs/req | generator late µs (mean/max) |"
    );
    println!(
        "|--------------|---------------:|-------:|-------:|-------:|-------:|--------:|-------------------:|----------------:|-----------------------------:|"
    );
    for (name, r) in [("/v1/noop", noop_r), ("/v1/decide", decide_r)] {
        let p = &r.open;
        println!(
            "| {name:<12} | {:>14.0} | {:>6.0} | {:>6.0} | {:>6.0} | {:>6.0} | {:>7.0} | {:>18.1} | {:>15.1} | {:>13.0} / {:<13.0} |",
            med(p, &Phase::per_sec),
            med(p, &|x| x.q_us(0.50)),
            med(p, &|x| x.q_us(0.90)),
            med(p, &|x| x.q_us(0.99)),
            med(p, &|x| x.q_us(0.999)),
            med(p, &Phase::max_us),
            med(p, &|x| x.cpu_us_per_request(0)),
            med(p, &|x| x.cpu_us_per_request(1)),
            med(p, &|x| x.lateness_mean_us),
            med(p, &|x| x.lateness_max_us),
        );
    }
    println!();
    println!(
        "closed loop, {} connections back to back for {:.1} s (µs):",
        params.conns,
        params.closed.as_secs_f64()
    );
    println!(
        "| endpoint     |  req/s | runs (req/s)             |    p50 |    p99 |  p99.9 |     max | gateway CPU µs/req | nats CPU µs/req | generator CPU µs/req |"
    );
    println!(
        "|--------------|-------:|--------------------------|-------:|-------:|-------:|--------:|-------------------:|----------------:|---------------------:|"
    );
    for (name, r) in [("/v1/noop", noop_r), ("/v1/decide", decide_r)] {
        let p = &r.closed;
        let runs = p
            .iter()
            .map(|x| format!("{:.0}", x.good_per_sec()))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {name:<12} | {:>6.0} | {runs:<24} | {:>6.0} | {:>6.0} | {:>6.0} | {:>7.0} | {:>18.1} | {:>15.1} | {:>20.1} |",
            med(p, &Phase::good_per_sec),
            med(p, &|x| x.q_us(0.50)),
            med(p, &|x| x.q_us(0.99)),
            med(p, &|x| x.q_us(0.999)),
            med(p, &Phase::max_us),
            med(p, &|x| x.cpu_us_per_request(0)),
            med(p, &|x| x.cpu_us_per_request(1)),
            med(p, &|x| x.cpu_us_per_request(2)),
        );
    }
    let open_p99s: Vec<String> = decide_r
        .open
        .iter()
        .map(|x| format!("{:.0}", x.q_us(0.99)))
        .collect();
    let decide_p99 = med(&decide_r.open, &|x| x.q_us(0.99));
    let decide_rate = med(&decide_r.open, &Phase::per_sec);
    let noop_tput = med(&noop_r.closed, &Phase::good_per_sec);
    let decide_tput = med(&decide_r.closed, &Phase::good_per_sec);
    let ratio = if noop_tput > 0.0 {
        decide_tput / noop_tput
    } else {
        0.0
    };
    println!();
    println!(
        "decision events: {recorded} in AEGIS_DECISIONS, exactly one per recorded decide \
         answer; the last of a phase was stored {:.2} s (open loop) / {:.2} s (closed loop) after \
         the phase ended, i.e. JetStream stored {:.0} / {:.0} events/s from the phase's start \
         (medians); gateway decision log at the end: {decision_log}",
        median(&decide_r.drain_open),
        median(&decide_r.drain_closed),
        median(&decide_r.stored_open),
        median(&decide_r.stored_closed),
    );
    println!(
        "answers: {} correct of {} ({} refused with decision_log_full, {} failed, not correct: {:?})",
        all.correct, all.answered, all.unrecorded, all.failed, all.wrong
    );
    for (kind, message) in &all.samples {
        println!("  first {kind:?}: {message}");
    }
    println!();
    let p99_ok = decide_p99 < 1000.0 && decide_rate >= params.rate as f64 * 0.98;
    let ratio_ok = ratio >= 0.5;
    let shipper_ok =
        all.unrecorded == 0 && median(&decide_r.stored_open) >= params.rate as f64 * 0.98;
    if params.full {
        println!(
            "goal: every decision recorded at {} requests/s (no decision_log_full, JetStream \
             stores events as fast as they come): {} ({:.0} events/s stored, {} refused)",
            params.rate,
            if shipper_ok { "met" } else { "NOT met" },
            median(&decide_r.stored_open),
            all.unrecorded
        );
        println!(
            "check: every call got the policy's decision (no fail-closed denial under load): {} ({} of {})",
            if all.all_correct() { "yes" } else { "NO" },
            all.correct,
            all.answered
        );
        println!(
            "goal: /v1/decide p99 < 1 ms at {} requests/s: {} (p99 {decide_p99:.0} µs, runs {}; achieved {decide_rate:.0} req/s)",
            params.rate,
            if p99_ok { "met" } else { "NOT met" },
            open_p99s.join(" / ")
        );
        println!(
            "goal: /v1/decide throughput ≥ 50% of /v1/noop: {} ({decide_tput:.0} vs {noop_tput:.0} req/s = {:.0}%)",
            if ratio_ok { "met" } else { "NOT met" },
            ratio * 100.0
        );
    } else {
        println!("(smoke run: no goal checks)");
    }
    println!();
    let phase_json = |p: &Phase| {
        serde_json::json!({
            "requests": p.requests,
            "secs": p.secs,
            "req_per_s": p.per_sec().round(),
            "correct_per_s": p.good_per_sec().round(),
            "correct": p.tally.correct,
            "decision_log_full": p.tally.unrecorded,
            "p50_us": p.q_us(0.50),
            "p90_us": p.q_us(0.90),
            "p99_us": p.q_us(0.99),
            "p999_us": p.q_us(0.999),
            "max_us": p.max_us(),
            "gateway_cpu_us_per_req": p.cpu_us_per_request(0),
            "nats_cpu_us_per_req": p.cpu_us_per_request(1),
            "generator_cpu_us_per_req": p.cpu_us_per_request(2),
            "generator_late_mean_us": p.lateness_mean_us,
            "generator_late_max_us": p.lateness_max_us,
        })
    };
    let endpoint_json = |r: &Results| {
        serde_json::json!({
            "open": r.open.iter().map(phase_json).collect::<Vec<_>>(),
            "closed": r.closed.iter().map(phase_json).collect::<Vec<_>>(),
            "drain_open_s": r.drain_open,
            "drain_closed_s": r.drain_closed,
            "stored_open_events_per_s": r.stored_open,
            "stored_closed_events_per_s": r.stored_closed,
        })
    };
    let json = serde_json::json!({
        "bench": "gateway_load",
        "mode": mode,
        "rate": params.rate,
        "open_s": params.open.as_secs_f64(),
        "closed_s": params.closed.as_secs_f64(),
        "connections": params.conns,
        "client_threads": params.client_threads,
        "rounds": params.rounds,
        "noop": endpoint_json(noop_r),
        "decide": endpoint_json(decide_r),
        "decide_open_p99_us_median": decide_p99,
        "decide_closed_req_per_s_median": decide_tput.round(),
        "noop_closed_req_per_s_median": noop_tput.round(),
        "throughput_ratio": (ratio * 1000.0).round() / 1000.0,
        "goal_p99_met": p99_ok,
        "goal_throughput_met": ratio_ok,
        "goal_shipper_met": shipper_ok,
        "decision_log_full": all.unrecorded,
        "not_correct": all.wrong,
        "not_correct_first_message": all.samples,
        "decision_events": recorded,
        "answers": all.answered,
        "correct": all.correct,
        "cpus": common::cpus(),
        "cpu": common::cpu_model(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "nats_server": stack.server.version().to_string(),
    });
    println!("{json}");
    // A failed request or a wrong answer is an error. Under full load, the denials an
    // overloaded gateway gives by design (LOAD_DENIALS) are reported above instead.
    if all.has_bugs() || (!params.full && !all.all_correct()) {
        bail!(
            "{} of {} answers were not the expected 200 decision ({:?}), {} requests failed",
            all.answered - all.correct,
            all.answered,
            all.wrong,
            all.failed
        );
    }
    drop(gw);
    drop(stack);
    Ok(())
}
