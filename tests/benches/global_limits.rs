#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Benchmark: the decision latency of a call under a global budget (counted in JetStream KV,
//! one compare-and-set round trip) next to the same call under a per-gateway budget, and a
//! no-op baseline, against the same real `aegis-gateway` process in the same run.
//!
//! ```text
//! cargo build --release -p aegis-gateway -p aegis-controlplane --bins
//! cargo bench -p aegis-tests --bench global_limits
//! ```
//!
//! The deployment is `aegis_tests::stack::Stack`: one `nats-server` (JetStream,
//! `sync_interval: always`: every KV write is fsynced, as in production), the real control
//! plane, and the finance template with a second payment rule added: `pay` on tool `payments`
//! keeps its budget per gateway (`scope: gateway`), `pay-global` on tool `ledger` is the same
//! rule with the budget `scope: global`; both allow a 3,000 payment and neither limit is ever
//! reached. One gateway (`--noop-endpoint`, JSON logs, `RUST_LOG=warn`, no `RUST_BACKTRACE`)
//! serves `acme`; the binary is the one next to this executable (`target/release` under `cargo
//! bench`), or `$AEGIS_GATEWAY_BIN`.
//!
//! The load generator runs in this process: hyper 1, HTTP/1.1 keep-alive, a few connections
//! (4) sending back to back (closed loop), for each of the three targets in turn — `/v1/noop`,
//! the local-budget payment, the global-budget payment — for a fixed time per phase (10 s),
//! 3 rounds, the order rotating each round. Every answer is checked (200 and `allow`; the
//! noop's constant answer). Between phases the benchmark waits until the gateway has shipped
//! every decision event, so no phase pays for another's. Reported per target: requests/s,
//! latency p50 / p90 / p99 / p99.9 / max, CPU of the gateway and of nats-server per request
//! (from `/proc`), and for the global target the KV writes per call (from the sequence of
//! stream `KV_aegis-limits`; 1.0 when every call took one compare-and-set).
//!
//! Without `--bench` (what `cargo test --all-targets` runs) it is a smoke run of a few hundred
//! requests against the debug binaries; it is skipped with a message when they are not built.
//! Environment: `AEGIS_BENCH_SECS`, `AEGIS_BENCH_CONNS`, `AEGIS_BENCH_ROUNDS`,
//! `AEGIS_GATEWAY_BIN`.

#[path = "common/mod.rs"]
mod common;

use aegis_tests::controlplane::binary;
use aegis_tests::gateway::{HttpClient, free_port};
use aegis_tests::stack::{ACCOUNT, ACME, Stack, finance_policy_for};
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
/// The tool whose payment rule has the global budget.
const GLOBAL_TOOL: &str = "ledger";

#[derive(Debug, Clone)]
struct Params {
    full: bool,
    phase: Duration,
    /// Requests per phase at most (smoke runs).
    max_requests: Option<u64>,
    warmup: u64,
    conns: usize,
    rounds: usize,
}

impl Params {
    fn from_env() -> anyhow::Result<Params> {
        let full = common::full_run();
        let mut p = if full {
            Params {
                full,
                phase: Duration::from_secs(10),
                max_requests: None,
                warmup: 2_000,
                conns: 4,
                rounds: 3,
            }
        } else {
            Params {
                full,
                phase: Duration::from_secs(10),
                max_requests: Some(100),
                warmup: 20,
                conns: 2,
                rounds: 1,
            }
        };
        if let Some(n) = common::env_number("AEGIS_BENCH_SECS")? {
            p.phase = Duration::from_secs(n.max(1));
        }
        if let Some(n) = common::env_number("AEGIS_BENCH_CONNS")? {
            p.conns = usize::try_from(n)?.max(1);
        }
        if let Some(n) = common::env_number("AEGIS_BENCH_ROUNDS")? {
            p.rounds = usize::try_from(n)?.max(1);
        }
        Ok(p)
    }
}

/// The finance policy (limits out of reach, budget per gateway) plus `pay-global`: the `pay`
/// rule on tool `ledger` with its budget global.
fn policy() -> anyhow::Result<String> {
    let base = finance_policy_for(ACME);
    let start = base
        .find("    - id: pay\n")
        .context("the template has no pay rule")?;
    let end = base
        .find("    - id: balance\n")
        .context("the template has no balance rule")?;
    let pay = base.get(start..end).context("rule bounds")?;
    let global = pay
        .replace("- id: pay\n", "- id: pay-global\n")
        .replace("tool_id: payments\n", &format!("tool_id: {GLOBAL_TOOL}\n"))
        .replace("scope: gateway\n", "scope: global\n");
    if global.matches("scope: global\n").count() != 1 || !global.contains(GLOBAL_TOOL) {
        bail!("the template's pay rule changed:\n{pay}");
    }
    let mut out = base.clone();
    out.insert_str(end, &global);
    Ok(out)
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
        gw.wait_version(1, Duration::from_secs(60))?;
        Ok(gw)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        aegis_tests::stack::tail(&text, 30)
    }

    fn status(&self) -> anyhow::Result<serde_json::Value> {
        let (_, body) = HttpClient::connect(self.addr)?.request("GET", "/v1/status", &[], b"")?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Until `acme`'s bundle in force is at least `version`.
    fn wait_version(&mut self, version: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("aegis-gateway exited ({status}); log:\n{}", self.log_tail());
            }
            let v = self
                .status()
                .ok()
                .and_then(|s| s["tenants"][0]["version"].as_u64());
            if v.is_some_and(|v| v >= version) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "aegis-gateway not on version {version} after {timeout:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Until every decision event is shipped (nothing spooled or in flight).
    fn wait_drained(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let log = self.status()?["decision_log"].clone();
            if log["spool_events"] == 0 && log["in_flight"] == 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("decision log not drained after {timeout:?}: {log}");
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

// ---------------------------------------------------------------------------------------------
// The load generator

/// One of the three things measured.
#[derive(Debug)]
struct Target {
    name: &'static str,
    path: &'static str,
    addr: SocketAddr,
    host: HeaderValue,
    authorization: HeaderValue,
    body: Bytes,
}

impl Target {
    fn new(
        name: &'static str,
        path: &'static str,
        tool: &str,
        addr: SocketAddr,
        token: &str,
    ) -> anyhow::Result<Target> {
        let body = serde_json::json!({
            "tool_id": tool,
            "action": "create_payment",
            "params": {"amount": 3_000, "currency": "USD", "account_number": ACCOUNT},
        });
        Ok(Target {
            name,
            path,
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            authorization: HeaderValue::from_str(&format!("Bearer {token}"))?,
            body: Bytes::from(body.to_string()),
        })
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

/// One request; `Ok(None)` for a correct answer (200, allow), else what was wrong.
async fn call(sender: &mut Sender, t: &Target) -> anyhow::Result<Option<String>> {
    sender.ready().await?;
    let request = hyper::Request::post(t.path)
        .header(HOST, t.host.clone())
        .header(AUTHORIZATION, t.authorization.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(t.body.clone()))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    if status == 200 && answer["decision"] == "allow" {
        Ok(None)
    } else {
        Ok(Some(format!(
            "{status} {} {}: {}",
            answer["decision"], answer["reasons"][0]["code"], answer["reasons"][0]["message"]
        )))
    }
}

#[derive(Debug, Default)]
struct ConnResult {
    latencies_ns: Vec<u64>,
    wrong: BTreeMap<String, u64>,
    failed: u64,
    last_done: Option<Instant>,
}

async fn closed_conn(
    target: Arc<Target>,
    deadline: Instant,
    budget: Option<Arc<AtomicU64>>,
) -> anyhow::Result<ConnResult> {
    let mut sender = connect(target.addr).await?;
    let mut out = ConnResult::default();
    while Instant::now() < deadline {
        if let Some(b) = &budget
            && b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let sent = Instant::now();
        let result = call(&mut sender, &target).await;
        let done = Instant::now();
        out.latencies_ns
            .push(u64::try_from(done.duration_since(sent).as_nanos()).unwrap_or(u64::MAX));
        match result {
            Ok(None) => {}
            Ok(Some(wrong)) => *out.wrong.entry(wrong).or_insert(0) += 1,
            Err(_) => {
                out.failed += 1;
                sender = connect(target.addr).await?;
            }
        }
        out.last_done = Some(done);
    }
    Ok(out)
}

/// One closed-loop phase of one target.
#[derive(Debug, Default, Clone)]
struct Phase {
    requests: u64,
    secs: f64,
    /// Sorted.
    latencies_ns: Vec<u64>,
    wrong: BTreeMap<String, u64>,
    failed: u64,
    /// CPU seconds of the gateway and nats-server during the phase.
    cpu: [f64; 2],
    /// Writes to `KV_aegis-limits` during the phase.
    kv_writes: u64,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.requests as f64 / self.secs
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
    fn kv_writes_per_request(&self) -> f64 {
        self.kv_writes as f64 / self.requests.max(1) as f64
    }
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
        .map(|_| tokio::spawn(closed_conn(target.clone(), deadline, budget.clone())))
        .collect();
    let mut phase = Phase::default();
    let mut end = start;
    for t in tasks {
        let r = t.await??;
        phase.latencies_ns.extend(r.latencies_ns);
        for (k, v) in r.wrong {
            *phase.wrong.entry(k).or_insert(0) += v;
        }
        phase.failed += r.failed;
        if let Some(d) = r.last_done {
            end = end.max(d);
        }
    }
    let cpu = cpu.stop();
    phase.cpu = [
        cpu.first().copied().unwrap_or(f64::NAN),
        cpu.get(1).copied().unwrap_or(f64::NAN),
    ];
    phase.latencies_ns.sort_unstable();
    phase.requests = phase.latencies_ns.len() as u64;
    phase.secs = end.duration_since(start).as_secs_f64();
    Ok(phase)
}

/// The last sequence of the stream behind KV `aegis-limits`: one per write.
fn kv_sequence(stack: &Stack) -> anyhow::Result<u64> {
    stack.block_on(async {
        let name = format!("KV_{}", aegis_nats::topology::LIMITS_KV);
        let mut stream = stack.js.get_stream(&name).await?;
        Ok(stream.info().await?.state.last_sequence)
    })
}

fn main() -> anyhow::Result<()> {
    let params = Params::from_env()?;
    let mode = if params.full { "full" } else { "smoke" };
    let gateway_bin = match std::env::var_os("AEGIS_GATEWAY_BIN") {
        Some(p) => Ok(PathBuf::from(p)),
        None => binary("aegis-gateway").map_err(|e| e.to_string()),
    };
    let cp_bin = binary("aegis-controlplane").map_err(|e| e.to_string());
    let gateway_bin = match (gateway_bin, cp_bin) {
        (Ok(gw), Ok(_)) => gw,
        (Err(e), _) | (_, Err(e)) => {
            if params.full {
                bail!(
                    "{e}\nbuild them first: cargo build --release -p aegis-gateway -p aegis-controlplane --bins"
                );
            }
            eprintln!("global_limits smoke run skipped: {e}");
            return Ok(());
        }
    };
    eprintln!(
        "global_limits ({mode}): {} round(s) of {} connection(s) x {:?} per target against {}",
        params.rounds,
        params.conns,
        params.phase,
        gateway_bin.display()
    );
    let load_start = common::loadavg();

    let mut stack = Stack::start();
    let version = stack.publish_change(&policy()?);
    let mut gw = GatewayProcess::start(&gateway_bin, &stack.server.url(), &stack.trust_file)?;
    gw.wait_version(version, Duration::from_secs(60))?;
    let token = {
        let mut request = stack.token_request(ACME, "finance-agent", &["planner"]);
        request.ttl_seconds = 24 * 3600;
        aegis_core::token::issue(&request, &stack.acme().issuer)?
    };
    let pids = [gw.pid(), stack.server.pid()];
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let targets = [
        Target::new("noop", "/v1/noop", "payments", gw.addr, &token)?,
        Target::new("local budget", "/v1/decide", "payments", gw.addr, &token)?,
        Target::new("global budget", "/v1/decide", GLOBAL_TOOL, gw.addr, &token)?,
    ]
    .map(Arc::new);

    for t in &targets {
        let w = client.block_on(closed_loop(
            t.clone(),
            Duration::from_secs(30),
            Some(params.warmup),
            params.conns,
            &pids,
        ))?;
        if !w.wrong.is_empty() || w.failed > 0 {
            bail!(
                "warm-up of {}: wrong answers {:?}, {} failed; gateway log:\n{}",
                t.name,
                w.wrong,
                w.failed,
                gw.log_tail()
            );
        }
    }
    gw.wait_drained(Duration::from_secs(120))?;

    let mut results: BTreeMap<&'static str, Vec<Phase>> = BTreeMap::new();
    for round in 0..params.rounds {
        for k in 0..targets.len() {
            let t = &targets[(k + round) % targets.len()];
            let kv_before = kv_sequence(&stack)?;
            let mut phase = client.block_on(closed_loop(
                t.clone(),
                params.phase,
                params.max_requests,
                params.conns,
                &pids,
            ))?;
            phase.kv_writes = kv_sequence(&stack)? - kv_before;
            let drain = gw.wait_drained(Duration::from_secs(300))?;
            eprintln!(
                "round {} {:<13}: {:>6.0} req/s, p50 {:>6.0} µs, p99 {:>6.0} µs, max {:>7.0} µs, gateway CPU {:>5.1} µs/req, nats CPU {:>5.1} µs/req, KV writes/req {:.2}, events shipped {:.2} s after{}",
                round + 1,
                t.name,
                phase.per_sec(),
                phase.q_us(0.50),
                phase.q_us(0.99),
                phase.max_us(),
                phase.cpu_us_per_request(0),
                phase.cpu_us_per_request(1),
                phase.kv_writes_per_request(),
                drain.as_secs_f64(),
                if phase.wrong.is_empty() && phase.failed == 0 {
                    String::new()
                } else {
                    format!(
                        ", NOT ALL CORRECT: {:?}, {} failed",
                        phase.wrong, phase.failed
                    )
                }
            );
            results.entry(t.name).or_default().push(phase);
        }
    }
    let load_end = common::loadavg();

    let med = |phases: &[Phase], f: &dyn Fn(&Phase) -> f64| {
        median(&phases.iter().map(f).collect::<Vec<_>>())
    };
    println!();
    println!(
        "Aegis global limits benchmark ({mode}): a 3,000 payment under a per-gateway budget and the \
         same payment under a global budget (KV aegis-limits), next to /v1/noop, one gateway, \
         closed loop, {} connection(s) x {:.0} s, {} round(s), medians",
        params.conns,
        params.phase.as_secs_f64(),
        params.rounds
    );
    println!(
        "machine: {} x {}; load average {load_start} at start, {load_end} at end (shared machine)",
        common::cpus(),
        common::cpu_model()
    );
    println!(
        "gateway: {}; nats-server {} (JetStream, sync_interval: always)",
        gateway_bin.display(),
        stack.server.version()
    );
    println!();
    println!(
        "| target        |  req/s | runs (req/s)             |    p50 |    p90 |    p99 |  p99.9 |     max | gateway CPU µs/req | nats CPU µs/req | KV writes/req |"
    );
    println!(
        "|---------------|-------:|--------------------------|-------:|-------:|-------:|-------:|--------:|-------------------:|----------------:|--------------:|"
    );
    let mut wrong = BTreeMap::new();
    let mut failed = 0;
    for t in &targets {
        let p = results.get(t.name).map(Vec::as_slice).unwrap_or_default();
        for phase in p {
            for (k, v) in &phase.wrong {
                *wrong.entry(format!("{}: {k}", t.name)).or_insert(0) += v;
            }
            failed += phase.failed;
        }
        let runs = p
            .iter()
            .map(|x| format!("{:.0}", x.per_sec()))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {:<13} | {:>6.0} | {runs:<24} | {:>6.0} | {:>6.0} | {:>6.0} | {:>6.0} | {:>7.0} | {:>18.1} | {:>15.1} | {:>13.2} |",
            t.name,
            med(p, &Phase::per_sec),
            med(p, &|x| x.q_us(0.50)),
            med(p, &|x| x.q_us(0.90)),
            med(p, &|x| x.q_us(0.99)),
            med(p, &|x| x.q_us(0.999)),
            med(p, &Phase::max_us),
            med(p, &|x| x.cpu_us_per_request(0)),
            med(p, &|x| x.cpu_us_per_request(1)),
            med(p, &Phase::kv_writes_per_request),
        );
    }
    println!();
    println!("answers not 200 allow: {wrong:?}; failed requests: {failed}");
    let json = serde_json::json!({
        "bench": "global_limits",
        "mode": mode,
        "connections": params.conns,
        "phase_s": params.phase.as_secs_f64(),
        "rounds": params.rounds,
        "gateway": gateway_bin.display().to_string(),
        "targets": targets.iter().map(|t| {
            let p = results.get(t.name).map(Vec::as_slice).unwrap_or_default();
            serde_json::json!({
                "target": t.name,
                "req_per_s": med(p, &Phase::per_sec).round(),
                "runs_req_per_s": p.iter().map(|x| x.per_sec().round()).collect::<Vec<_>>(),
                "p50_us": med(p, &|x| x.q_us(0.50)),
                "p90_us": med(p, &|x| x.q_us(0.90)),
                "p99_us": med(p, &|x| x.q_us(0.99)),
                "p999_us": med(p, &|x| x.q_us(0.999)),
                "max_us": med(p, &Phase::max_us),
                "gateway_cpu_us_per_req": med(p, &|x| x.cpu_us_per_request(0)),
                "nats_cpu_us_per_req": med(p, &|x| x.cpu_us_per_request(1)),
                "kv_writes_per_req": med(p, &Phase::kv_writes_per_request),
            })
        }).collect::<Vec<_>>(),
        "not_correct": wrong,
        "failed": failed,
        "cpus": common::cpus(),
        "cpu": common::cpu_model(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "nats_server": stack.server.version().to_string(),
    });
    println!("{json}");
    if failed > 0 || !wrong.is_empty() {
        bail!("not every answer was a 200 allow: {wrong:?}, {failed} failed");
    }
    drop(gw);
    drop(stack);
    Ok(())
}
