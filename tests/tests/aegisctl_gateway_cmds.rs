#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `aegisctl token`, `aegisctl gateways` and `aegisctl tail`, the real binary against a real
//! nats-server: tokens verify with their call chain; heartbeats put into KV `aegis-gateways` and
//! a `bundle_published` on `aegis.bundles.<tenant>` give current / behind / stale / no bundle
//! and the exit codes (0 converged, 8 not, 6 unreachable, `--wait`), with `--trust` only
//! announcements signed by the control plane's key count (a forged higher one is ignored), a
//! tenant operator sees its own tenant's gateways and not another's; decision events and bundle
//! rejections published on `AEGIS_DECISIONS` come back through `tail` filtered, as the exact
//! stored JSON lines, also under a tenant operator's credentials.
//!
//! The binary is `target/<profile>/aegisctl`: `cargo build -p aegisctl` (or `--bins`) first.

use aegis_core::decision::{DecisionKind, Reason};
use aegis_core::decision_log::{
    BUNDLE_REJECTED_TYPE, BundleRejected, DECISION_TYPE, DecisionEvent, SCHEMA_VERSION,
    params_digest,
};
use aegis_core::events::envelope::format_time;
use aegis_core::events::{BundlePublished, Envelope, Event, RolloutStage};
use aegis_core::heartbeat::Heartbeat;
use aegis_core::ids::{ActorId, AgentId, EventId, TenantId, ToolId};
use aegis_core::keys::Keypair;
use aegis_core::token::{self, DEFAULT_AUDIENCE, IssuerKeys, TrustedIssuer};
use aegis_nats::conf::{ACCOUNTS_CONF, PASSWORD_ENV_VARS};
use aegis_nats::topology::{self, GATEWAYS_KV, Topology};
use aegis_nats::{ConnectOptions, Publish, connect, jetstream, provision, publish};
use aegis_tests::cli::{Run, finish, spawn};
use aegis_tests::{NatsServer, NatsServerOptions};
use async_nats::jetstream::Context;
use serde_json::{Map, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

fn aegisctl(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Run {
    let (child, out_dir) = spawn(args, env, dir);
    finish(child, &out_dir, Duration::from_secs(60), &args.join(" "))
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

async fn start_server() -> (NatsServer, Context) {
    let server = NatsServer::start().expect("start nats-server (run ./scripts/setup.sh)");
    let js = jetstream(connect(&ConnectOptions::new(server.url())).await.unwrap());
    provision(&js, &Topology::single()).await.unwrap();
    (server, js)
}

// ---- token ----

#[test]
fn token_issue_prints_a_token_that_verifies_with_its_chain_and_inspect_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::generate().unwrap();
    let paths = key.write_to_dir(dir.path(), "acme-idp").unwrap();
    let key_file = paths.signing_key.to_str().unwrap().to_owned();
    let run = aegisctl(
        &[
            "token",
            "issue",
            "--tenant",
            "acme",
            "--agent",
            "finance-agent",
            "--act",
            "user-portal",
            "--act",
            "planner",
            "--key",
            &key_file,
            "--issuer",
            "acme-idp",
            "--ttl",
            "15m",
            "--id",
            "jti-1",
        ],
        &[],
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 1, "only the token: {run:?}");
    let jwt = run.stdout.trim_end();
    assert_eq!(jwt.split('.').count(), 3, "{jwt}");

    let mut keys = IssuerKeys::new();
    keys.insert(TrustedIssuer {
        tenant: tenant("acme"),
        issuer: "acme-idp".into(),
        key: key.public_key().clone(),
    });
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let identity = token::verify(jwt, &keys, DEFAULT_AUDIENCE, now, 5).unwrap();
    assert_eq!(identity.tenant.as_str(), "acme");
    assert_eq!(identity.agent.as_str(), "finance-agent");
    let chain: Vec<&str> = identity.call_chain.iter().map(AgentId::as_str).collect();
    assert_eq!(chain, ["user-portal", "planner"], "origin first");
    assert_eq!(identity.token_id.as_deref(), Some("jti-1"));
    assert!(
        (identity.expires_at - now - 900).abs() <= 5,
        "exp is now + 15m: {identity:?}"
    );
    // Expired an hour later; another issuer name is refused.
    assert_eq!(
        token::verify(jwt, &keys, DEFAULT_AUDIENCE, now + 3600, 5)
            .unwrap_err()
            .code(),
        "token_expired"
    );

    let run = aegisctl(&["token", "inspect", jwt], &[], dir.path());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("UNVERIFIED"), "{run:?}");
    assert!(
        run.stdout
            .contains("user-portal -> planner -> finance-agent"),
        "{run:?}"
    );
    let run = aegisctl(&["token", "inspect", "--json", jwt], &[], dir.path());
    assert_eq!(run.code, 0, "{run:?}");
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["verified"], false);
    assert_eq!(
        json["claims"]["act"]["sub"], "planner",
        "direct caller outermost"
    );
    assert_eq!(json["claims"]["act"]["act"]["sub"], "user-portal");
    assert_eq!(
        json["call_chain"],
        serde_json::json!(["user-portal", "planner"])
    );

    let run = aegisctl(&["token", "inspect", "not-a-token"], &[], dir.path());
    assert_eq!(run.code, 1, "{run:?}");
    let run = aegisctl(
        &[
            "token", "issue", "--tenant", "acme", "--agent", "a", "--key", &key_file, "--issuer",
            "acme-idp", "--ttl", "soon",
        ],
        &[],
        dir.path(),
    );
    assert_eq!(run.code, 2, "{run:?}");
}

// ---- gateways ----

struct Beat<'a> {
    tenant: &'a str,
    gateway: &'a str,
    version: Option<u64>,
    age_seconds: i64,
    interval_seconds: u64,
    rejected: u64,
    last_rejection: Option<&'a str>,
}

impl<'a> Beat<'a> {
    fn new(tenant: &'a str, gateway: &'a str, version: Option<u64>) -> Self {
        Beat {
            tenant,
            gateway,
            version,
            age_seconds: 0,
            interval_seconds: 5,
            rejected: 0,
            last_rejection: None,
        }
    }

    fn record(&self) -> Heartbeat {
        let now = OffsetDateTime::now_utc();
        Heartbeat {
            gateway: self.gateway.into(),
            site: Some("edge-1".into()),
            tenant: tenant(self.tenant),
            version: self.version,
            digest: self.version.map(|v| format!("sha256:{:064x}", v)),
            applied_at: Some(format_time(now).unwrap()),
            stage: self.version.map(|_| "global".into()),
            candidate_version: None,
            ready: self.version.is_some(),
            rejected: self.rejected,
            last_rejection: self.last_rejection.map(str::to_owned),
            spool_events: 3,
            started_at: format_time(now - time::Duration::hours(1)).unwrap(),
            updated_at: format_time(now - time::Duration::seconds(self.age_seconds)).unwrap(),
            interval_seconds: self.interval_seconds,
            build: "test".into(),
        }
    }
}

async fn put(kv: &async_nats::jetstream::kv::Store, beat: Beat<'_>) {
    let key = topology::gateway_kv_key(&tenant(beat.tenant), beat.gateway).unwrap();
    kv.put(key, serde_json::to_vec(&beat.record()).unwrap().into())
        .await
        .unwrap();
}

/// The control plane's key in these tests.
fn control_plane_key() -> Keypair {
    Keypair::from_seed(&[7; 32])
}

async fn publish_bundle(js: &Context, tenant_name: &str, version: u64) {
    let bytes = bundle_published(tenant_name, version, &control_plane_key());
    publish_announcement(js, tenant_name, version, bytes).await;
}

/// A `bundle_published` envelope of `version`, signed by `key`.
fn bundle_published(tenant_name: &str, version: u64, key: &Keypair) -> Vec<u8> {
    let t = tenant(tenant_name);
    let envelope = Envelope::sign(
        EventId::random().unwrap(),
        t.clone(),
        ActorId::new("controlplane").unwrap(),
        key,
        OffsetDateTime::now_utc(),
        Event::BundlePublished(BundlePublished {
            version,
            digest: format!("sha256:{:064x}", version),
            size: 1000,
            created_at: "2026-11-26T10:00:00.000Z".into(),
            change_id: None,
            rollback_of: None,
            stage: RolloutStage::Global,
            signer: key.key_id().clone(),
        }),
    )
    .unwrap();
    envelope.to_bytes().unwrap()
}

async fn publish_announcement(js: &Context, tenant_name: &str, version: u64, bytes: Vec<u8>) {
    publish(
        js,
        Publish::new(
            topology::bundles_subject(&tenant(tenant_name)).unwrap(),
            bytes,
        )
        .msg_id(format!("bundle:{tenant_name}:{version}")),
    )
    .await
    .unwrap();
}

/// Forged announcements after a real v2: v99 signed by a rogue key, v100 signed by it too but
/// claiming the control plane's key id.
async fn publish_forgeries(js: &Context, tenant_name: &str) {
    let rogue = Keypair::from_seed(&[66; 32]);
    publish_announcement(
        js,
        tenant_name,
        99,
        bundle_published(tenant_name, 99, &rogue),
    )
    .await;
    let claimed = String::from_utf8(bundle_published(tenant_name, 100, &rogue))
        .unwrap()
        .replace(
            &format!("\"key_id\":\"{}\"", rogue.key_id()),
            &format!("\"key_id\":\"{}\"", control_plane_key().key_id()),
        );
    assert!(claimed.contains(control_plane_key().key_id().as_str()));
    publish_announcement(js, tenant_name, 100, claimed.into_bytes()).await;
}

/// The table row of `tenant gateway`, split on whitespace.
fn row<'a>(stdout: &'a str, tenant: &str, gateway: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.len() > 2 && cells[0] == tenant && cells[1] == gateway)
        .unwrap_or_else(|| panic!("no row for {tenant} {gateway} in\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_shows_current_behind_stale_and_no_bundle_and_exits_8_until_converged() {
    let (server, js) = start_server().await;
    let url = server.url();
    let env = [("AEGIS_NATS_URL", url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let kv = js.get_key_value(GATEWAYS_KV).await.unwrap();

    // Nobody has reported: not converged.
    let run = aegisctl(&["gateways"], &env, dir.path());
    assert_eq!(run.code, 8, "{run:?}");
    assert!(run.stdout.contains("no gateway has reported"), "{run:?}");

    publish_bundle(&js, "acme", 3).await;
    publish_bundle(&js, "acme", 4).await;
    put(&kv, Beat::new("acme", "gw1", Some(4))).await;
    put(
        &kv,
        Beat {
            rejected: 1,
            last_rejection: Some("v4 bad_signature: manifest signature does not verify"),
            ..Beat::new("acme", "gw2", Some(3))
        },
    )
    .await;
    put(
        &kv,
        Beat {
            age_seconds: 60,
            ..Beat::new("acme", "gw3", Some(4))
        },
    )
    .await;
    put(&kv, Beat::new("globex", "gw1", None)).await;

    let run = aegisctl(&["gateways"], &env, dir.path());
    assert_eq!(run.code, 8, "{run:?}");
    let header: Vec<&str> = run
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "TENANT",
            "GATEWAY",
            "SITE",
            "VERSION",
            "LATEST",
            "STATUS",
            "READY",
            "SPOOL",
            "LAST-SEEN"
        ]
    );
    assert_eq!(
        row(&run.stdout, "acme", "gw1")[..8],
        ["acme", "gw1", "edge-1", "v4", "v4", "current", "yes", "3"]
    );
    assert_eq!(
        row(&run.stdout, "acme", "gw2")[..8],
        ["acme", "gw2", "edge-1", "v3", "v4", "behind", "(v3", "<"]
    );
    let stale = row(&run.stdout, "acme", "gw3").join(" ");
    assert!(
        stale.contains("stale (last heartbeat 60s ago)")
            || stale.contains("stale (last heartbeat 61s ago)"),
        "{stale}"
    );
    let globex = row(&run.stdout, "globex", "gw1").join(" ");
    assert!(globex.contains("- - no bundle no"), "{globex}");
    assert!(
        run.stdout.contains(
            "acme/gw2: 1 bundle rejected since start, last: v4 bad_signature: manifest \
             signature does not verify"
        ),
        "{run:?}"
    );
    assert!(run.stdout.contains("not converged"), "{run:?}");

    // JSON, one tenant.
    let run = aegisctl(
        &["gateways", "--tenant", "acme", "--json"],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 8, "{run:?}");
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["converged"], false);
    let states: Vec<(&str, &str)> = json["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["gateway"].as_str().unwrap(), g["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("gw1", "current"), ("gw2", "behind"), ("gw3", "stale")]
    );
    assert_eq!(json["latest"]["acme"]["version"], 4);
    assert!(json["latest"].get("globex").is_none());

    // gw2 catches up, gw3 is removed from the bucket: acme has converged.
    put(&kv, Beat::new("acme", "gw2", Some(4))).await;
    kv.delete("acme.gw3").await.unwrap();
    let run = aegisctl(&["gateways", "--tenant", "acme"], &env, dir.path());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("all 2 gateways current"), "{run:?}");
    assert!(
        !run.stdout.contains("gw3"),
        "deleted keys are not listed: {run:?}"
    );

    // A new version: gw1 and gw2 are behind; --wait polls until they catch up.
    publish_bundle(&js, "acme", 5).await;
    let started = Instant::now();
    let run = aegisctl(
        &["gateways", "--tenant", "acme", "--wait", "1s"],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 8, "{run:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(run.stdout.contains("behind (v4 < v5)"), "{run:?}");

    let (child, out_dir) = spawn(
        &["gateways", "--tenant", "acme", "--wait", "30s"],
        &env,
        dir.path(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    put(&kv, Beat::new("acme", "gw1", Some(5))).await;
    put(&kv, Beat::new("acme", "gw2", Some(5))).await;
    let started = Instant::now();
    let run = tokio::task::spawn_blocking(move || {
        finish(child, &out_dir, Duration::from_secs(40), "gateways --wait")
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "--wait returned once converged"
    );
    assert!(run.stdout.contains("all 2 gateways current"), "{run:?}");

    // NATS unreachable: 6.
    let run = aegisctl(
        &["gateways", "--nats", "nats://127.0.0.1:1"],
        &[],
        dir.path(),
    );
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains("127.0.0.1:1"), "{run:?}");
}

// ---- tail ----

fn decision(
    n: u32,
    tenant_name: &str,
    gateway: &str,
    agent: &str,
    tool: &str,
    kind: DecisionKind,
) -> DecisionEvent {
    let mut params = Map::new();
    params.insert("amount".into(), (1000 * n).into());
    DecisionEvent {
        id: format!("dec-{n:032x}"),
        kind: DECISION_TYPE.into(),
        schema_version: SCHEMA_VERSION,
        time: format!("2026-11-26T10:00:{:02}.000Z", n % 60),
        tenant: tenant(tenant_name),
        gateway: gateway.into(),
        site: None,
        request_id: Some(format!("req-{n}")),
        identity_verified: true,
        agent_id: Some(AgentId::new(agent).unwrap()),
        call_chain: vec![AgentId::new("planner").unwrap()],
        tool_id: Some(ToolId::new(tool).unwrap()),
        action: Some("create_payment".into()),
        params_digest: params_digest(&params),
        params,
        masked_params: vec![],
        context: Map::new(),
        decision: kind,
        reasons: vec![Reason {
            code: format!("{}_by_rule", kind.as_str()),
            message: "by rule".into(),
            policy: Some(format!("{tenant_name}/{agent}")),
            rule: Some("r1".into()),
        }],
        policy: Some(format!("{tenant_name}/{agent}")),
        rule: Some("r1".into()),
        policy_version: Some(3),
        bundle_digest: Some(format!("sha256:{}", "a".repeat(64))),
        approval_id: None,
        latency_us: 150 + u64::from(n),
        rollout_stage: Some(RolloutStage::Global),
        shadow: None,
        trace_id: None,
        span_id: None,
    }
}

/// Publishes `bytes` on `aegis.decisions.<tenant>.<gateway>`.
async fn publish_record(js: &Context, tenant_name: &str, gateway: &str, id: &str, bytes: Vec<u8>) {
    let subject = topology::decisions_subject(&tenant(tenant_name), gateway).unwrap();
    publish(js, Publish::new(subject, bytes).msg_id(id))
        .await
        .unwrap();
}

/// Publishes the tail fixtures; returns the stored bytes of each acme record, in order, with
/// its id.
async fn publish_decisions(js: &Context) -> Vec<(String, String)> {
    use DecisionKind::*;
    let acme = [
        decision(1, "acme", "gw1", "finance-agent", "payments", Allow),
        decision(2, "acme", "gw1", "finance-agent", "payments", Deny),
        decision(3, "acme", "gw2", "hr-agent", "email", Deny),
        decision(4, "acme", "gw1", "finance-agent", "ledger", ApprovalNeeded),
        decision(5, "acme", "gw2", "finance-agent", "payments", Deny),
    ];
    let mut stored = Vec::new();
    for (i, event) in acme.iter().enumerate() {
        let bytes = event.to_bytes().unwrap();
        publish_record(js, "acme", &event.gateway, &event.id, bytes.clone()).await;
        stored.push((event.id.clone(), String::from_utf8(bytes).unwrap()));
        if i == 1 {
            // Another tenant's decision and a bundle rejection in between.
            let other = decision(9, "globex", "gw1", "finance-agent", "payments", Deny);
            publish_record(js, "globex", "gw1", &other.id, other.to_bytes().unwrap()).await;
            let rejected = BundleRejected {
                id: format!("rej-{:032x}", 1),
                kind: BUNDLE_REJECTED_TYPE.into(),
                schema_version: SCHEMA_VERSION,
                time: "2026-11-26T10:00:02.500Z".into(),
                tenant: tenant("acme"),
                gateway: "gw2".into(),
                site: None,
                version: Some(4),
                digest: format!("sha256:{}", "b".repeat(64)),
                reason_code: "bad_signature".into(),
                reason: "manifest signature does not verify".into(),
                kept_version: Some(3),
            };
            let bytes = serde_json::to_vec(&rejected).unwrap();
            publish_record(js, "acme", "gw2", &rejected.id, bytes.clone()).await;
            stored.push((rejected.id.clone(), String::from_utf8(bytes).unwrap()));
        }
    }
    stored
}

fn ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_from_start_filters_and_prints_the_stored_json_lines() {
    let (server, js) = start_server().await;
    let url = server.url();
    let env = [("AEGIS_NATS_URL", url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let stored = publish_decisions(&js).await;
    let id = |n: u32| format!("dec-{n:032x}");
    let rej = format!("rej-{:032x}", 1);

    // Everything of acme, exactly as stored, one per line (JSON is the default off a terminal).
    let run = aegisctl(
        &["tail", "--tenant", "acme", "--from-start", "--limit", "6"],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let expected: Vec<&str> = stored.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(lines, expected);
    assert_eq!(
        ids(&run.stdout),
        [id(1), id(2), rej.clone(), id(3), id(4), id(5)]
    );

    // --no-follow: everything stored, then exit (no --limit needed); nothing stored: at once.
    let run = aegisctl(
        &["tail", "--tenant", "acme", "--from-start", "--no-follow"],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().collect::<Vec<_>>(), expected);
    let run = aegisctl(
        &[
            "tail",
            "--tenant",
            "acme",
            "--tenant",
            "globex",
            "--from-start",
            "--no-follow",
        ],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 7, "{}", run.stdout);
    let run = aegisctl(
        &["tail", "--tenant", "initech", "--from-start", "--no-follow"],
        &env,
        dir.path(),
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");

    // --decision: only those decisions, bundle rejections left out.
    let run = aegisctl(
        &[
            "tail",
            "--tenant",
            "acme",
            "--from-start",
            "--decision",
            "deny",
            "--limit",
            "3",
            "--format",
            "json",
        ],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(ids(&run.stdout), [id(2), id(3), id(5)]);

    // --agent and --tool together.
    let run = aegisctl(
        &[
            "tail",
            "--tenant",
            "acme",
            "--from-start",
            "--agent",
            "finance-agent",
            "--tool",
            "payments",
            "--limit",
            "3",
        ],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(ids(&run.stdout), [id(1), id(2), id(5)]);

    // Two tenants: every record of both (interleaving between tenants is not fixed).
    let run = aegisctl(
        &[
            "tail",
            "--tenant",
            "acme",
            "--tenant",
            "globex",
            "--from-start",
            "--limit",
            "7",
        ],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let mut got = ids(&run.stdout);
    got.sort();
    let mut want = vec![id(1), id(2), id(3), id(4), id(5), id(9), rej.clone()];
    want.sort();
    assert_eq!(got, want);

    // Without --tenant: every tenant.
    let run = aegisctl(&["tail", "--from-start", "--limit", "7"], &env, dir.path());
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(ids(&run.stdout).len(), 7);

    // The table: a header, decision rows, a distinct line for the rejection.
    let run = aegisctl(
        &[
            "tail",
            "--tenant",
            "acme",
            "--from-start",
            "--limit",
            "3",
            "--format",
            "table",
        ],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{run:?}");
    assert!(lines[0].starts_with("TIME"), "{run:?}");
    assert!(lines[0].contains("TOOL/ACTION"), "{run:?}");
    for part in [
        "acme",
        "gw1",
        "finance-agent",
        "planner",
        "payments:create_payment",
        "deny",
        "deny_by_rule",
        "v3",
        "152µs",
    ] {
        assert!(lines[2].contains(part), "{part} missing: {}", lines[2]);
    }
    assert!(
        lines[3].contains(
            "BUNDLE REJECTED v4 sha256:bbbbbbbbbbbb…: bad_signature: manifest signature does \
             not verify (kept v3)"
        ),
        "{}",
        lines[3]
    );

    // New records only (the default): what is published after the start.
    let (child, out_dir) = spawn(
        &["tail", "--tenant", "acme", "--limit", "1"],
        &env,
        dir.path(),
    );
    let late = decision(
        6,
        "acme",
        "gw1",
        "finance-agent",
        "payments",
        DecisionKind::Sanitize,
    );
    let js2 = js.clone();
    let publisher = tokio::spawn(async move {
        // Until the tail has its consumer, a published record may predate it: publish a few
        // times under fresh ids, the first one seen is enough.
        for attempt in 0..20u32 {
            let mut event = late.clone();
            event.id = format!("dec-{:032x}", 1000 + attempt);
            publish_record(&js2, "acme", "gw1", &event.id, event.to_bytes().unwrap()).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let run = tokio::task::spawn_blocking(move || {
        finish(child, &out_dir, Duration::from_secs(30), "tail (new only)")
    })
    .await
    .unwrap();
    publisher.abort();
    assert_eq!(run.code, 0, "{run:?}");
    let got = ids(&run.stdout);
    assert_eq!(got.len(), 1, "{run:?}");
    let n = u32::from_str_radix(got[0].trim_start_matches("dec-"), 16).unwrap();
    assert!(n >= 1000, "an old record was printed: {run:?}");
    assert!(!stored.iter().any(|(id, _)| id == &got[0]), "{run:?}");

    // NATS unreachable: 6.
    let run = aegisctl(
        &["tail", "--nats", "nats://127.0.0.1:1", "--limit", "1"],
        &[],
        dir.path(),
    );
    assert_eq!(run.code, 6, "{run:?}");
}

fn password(user: &str) -> String {
    format!("test-password-of-{user}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_operator_tails_its_own_tenant() {
    let mut options = NatsServerOptions::default().with_config(ACCOUNTS_CONF);
    for (user, var) in PASSWORD_ENV_VARS {
        options = options.with_env(var, password(user));
    }
    let server = NatsServer::start_with(options).unwrap();
    let cp = jetstream(
        connect(
            &ConnectOptions::new(server.url())
                .user_and_password("controlplane", password("controlplane")),
        )
        .await
        .unwrap(),
    );
    provision(&cp, &Topology::single()).await.unwrap();
    publish_decisions(&cp).await;

    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let operator_password = password("acme-operator");
    let env = [
        ("AEGIS_NATS_URL", url.as_str()),
        ("AEGIS_NATS_USER", "acme-operator"),
        ("AEGIS_NATS_PASSWORD", operator_password.as_str()),
        ("AEGIS_TENANT", "acme"),
    ];
    // --tenant from AEGIS_TENANT.
    let run = aegisctl(
        &["tail", "--from-start", "--decision", "deny", "--limit", "3"],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        ids(&run.stdout),
        [
            format!("dec-{:032x}", 2),
            format!("dec-{:032x}", 3),
            format!("dec-{:032x}", 5)
        ]
    );
}

/// A server running the shipped accounts.conf, provisioned by the control plane user.
async fn start_with_accounts() -> (NatsServer, Context) {
    let mut options = NatsServerOptions::default().with_config(ACCOUNTS_CONF);
    for (user, var) in PASSWORD_ENV_VARS {
        options = options.with_env(var, password(user));
    }
    let server = NatsServer::start_with(options).unwrap();
    let cp = jetstream(
        connect(
            &ConnectOptions::new(server.url())
                .user_and_password("controlplane", password("controlplane")),
        )
        .await
        .unwrap(),
    );
    provision(&cp, &Topology::single()).await.unwrap();
    (server, cp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_operator_sees_its_own_gateways_and_not_another_tenants() {
    let (server, cp) = start_with_accounts().await;
    let kv = cp.get_key_value(GATEWAYS_KV).await.unwrap();
    publish_bundle(&cp, "acme", 2).await;
    publish_bundle(&cp, "globex", 7).await;
    put(&kv, Beat::new("acme", "gw1", Some(2))).await;
    put(&kv, Beat::new("acme", "gw2", Some(2))).await;
    put(&kv, Beat::new("globex", "secret-gw", Some(7))).await;

    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let operator_password = password("acme-operator");
    let env = [
        ("AEGIS_NATS_URL", url.as_str()),
        ("AEGIS_NATS_USER", "acme-operator"),
        ("AEGIS_NATS_PASSWORD", operator_password.as_str()),
    ];
    let run = aegisctl(&["gateways", "--tenant", "acme"], &env, dir.path());
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        row(&run.stdout, "acme", "gw1")[..6],
        ["acme", "gw1", "edge-1", "v2", "v2", "current"]
    );
    assert_eq!(
        row(&run.stdout, "acme", "gw2")[..6],
        ["acme", "gw2", "edge-1", "v2", "v2", "current"]
    );
    assert!(run.stdout.contains("all 2 gateways current"), "{run:?}");
    assert!(!run.stdout.contains("globex"), "{run:?}");
    // A gateway falls behind: exit 8, still readable.
    publish_bundle(&cp, "acme", 3).await;
    let run = aegisctl(
        &["gateways", "--tenant", "acme", "--json"],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 8, "{run:?}");
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["gateways"][0]["state"], "behind");
    assert_eq!(json["latest"]["acme"]["version"], 3);

    // Forged announcements: with --trust, found out with tenant credentials too (the walk back
    // reads aegis.bundles.acme with an ordered consumer).
    publish_forgeries(&cp, "acme").await;
    let trust = dir.path().join("control-plane.pub.json");
    control_plane_key().public_key().write(&trust).unwrap();
    let run = aegisctl(
        &[
            "gateways",
            "--tenant",
            "acme",
            "--trust",
            trust.to_str().unwrap(),
        ],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 8, "{run:?}");
    assert!(run.stdout.contains("behind (v2 < v3)"), "{run:?}");
    assert!(run.stdout.contains("2 newer ignored"), "{run:?}");

    // globex's heartbeats (and everyone's): refused by the server, nothing of globex printed.
    for args in [&["gateways", "--tenant", "globex"][..], &["gateways"][..]] {
        let run = aegisctl(args, &env, dir.path());
        assert_eq!(run.code, 6, "{args:?}: {run:?}");
        assert!(
            !run.stdout.contains("secret-gw") && !run.stderr.contains("secret-gw"),
            "{run:?}"
        );
        assert!(run.stderr.contains("aegis-gateways"), "{run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trust_a_forged_higher_announcement_does_not_count_as_the_latest() {
    let (server, js) = start_server().await;
    let url = server.url();
    let env = [("AEGIS_NATS_URL", url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let kv = js.get_key_value(GATEWAYS_KV).await.unwrap();
    let trust_dir = dir.path().join("trust");
    std::fs::create_dir(&trust_dir).unwrap();
    let paths = control_plane_key()
        .write_to_dir(&trust_dir, "control-plane")
        .unwrap();
    let pub_file = paths.public_key.to_str().unwrap().to_owned();
    let trust_dir = trust_dir.to_str().unwrap().to_owned();

    publish_bundle(&js, "acme", 1).await;
    publish_bundle(&js, "acme", 2).await;
    publish_forgeries(&js, "acme").await;
    put(&kv, Beat::new("acme", "gw1", Some(2))).await;

    // Unverified (no --trust): the forged v100 is the latest, gw1 looks behind.
    let run = aegisctl(&["gateways", "--tenant", "acme"], &env, dir.path());
    assert_eq!(run.code, 8, "{run:?}");
    assert_eq!(row(&run.stdout, "acme", "gw1")[4], "v100", "{run:?}");
    assert!(run.stdout.contains("behind (v2 < v100)"), "{run:?}");

    // --trust with the public key file, or the directory: v2 is the latest, gw1 current, and
    // the two ignored announcements are reported.
    for trust in [&pub_file, &trust_dir] {
        let run = aegisctl(
            &["gateways", "--tenant", "acme", "--trust", trust],
            &env,
            dir.path(),
        );
        assert_eq!(run.code, 0, "{trust}: {run:?}");
        assert_eq!(
            row(&run.stdout, "acme", "gw1")[..6],
            ["acme", "gw1", "edge-1", "v2", "v2", "current"]
        );
        assert!(
            run.stdout.contains(
                "acme: latest v2 is the newest announcement signed by a trusted key; 2 newer \
                 ignored, the last does not verify: bad signature"
            ),
            "{run:?}"
        );
        assert!(run.stdout.contains("all 1 gateway current"), "{run:?}");
    }
    let run = aegisctl(
        &[
            "gateways", "--tenant", "acme", "--trust", &pub_file, "--json",
        ],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["latest_verified"], true);
    assert_eq!(json["latest"]["acme"]["version"], 2);
    assert_eq!(json["latest"]["acme"]["ignored"]["count"], 2);
    assert_eq!(json["gateways"][0]["state"], "current");

    // A real v3 after the forgeries: the last message verifies, it is the latest.
    publish_bundle(&js, "acme", 3).await;
    let run = aegisctl(
        &["gateways", "--tenant", "acme", "--trust", &pub_file],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 8, "{run:?}");
    assert!(run.stdout.contains("behind (v2 < v3)"), "{run:?}");
    assert!(!run.stdout.contains("ignored"), "{run:?}");

    // Only forgeries for globex: no latest version to judge by.
    publish_forgeries(&js, "globex").await;
    put(&kv, Beat::new("globex", "gw1", Some(99))).await;
    let run = aegisctl(
        &["gateways", "--tenant", "globex", "--trust", &pub_file],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 8, "{run:?}");
    assert!(
        run.stdout.contains(
            "unknown (no bundle_published on aegis.bundles.globex is signed by a trusted key"
        ),
        "{run:?}"
    );

    // An unreadable trust path: invalid arguments.
    let run = aegisctl(
        &["gateways", "--trust", "/nonexistent/keys"],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 2, "{run:?}");
}
