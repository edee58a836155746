//! Benchmark: events folded per second into RocksDB, and a rebuild of 100,000 events by the real
//! binary, next to raw JetStream consumption of the same events in the same run.
//!
//! ```text
//! cargo build --release -p aegis-controlplane --bins
//! cargo bench -p aegis-controlplane --bench fold
//! ```
//!
//! One run, against one `nats-server` started here (config as `nats/conf/single.conf`:
//! JetStream with `sync_interval: always`), with the topology provisioned as
//! `Topology::single()`:
//!
//! 1. publish N signed change events for four tenants (actors and roles, then mostly approvals
//!    and rejections of changes that do not exist, draft edits of the finance template with
//!    correct and stale base revisions, freeze/unfreeze pairs, ~1% bad signatures, ~4% missing
//!    roles), pipelined, each with its `Nats-Msg-Id`;
//! 2. raw JetStream consumption of the whole stream (ordered pull consumer): the baseline;
//! 3. the fold in-process, reading with the same consumer kind (a reader task feeding a fold
//!    thread, as `runtime::run` does), then the fold alone over messages collected in memory,
//!    timed per event type;
//! 4. a rebuild by `aegis-controlplane run --fold-only --until-caught-up --no-provision`, wall
//!    clock including process start; its state digest must equal the in-process one;
//! 5. the fold of `change_proposed` events (validate, compile, run the finance vectors), next
//!    to `checks::run` alone on the same change.
//!
//! Prints a table and one JSON line (`{"bench":"fold",...}`). Without `--bench` (what
//! `cargo test --all-targets` runs) it is a smoke run of 200 events that takes seconds;
//! `AEGIS_BENCH_EVENTS=<n>` overrides the event count.

use aegis_controlplane::records::LiveSet;
use aegis_controlplane::{Applied, FoldConfig, Folder, InMessage, StateDigest, Store};
use aegis_core::events::{
    ActorRegistered, ChangeApproved, ChangeProposed, ChangeRejected, DocumentFormat, Envelope,
    Event, PolicyUpserted, ProposedDocument, Role, RoleGranted, TenantFrozen, TenantUnfrozen,
    VectorDocument,
};
use aegis_core::ids::{ActorId, ChangeId, EventId, PolicyName, TenantId};
use aegis_core::keys::{Keypair, PublicKey};
use aegis_core::query::Outcome;
use aegis_nats::topology::{CHANGES_PREFIX, CHANGES_STREAM};
use aegis_tests::NatsServer;
use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt as _;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FINANCE_POLICY: &str = include_str!("../../policies/templates/finance/policy.yaml");
const FINANCE_VECTORS: &str = include_str!("../../policies/templates/finance/vectors.yaml");
const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
/// Draft policies per tenant (edits rotate over them).
const POLICIES_PER_TENANT: usize = 8;
/// Publish acks in flight at most.
const IN_FLIGHT: usize = 1000;
const CONTROL_PLANE_ACTOR: &str = "control-plane";

/// Full run or smoke run.
#[derive(Debug, Clone)]
struct Params {
    full: bool,
    events: usize,
    actors_per_tenant: usize,
    proposals: usize,
}

impl Params {
    fn from_env() -> anyhow::Result<Params> {
        let full = std::env::args().any(|a| a == "--bench");
        let mut p = if full {
            Params {
                full,
                events: 100_000,
                actors_per_tenant: 100,
                proposals: 20,
            }
        } else {
            // A debug build folds ~100x slower than a release one: keep `cargo test` quick.
            Params {
                full,
                events: 200,
                actors_per_tenant: 5,
                proposals: 2,
            }
        };
        if let Some(n) = std::env::var_os("AEGIS_BENCH_EVENTS") {
            let n = n.to_string_lossy();
            p.events = n
                .trim()
                .parse()
                .with_context(|| format!("AEGIS_BENCH_EVENTS={n:?} is not a number"))?;
        }
        let actor_events = TENANTS.len() * p.actors_per_tenant * 9 / 4;
        if p.events < actor_events + 100 {
            bail!(
                "{} events is too few: registering the actors alone takes {actor_events}",
                p.events
            );
        }
        Ok(p)
    }
}

// ---------------------------------------------------------------------------------------------
// The workload

/// splitmix64: a deterministic mix without a dependency.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[derive(Debug)]
struct Actor {
    id: ActorId,
    key: Keypair,
    roles: Vec<Role>,
}

#[derive(Debug)]
struct Tenant {
    id: TenantId,
    actors: Vec<Actor>,
    policy: String,
}

impl Tenant {
    fn with_role(&self, role: Role, rng: &mut Rng) -> Option<&Actor> {
        let of: Vec<&Actor> = self
            .actors
            .iter()
            .filter(|a| a.roles.contains(&role))
            .collect();
        of.get(rng.below(of.len())).copied()
    }

    /// The finance template as policy `finance-agent-<k>` of this tenant, with a ticket.
    fn document(&self, k: usize, ticket: usize) -> String {
        self.policy
            .replace(
                "  name: finance-agent\n",
                &format!("  name: finance-agent-{k}\n"),
            )
            .replace("ticket: FIN-1001", &format!("ticket: FIN-{ticket}"))
    }
}

#[derive(Debug, Clone, Copy)]
enum Signer {
    Root,
    Actor(usize),
}

/// One event to sign and publish, in stream order.
#[derive(Debug)]
struct Plan {
    tenant: usize,
    signer: Signer,
    event: Event,
    /// Alter the envelope after signing (a bad signature).
    tamper: bool,
    /// `Nats-Expected-Last-Subject-Sequence`.
    expect: Option<u64>,
}

/// A signed message ready to publish.
#[derive(Debug)]
struct Outgoing {
    subject: String,
    payload: bytes::Bytes,
    id: String,
    expect: Option<u64>,
}

fn tenants(params: &Params) -> anyhow::Result<Vec<Tenant>> {
    let mut out = Vec::new();
    for t in TENANTS {
        let mut actors = Vec::new();
        for i in 0..params.actors_per_tenant {
            let roles = match i % 4 {
                0 => vec![Role::Editor],
                1 => vec![Role::Approver],
                2 => vec![Role::Publisher],
                _ => vec![Role::Approver, Role::Editor],
            };
            actors.push(Actor {
                id: ActorId::new(format!("user-{i:03}"))?,
                key: Keypair::generate()?,
                roles,
            });
        }
        out.push(Tenant {
            id: TenantId::new(t)?,
            actors,
            policy: FINANCE_POLICY.replace("  tenant: acme\n", &format!("  tenant: {t}\n")),
        });
    }
    Ok(out)
}

/// The event mix, in publish order. Stream sequences are predicted (a fresh stream, one
/// publisher, every message stored) so policy edits can carry the right base revision; the
/// publisher checks each ack against the prediction.
fn plan(params: &Params, tenants: &[Tenant], rng: &mut Rng) -> anyhow::Result<Vec<Plan>> {
    let mut plans = Vec::with_capacity(params.events);
    // Actors and roles first, tenant by tenant.
    for (ti, t) in tenants.iter().enumerate() {
        for a in &t.actors {
            plans.push(Plan {
                tenant: ti,
                signer: Signer::Root,
                event: Event::ActorRegistered(ActorRegistered {
                    actor: a.id.clone(),
                    public_key: a.key.public_key().to_base64(),
                    key_id: a.key.key_id().clone(),
                    display_name: Some(format!("{} of {}", a.id, t.id)),
                }),
                tamper: false,
                expect: None,
            });
            for role in &a.roles {
                plans.push(Plan {
                    tenant: ti,
                    signer: Signer::Root,
                    event: Event::RoleGranted(RoleGranted {
                        actor: a.id.clone(),
                        role: *role,
                    }),
                    tamper: false,
                    expect: None,
                });
            }
        }
    }
    // The last stream sequence of each policy subject.
    let mut last_seq: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut ticket = 2000usize;
    let pick = |t: &Tenant, role: Role, rng: &mut Rng| -> anyhow::Result<Signer> {
        let a = t
            .with_role(role, rng)
            .with_context(|| format!("tenant {} has no {role}", t.id))?;
        let i = t.actors.iter().position(|x| x.id == a.id).unwrap_or(0);
        Ok(Signer::Actor(i))
    };
    while plans.len() < params.events {
        let ti = rng.below(tenants.len());
        let Some(t) = tenants.get(ti) else { continue };
        let r = rng.below(1000);
        if r < 10 {
            // ~1%: a signature that does not match (the envelope was altered after signing).
            plans.push(Plan {
                tenant: ti,
                signer: pick(t, Role::Approver, rng)?,
                event: Event::ChangeApproved(ChangeApproved {
                    change_id: change_id()?,
                    comment: Some("lgtm".into()),
                }),
                tamper: true,
                expect: None,
            });
        } else if r < 50 {
            // ~4%: missing role (an editor-only actor approving).
            let editors: Vec<usize> = t
                .actors
                .iter()
                .enumerate()
                .filter(|(_, a)| a.roles == [Role::Editor])
                .map(|(i, _)| i)
                .collect();
            let i = editors.get(rng.below(editors.len())).copied().unwrap_or(0);
            plans.push(Plan {
                tenant: ti,
                signer: Signer::Actor(i),
                event: Event::ChangeApproved(ChangeApproved {
                    change_id: change_id()?,
                    comment: None,
                }),
                tamper: false,
                expect: None,
            });
        } else if r < 700 {
            // ~62%: approvals and rejections of changes that do not exist.
            let signer = pick(t, Role::Approver, rng)?;
            let event = if rng.below(2) == 0 {
                Event::ChangeApproved(ChangeApproved {
                    change_id: change_id()?,
                    comment: Some("looks right to me".into()),
                })
            } else {
                Event::ChangeRejected(ChangeRejected {
                    change_id: change_id()?,
                    reason: "thresholds too loose for Q4".into(),
                })
            };
            plans.push(Plan {
                tenant: ti,
                signer,
                event,
                tamper: false,
                expect: None,
            });
        } else if r < 950 {
            // ~24%: draft edits of the finance template; ~5% of them stale.
            let k = rng.below(POLICIES_PER_TENANT);
            let last = last_seq.get(&(ti, k)).copied().unwrap_or(0);
            let stale = rng.below(20) == 0;
            let base = match (stale, last) {
                (false, _) => last,
                (true, 0) => 1,
                (true, n) => n - 1,
            };
            ticket += 1;
            plans.push(Plan {
                tenant: ti,
                signer: pick(t, Role::Editor, rng)?,
                event: Event::PolicyUpserted(PolicyUpserted {
                    name: PolicyName::new(format!("finance-agent-{k}"))?,
                    format: DocumentFormat::Yaml,
                    document: t.document(k, ticket),
                    base_revision: base,
                    change_id: None,
                }),
                tamper: false,
                // aegisctl sends the expectation; a stale edit from an old client does not.
                expect: (!stale).then_some(base),
            });
            last_seq.insert((ti, k), plans.len() as u64);
        } else {
            // ~10%: freeze and unfreeze (5% of the draws, two events each).
            let signer = pick(t, Role::Publisher, rng)?;
            plans.push(Plan {
                tenant: ti,
                signer,
                event: Event::TenantFrozen(TenantFrozen {
                    reason: "quarter close".into(),
                }),
                tamper: false,
                expect: None,
            });
            plans.push(Plan {
                tenant: ti,
                signer,
                event: Event::TenantUnfrozen(TenantUnfrozen {
                    reason: Some("books closed".into()),
                }),
                tamper: false,
                expect: None,
            });
        }
    }
    plans.truncate(params.events);
    Ok(plans)
}

fn event_id() -> anyhow::Result<EventId> {
    EventId::random().map_err(|e| anyhow::anyhow!("no randomness for an event id: {e}"))
}

fn change_id() -> anyhow::Result<ChangeId> {
    ChangeId::random().map_err(|e| anyhow::anyhow!("no randomness for a change id: {e}"))
}

fn sign_one(
    p: Plan,
    tenants: &[Tenant],
    root: &Keypair,
    now: time::OffsetDateTime,
) -> anyhow::Result<Outgoing> {
    let t = tenants.get(p.tenant).context("tenant index")?;
    let root_id = ActorId::new("root")?;
    let (actor, key) = match p.signer {
        Signer::Root => (&root_id, root),
        Signer::Actor(i) => {
            let a = t.actors.get(i).context("actor index")?;
            (&a.id, &a.key)
        }
    };
    let mut env = Envelope::sign(event_id()?, t.id.clone(), actor.clone(), key, now, p.event)?;
    if p.tamper {
        env.time = "2020-01-01T00:00:00.000Z".into();
    }
    Ok(Outgoing {
        subject: aegis_nats::topology::change_event_subject(&env.tenant, &env.event)?,
        payload: env.to_bytes()?.into(),
        id: env.id.to_string(),
        expect: p.expect,
    })
}

/// Signs every planned event, on all cores.
fn sign_all(plans: Vec<Plan>, tenants: &[Tenant], root: &Keypair) -> anyhow::Result<Vec<Outgoing>> {
    let now = time::OffsetDateTime::now_utc();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = plans.len().div_ceil(threads).max(1);
    let mut chunks: Vec<Vec<Plan>> = Vec::new();
    let mut it = plans.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(chunk).collect());
    }
    let results: Vec<anyhow::Result<Vec<Outgoing>>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    c.into_iter()
                        .map(|p| sign_one(p, tenants, root, now))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a signing thread panicked")))
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// Publishes everything, at most [`IN_FLIGHT`] acks outstanding; checks each ack's sequence.
async fn publish_all(js: &jetstream::Context, msgs: &[Outgoing]) -> anyhow::Result<u64> {
    let mut pending: VecDeque<(u64, jetstream::context::PublishAckFuture)> = VecDeque::new();
    let check = |expected: u64, ack: jetstream::publish::PublishAck| -> anyhow::Result<()> {
        if ack.sequence != expected || ack.duplicate {
            bail!(
                "publish ack says sequence {} (duplicate: {}), expected {expected}: the stream \
                 was not fresh or a message was refused",
                ack.sequence,
                ack.duplicate
            );
        }
        Ok(())
    };
    let mut bytes = 0u64;
    for (i, m) in msgs.iter().enumerate() {
        if pending.len() >= IN_FLIGHT
            && let Some((seq, fut)) = pending.pop_front()
        {
            check(seq, fut.await.context("publish ack")?)?;
        }
        let mut headers = HeaderMap::new();
        headers.insert(aegis_nats::publish::MSG_ID_HEADER, m.id.as_str());
        if let Some(e) = m.expect {
            headers.insert(
                aegis_nats::publish::EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER,
                e.to_string().as_str(),
            );
        }
        bytes += m.payload.len() as u64;
        let fut = js
            .publish_with_headers(m.subject.clone(), headers, m.payload.clone())
            .await
            .with_context(|| format!("publishing to {}", m.subject))?;
        pending.push_back((i as u64 + 1, fut));
    }
    while let Some((seq, fut)) = pending.pop_front() {
        check(seq, fut.await.context("publish ack")?)?;
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Measurements

#[derive(Debug, Default, Clone, Copy)]
struct Rate {
    events: u64,
    secs: f64,
}

impl Rate {
    fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.events as f64 / self.secs
        } else {
            0.0
        }
    }
}

async fn ordered_messages(
    js: &jetstream::Context,
) -> anyhow::Result<jetstream::consumer::pull::Ordered> {
    let stream = js.get_stream(CHANGES_STREAM).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("{CHANGES_PREFIX}.>"),
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// The baseline: count messages and bytes of the whole stream.
async fn raw_consume(js: &jetstream::Context, total: u64) -> anyhow::Result<(Rate, u64)> {
    let start = Instant::now();
    let mut messages = ordered_messages(js).await?;
    let (mut n, mut bytes) = (0u64, 0u64);
    while n < total {
        let m = messages.next().await.context("the consumer ended")??;
        n += 1;
        bytes += m.payload.len() as u64;
    }
    Ok((
        Rate {
            events: n,
            secs: start.elapsed().as_secs_f64(),
        },
        bytes,
    ))
}

/// Reads the stream into memory, as the fold receives it.
async fn collect(js: &jetstream::Context, total: u64) -> anyhow::Result<Vec<InMessage>> {
    let mut messages = ordered_messages(js).await?;
    let mut out = Vec::with_capacity(total as usize);
    while (out.len() as u64) < total {
        let m = messages.next().await.context("the consumer ended")??;
        let seq = m
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        out.push(InMessage {
            seq,
            subject: m.subject.to_string(),
            payload: m.payload.to_vec(),
        });
    }
    Ok(out)
}

/// How the folded events came out, by type and outcome, with the fold time spent on each.
#[derive(Debug, Default)]
struct Tally {
    by_kind: BTreeMap<String, (u64, Duration)>,
    accepted: u64,
    rejected: u64,
}

impl Tally {
    fn add(&mut self, applied: &Applied, took: Duration) {
        let kind = match applied {
            Applied::Folded { record, .. } => {
                let ty = record
                    .event_type
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_else(|| "unreadable".into());
                match &record.outcome {
                    Outcome::Accepted => {
                        self.accepted += 1;
                        format!("{ty} accepted")
                    }
                    Outcome::Rejected { reason } => {
                        self.rejected += 1;
                        format!("{ty} rejected: {}", reason_class(reason))
                    }
                }
            }
            Applied::Duplicate { .. } => "duplicate".into(),
            Applied::Unroutable => "unroutable".into(),
            Applied::Skipped => "skipped".into(),
        };
        let e = self.by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += took;
    }
}

/// The first words of a rejection reason, for grouping.
fn reason_class(reason: &str) -> &'static str {
    if reason.starts_with("bad signature") {
        "bad signature"
    } else if reason.starts_with("stale edit") {
        "stale edit"
    } else if reason.starts_with("no change") {
        "no such change"
    } else if reason.contains("may not") {
        "missing role"
    } else {
        "other"
    }
}

fn fold_config(root: &Keypair, cp: &Keypair) -> anyhow::Result<FoldConfig> {
    let mut root_admins = BTreeMap::new();
    root_admins.insert(ActorId::new("root")?, vec![root.public_key().clone()]);
    Ok(FoldConfig {
        root_admins,
        control_plane_actor: ActorId::new(CONTROL_PLANE_ACTOR)?,
        signing_key: cp.clone(),
    })
}

/// Reader task → bounded channel → fold thread, as `runtime::run` does; wall clock from
/// consumer creation to the last commit.
fn fold_streaming(
    rt: &tokio::runtime::Runtime,
    js: &jetstream::Context,
    store: &Store,
    config: &FoldConfig,
    total: u64,
) -> anyhow::Result<(Rate, Tally)> {
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<InMessage>(1024);
    let (read, folded) = std::thread::scope(|s| {
        let folder = s.spawn(move || -> anyhow::Result<Tally> {
            let folder = Folder { store, config };
            let mut tally = Tally::default();
            while let Some(m) = rx.blocking_recv() {
                let t = Instant::now();
                let applied = folder.apply(&m)?;
                tally.add(&applied, t.elapsed());
            }
            Ok(tally)
        });
        let read = rt.block_on(async move {
            let mut messages = ordered_messages(js).await?;
            let mut n = 0u64;
            while n < total {
                let m = messages.next().await.context("the consumer ended")??;
                let seq = m
                    .info()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .stream_sequence;
                let msg = InMessage {
                    seq,
                    subject: m.subject.to_string(),
                    payload: m.payload.to_vec(),
                };
                if tx.send(msg).await.is_err() {
                    bail!("the fold thread stopped");
                }
                n += 1;
            }
            Ok::<(), anyhow::Error>(())
        });
        let folded = folder
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the fold thread panicked")));
        (read, folded)
    });
    let secs = start.elapsed().as_secs_f64();
    folded.and_then(|tally| {
        read?;
        Ok((
            Rate {
                events: total,
                secs,
            },
            tally,
        ))
    })
}

/// The fold alone over messages already in memory.
fn fold_in_memory(
    store: &Store,
    config: &FoldConfig,
    msgs: &[InMessage],
) -> anyhow::Result<(Rate, Tally)> {
    let folder = Folder { store, config };
    let mut tally = Tally::default();
    let start = Instant::now();
    for m in msgs {
        let t = Instant::now();
        let applied = folder.apply(m)?;
        tally.add(&applied, t.elapsed());
    }
    Ok((
        Rate {
            events: msgs.len() as u64,
            secs: start.elapsed().as_secs_f64(),
        },
        tally,
    ))
}

/// The fold's main steps timed one by one on a sample of the messages, through the same
/// public functions the fold calls: where a folded event's time goes.
#[derive(Debug, Default)]
struct Probes {
    sampled: u64,
    parse_us: f64,
    schema_us: f64,
    verify_us: f64,
    documents: u64,
    document_us: f64,
}

fn probes(
    msgs: &[InMessage],
    keys: &std::collections::HashMap<String, PublicKey>,
    max_samples: usize,
) -> anyhow::Result<Probes> {
    let step = (msgs.len() / max_samples.max(1)).max(1);
    let mut p = Probes::default();
    let (mut parse, mut schema, mut verify, mut document) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    for m in msgs.iter().step_by(step) {
        let t = Instant::now();
        let Ok(received) = aegis_core::events::ReceivedEnvelope::parse(&m.payload) else {
            continue;
        };
        parse += t.elapsed();
        let t = Instant::now();
        let value: serde_json::Value = serde_json::from_slice(&m.payload)?;
        let _ = aegis_core::events::schema::validate(&value);
        schema += t.elapsed();
        if let Some(key) = keys.get(received.envelope.key_id.as_str()) {
            let t = Instant::now();
            let _ = received.verify(key.verifying_key());
            verify += t.elapsed();
        }
        if let Event::PolicyUpserted(e) = &received.envelope.event {
            let t = Instant::now();
            let _ = aegis_core::policy::set::parse_document(
                &aegis_controlplane::checks::doc_path(e.name.as_str(), e.format),
                e.document.clone(),
            );
            document += t.elapsed();
            p.documents += 1;
        }
        p.sampled += 1;
    }
    let per = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    p.parse_us = per(parse, p.sampled);
    p.schema_us = per(schema, p.sampled);
    p.verify_us = per(verify, p.sampled);
    p.document_us = per(document, p.documents);
    Ok(p)
}

/// `target/<profile>/aegis-controlplane`, next to this bench's `deps/` directory.
fn controlplane_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AEGIS_CONTROLPLANE_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("aegis-controlplane");
    bin.is_file().then_some(bin)
}

#[derive(Debug)]
struct Rebuild {
    rate: Rate,
    folded: u64,
    digest: StateDigest,
    rust_log: &'static str,
}

fn rebuild_by_binary(
    bin: &Path,
    url: &str,
    keys: &Path,
    work: &Path,
    total: u64,
    rust_log: &'static str,
) -> anyhow::Result<Rebuild> {
    let data = work.join(format!("rebuild-{rust_log}"));
    let log = work.join(format!("rebuild-{rust_log}.log"));
    let log_file = std::fs::File::create(&log)?;
    let start = Instant::now();
    let out = Command::new(bin)
        .args(["run", "--nats", url, "--data"])
        .arg(&data)
        .arg("--key")
        .arg(keys.join("control-plane.key.json"))
        .arg("--root-admin")
        .arg(format!("root={}", keys.join("root.pub.json").display()))
        .args(["--fold-only", "--until-caught-up", "--no-provision"])
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stderr(log_file)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        let tail: String = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n");
        bail!(
            "the rebuild failed ({}); log tail (newest first):\n{tail}",
            out.status
        );
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("rebuild printed {:?}", String::from_utf8_lossy(&out.stdout)))?;
    let folded = summary
        .get("folded")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let digest = Store::open(&data)?.state_digest()?;
    Ok(Rebuild {
        rate: Rate {
            events: total,
            secs,
        },
        folded,
        digest,
        rust_log,
    })
}

/// Proposals of the finance template: the fold of each, and `checks::run` alone.
#[derive(Debug, Default)]
struct Proposals {
    count: usize,
    fold: Vec<f64>,
    checks_only: Vec<f64>,
    accepted: usize,
    checks_passed: usize,
    vectors_run: u32,
    bytes: usize,
}

fn proposals(
    store: &Store,
    config: &FoldConfig,
    tenant: &Tenant,
    n: usize,
) -> anyhow::Result<Proposals> {
    let editor = tenant
        .actors
        .iter()
        .find(|a| a.roles.contains(&Role::Editor))
        .context("no editor")?;
    let vectors = FINANCE_VECTORS.replace("tenant: acme", &format!("tenant: {}", tenant.id));
    let folder = Folder { store, config };
    let mut out = Proposals {
        count: n,
        ..Default::default()
    };
    let applied = store.applied_seq()?;
    for i in 0..n {
        let change = ChangeProposed {
            change_id: change_id()?,
            intent: format!("finance agent thresholds, take {i}"),
            ticket: Some(format!("FIN-{}", 9000 + i)),
            documents: vec![ProposedDocument {
                name: PolicyName::new("finance-agent")?,
                format: DocumentFormat::Yaml,
                document: tenant
                    .policy
                    .replace("ticket: FIN-1001", &format!("ticket: FIN-{}", 9000 + i)),
                base_revision: 0,
            }],
            deleted: vec![],
            vectors: vec![VectorDocument {
                name: "finance-vectors.yaml".into(),
                format: DocumentFormat::Yaml,
                document: vectors.clone(),
            }],
        };
        let t = Instant::now();
        let checks = aegis_controlplane::checks::run(&tenant.id, &LiveSet::default(), &change);
        out.checks_only.push(t.elapsed().as_secs_f64() * 1e3);
        if checks.passed {
            out.checks_passed += 1;
        }
        out.vectors_run = checks.vectors_run;
        let env = Envelope::sign(
            event_id()?,
            tenant.id.clone(),
            editor.id.clone(),
            &editor.key,
            time::OffsetDateTime::now_utc(),
            Event::ChangeProposed(change.clone()),
        )?;
        let payload = env.to_bytes()?;
        out.bytes = payload.len();
        let msg = InMessage {
            seq: applied + 1 + i as u64,
            subject: format!("{CHANGES_PREFIX}.{}.change.{}", tenant.id, change.change_id),
            payload,
        };
        let t = Instant::now();
        let applied = folder.apply(&msg)?;
        out.fold.push(t.elapsed().as_secs_f64() * 1e3);
        if let Applied::Folded { record, .. } = &applied {
            match &record.outcome {
                Outcome::Accepted => out.accepted += 1,
                Outcome::Rejected { reason } => eprintln!("proposal rejected: {reason}"),
            }
        }
    }
    Ok(out)
}

fn median(v: &[f64]) -> f64 {
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn cpu_model() -> String {
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

fn main() -> anyhow::Result<()> {
    let params = Params::from_env()?;
    let load_start = loadavg();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // async-nats spawns tasks when a JetStream context is made.
    let _runtime = rt.enter();
    let work = tempfile::Builder::new()
        .prefix("aegis-bench-fold-")
        .tempdir()?;
    // As nats/conf/single.conf: fsync every write before acknowledging it.
    let nats = NatsServer::start()?;
    let url = nats.url();
    eprintln!(
        "fold bench: {} events ({} run), {}, nats-server {} at {url}",
        params.events,
        if params.full { "full" } else { "smoke" },
        cpu_model(),
        nats.version()
    );

    // Keys, as `aegis-controlplane run` loads them.
    let root = Keypair::generate()?;
    let cp = Keypair::generate()?;
    let keys = work.path().join("keys");
    std::fs::create_dir(&keys)?;
    cp.write_to_dir(&keys, "control-plane")?;
    root.write_to_dir(&keys, "root")?;
    let root_pub = PublicKey::load(&keys.join("root.pub.json"))
        .context("the root public key file is not where the rebuild will look")?;
    if root_pub.key_id() != root.key_id() {
        bail!("root.pub.json holds another key");
    }
    let config = fold_config(&root, &cp)?;

    // 1. The workload.
    let t = Instant::now();
    let tenants = tenants(&params)?;
    let mut rng = Rng(0xAE61_5F01D);
    let plans = plan(&params, &tenants, &mut rng)?;
    let outgoing = sign_all(plans, &tenants, &root)?;
    let sign_secs = t.elapsed().as_secs_f64();
    let total = outgoing.len() as u64;

    let client = rt.block_on(aegis_nats::connect(
        &aegis_nats::ConnectOptions::new(url.clone()).name("aegis-bench-fold"),
    ))?;
    let js = aegis_nats::jetstream(client);
    rt.block_on(aegis_nats::provision(&js, &aegis_nats::Topology::single()))
        .context("provisioning")?;
    let t = Instant::now();
    let published_bytes = rt.block_on(publish_all(&js, &outgoing))?;
    let publish = Rate {
        events: total,
        secs: t.elapsed().as_secs_f64(),
    };
    drop(outgoing);
    eprintln!(
        "published {total} events ({:.1} MB) in {:.2}s; signing took {sign_secs:.2}s",
        published_bytes as f64 / 1e6,
        publish.secs
    );

    // 2. Raw JetStream consumption.
    let (raw, raw_bytes) = rt.block_on(raw_consume(&js, total))?;
    eprintln!(
        "raw consumption: {:.0} msgs/s ({:.2}s)",
        raw.per_sec(),
        raw.secs
    );

    // 3a. Fold, reading from JetStream.
    let store_a = Store::open(&work.path().join("fold-streaming"))?;
    let (streaming, tally_a) = fold_streaming(&rt, &js, &store_a, &config, total)?;
    eprintln!(
        "fold incl. reading: {:.0} events/s ({:.2}s)",
        streaming.per_sec(),
        streaming.secs
    );
    let digest_a = store_a.state_digest()?;
    drop(store_a);

    // 3b. Fold alone.
    let t = Instant::now();
    let msgs = rt.block_on(collect(&js, total))?;
    let collect_secs = t.elapsed().as_secs_f64();
    let store_b = Store::open(&work.path().join("fold-memory"))?;
    let (in_memory, tally_b) = fold_in_memory(&store_b, &config, &msgs)?;
    eprintln!(
        "fold only: {:.0} events/s ({:.2}s)",
        in_memory.per_sec(),
        in_memory.secs
    );
    let mut signing_keys = std::collections::HashMap::new();
    signing_keys.insert(root.key_id().as_str().to_owned(), root.public_key().clone());
    for a in tenants.iter().flat_map(|t| &t.actors) {
        signing_keys.insert(
            a.key.key_id().as_str().to_owned(),
            a.key.public_key().clone(),
        );
    }
    // A debug build verifies a signature in ~8 ms: sample little in the smoke run.
    let probe = probes(&msgs, &signing_keys, if params.full { 10_000 } else { 50 })?;
    drop(msgs);
    let digest_b = store_b.state_digest()?;
    if digest_a.digest != digest_b.digest {
        bail!("the two in-process folds disagree: {digest_a:?} vs {digest_b:?}");
    }

    // 4. Rebuild by the binary.
    let mut rebuilds = Vec::new();
    match controlplane_binary() {
        Some(bin) => {
            let levels: &[&'static str] = if params.full {
                &["info", "error"]
            } else {
                &["info"]
            };
            for level in levels {
                let r = rebuild_by_binary(&bin, &url, &keys, work.path(), total, level)?;
                eprintln!(
                    "rebuild by binary (RUST_LOG={level}): {:.0} events/s ({:.2}s)",
                    r.rate.per_sec(),
                    r.rate.secs
                );
                if r.digest.digest != digest_a.digest {
                    bail!(
                        "the binary's rebuild differs from the in-process fold: {:?} vs {digest_a:?}",
                        r.digest
                    );
                }
                rebuilds.push(r);
            }
        }
        None if params.full => bail!(
            "target/release/aegis-controlplane is missing: run `cargo build --release -p \
             aegis-controlplane --bins` first (or set AEGIS_CONTROLPLANE_BIN)"
        ),
        None => eprintln!("no aegis-controlplane binary next to this executable: rebuild skipped"),
    }

    // 5. Proposals.
    let acme = tenants.first().context("no tenant")?;
    let props = proposals(&store_b, &config, acme, params.proposals)?;
    drop(store_b);
    let load_end = loadavg();

    // Report.
    let mb = |b: u64| b as f64 / 1e6;
    println!();
    println!(
        "Aegis fold benchmark: {} events ({} accepted, {} rejected), {:.1} MB of envelopes, 4 tenants",
        total,
        tally_b.accepted,
        tally_b.rejected,
        mb(raw_bytes)
    );
    println!(
        "machine: {} x {}; load average {load_start} at start, {load_end} at end (shared machine)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model()
    );
    println!(
        "nats-server: {} (JetStream, sync_interval: always, R1)",
        nats.version()
    );
    println!();
    println!("| measurement                                   |   events/s |  seconds |");
    println!("|-----------------------------------------------|-----------:|---------:|");
    let row = |name: &str, r: &Rate| {
        println!("| {name:<45} | {:>10.0} | {:>8.2} |", r.per_sec(), r.secs);
    };
    row("publish (pipelined, 1000 acks in flight)", &publish);
    row("raw JetStream consumption (ordered consumer)", &raw);
    row("fold incl. reading (in-process)", &streaming);
    row("fold only (messages in memory)", &in_memory);
    for r in &rebuilds {
        row(
            &format!("rebuild by binary (RUST_LOG={})", r.rust_log),
            &r.rate,
        );
    }
    println!();
    println!(
        "proposals (finance template, {} vectors, {} bytes): fold median {:.1} ms, checks::run alone median {:.1} ms ({} of {} accepted, checks passed {})",
        props.vectors_run,
        props.bytes,
        median(&props.fold),
        median(&props.checks_only),
        props.accepted,
        props.count,
        props.checks_passed
    );
    println!();
    println!("fold-only time by event type and outcome:");
    println!("| kind                                         |  count | µs/event | share |");
    println!("|----------------------------------------------|-------:|---------:|------:|");
    let fold_total: f64 = tally_b.by_kind.values().map(|(_, d)| d.as_secs_f64()).sum();
    for (kind, (n, d)) in &tally_b.by_kind {
        println!(
            "| {kind:<44} | {n:>6} | {:>8.1} | {:>4.1}% |",
            d.as_secs_f64() * 1e6 / (*n).max(1) as f64,
            if fold_total > 0.0 {
                d.as_secs_f64() * 100.0 / fold_total
            } else {
                0.0
            }
        );
    }
    let mean_us = in_memory.secs * 1e6 / total.max(1) as f64;
    let policy_edits: u64 = tally_b
        .by_kind
        .iter()
        .filter(|(k, _)| k.starts_with("policy_upserted accepted"))
        .map(|(_, (n, _))| *n)
        .sum();
    println!();
    println!(
        "where a folded event's time goes (each step timed alone on {} sampled events; fold \
         mean {mean_us:.1} µs/event):",
        probe.sampled
    );
    println!(
        "| step                                                   | µs/event | share of fold |"
    );
    println!(
        "|--------------------------------------------------------|---------:|--------------:|"
    );
    let step = |name: &str, us: f64, per_fold_event: f64| {
        println!(
            "| {name:<54} | {us:>8.1} | {:>12.1}% |",
            if mean_us > 0.0 {
                per_fold_event * 100.0 / mean_us
            } else {
                0.0
            }
        );
    };
    step("ed25519 signature verify", probe.verify_us, probe.verify_us);
    step(
        "policy document parse + validate (policy edits only)",
        probe.document_us,
        probe.document_us * policy_edits as f64 / total.max(1) as f64,
    );
    step(
        "envelope parse + canonicalise",
        probe.parse_us,
        probe.parse_us,
    );
    step(
        "JSON schema validation (incl. JSON parse)",
        probe.schema_us,
        probe.schema_us,
    );
    let doc_share = probe.document_us * policy_edits as f64 / total.max(1) as f64;
    let rest = mean_us - probe.verify_us - doc_share - probe.parse_us - probe.schema_us;
    step(
        "rest: RocksDB reads + WriteBatch, record JSON, chain",
        rest,
        rest,
    );
    if tally_a.accepted != tally_b.accepted {
        bail!("the streaming and in-memory folds accepted different counts");
    }
    println!(
        "state digest {} ({} keys), identical for the in-process folds{}",
        digest_b.digest,
        digest_b.keys,
        if rebuilds.is_empty() {
            ""
        } else {
            " and the binary's rebuild"
        }
    );
    println!();
    let json = serde_json::json!({
        "bench": "fold",
        "mode": if params.full { "full" } else { "smoke" },
        "events": total,
        "accepted": tally_b.accepted,
        "rejected": tally_b.rejected,
        "envelope_bytes": raw_bytes,
        "published_bytes": published_bytes,
        "publish_msgs_per_s": publish.per_sec().round(),
        "raw_jetstream_msgs_per_s": raw.per_sec().round(),
        "raw_jetstream_s": raw.secs,
        "fold_incl_reading_events_per_s": streaming.per_sec().round(),
        "fold_incl_reading_s": streaming.secs,
        "fold_only_events_per_s": in_memory.per_sec().round(),
        "fold_only_s": in_memory.secs,
        "collect_s": collect_secs,
        "rebuild": rebuilds.iter().map(|r| serde_json::json!({
            "rust_log": r.rust_log,
            "events_per_s": r.rate.per_sec().round(),
            "seconds": r.rate.secs,
            "folded": r.folded,
        })).collect::<Vec<_>>(),
        "probe_us": {
            "ed25519_verify": probe.verify_us,
            "policy_document_parse": probe.document_us,
            "envelope_parse": probe.parse_us,
            "schema_validation": probe.schema_us,
            "fold_mean": mean_us,
        },
        "proposal_fold_ms_median": median(&props.fold),
        "proposal_checks_only_ms_median": median(&props.checks_only),
        "proposals": props.count,
        "proposals_accepted": props.accepted,
        "state_digest": digest_b.digest,
        "state_keys": digest_b.keys,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu_model(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "nats_server": nats.version().to_string(),
    });
    println!("{json}");
    drop(js);
    drop(nats);
    Ok(())
}
