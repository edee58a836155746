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

use aegis_tests::load::{
    self, GatewayProcess, Latencies, LoadParams, Machine, Tally, Target, median, median_by,
};
use aegis_tests::stack::{ACCOUNT, ACME, Stack, finance_policy_for};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The tool whose payment rule has the global budget.
const GLOBAL_TOOL: &str = "ledger";

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
// The load

/// A 3,000 payment on `tool` (allowed, its limit never reached): the answer must be `allow`.
fn target(
    name: &'static str,
    path: &'static str,
    tool: &str,
    gw: &GatewayProcess,
    token: &str,
) -> anyhow::Result<Arc<Target>> {
    let body = serde_json::json!({
        "tool_id": tool,
        "action": "create_payment",
        "params": {"amount": 3_000, "currency": "USD", "account_number": ACCOUNT},
    });
    let calls = vec![(Bytes::from(body.to_string()), "allow")];
    Ok(Arc::new(Target::new(name, path, gw.addr, token, calls)?))
}

/// The answers of a phase that were not a 200 with the expected decision, and the requests
/// without an answer (or without a JSON one).
#[derive(Debug, Default, Clone)]
struct Answers {
    wrong: BTreeMap<String, u64>,
    failed: u64,
}

impl Tally for Answers {
    fn add(&mut self, answer: &load::Answer, expected: &str) {
        let parsed = answer.as_ref().ok().and_then(|(status, body)| {
            let answer = serde_json::from_slice::<serde_json::Value>(body).ok()?;
            Some((*status, answer))
        });
        let Some((status, answer)) = parsed else {
            self.failed += 1;
            return;
        };
        if status != 200 || answer["decision"] != expected {
            let wrong = format!(
                "{status} {} {}: {}",
                answer["decision"], answer["reasons"][0]["code"], answer["reasons"][0]["message"]
            );
            *self.wrong.entry(wrong).or_insert(0) += 1;
        }
    }

    fn merge(&mut self, other: &Answers) {
        for (k, v) in &other.wrong {
            *self.wrong.entry(k.clone()).or_insert(0) += v;
        }
        self.failed += other.failed;
    }
}

/// One closed-loop phase of one target.
type Phase = load::Phase<Answers>;

/// The last sequence of the stream behind KV `aegis-limits`: one per write.
fn kv_sequence(stack: &Stack) -> anyhow::Result<u64> {
    stack.block_on(async {
        let name = format!("KV_{}", aegis_nats::topology::LIMITS_KV);
        let mut stream = stack.js.get_stream(&name).await?;
        Ok(stream.info().await?.state.last_sequence)
    })
}

fn main() -> anyhow::Result<()> {
    let params = LoadParams::from_env(
        LoadParams {
            warmup: 2_000,
            conns: 4,
            ..LoadParams::FULL
        },
        LoadParams {
            warmup: 20,
            conns: 2,
            ..LoadParams::SMOKE
        },
    )?;
    let mode = params.mode();
    let Some(gateway_bin) = load::gateway_binary(
        "global_limits",
        params.full,
        Some("AEGIS_GATEWAY_BIN"),
        "cargo build --release -p aegis-gateway -p aegis-controlplane --bins",
    )?
    else {
        return Ok(());
    };
    eprintln!(
        "global_limits ({mode}): {} round(s) of {} connection(s) x {:?} per target against {}",
        params.rounds,
        params.conns,
        params.phase,
        gateway_bin.display()
    );
    let mut machine = Machine::start();

    let mut stack = Stack::start();
    let version = stack.publish_change(&policy()?);
    let mut gw = GatewayProcess::start(&gateway_bin, &stack.server.url(), &stack.trust_file)?;
    // Up with its first bundle, then on the one with `pay-global`.
    gw.wait_version(1, Duration::from_secs(60))?;
    gw.wait_version(version, Duration::from_secs(60))?;
    let token = load::finance_token(&stack)?;
    let pids = [gw.pid(), stack.server.pid()];
    let client = load::client_runtime(1)?;
    let targets = [
        target("noop", "/v1/noop", "payments", &gw, &token)?,
        target("local budget", "/v1/decide", "payments", &gw, &token)?,
        target("global budget", "/v1/decide", GLOBAL_TOOL, &gw, &token)?,
    ];

    for t in &targets {
        let w: Phase = client.block_on(load::closed_loop(
            t.clone(),
            Duration::from_secs(30),
            Some(params.warmup),
            params.conns,
            &pids,
        ))?;
        if !w.tally.wrong.is_empty() || w.tally.failed > 0 {
            bail!(
                "warm-up of {}: wrong answers {:?}, {} failed; gateway log:\n{}",
                t.name,
                w.tally.wrong,
                w.tally.failed,
                gw.log_tail()
            );
        }
    }
    gw.wait_drained(Duration::from_secs(120))?;

    let mut results: BTreeMap<&'static str, Vec<Phase>> = BTreeMap::new();
    // Writes to `KV_aegis-limits` per request of each phase.
    let mut kv_writes: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 0..params.rounds {
        for k in 0..targets.len() {
            let t = &targets[(k + round) % targets.len()];
            let kv_before = kv_sequence(&stack)?;
            let phase: Phase = client.block_on(load::closed_loop(
                t.clone(),
                params.phase,
                params.max_requests,
                params.conns,
                &pids,
            ))?;
            let kv_per_request =
                (kv_sequence(&stack)? - kv_before) as f64 / phase.requests.max(1) as f64;
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
                kv_per_request,
                drain.as_secs_f64(),
                if phase.tally.wrong.is_empty() && phase.tally.failed == 0 {
                    String::new()
                } else {
                    format!(
                        ", NOT ALL CORRECT: {:?}, {} failed",
                        phase.tally.wrong, phase.tally.failed
                    )
                }
            );
            results.entry(t.name).or_default().push(phase);
            kv_writes.entry(t.name).or_default().push(kv_per_request);
        }
    }
    machine.end();

    println!();
    println!(
        "Aegis global limits benchmark ({mode}): a 3,000 payment under a per-gateway budget and the \
         same payment under a global budget (KV aegis-limits), next to /v1/noop, one gateway, \
         closed loop, {} connection(s) x {:.0} s, {} round(s), medians",
        params.conns,
        params.phase.as_secs_f64(),
        params.rounds
    );
    println!("{}", machine.line());
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
    let mut all = Answers::default();
    for t in &targets {
        let p = results.get(t.name).map(Vec::as_slice).unwrap_or_default();
        for phase in p {
            for (k, v) in &phase.tally.wrong {
                *all.wrong.entry(format!("{}: {k}", t.name)).or_insert(0) += v;
            }
            all.failed += phase.tally.failed;
        }
        let runs = p
            .iter()
            .map(|x| format!("{:.0}", x.per_sec()))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {:<13} | {:>6.0} | {runs:<24} | {} | {:>18.1} | {:>15.1} | {:>13.2} |",
            t.name,
            median_by(p, Phase::per_sec),
            Latencies::median_of(p).cells(),
            median_by(p, |x| x.cpu_us_per_request(0)),
            median_by(p, |x| x.cpu_us_per_request(1)),
            median(kv_writes.get(t.name).map(Vec::as_slice).unwrap_or_default()),
        );
    }
    let Answers { wrong, failed } = all;
    println!();
    println!("answers not 200 allow: {wrong:?}; failed requests: {failed}");
    let mut json = serde_json::json!({
        "bench": "global_limits",
        "mode": mode,
        "connections": params.conns,
        "phase_s": params.phase.as_secs_f64(),
        "rounds": params.rounds,
        "gateway": gateway_bin.display().to_string(),
        "targets": targets.iter().map(|t| {
            let p = results.get(t.name).map(Vec::as_slice).unwrap_or_default();
            let mut json = serde_json::json!({
                "target": t.name,
                "req_per_s": median_by(p, Phase::per_sec).round(),
                "runs_req_per_s": p.iter().map(|x| x.per_sec().round()).collect::<Vec<_>>(),
                "gateway_cpu_us_per_req": median_by(p, |x| x.cpu_us_per_request(0)),
                "nats_cpu_us_per_req": median_by(p, |x| x.cpu_us_per_request(1)),
                "kv_writes_per_req": median(kv_writes.get(t.name).map(Vec::as_slice).unwrap_or_default()),
            });
            Latencies::median_of(p).add_to(&mut json);
            json
        }).collect::<Vec<_>>(),
        "not_correct": wrong,
        "failed": failed,
        "nats_server": stack.server.version().to_string(),
    });
    machine.add_to(&mut json);
    println!("{json}");
    if failed > 0 || !wrong.is_empty() {
        bail!("not every answer was a 200 allow: {wrong:?}, {failed} failed");
    }
    drop(gw);
    drop(stack);
    Ok(())
}
