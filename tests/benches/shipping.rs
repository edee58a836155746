#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
//! Benchmark: decision events shipped per second by the gateway's shipper
//! (`aegis_gateway::shipper`), next to raw async-nats JetStream publishing of the same payloads
//! in the same run.
//!
//! ```text
//! cargo bench -p aegis-tests --bench shipping
//! AEGIS_BENCH_EVENTS=20000 cargo bench -p aegis-tests --bench shipping   # another size
//! ```
//!
//! One `nats-server` started here (the test fixture's config: JetStream with
//! `sync_interval: always`, as `nats/conf/single.conf`), streams provisioned as
//! `Topology::single()` (`AEGIS_DECISIONS`, R1, 2-minute duplicate window). Each round publishes
//! N fresh decision events (~1 KB of `DecisionEvent` JSON each, unique ids) twice, in
//! alternating order:
//!
//! - **raw**: `publish_with_headers` with `Nats-Msg-Id`, at most 1,024 `PublishAckFuture`s
//!   pending (the shipper's default `max_in_flight`), timed from the first publish to the last
//!   ack;
//! - **shipper**: `shipper::start` on a fresh spool directory, `submit` of every event (a full
//!   hand-off queue is retried after 1 ms, as a busy gateway would see it refuse), timed from the
//!   first submit until `stats().shipped` reaches N.
//!
//! Each is checked against the stream (N more messages). Three rounds; the medians and their
//! ratio are reported (goal: shipper ≥ 0.5 × raw). Prints a table and one JSON line
//! (`{"bench":"shipping",...}`). Without `--bench` (what `cargo test --all-targets` runs) it is
//! a smoke run of 300 events, one round, no goal check.

use aegis_core::decision::{DecisionKind, Reason};
use aegis_core::decision_log::{self, DecisionEvent};
use aegis_core::events::RolloutStage;
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegis_gateway::shipper::{self, Outgoing, ShipError, ShipperConfig};
use aegis_nats::topology::{DECISIONS_STREAM, decisions_subject};
use aegis_tests::load::{self, CpuMeter, Machine, median};
use aegis_tests::{NatsServer, NatsServerOptions};
use anyhow::{Context as _, bail};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use std::future::IntoFuture as _;
use std::time::{Duration, Instant};

/// Unacknowledged publishes at most (the shipper's default `max_in_flight`).
const IN_FLIGHT: usize = 1024;

#[derive(Debug, Clone)]
struct Params {
    full: bool,
    /// Events per run against the server that fsyncs every write.
    events_fsync: usize,
    /// Events per run against the server that fsyncs every 2 minutes (CPU-bound).
    events_nofsync: usize,
    rounds: usize,
}

impl Params {
    fn from_env() -> anyhow::Result<Params> {
        let full = load::full_run();
        // Events per run (fsync, no fsync) and rounds.
        let (fsync, nofsync, rounds) = if full {
            (20_000, 100_000, 3)
        } else {
            (300, 300, 1)
        };
        let events = load::env_count("AEGIS_BENCH_EVENTS")?;
        Ok(Params {
            full,
            events_fsync: events.unwrap_or(fsync),
            events_nofsync: events.unwrap_or(nofsync),
            rounds: load::env_count("AEGIS_BENCH_ROUNDS")?.unwrap_or(rounds),
        })
    }
}

/// How the JetStream server stores messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    /// `sync_interval: always` (`nats/conf/single.conf`, the production setting): every write
    /// is fsynced before its ack, so the disk sets the pace.
    Fsync,
    /// nats-server's default (fsync every 2 minutes): publishing is CPU-bound, which shows the
    /// shipper's own cost.
    NoFsync,
}

impl Storage {
    fn label(self) -> &'static str {
        match self {
            Storage::Fsync => "sync_interval: always",
            Storage::NoFsync => "sync_interval: default (2 min)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Storage::Fsync => "fsync",
            Storage::NoFsync => "no_fsync",
        }
    }

    /// The fixture's server; for `NoFsync` a second `jetstream` block (the last one wins)
    /// without `sync_interval`, in `store`.
    fn start(self, store: &std::path::Path) -> anyhow::Result<NatsServer> {
        let options = match self {
            Storage::Fsync => NatsServerOptions::default(),
            Storage::NoFsync => NatsServerOptions::default().with_config(&format!(
                "jetstream {{\n  store_dir: {}\n}}",
                serde_json::Value::String(store.display().to_string())
            )),
        };
        Ok(NatsServer::start_with(options)?)
    }
}

/// A decision event as the gateway records a finance payment call (~1 KB of JSON).
fn decision_event(id: &str, i: usize) -> DecisionEvent {
    let (amount, decision, code, message, approval) = match i % 3 {
        0 => (
            3_000,
            DecisionKind::Allow,
            "allowed",
            "allowed by rule pay",
            None,
        ),
        1 => (
            6_000,
            DecisionKind::ApprovalNeeded,
            "amount_requires_approval",
            "payments above 5,000 need a treasury approver",
            Some(aegis_gateway::decide::new_id("apr")),
        ),
        _ => (
            50_000,
            DecisionKind::Deny,
            "amount_over_limit",
            "payments above 25,000 are never made by an agent",
            None,
        ),
    };
    let params = serde_json::json!({
        "amount": amount,
        "currency": "USD",
        "account_number": "DE89370400440532013000",
        "invoice": format!("INV-2026-{:06}", i % 1_000_000),
        "memo": "quarterly license renewal, cost centre 4711",
    });
    let params = params.as_object().cloned().unwrap_or_default();
    let (logged, masked) = decision_log::mask_params(&params, &["account_number".to_owned()]);
    let context = serde_json::json!({
        "session": "sess-5f0c6a2e9b1d4c7f",
        "user": "treasury-ops@acme.example",
        "channel": "slack",
    });
    DecisionEvent {
        id: id.to_owned(),
        kind: decision_log::DECISION_TYPE.to_owned(),
        schema_version: decision_log::SCHEMA_VERSION,
        time: "2026-11-26T10:00:00.123Z".to_owned(),
        tenant: TenantId::new("acme").unwrap(),
        gateway: "gw-bench".to_owned(),
        site: Some("eu-west-edge-3".to_owned()),
        request_id: Some(format!("req-{i:08}")),
        identity_verified: true,
        agent_id: Some(AgentId::new("finance-agent").unwrap()),
        call_chain: vec![AgentId::new("planner").unwrap()],
        tool_id: Some(ToolId::new("payments").unwrap()),
        action: Some("create_payment".to_owned()),
        params_digest: decision_log::params_digest(&params),
        params: logged,
        masked_params: masked,
        context: context.as_object().cloned().unwrap_or_default(),
        decision,
        reasons: vec![Reason {
            code: code.to_owned(),
            message: message.to_owned(),
            policy: Some("finance-agent".to_owned()),
            rule: Some("pay".to_owned()),
        }],
        policy: Some("finance-agent".to_owned()),
        rule: Some("pay".to_owned()),
        policy_version: Some(7),
        bundle_digest: Some(format!("sha256:{}", "3f".repeat(32))),
        approval_id: approval,
        latency_us: 87,
        rollout_stage: Some(RolloutStage::Global),
        shadow: None,
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".to_owned()),
        span_id: Some("b7ad6b7169203331".to_owned()),
    }
}

/// N events with fresh ids on `subject`.
fn events(n: usize, subject: &str) -> anyhow::Result<Vec<Outgoing>> {
    (0..n)
        .map(|i| {
            let id = aegis_gateway::decide::new_id("dec");
            let payload = decision_event(&id, i).to_bytes()?;
            Ok(Outgoing {
                subject: subject.to_owned(),
                id,
                payload: Bytes::from(payload),
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Run {
    events: usize,
    secs: f64,
    /// CPU seconds of this process and of nats-server during the run.
    cpu_self: f64,
    cpu_nats: f64,
}

impl Run {
    fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.events as f64 / self.secs
        } else {
            0.0
        }
    }
}

async fn stream_messages(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut stream = js.get_stream(DECISIONS_STREAM).await?;
    Ok(stream.info().await?.state.messages)
}

/// The baseline: publish with `Nats-Msg-Id`, ≤ `IN_FLIGHT` acks pending, until all are acked.
async fn raw(
    js: &jetstream::Context,
    msgs: Vec<Outgoing>,
    nats_pid: Option<u32>,
) -> anyhow::Result<Run> {
    let n = msgs.len();
    let cpu = CpuMeter::start(&[None, nats_pid]);
    let start = Instant::now();
    let mut pending = FuturesOrdered::new();
    let mut acked = 0usize;
    for m in msgs {
        if pending.len() >= IN_FLIGHT {
            let ack: Result<_, _> = pending.next().await.context("no pending ack")?;
            ack?;
            acked += 1;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, m.id.as_str());
        let ack = js
            .publish_with_headers(m.subject, headers, m.payload)
            .await?;
        pending.push_back(ack.into_future());
    }
    while let Some(ack) = pending.next().await {
        ack?;
        acked += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let used = cpu.stop();
    if acked != n {
        bail!("raw: {acked} of {n} acknowledged");
    }
    Ok(Run {
        events: n,
        secs,
        cpu_self: used[0],
        cpu_nats: used[1],
    })
}

/// Through the shipper: submit everything, wait until all are shipped.
async fn through_shipper(
    client: &async_nats::Client,
    msgs: Vec<Outgoing>,
    nats_pid: Option<u32>,
) -> anyhow::Result<(Run, shipper::ShipperStats, u64)> {
    let n = msgs.len() as u64;
    let spool = tempfile::Builder::new()
        .prefix("aegis-bench-spool-")
        .tempdir()?;
    let handle = shipper::start(client.clone(), ShipperConfig::new(spool.path())).await?;
    let mut refusals = 0u64;
    let cpu = CpuMeter::start(&[None, nats_pid]);
    let start = Instant::now();
    for m in msgs {
        loop {
            match handle.submit(m.clone()) {
                Ok(()) => break,
                Err(ShipError::Full) => {
                    refusals += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e @ (ShipError::Closed | ShipError::Invalid(_))) => bail!("submit: {e}"),
            }
        }
    }
    let deadline = start + Duration::from_secs(120) + Duration::from_millis(n);
    loop {
        let s = handle.stats();
        if s.shipped >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("the shipper shipped {} of {n} events: {s:?}", s.shipped);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let used = cpu.stop();
    let stats = handle.stats();
    handle.shutdown(Duration::from_secs(5)).await;
    Ok((
        Run {
            events: n as usize,
            secs,
            cpu_self: used[0],
            cpu_nats: used[1],
        },
        stats,
        refusals,
    ))
}

/// The runs against one server.
#[derive(Debug)]
struct Series {
    storage: Storage,
    events: usize,
    raw: Vec<Run>,
    shipper: Vec<Run>,
}

impl Series {
    fn raw_median(&self) -> f64 {
        median(&rates(&self.raw))
    }
    fn shipper_median(&self) -> f64 {
        median(&rates(&self.shipper))
    }
    fn ratio(&self) -> f64 {
        let raw = self.raw_median();
        if raw > 0.0 {
            self.shipper_median() / raw
        } else {
            0.0
        }
    }
}

fn rates(runs: &[Run]) -> Vec<f64> {
    runs.iter().map(Run::per_sec).collect()
}

/// Median CPU µs per event of one process.
fn cpu_us(runs: &[Run], f: fn(&Run) -> f64) -> f64 {
    median(
        &runs
            .iter()
            .map(|r| f(r) * 1e6 / r.events.max(1) as f64)
            .collect::<Vec<_>>(),
    )
}

/// Rounds of raw and shipper runs against a fresh server, in alternating order.
fn series(
    rt: &tokio::runtime::Runtime,
    storage: Storage,
    events_per_run: usize,
    rounds: usize,
) -> anyhow::Result<(Series, String)> {
    let store = tempfile::Builder::new()
        .prefix("aegis-bench-js-")
        .tempdir()?;
    let nats = storage.start(store.path())?;
    let nats_pid = nats.pid();
    let version = nats.version().to_string();
    let mut out = Series {
        storage,
        events: events_per_run,
        raw: Vec::new(),
        shipper: Vec::new(),
    };
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::new(client.clone());
        aegis_nats::provision(&js, &aegis_nats::Topology::single()).await?;
        let tenant = TenantId::new("acme")?;
        let raw_subject = decisions_subject(&tenant, "gw-bench-raw")?;
        let shipper_subject = decisions_subject(&tenant, "gw-bench-shipper")?;

        // Warm-up (connections, stream files), not timed.
        let warm = events_per_run.min(2_000);
        raw(&js, events(warm, &raw_subject)?, nats_pid).await?;
        through_shipper(&client, events(warm, &shipper_subject)?, nats_pid).await?;

        for round in 0..rounds {
            let shipper_first = round % 2 == 1;
            for step in 0..2 {
                let before = stream_messages(&js).await?;
                if (step == 0) != shipper_first {
                    let r = raw(&js, events(events_per_run, &raw_subject)?, nats_pid).await?;
                    eprintln!(
                        "{}: round {}: raw     {:>9.0} events/s ({:.2} s)",
                        storage.key(),
                        round + 1,
                        r.per_sec(),
                        r.secs
                    );
                    out.raw.push(r);
                } else {
                    let (r, stats, refusals) = through_shipper(
                        &client,
                        events(events_per_run, &shipper_subject)?,
                        nats_pid,
                    )
                    .await?;
                    eprintln!(
                        "{}: round {}: shipper {:>9.0} events/s ({:.2} s; {} spooled, {} failed, {refusals} hand-offs refused while the queue was full)",
                        storage.key(),
                        round + 1,
                        r.per_sec(),
                        r.secs,
                        stats.spooled,
                        stats.failed
                    );
                    if stats.unrecorded > 0 {
                        bail!("the shipper lost events: {stats:?}");
                    }
                    out.shipper.push(r);
                }
                let after = stream_messages(&js).await?;
                if after - before != events_per_run as u64 {
                    bail!(
                        "the stream received {} messages, expected {events_per_run}",
                        after - before
                    );
                }
            }
        }
        anyhow::Ok(())
    })?;
    drop(nats);
    Ok((out, version))
}

fn main() -> anyhow::Result<()> {
    let params = Params::from_env()?;
    eprintln!(
        "shipping benchmark ({}): {} events per run (fsync), {} (no fsync), {} round(s)",
        if params.full { "full" } else { "smoke" },
        params.events_fsync,
        params.events_nofsync,
        params.rounds
    );
    let mut machine = Machine::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sample = events(30, "aegis.decisions.acme.gw-bench")?;
    let payload_bytes =
        sample.iter().map(|m| m.payload.len()).sum::<usize>() as f64 / sample.len() as f64;
    let (fsync, version) = series(&rt, Storage::Fsync, params.events_fsync, params.rounds)?;
    let (nofsync, _) = series(&rt, Storage::NoFsync, params.events_nofsync, params.rounds)?;
    machine.end();

    println!();
    println!(
        "Aegis shipping benchmark: decision events of {payload_bytes:.0} bytes, {} round(s) per \
         server configuration, medians",
        params.rounds
    );
    println!("{}", machine.line());
    println!("nats-server: {version} (JetStream, R1 stream AEGIS_DECISIONS)");
    println!();
    println!(
        "| nats-server storage            | publisher                          | events/run |   events/s | runs (events/s)          | CPU µs/event: bench | nats-server |"
    );
    println!(
        "|--------------------------------|------------------------------------|-----------:|-----------:|--------------------------|--------------------:|------------:|"
    );
    for s in [&fsync, &nofsync] {
        for (name, runs, med) in [
            ("raw JetStream (1,024 acks pending)", &s.raw, s.raw_median()),
            ("aegis_gateway::shipper", &s.shipper, s.shipper_median()),
        ] {
            let list = rates(runs)
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" / ");
            println!(
                "| {:<30} | {name:<34} | {:>10} | {med:>10.0} | {list:<24} | {:>19.1} | {:>11.1} |",
                s.storage.label(),
                s.events,
                cpu_us(runs, |r| r.cpu_self),
                cpu_us(runs, |r| r.cpu_nats)
            );
        }
    }
    println!();
    for s in [&fsync, &nofsync] {
        let ratio = s.ratio();
        println!(
            "{}: shipper / raw = {ratio:.2}{}",
            s.storage.label(),
            if params.full {
                if ratio >= 0.5 {
                    " (goal ≥ 0.5: met)"
                } else {
                    " (goal ≥ 0.5: NOT met)"
                }
            } else {
                " (smoke run: no goal check)"
            }
        );
    }
    println!();
    let series_json = |s: &Series| {
        serde_json::json!({
            "events_per_run": s.events,
            "raw_events_per_s": rates(&s.raw).iter().map(|r| r.round()).collect::<Vec<_>>(),
            "shipper_events_per_s": rates(&s.shipper).iter().map(|r| r.round()).collect::<Vec<_>>(),
            "raw_median": s.raw_median().round(),
            "shipper_median": s.shipper_median().round(),
            "ratio": (s.ratio() * 1000.0).round() / 1000.0,
            "goal_met": s.ratio() >= 0.5,
            "cpu_us_per_event_bench_raw": cpu_us(&s.raw, |r| r.cpu_self),
            "cpu_us_per_event_bench_shipper": cpu_us(&s.shipper, |r| r.cpu_self),
            "cpu_us_per_event_nats_raw": cpu_us(&s.raw, |r| r.cpu_nats),
            "cpu_us_per_event_nats_shipper": cpu_us(&s.shipper, |r| r.cpu_nats),
        })
    };
    let mut json = serde_json::json!({
        "bench": "shipping",
        "mode": if params.full { "full" } else { "smoke" },
        "rounds": params.rounds,
        "payload_bytes": payload_bytes.round(),
        "fsync": series_json(&fsync),
        "no_fsync": series_json(&nofsync),
        "nats_server": version,
    });
    machine.add_to(&mut json);
    println!("{json}");
    Ok(())
}
