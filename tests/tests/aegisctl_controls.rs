//! `aegisctl`'s issue-5 controls against a real nats-server and the real control plane:
//!
//! - runtime approvals: gateway-style `approval_requested` / `approval_consumed` records and
//!   control-plane-signed `runtime_approval_decided` relays put on `aegis.approvals.acme.<id>`
//!   (as the `gateway-gw1` and `controlplane` users of the shipped accounts.conf); `approvals
//!   list` as the `acme-operator` user shows each one pending, granted, denied, used or expired,
//!   in the table and as JSON lines; `approvals grant` / `deny` publish a signed event carrying
//!   the request's call digest on `aegis.changes.acme.approval.<id>`, refuse an id that is
//!   unknown or no longer pending, and the operator may not write on the approval subjects;
//! - `rollout status` as the operator shows the control plane's signed `tenant_controls` (put on
//!   `aegis.bundles.globex.controls` by the test): stable, candidate with its cohort, blocks;
//! - rollout, kill switch, data-plane freeze and emergency rollback (the binary, as a publisher
//!   or the root admin): each lands on `aegis.changes.acme.control` as a signed event with the
//!   exact payload; `rollout status` shows the stable version and the candidate.
//!
//! The binaries come from `target/<profile>/`: `cargo build -p aegis-controlplane -p aegisctl
//! --bins` first.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::approvals::{
    ApprovalConsumed, ApprovalRequested, CONSUMED, CallIdentity, REQUESTED, call_digest,
};
use aegis_core::decision::Reason;
use aegis_core::events::envelope::{format_time, parse_time};
use aegis_core::events::{
    AgentBlocked, AgentUnblocked, BlockEntry, BundleRef, ChangeApproved, ChangePublished,
    DataPlaneFrozen, DataPlaneUnfrozen, Envelope, Event, ReceivedEnvelope, Role, RollbackRequested,
    RolloutAborted, RolloutCandidate, RolloutPromotionApproved, RolloutStage, RolloutStageChanged,
    RuntimeApprovalDecided, TenantControls, ToolBlocked, ToolUnblocked,
};
use aegis_core::ids::{ActorId, AgentId, ChangeId, EventId, TenantId, ToolId};
use aegis_core::keys::Keypair;
use aegis_core::query::{EventRecord, Outcome};
use aegis_nats::conf::{ACCOUNTS_CONF, PASSWORD_ENV_VARS};
use aegis_nats::topology::{self, APPROVALS_STREAM, CHANGES_STREAM};
use aegis_nats::{ConnectOptions, Publish, PublishError, connect, last_message, publish};
use aegis_tests::cli::Run;
use aegis_tests::controlplane::{ControlPlane, Keys, Operator};
use aegis_tests::flow::{FINANCE_POLICY, accept, announced, setup_actors, start_control_plane};
use aegis_tests::stack::{finance_with_approval_limit, proposal_for};
use aegis_tests::{NatsServer, NatsServerOptions};
use aegisctl::exit::Exit;
use aegisctl::online::approvals::{self, ApprovalState};
use aegisctl::online::{Client, Signer, rollout};
use async_nats::jetstream::{self, Context};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

fn password(user: &str) -> String {
    format!("test-password-of-{user}")
}

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Runs `aegisctl args` with a clean Aegis environment plus `env`.
fn aegisctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    aegis_tests::cli::run(args, env)
}

/// A run that published a new event must have been accepted by the control plane (exit 0).
fn accepted(run: &Run, what: &str) {
    assert_eq!(
        run.code, 0,
        "{what}: exit {}\nstdout:\n{}\nstderr:\n{}",
        run.code, run.stdout, run.stderr
    );
}

/// The last message on `subject` in AEGIS_CHANGES, as a signed envelope that verifies with
/// `key`.
async fn last_change(js: &Context, subject: &str, key: &Keypair) -> Envelope {
    let last = last_message(js, CHANGES_STREAM, subject)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("nothing on {subject}"));
    let received = ReceivedEnvelope::parse(&last.payload).unwrap();
    received
        .verify(key.verifying_key())
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    let msg_id = last
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned());
    assert_eq!(msg_id.as_deref(), Some(received.envelope.id.as_str()));
    received.envelope
}

// ---- runtime approvals ----

fn approval_id(n: u8) -> String {
    format!("apr-{n:032x}")
}

fn time_in(seconds: i64) -> String {
    format_time(OffsetDateTime::now_utc() + time::Duration::seconds(seconds)).unwrap()
}

/// What a gateway publishes for a `create_payment` of `amount` that needs approval.
fn request(id: &str, amount: u64, requested_in: i64, expires_in: i64) -> ApprovalRequested {
    let tenant = acme();
    let agent = AgentId::new("finance-agent").unwrap();
    let chain = vec![AgentId::new("planner").unwrap()];
    let tool = ToolId::new("payments").unwrap();
    let mut params = Map::new();
    params.insert("amount".into(), amount.into());
    params.insert("currency".into(), "USD".into());
    let digest = call_digest(&CallIdentity {
        tenant: &tenant,
        agent_id: &agent,
        call_chain: &chain,
        tool_id: &tool,
        action: "create_payment",
        params: &params,
    });
    ApprovalRequested {
        kind: REQUESTED.into(),
        approval_id: id.into(),
        tenant,
        gateway: "gw1".into(),
        decision_id: format!("dec-{}", &id[4..]),
        agent_id: agent,
        call_chain: chain,
        tool_id: tool,
        action: "create_payment".into(),
        params,
        masked_params: vec![],
        call_digest: digest,
        reasons: vec![Reason {
            code: "amount_requires_approval".into(),
            message: format!("amount {amount} is above 5000"),
            policy: Some("finance-agent".into()),
            rule: Some("payments".into()),
        }],
        policy: Some("finance-agent".into()),
        rule: Some("payments".into()),
        policy_version: Some(1),
        requested_at: time_in(requested_in),
        expires_at: time_in(expires_in),
    }
}

/// The control plane's signed relay of bob's decision.
fn decided(
    cp_key: &Keypair,
    r: &ApprovalRequested,
    granted: bool,
    expires_in: Option<i64>,
) -> Envelope {
    Envelope::sign(
        EventId::random().unwrap(),
        acme(),
        ActorId::new("control-plane").unwrap(),
        cp_key,
        OffsetDateTime::now_utc(),
        Event::RuntimeApprovalDecided(RuntimeApprovalDecided {
            approval_id: r.approval_id.clone(),
            call_digest: r.call_digest.clone(),
            granted,
            expires_at: expires_in.map(time_in),
            by: ActorId::new("bob").unwrap(),
            at: time_in(-60),
            note: Some(if granted { "ok" } else { "over budget" }.into()),
            source_event: EventId::random().unwrap(),
        }),
    )
    .unwrap()
}

async fn put_request(gw: &Context, r: &ApprovalRequested) -> u64 {
    let subject = topology::approvals_subject(&acme(), &r.approval_id).unwrap();
    let p = Publish::new(subject, serde_json::to_vec(r).unwrap()).msg_id(r.approval_id.clone());
    publish(gw, p).await.unwrap().sequence
}

async fn put_decided(cp: &Context, r: &ApprovalRequested, env: &Envelope) -> u64 {
    let subject = topology::approvals_subject(&acme(), &r.approval_id).unwrap();
    let p = Publish::new(subject, env.to_bytes().unwrap()).msg_id(env.id.to_string());
    publish(cp, p).await.unwrap().sequence
}

/// A gateway uses the grant: expecting the grant to be the subject's last message.
async fn put_consumed(gw: &Context, r: &ApprovalRequested, grant_seq: u64) {
    let subject = topology::approvals_subject(&acme(), &r.approval_id).unwrap();
    let used = ApprovalConsumed {
        kind: CONSUMED.into(),
        approval_id: r.approval_id.clone(),
        tenant: acme(),
        gateway: "gw2".into(),
        decision_id: "dec-used".into(),
        call_digest: r.call_digest.clone(),
        at: time_in(-30),
    };
    let p = Publish::new(subject, serde_json::to_vec(&used).unwrap())
        .msg_id(format!("used:{}", r.approval_id))
        .expect_last_subject_sequence(grant_seq);
    publish(gw, p).await.unwrap();
}

async fn login(server: &NatsServer, user: &str) -> async_nats::Client {
    let mut options = ConnectOptions::new(server.url()).user_and_password(user, password(user));
    options.request_timeout = Duration::from_secs(2);
    connect(&options).await.unwrap()
}

fn signer(dir: &Path, name: &str) -> (Signer, PathBuf, PathBuf) {
    let key = Keypair::generate().unwrap();
    let paths = key.write_to_dir(dir, name).unwrap();
    (
        Signer::load(ActorId::new(name).unwrap(), &paths.signing_key).unwrap(),
        paths.signing_key,
        paths.public_key,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_listed_by_state_and_granted_or_denied_with_signed_events() {
    let mut options = NatsServerOptions::default().with_config(ACCOUNTS_CONF);
    for (user, var) in PASSWORD_ENV_VARS {
        options = options.with_env(var, password(user));
    }
    let server = NatsServer::start_with(options).unwrap();
    let keys = Keys::generate().unwrap();
    let cp = ControlPlane::start(
        &server.url(),
        &keys,
        &[
            "--user",
            "controlplane",
            "--password",
            &password("controlplane"),
        ],
    )
    .unwrap();
    let operator = login(&server, "acme-operator").await;
    aegis_tests::controlplane::wait_ready(&operator, &acme(), Duration::from_secs(60))
        .await
        .unwrap();
    let cp_js = jetstream::new(login(&server, "controlplane").await);
    let gw_js = jetstream::new(login(&server, "gateway-gw1").await);

    // Root registers bob, an approver.
    let dir = tempfile::tempdir().unwrap();
    let root = Client::new(
        operator.clone(),
        server.url(),
        acme(),
        Some(Signer {
            actor: ActorId::new("root").unwrap(),
            key: keys.root.clone(),
        }),
        Duration::from_secs(60),
    );
    let (bob, bob_key_file, bob_public) = signer(dir.path(), "bob");
    let mut out = Vec::new();
    let exit = aegisctl::online::actors::add(
        &root,
        &aegisctl::online::actors::AddArgs {
            actor: bob.actor.clone(),
            public_key: bob_public,
            display_name: None,
            roles: vec![Role::Approver],
            json: false,
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(exit, Exit::Ok, "{}\n{}", text(&out), cp.log());
    let bob_key = bob.key.clone();
    let as_bob = root.with_signer(Some(bob));

    // Gateways asked for six approvals; bob decided four of them, a gateway used one grant.
    let pending = request(&approval_id(1), 6000, -120, 3600);
    let pending_2 = request(&approval_id(2), 7000, -100, 3600);
    let expired = request(&approval_id(3), 8000, -7200, -3600);
    let granted = request(&approval_id(4), 9000, -90, 3600);
    let lapsed = request(&approval_id(5), 9500, -80, 3600);
    let denied = request(&approval_id(6), 9900, -70, 3600);
    let used = request(&approval_id(7), 6500, -60, 3600);
    for r in [
        &pending, &pending_2, &expired, &granted, &lapsed, &denied, &used,
    ] {
        put_request(&gw_js, r).await;
    }
    put_decided(
        &cp_js,
        &granted,
        &decided(&keys.control_plane, &granted, true, Some(900)),
    )
    .await;
    put_decided(
        &cp_js,
        &lapsed,
        &decided(&keys.control_plane, &lapsed, true, Some(-10)),
    )
    .await;
    put_decided(
        &cp_js,
        &denied,
        &decided(&keys.control_plane, &denied, false, None),
    )
    .await;
    let grant_seq = put_decided(
        &cp_js,
        &used,
        &decided(&keys.control_plane, &used, true, Some(900)),
    )
    .await;
    put_consumed(&gw_js, &used, grant_seq).await;

    // The operator may read its approval subjects, but not write on them.
    let forged = publish(
        &jetstream::new(operator.clone()),
        Publish::new(
            topology::approvals_subject(&acme(), &approval_id(9)).unwrap(),
            serde_json::to_vec(&request(&approval_id(9), 1, 0, 60)).unwrap(),
        ),
    )
    .await;
    assert!(
        matches!(forged, Err(PublishError::TimedOut { .. })),
        "the operator wrote an approval request: {forged:?}"
    );

    // `approvals list`: the pending ones, as a table.
    let mut out = Vec::new();
    let exit = approvals::list(
        &root,
        &approvals::ListArgs {
            all: false,
            json: false,
        },
        &mut out,
    )
    .await
    .unwrap();
    let table = text(&out);
    assert_eq!(exit, Exit::Ok, "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("approval"), "{table}");
    for (line, r) in [(lines[1], &pending), (lines[2], &pending_2)] {
        for cell in [
            r.approval_id.as_str(),
            "finance-agent via planner",
            "payments/create_payment",
            &format!("amount={}", r.params["amount"]),
            "amount_requires_approval",
            "pending",
            &r.requested_at,
            &r.expires_at,
        ] {
            assert!(line.contains(cell), "{cell} missing in {line}");
        }
    }

    // `--all --json`: every approval with its state, request, decision and use.
    let mut out = Vec::new();
    approvals::list(
        &root,
        &approvals::ListArgs {
            all: true,
            json: true,
        },
        &mut out,
    )
    .await
    .unwrap();
    let lines: Vec<Value> = text(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let state_of = |id: &str| {
        lines
            .iter()
            .find(|l| l["approval_id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {}", text(&out)))
    };
    for (r, state) in [
        (&pending, "pending"),
        (&pending_2, "pending"),
        (&expired, "expired"),
        (&granted, "granted"),
        (&lapsed, "expired"),
        (&denied, "denied"),
        (&used, "used"),
    ] {
        let line = state_of(&r.approval_id);
        assert_eq!(line["state"], state, "{line}");
        assert_eq!(line["request"], serde_json::to_value(r).unwrap());
    }
    assert_eq!(lines.len(), 7);
    let granted_line = state_of(&granted.approval_id);
    assert_eq!(granted_line["decision"]["by"], "bob");
    assert_eq!(granted_line["decision"]["granted"], true);
    assert_eq!(
        granted_line["decision"]["call_digest"],
        granted.call_digest.as_str()
    );
    assert_eq!(state_of(&used.approval_id)["consumed"]["gateway"], "gw2");
    assert_eq!(
        state_of(&denied.approval_id)["decision"]["note"],
        "over budget"
    );

    // The same through the binary, with the operator's credentials from the environment.
    let operator_password = password("acme-operator");
    let env = [
        ("AEGIS_NATS_URL", server.url()),
        ("AEGIS_NATS_USER", "acme-operator".to_owned()),
        ("AEGIS_NATS_PASSWORD", operator_password.clone()),
        ("AEGIS_TENANT", "acme".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = aegisctl(&["approvals", "list", "--all", "--json"], &env);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 7, "{run:?}");

    // `rollout status` as an operator: the control plane's signed tenant_controls state, with
    // the cohort, the kill switch and the data-plane freeze. (Tenant globex, which this control
    // plane knows nothing about, so that only the test writes its controls subject.)
    let globex = TenantId::new("globex").unwrap();
    let bundle = |version: u64| BundleRef {
        version,
        digest: format!("sha256:{:064x}", version),
        size: 100,
    };
    let controls = TenantControls {
        epoch: 7,
        stable: Some(bundle(3)),
        candidate: Some(RolloutCandidate {
            bundle: bundle(4),
            stage: RolloutStage::Partial,
            agents: vec![AgentId::new("planner").unwrap()],
            percent: Some(10),
        }),
        blocked_agents: vec![BlockEntry {
            id: "planner".into(),
            reason: "INC-7".into(),
            by: ActorId::new("carol").unwrap(),
            at: time_in(-5),
        }],
        blocked_tools: vec![],
        data_plane_frozen: None,
    };
    let controls_env = Envelope::sign(
        EventId::random().unwrap(),
        globex.clone(),
        ActorId::new("control-plane").unwrap(),
        &keys.control_plane,
        OffsetDateTime::now_utc(),
        Event::TenantControls(controls),
    )
    .unwrap();
    publish(
        &cp_js,
        Publish::new(
            topology::controls_subject(&globex).unwrap(),
            controls_env.to_bytes().unwrap(),
        )
        .msg_id("controls:globex:7"),
    )
    .await
    .unwrap();
    let globex_password = password("globex-operator");
    let globex_env: Vec<(&str, &str)> = vec![
        ("AEGIS_NATS_URL", env[0].1),
        ("AEGIS_NATS_USER", "globex-operator"),
        ("AEGIS_NATS_PASSWORD", &globex_password),
        ("AEGIS_TENANT", "globex"),
    ];
    let run = aegisctl(&["rollout", "status", "--json"], &globex_env);
    assert_eq!(run.code, 0, "{run:?}");
    let view: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(view["source"]["kind"], "tenant_controls", "{view}");
    assert_eq!(view["source"]["epoch"], 7, "{view}");
    assert_eq!(view["stable"]["version"], 3, "{view}");
    assert_eq!(view["candidate"]["version"], 4, "{view}");
    assert_eq!(view["candidate"]["agents"], serde_json::json!(["planner"]));
    assert_eq!(view["candidate"]["percent"], 10, "{view}");
    assert_eq!(view["blocked_agents"][0]["id"], "planner", "{view}");
    let run = aegisctl(&["rollout", "status"], &globex_env);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("agents planner + 10% of agents")
            && run.stdout.contains("blocked agents:\n  planner by carol"),
        "{}",
        run.stdout
    );

    // Granting an id nobody asked for, or one that is no longer pending: refused, exit 1,
    // nothing published.
    let unknown = approval_id(0xee);
    let run = aegisctl(&["approvals", "grant", &unknown], &env);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("no approval request {unknown} in tenant acme")),
        "{run:?}"
    );
    for (r, needle) in [
        (&granted, "already granted by bob"),
        (&denied, "already denied by bob"),
        (&used, "already used by gateway gw2"),
        (&expired, "expired undecided"),
        (&lapsed, "the grant expired unused"),
    ] {
        let e = approvals::grant(
            &as_bob,
            &approvals::GrantArgs {
                approval_id: r.approval_id.clone(),
                ttl: Duration::from_secs(900),
                comment: None,
                json: false,
            },
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit, Exit::Failure, "{}", e.message);
        assert!(e.message.contains(needle), "{needle}: {}", e.message);
        let subject = format!("aegis.changes.acme.approval.{}", r.approval_id);
        assert!(
            last_message(&cp_js, CHANGES_STREAM, &subject)
                .await
                .unwrap()
                .is_none()
        );
    }
    let e = approvals::deny(
        &as_bob,
        &approvals::DenyArgs {
            approval_id: "apr.1".into(),
            reason: "x".into(),
            json: false,
        },
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit, Exit::Invalid, "{}", e.message);

    // Bob grants the pending request (the binary, his key): it shows the call, then publishes
    // runtime_approval_granted for exactly that call, signed by bob.
    let before = OffsetDateTime::now_utc();
    let bob_key_path = bob_key_file.to_str().unwrap();
    let mut bob_env = env.clone();
    bob_env.extend([("AEGIS_ACTOR", "bob"), ("AEGIS_KEY", bob_key_path)]);
    let run = aegisctl(
        &[
            "approvals",
            "grant",
            &pending.approval_id,
            "--ttl",
            "10m",
            "--comment",
            "confirmed with the CFO",
        ],
        &bob_env,
    );
    let after = OffsetDateTime::now_utc();
    accepted(&run, "approvals grant");
    for shown in [
        "agent:     finance-agent",
        "chain:     planner",
        "tool:      payments",
        "action:    create_payment",
        r#"params:    {"amount":6000,"currency":"USD"}"#,
        "reason:    amount_requires_approval: amount 6000 is above 5000",
        "granting once, until ",
    ] {
        assert!(
            run.stdout.contains(shown),
            "{shown} not shown:\n{}",
            run.stdout
        );
    }
    let subject = format!("aegis.changes.acme.approval.{}", pending.approval_id);
    let env_granted = last_change(&cp_js, &subject, &bob_key).await;
    assert_eq!(env_granted.actor.as_str(), "bob");
    assert_eq!(env_granted.tenant, acme());
    let Event::RuntimeApprovalGranted(g) = &env_granted.event else {
        panic!("not a grant: {env_granted:?}");
    };
    assert_eq!(g.approval_id, pending.approval_id);
    assert_eq!(g.call_digest, pending.call_digest);
    assert_eq!(g.comment.as_deref(), Some("confirmed with the CFO"));
    let expires = parse_time(&g.expires_at).unwrap();
    let ttl = time::Duration::minutes(10);
    assert!(
        expires >= before + ttl - time::Duration::milliseconds(1) && expires <= after + ttl,
        "{} is not 10 minutes after the grant",
        g.expires_at
    );
    assert_eq!(
        g.expires_at,
        format_time(expires).unwrap(),
        "RFC 3339, millis, UTC"
    );
    // The control plane relayed it: the request is granted now.
    assert!(run.stdout.contains("relayed to gateways"), "{}", run.stdout);
    let now = OffsetDateTime::now_utc();
    let a = approvals::read_approval(&cp_js, &acme(), &pending.approval_id, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.state, ApprovalState::Granted, "{a:?}");

    // Bob denies the other one (in-process, JSON): runtime_approval_denied with its digest.
    let mut out = Vec::new();
    let exit = approvals::deny(
        &as_bob,
        &approvals::DenyArgs {
            approval_id: pending_2.approval_id.clone(),
            reason: "not in this quarter's budget".into(),
            json: true,
        },
        &mut out,
    )
    .await
    .unwrap();
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        report["approval"]["request"]["call_digest"],
        pending_2.call_digest.as_str()
    );
    let record: EventRecord = serde_json::from_value(report["event"].clone()).unwrap();
    match (&record.outcome, exit) {
        (Outcome::Accepted, Exit::Ok) => {}
        other => panic!("deny: {other:?}"),
    }
    let subject = format!("aegis.changes.acme.approval.{}", pending_2.approval_id);
    let env_denied = last_change(&cp_js, &subject, &bob_key).await;
    assert_eq!(env_denied.id.as_str(), record.id);
    let Event::RuntimeApprovalDenied(d) = &env_denied.event else {
        panic!("not a denial: {env_denied:?}");
    };
    assert_eq!(
        (
            d.approval_id.as_str(),
            d.call_digest.as_str(),
            d.reason.as_str()
        ),
        (
            pending_2.approval_id.as_str(),
            pending_2.call_digest.as_str(),
            "not in this quarter's budget"
        )
    );
    // The CLI wrote nothing on the approval subject itself: what follows the request is the
    // control plane's relay of the denial.
    let subject = format!("aegis.approvals.acme.{}", pending_2.approval_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = last_message(&cp_js, APPROVALS_STREAM, &subject)
            .await
            .unwrap()
            .unwrap();
        match aegis_core::approvals::ApprovalMessage::parse(&last.payload).unwrap() {
            aegis_core::approvals::ApprovalMessage::Decided(_, d) => {
                assert!(!d.granted, "{d:?}");
                assert_eq!(d.by.as_str(), "bob");
                break;
            }
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no relay of the denial: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(cp);
}

// ---- rollout, kill switch, data-plane freeze, emergency rollback ----

/// Proposes `document`, has bob and carol approve and pat publish it at `stage`; returns the
/// announced version.
async fn publish_version(
    js: &Context,
    [alice, bob, carol, pat]: &[Operator; 4],
    document: &str,
    base_revision: u64,
    stage: RolloutStage,
    version: u64,
) {
    let id = ChangeId::random().unwrap();
    accept(
        js,
        &alice.sign(proposal_for("acme", &id, document, base_revision)),
    )
    .await;
    for approver in [bob, carol] {
        accept(
            js,
            &approver.sign(ChangeApproved {
                change_id: id.clone(),
                comment: None,
            }),
        )
        .await;
    }
    accept(
        js,
        &pat.sign(ChangePublished {
            change_id: id.clone(),
            stage,
        }),
    )
    .await;
    announced(js, &acme(), version).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_kill_switch_and_freeze_commands_publish_signed_control_events() {
    let (server, js, keys, cp) = start_control_plane(&[]).await;
    let actors = setup_actors(&js, &keys, "acme").await;
    let pat = actors[3].clone();
    publish_version(&js, &actors, FINANCE_POLICY, 0, RolloutStage::Global, 1).await;
    let v2 = finance_with_approval_limit("acme", 5500);
    publish_version(&js, &actors, &v2, 1, RolloutStage::Shadow, 2).await;

    let dir = tempfile::tempdir().unwrap();
    let pat_key = pat.key.write_to_dir(dir.path(), "pat").unwrap().signing_key;
    let root_key = keys
        .root
        .write_to_dir(dir.path(), "root")
        .unwrap()
        .signing_key;
    let url = server.url();
    let as_pat: Vec<(&str, &str)> = vec![
        ("AEGIS_NATS_URL", &url),
        ("AEGIS_TENANT", "acme"),
        ("AEGIS_ACTOR", "pat"),
        ("AEGIS_KEY", pat_key.to_str().unwrap()),
    ];

    // rollout status: v1 is stable, v2 the shadow candidate.
    let client = Client::new(
        js.client(),
        url.clone(),
        acme(),
        None,
        Duration::from_secs(60),
    );
    let mut out = Vec::new();
    rollout::status(&client, &rollout::StatusArgs { json: true }, &mut out)
        .await
        .unwrap();
    let view: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(view["stable"]["version"], 1, "{view}");
    assert_eq!(view["candidate"]["version"], 2, "{view}");
    assert_eq!(view["candidate"]["stage"], "shadow", "{view}");

    // rollout partial: the control plane takes stage changes today.
    let control = "aegis.changes.acme.control";
    let run = aegisctl(
        &[
            "rollout",
            "partial",
            "--version",
            "2",
            "--agents",
            "planner,finance-agent",
            "--percent",
            "10",
        ],
        &as_pat,
    );
    assert_eq!(run.code, 0, "{run:?}\n{}", cp.log());
    assert_eq!(run.stdout, "accepted\n");
    let env = last_change(&js, control, &pat.key).await;
    assert_eq!(
        env.event,
        Event::RolloutStageChanged(RolloutStageChanged {
            version: 2,
            stage: RolloutStage::Partial,
            agents: vec![
                AgentId::new("planner").unwrap(),
                AgentId::new("finance-agent").unwrap()
            ],
            percent: Some(10),
        })
    );
    let run = aegisctl(&["rollout", "status"], &as_pat);
    assert_eq!(run.code, 0, "{run:?}");
    let candidate = run
        .stdout
        .lines()
        .find(|l| l.starts_with("candidate"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        candidate.contains(" 2 ") && candidate.contains("partial"),
        "{candidate}"
    );
    let run = aegisctl(&["rollout", "shadow", "--version", "2", "--json"], &as_pat);
    assert_eq!(run.code, 0, "{run:?}");
    let record: EventRecord = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(record.outcome, Outcome::Accepted);
    assert_eq!(
        last_change(&js, control, &pat.key).await.event,
        Event::RolloutStageChanged(RolloutStageChanged {
            version: 2,
            stage: RolloutStage::Shadow,
            agents: vec![],
            percent: None,
        })
    );

    // The new control events: each lands signed, with exactly this payload.
    let cases: Vec<(Vec<&str>, Event)> = vec![
        (
            vec![
                "rollout",
                "approve",
                "--version",
                "2",
                "--comment",
                "disagreements are the new bound",
            ],
            Event::RolloutPromotionApproved(RolloutPromotionApproved {
                version: 2,
                comment: Some("disagreements are the new bound".into()),
            }),
        ),
        (
            vec![
                "rollout",
                "abort",
                "--version",
                "2",
                "--reason",
                "v2 denies refunds",
            ],
            Event::RolloutAborted(RolloutAborted {
                version: 2,
                reason: "v2 denies refunds".into(),
            }),
        ),
        (
            vec![
                "block",
                "agent",
                "planner",
                "--reason",
                "INC-7: coerces payments",
            ],
            Event::AgentBlocked(AgentBlocked {
                agent: AgentId::new("planner").unwrap(),
                reason: "INC-7: coerces payments".into(),
            }),
        ),
        (
            vec!["block", "tool", "payments", "--reason", "PSP outage"],
            Event::ToolBlocked(ToolBlocked {
                tool: ToolId::new("payments").unwrap(),
                reason: "PSP outage".into(),
            }),
        ),
        (
            vec!["unblock", "agent", "planner"],
            Event::AgentUnblocked(AgentUnblocked {
                agent: AgentId::new("planner").unwrap(),
                reason: None,
            }),
        ),
        (
            vec!["unblock", "tool", "payments", "--reason", "PSP back"],
            Event::ToolUnblocked(ToolUnblocked {
                tool: ToolId::new("payments").unwrap(),
                reason: Some("PSP back".into()),
            }),
        ),
        (
            vec![
                "freeze",
                "--data-plane",
                "--reason",
                "INC-7: hold the fleet",
            ],
            Event::DataPlaneFrozen(DataPlaneFrozen {
                reason: "INC-7: hold the fleet".into(),
            }),
        ),
        (
            vec!["unfreeze", "--data-plane"],
            Event::DataPlaneUnfrozen(DataPlaneUnfrozen { reason: None }),
        ),
    ];
    for (args, expected) in cases {
        let run = aegisctl(&args, &as_pat);
        accepted(&run, &args.join(" "));
        let env = last_change(&js, control, &pat.key).await;
        assert_eq!(env.actor.as_str(), "pat");
        assert_eq!(env.event, expected, "{}", args.join(" "));
    }

    // An emergency rollback by the root admin: recorded as an emergency, announced like any
    // publish.
    let run = aegisctl(
        &[
            "rollback",
            "--to",
            "1",
            "--reason",
            "INC-7: back to v1",
            "--emergency",
            "--actor",
            "root",
            "--key",
            root_key.to_str().unwrap(),
        ],
        &as_pat,
    );
    assert_eq!(run.code, 0, "{run:?}\n{}", cp.log());
    assert!(run.stdout.contains("version: 3"), "{}", run.stdout);
    let env = last_change(&js, control, &keys.root).await;
    assert_eq!(
        env.event,
        Event::RollbackRequested(RollbackRequested {
            to_version: 1,
            reason: "INC-7: back to v1".into(),
            emergency: true,
        })
    );
    let run = aegisctl(&["history", "--json"], &as_pat);
    let history: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(history[2]["version"], 3, "{history}");
    assert_eq!(history[2]["emergency"], true, "{history}");
    assert_eq!(history[2]["rollback_of"], 1, "{history}");
}
