//! Benchmark: recorded decisions re-evaluated per second by a replay that reads them from
//! JetStream, next to a raw evaluation loop over the same inputs in the same run, and the peak
//! memory of replays of growing slices.
//!
//! ```text
//! cargo bench -p aegis-replayer --bench replay
//! ```
//!
//! One run, against one `nats-server` started here (JetStream, but *without*
//! `sync_interval: always`: the data is loaded as fast as the server takes it; reading is what
//! is measured, and reads do not fsync), with the topology provisioned as `Topology::single()`:
//!
//! 1. N decision events as a gateway enforcing the finance template (log masking removed, so
//!    they replay) writes them — a mix of agents, callers, currencies and amounts — published
//!    to `aegis.decisions.acme.gw1`, pipelined (bounded in-flight acks);
//! 2. replays (`run::replay`: `SliceReader` + `Engine`, every core) of sequences 1..=N/4,
//!    1..=N/2 and 1..=N against a stricter candidate (approval above 1,000 instead of 5,000),
//!    each with the peak resident memory sampled while it runs;
//! 3. the raw loop: `Evaluator::decide` of the same candidate on the same inputs
//!    (`DecisionEvent::replay_input()`, built in memory) on as many threads as the engine has
//!    workers, no NATS. The inputs cycle over the first 65,536 events (the generator's inputs
//!    repeat far sooner), so the raw loop's memory does not grow with N either.
//!
//! Prints a table and one JSON line (`{"bench":"replay",...}`). Without `--bench` (what
//! `cargo test --all-targets` runs) it is a smoke run of 4,000 decisions that takes seconds;
//! `AEGIS_BENCH_N=<n>` overrides the count.
// Indexes are taken modulo the length of the array they index.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::indexing_slicing)]

use aegis_core::decision::DecideInput;
use aegis_core::decision_log::{self, DecisionEvent};
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegis_replayer::engine::{Engine, EngineOptions};
use aegis_replayer::slice::{Bounds, Filter};
use aegis_replayer::{Candidate, SliceSpec};
use aegis_tests::{NatsServer, NatsServerOptions};
use anyhow::{Context as _, bail};
use async_nats::jetstream;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FINANCE: &str = include_str!("../../policies/templates/finance/policy.yaml");
const SUBJECT: &str = "aegis.decisions.acme.gw1";
/// Publish acks in flight at most.
const IN_FLIGHT: usize = 2000;
/// Distinct inputs the raw loop keeps in memory (it cycles over them).
const RAW_POOL: usize = 65_536;

// ---------------------------------------------------------------------------------------------
// Memory

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples VmRSS every 5 ms; `peak` is the highest since the last `reset`.
#[derive(Debug)]
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(status_kb("VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler {
            peak,
            stop,
            handle: Some(handle),
        }
    }
    fn reset(&self) {
        self.peak.store(status_kb("VmRSS:"), Ordering::Relaxed);
    }
    fn peak_kb(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(status_kb("VmRSS:"))
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap_or_else(|_| unreachable!())
}

fn candidate(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> anyhow::Result<Candidate> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("policy.yaml");
    let unmasked = FINANCE.replace("  log_masking:\n    params: [account_number]\n", "");
    if unmasked.contains("log_masking") || !unmasked.contains("lte: 5000\n") {
        bail!("the finance template changed: update the benchmark's edits");
    }
    std::fs::write(&path, edit(unmasked))?;
    Candidate::from_policy_tree(&[path], &tenant()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The recorded call of template `k` (agents, callers, currencies, amounts): finance calls
/// mostly within the thresholds, some above, some in a foreign currency, some by a caller
/// the policy does not allow, some by an agent with no policy.
fn input(k: usize) -> anyhow::Result<DecideInput> {
    const AMOUNTS: [u64; 12] = [
        40, 120, 480, 900, 1_250, 2_000, 3_300, 4_900, 5_000, 7_500, 18_000, 30_000,
    ];
    const CURRENCIES: [&str; 4] = ["USD", "EUR", "GBP", "JPY"];
    const CALLERS: [&[&str]; 4] = [
        &["planner"],
        &["treasury-ui"],
        &["planner", "treasury-ui"],
        &["web-scraper", "planner"],
    ];
    let agent = if k.is_multiple_of(17) {
        "research-agent"
    } else {
        "finance-agent"
    };
    let amount = AMOUNTS[k % AMOUNTS.len()] + (k / AMOUNTS.len() % 50) as u64;
    let currency = CURRENCIES[(k / 3) % CURRENCIES.len()];
    let chain = CALLERS[(k / 7) % CALLERS.len()];
    let params: Map<String, Value> = json!({
        "amount": amount,
        "currency": currency,
        "account_number": format!("DE8937040044053201{:04}", k % 10_000),
        "memo": format!("invoice INV-{k:06}"),
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    Ok(DecideInput {
        tenant: tenant(),
        agent_id: AgentId::new(agent)?,
        call_chain: chain
            .iter()
            .map(|a| AgentId::new(*a))
            .collect::<Result<_, _>>()?,
        tool_id: ToolId::new("payments")?,
        action: "create_payment".into(),
        params,
        context: Map::new(),
    })
}

/// Distinct call templates (the inputs of event `i` are those of template `i % TEMPLATES`).
const TEMPLATES: usize = 4096;

/// The event a gateway enforcing `recorder` wrote for event `i`, from its template's decision.
fn event(
    i: usize,
    template: &(DecideInput, aegis_core::decision::Decision, String),
) -> DecisionEvent {
    let (input, decision, digest) = template;
    DecisionEvent {
        id: format!("dec-{i:032x}"),
        kind: decision_log::DECISION_TYPE.into(),
        schema_version: decision_log::SCHEMA_VERSION,
        time: "2026-11-26T10:00:00.000Z".into(),
        tenant: input.tenant.clone(),
        gateway: "gw1".into(),
        site: None,
        request_id: Some(format!("req-{i}")),
        identity_verified: true,
        agent_id: Some(input.agent_id.clone()),
        call_chain: input.call_chain.clone(),
        tool_id: Some(input.tool_id.clone()),
        action: Some(input.action.clone()),
        params_digest: digest.clone(),
        params: input.params.clone(),
        masked_params: Vec::new(),
        context: Map::new(),
        decision: decision.decision,
        reasons: decision.reasons.clone(),
        policy: decision.policy.clone(),
        rule: decision.rule.clone(),
        policy_version: Some(1),
        bundle_digest: Some(format!("sha256:{}", "a".repeat(64))),
        approval_id: None,
        latency_us: 80 + (i % 200) as u64,
        rollout_stage: None,
        shadow: None,
        trace_id: None,
        span_id: None,
    }
}

async fn publish(
    js: &jetstream::Context,
    templates: &[(DecideInput, aegis_core::decision::Decision, String)],
    n: usize,
) -> anyhow::Result<u64> {
    let mut pending: VecDeque<jetstream::context::PublishAckFuture> =
        VecDeque::with_capacity(IN_FLIGHT);
    let mut bytes = 0u64;
    for i in 0..n {
        if pending.len() >= IN_FLIGHT
            && let Some(fut) = pending.pop_front()
        {
            fut.await.context("publish ack")?;
        }
        let payload = event(i, &templates[i % templates.len()]).to_bytes()?;
        bytes += payload.len() as u64;
        pending.push_back(
            js.publish(SUBJECT, payload.into())
                .await
                .context("publishing")?,
        );
    }
    while let Some(fut) = pending.pop_front() {
        fut.await.context("publish ack")?;
    }
    Ok(bytes)
}

/// `Evaluator::decide` of `candidate` over `n` inputs cycling over `inputs`, on `workers`
/// threads (input `i` on thread `i % workers`, as the engine deals them). Returns the denies.
fn raw_loop(candidate: &Candidate, inputs: &[DecideInput], n: usize, workers: usize) -> u64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let evaluator = candidate.evaluator.clone();
                s.spawn(move || {
                    let mut denies = 0u64;
                    let mut i = w;
                    while i < n {
                        if let Some(input) = inputs.get(i % inputs.len()) {
                            let d = evaluator.decide(input);
                            if d.decision == aegis_core::decision::DecisionKind::Deny {
                                denies += 1;
                            }
                            std::hint::black_box(d);
                        }
                        i += workers;
                    }
                    denies
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    })
}

#[derive(Debug, Clone, Copy)]
struct ReplayRun {
    n: usize,
    secs: f64,
    peak_kb: u64,
}

fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = match std::env::var("AEGIS_BENCH_N") {
        Ok(v) if !v.is_empty() => v.parse().context("AEGIS_BENCH_N")?,
        _ if full => 1_000_000,
        _ => 4_000,
    };
    if n < 4 {
        bail!("AEGIS_BENCH_N must be at least 4");
    }
    let dir = tempfile::tempdir()?;
    let recorder = candidate(dir.path(), "recorded", |p| p)?;
    let strict = candidate(dir.path(), "candidate", |p| {
        p.replace("lte: 5000\n", "lte: 1000\n")
    })?;
    let templates: Vec<_> = (0..TEMPLATES)
        .map(|k| {
            let input = input(k)?;
            let decision = recorder.evaluator.decide(&input);
            let digest = decision_log::params_digest(&input.params);
            Ok((input, decision, digest))
        })
        .collect::<anyhow::Result<_>>()?;

    // No `sync_interval: always`: loading the data is not what is measured.
    let server = NatsServer::start_with(NatsServerOptions::default().without_sync_always())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let engine = Engine::new(strict.evaluator.clone(), EngineOptions::default());
    let workers = engine.workers();
    let sampler = RssSampler::start();

    let (js, load_secs, bytes) = rt.block_on(async {
        let client = async_nats::connect(server.url()).await?;
        let js = jetstream::new(client);
        aegis_nats::provision(&js, &aegis_nats::Topology::single())
            .await
            .map_err(|e| anyhow::anyhow!("provisioning: {e}"))?;
        let start = Instant::now();
        let bytes = publish(&js, &templates, n).await?;
        anyhow::Ok((js, start.elapsed().as_secs_f64(), bytes))
    })?;

    // Replays of growing slices.
    let mut runs = Vec::new();
    for slice in [n / 4, n / 2, n] {
        sampler.reset();
        let spec = SliceSpec {
            tenant: tenant(),
            bounds: Bounds::Sequence {
                from: 1,
                to: Some(slice as u64),
            },
            filter: Filter::default(),
        };
        let start = Instant::now();
        let report = rt.block_on(aegis_replayer::run::replay(
            &js,
            &spec,
            &strict,
            EngineOptions::default(),
        ))?;
        let secs = start.elapsed().as_secs_f64();
        if report.counts.decisions != slice as u64 || report.counts.replayed != slice as u64 {
            bail!(
                "replay of {slice} read {} decisions and replayed {}",
                report.counts.decisions,
                report.counts.replayed
            );
        }
        if report.counts.changed == 0 {
            bail!("the stricter candidate changed nothing: the workload is wrong");
        }
        runs.push(ReplayRun {
            n: slice,
            secs,
            peak_kb: sampler.peak_kb(),
        });
    }

    // The raw loop over the same inputs.
    let inputs: Vec<DecideInput> = (0..n.min(RAW_POOL))
        .filter_map(|i| event(i, &templates[i % templates.len()]).replay_input())
        .collect();
    sampler.reset();
    let start = Instant::now();
    let denies = raw_loop(&strict, &inputs, n, workers);
    let raw_secs = start.elapsed().as_secs_f64();
    let raw_peak = sampler.peak_kb();
    std::hint::black_box(denies);
    drop(sampler);

    let raw_rate = n as f64 / raw_secs;
    let full_run = runs.last().copied().unwrap_or(ReplayRun {
        n,
        secs: f64::NAN,
        peak_kb: 0,
    });
    let replay_rate = full_run.n as f64 / full_run.secs;
    let ratio = replay_rate / raw_rate;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "replay benchmark: N = {n}, {workers} workers, {cores} cores, nats-server {}",
        server.version()
    );
    println!(
        "load: {n} events ({:.1} MB) published in {load_secs:.2}s ({:.0}/s)",
        bytes as f64 / 1e6,
        n as f64 / load_secs
    );
    println!(
        "{:<28} {:>12} {:>10} {:>14}",
        "phase", "decisions", "secs", "decisions/s"
    );
    println!(
        "{:<28} {:>12} {:>10.2} {:>14.0}",
        "raw evaluation loop", n, raw_secs, raw_rate
    );
    for r in &runs {
        println!(
            "{:<28} {:>12} {:>10.2} {:>14.0}   peak RSS {:.1} MB",
            format!("replay from JetStream 1..={}", r.n),
            r.n,
            r.secs,
            r.n as f64 / r.secs,
            r.peak_kb as f64 / 1024.0
        );
    }
    println!(
        "replay / raw: {:.1}%   (raw loop peak RSS {:.1} MB, its {} inputs in memory)",
        ratio * 100.0,
        raw_peak as f64 / 1024.0,
        inputs.len()
    );
    let slices: Vec<Value> = runs
        .iter()
        .map(|r| json!({"n": r.n, "secs": r.secs, "per_sec": r.n as f64 / r.secs, "peak_rss_kb": r.peak_kb}))
        .collect();
    println!(
        "{}",
        json!({
            "bench": "replay", "n": n, "workers": workers, "cores": cores,
            "raw_per_sec": raw_rate, "replay_per_sec": replay_rate, "ratio": ratio,
            "load_secs": load_secs, "slices": slices, "raw_peak_rss_kb": raw_peak,
        })
    );
    Ok(())
}
