//! Issue 5, the control plane's side, against a real nats-server and the real control-plane
//! binary: a staged rollout (global v1, v2 in shadow, partial with a cohort, global), an aborted
//! rollout, the kill switch and the data-plane freeze all reach `aegis.bundles.<t>.controls` as
//! one signed `tenant_controls` state with increasing epochs; an approver's runtime approval
//! grant is relayed, signed by the control plane, on `aegis.approvals.<t>.<id>`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_controlplane::fold::derived_event_id;
use aegis_core::approvals::ApprovalMessage;
use aegis_core::events::*;
use aegis_core::ids::{AgentId, ChangeId, TenantId, ToolId};
use aegis_core::keys::Keypair;
use aegis_core::query::{EventRecord, QueryAnswer, QueryRequest, TenantStatus};
use aegis_nats::topology;
use aegis_tests::controlplane::{Operator, eventually, query};
use aegis_tests::flow::{
    FINANCE_POLICY, accept, announced, finance_proposal, read_stream, refuse, setup_actors,
    start_control_plane,
};
use async_nats::jetstream;
use std::time::Duration;

/// A control-plane message read back and verified.
struct Signed<T> {
    seq: u64,
    msg_id: Option<String>,
    envelope: Envelope,
    payload: T,
}

/// Parses `raw` as an envelope signed by `cp` (the control plane's actor and key), or panics.
fn verified(raw: &[u8], cp: &Keypair) -> Envelope {
    let value: serde_json::Value = serde_json::from_slice(raw).unwrap();
    aegis_core::events::schema::validate(&value)
        .unwrap_or_else(|e| panic!("fails its schema: {e}"));
    let received = ReceivedEnvelope::parse(raw).unwrap();
    received
        .verify(cp.verifying_key())
        .unwrap_or_else(|e| panic!("not signed by the control plane's key: {e}"));
    assert_eq!(received.envelope.actor.as_str(), "control-plane");
    assert_eq!(&received.envelope.key_id, cp.key_id());
    received.envelope
}

/// Waits for the controls state of the event at chain position `epoch` on the controls subject.
async fn controls_at(
    js: &jetstream::Context,
    tenant: &TenantId,
    cp: &Keypair,
    cause: &EventRecord,
) -> Signed<TenantControls> {
    let subject = topology::controls_subject(tenant).unwrap();
    let msg = eventually(
        Duration::from_secs(60),
        "the controls state to be published",
        || async {
            let m = aegis_nats::last_message(js, topology::BUNDLES_STREAM, &subject)
                .await
                .ok()??;
            let env: Envelope = serde_json::from_slice(&m.payload).ok()?;
            match env.event {
                Event::TenantControls(c) if c.epoch >= cause.position => Some(m),
                _ => None,
            }
        },
    )
    .await
    .unwrap();
    let envelope = verified(&msg.payload, cp);
    let Event::TenantControls(controls) = envelope.event.clone() else {
        unreachable!()
    };
    assert_eq!(
        controls.epoch, cause.position,
        "the epoch is the event's position"
    );
    assert_eq!(
        Some(&envelope.time),
        cause.time.as_ref(),
        "the state carries the causing event's time"
    );
    assert_eq!(
        envelope.id,
        derived_event_id(&["controls", tenant.as_str(), &cause.position.to_string()]).unwrap()
    );
    let msg_id = msg.headers.get("Nats-Msg-Id").map(|v| v.to_string());
    assert_eq!(
        msg_id.as_deref(),
        Some(format!("controls:{tenant}:{}", cause.position).as_str())
    );
    Signed {
        seq: msg.sequence,
        msg_id,
        envelope,
        payload: controls,
    }
}

async fn status(js: &jetstream::Context, tenant: &TenantId) -> TenantStatus {
    match query(&js.client(), tenant, QueryRequest::Status)
        .await
        .unwrap()
    {
        QueryAnswer::Status(s) => s,
        other => panic!("{other:?}"),
    }
}

/// Proposes the finance policy with `ticket` (alice), approves it (bob, carol), publishes it in
/// `stage` (pat); returns the publish's record.
async fn publish(
    js: &jetstream::Context,
    ops: &[Operator; 4],
    ticket: u32,
    base: u64,
    stage: RolloutStage,
) -> EventRecord {
    let [alice, bob, carol, pat] = ops;
    let id = ChangeId::random().unwrap();
    let doc = FINANCE_POLICY.replace("ticket: FIN-1001", &format!("ticket: FIN-{ticket}"));
    accept(js, &alice.sign(finance_proposal(&id, &doc, base))).await;
    for op in [bob, carol] {
        accept(
            js,
            &op.sign(ChangeApproved {
                change_id: id.clone(),
                comment: None,
            }),
        )
        .await;
    }
    accept(
        js,
        &pat.sign(ChangePublished {
            change_id: id,
            stage,
        }),
    )
    .await
}

/// The stream sequence of the `bundle_published` announcing `version`.
async fn announcement_seq(js: &jetstream::Context, tenant: &TenantId, version: u64) -> u64 {
    let subject = topology::bundles_subject(tenant).unwrap();
    read_stream(js, topology::BUNDLES_STREAM, &subject)
        .await
        .into_iter()
        .find(|m| {
            matches!(m.envelope().map(|e| e.event),
                Some(Event::BundlePublished(b)) if b.version == version)
        })
        .map(|m| m.seq)
        .unwrap_or_else(|| panic!("version {version} is not announced"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_kill_switch_and_data_plane_freeze_reach_the_controls_subject_signed() {
    let (_server, js, keys, cp) = start_control_plane(&[]).await;
    let cp_key = keys.control_plane.clone();
    let tenant = TenantId::new("acme").unwrap();
    let ops = setup_actors(&js, &keys, "acme").await;
    let pat = ops[3].clone();
    let agent = |id: &str| AgentId::new(id).unwrap();

    // v1, global: stable v1, no candidate.
    let r = publish(&js, &ops, 1001, 0, RolloutStage::Global).await;
    let v1 = announced(&js, &tenant, 1).await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    let stable = c.payload.stable.clone().unwrap();
    assert_eq!(
        (stable.version, stable.digest.as_str(), stable.size),
        (1, v1.digest.as_str(), v1.size)
    );
    assert_eq!(c.payload.candidate, None);
    assert!(
        c.seq > announcement_seq(&js, &tenant, 1).await,
        "after the bundle announcement"
    );
    let mut epochs = vec![c.payload.epoch];

    // v2 in shadow: stable v1, candidate v2 shadow. The bundle is announced with its stage.
    let r = publish(&js, &ops, 1002, 1, RolloutStage::Shadow).await;
    let v2 = announced(&js, &tenant, 2).await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    assert_eq!(c.payload.stable.as_ref().map(|b| b.version), Some(1));
    let cand = c.payload.candidate.clone().unwrap();
    assert_eq!(
        (cand.bundle.version, cand.bundle.digest.as_str(), cand.stage),
        (2, v2.digest.as_str(), RolloutStage::Shadow)
    );
    assert!(c.seq > announcement_seq(&js, &tenant, 2).await);
    epochs.push(c.payload.epoch);

    // Partial with a cohort.
    let r = accept(
        &js,
        &pat.sign(RolloutStageChanged {
            version: 2,
            stage: RolloutStage::Partial,
            agents: vec![agent("planner")],
            percent: Some(20),
        }),
    )
    .await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    let cand = c.payload.candidate.clone().unwrap();
    assert_eq!(
        (cand.bundle.version, cand.stage),
        (2, RolloutStage::Partial)
    );
    assert_eq!(
        (cand.agents, cand.percent),
        (vec![agent("planner")], Some(20))
    );
    assert_eq!(c.payload.stable.as_ref().map(|b| b.version), Some(1));
    let s = status(&js, &tenant).await;
    assert_eq!(s.stable, Some(1));
    assert_eq!(
        s.candidate.map(|c| (c.version, c.stage)),
        Some((2, RolloutStage::Partial))
    );
    epochs.push(c.payload.epoch);

    // Stage changes only for the candidate.
    refuse(
        &js,
        &pat.sign(RolloutStageChanged {
            version: 1,
            stage: RolloutStage::Global,
            agents: vec![],
            percent: None,
        }),
        "is not the candidate",
    )
    .await;

    // Global: below the default readiness thresholds (7 days, 100 decisions compared) the
    // publisher alone may not promote; after another actor approves, they may. Stable v2, no
    // candidate.
    let promote = RolloutStageChanged {
        version: 2,
        stage: RolloutStage::Global,
        agents: vec![],
        percent: None,
    };
    refuse(
        &js,
        &pat.sign(promote.clone()),
        "`aegisctl rollout approve --version 2`",
    )
    .await;
    accept(
        &js,
        &ops[1].sign(RolloutPromotionApproved {
            version: 2,
            comment: None,
        }),
    )
    .await;
    let r = accept(&js, &pat.sign(promote)).await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    assert_eq!(c.payload.stable.as_ref().map(|b| b.version), Some(2));
    assert_eq!(c.payload.candidate, None);
    epochs.push(c.payload.epoch);

    // v3 in shadow, then aborted: stable v2 again, and the live policies are v2's.
    let r = publish(&js, &ops, 1003, 2, RolloutStage::Shadow).await;
    announced(&js, &tenant, 3).await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    assert_eq!(c.payload.candidate.map(|c| c.bundle.version), Some(3));
    epochs.push(c.payload.epoch);
    let r = accept(
        &js,
        &pat.sign(RolloutAborted {
            version: 3,
            reason: "error rate up".into(),
        }),
    )
    .await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    assert_eq!(c.payload.stable.as_ref().map(|b| b.version), Some(2));
    assert_eq!(c.payload.candidate, None);
    epochs.push(c.payload.epoch);
    let s = status(&js, &tenant).await;
    assert_eq!((s.stable, s.candidate), (Some(2), None));
    assert_eq!(
        s.latest.map(|v| v.version),
        Some(3),
        "abort cuts no version"
    );
    assert_eq!(s.live_policies[0].revision, 2, "live is v2's again");

    // Kill switch and data-plane freeze, with the tenant frozen (they still go through).
    accept(
        &js,
        &pat.sign(TenantFrozen {
            reason: "incident".into(),
        }),
    )
    .await;
    let r = accept(
        &js,
        &pat.sign(AgentBlocked {
            agent: agent("planner"),
            reason: "runaway".into(),
        }),
    )
    .await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    assert_eq!(c.payload.blocked_agents.len(), 1);
    let b = &c.payload.blocked_agents[0];
    assert_eq!(
        (b.id.as_str(), b.reason.as_str(), b.by.as_str()),
        ("planner", "runaway", "pat")
    );
    assert_eq!(c.payload.stable.as_ref().map(|b| b.version), Some(2));
    epochs.push(c.payload.epoch);
    refuse(
        &js,
        &pat.sign(AgentBlocked {
            agent: agent("planner"),
            reason: "again".into(),
        }),
        "already blocked",
    )
    .await;
    let r = accept(
        &js,
        &pat.sign(ToolBlocked {
            tool: ToolId::new("payments").unwrap(),
            reason: "fraud".into(),
        }),
    )
    .await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    assert_eq!(c.payload.blocked_tools[0].id, "payments");
    assert_eq!(
        c.payload.blocked_agents.len(),
        1,
        "the whole state every time"
    );
    epochs.push(c.payload.epoch);
    let r = accept(
        &js,
        &pat.sign(DataPlaneFrozen {
            reason: "hold the line".into(),
        }),
    )
    .await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    let f = c.payload.data_plane_frozen.clone().unwrap();
    assert_eq!((f.reason.as_str(), f.by.as_str()), ("hold the line", "pat"));
    epochs.push(c.payload.epoch);
    let s = status(&js, &tenant).await;
    assert!(s.blocked_agents.contains_key("planner"));
    assert!(s.blocked_tools.contains_key("payments"));
    assert!(s.data_plane_frozen.is_some());

    for ev in [
        pat.sign(AgentUnblocked {
            agent: agent("planner"),
            reason: None,
        }),
        pat.sign(ToolUnblocked {
            tool: ToolId::new("payments").unwrap(),
            reason: None,
        }),
        pat.sign(DataPlaneUnfrozen { reason: None }),
    ] {
        let r = accept(&js, &ev).await;
        let c = controls_at(&js, &tenant, &cp_key, &r).await;
        epochs.push(c.payload.epoch);
    }
    let c = controls_at(
        &js,
        &tenant,
        &cp_key,
        &accept(
            &js,
            &pat.sign(AgentBlocked {
                agent: agent("billing"),
                reason: "last".into(),
            }),
        )
        .await,
    )
    .await;
    assert_eq!(c.payload.blocked_agents.len(), 1);
    assert!(c.payload.blocked_tools.is_empty());
    assert_eq!(c.payload.data_plane_frozen, None);
    assert!(c.msg_id.is_some());
    assert_eq!(c.envelope.tenant, tenant);
    epochs.push(c.payload.epoch);
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");

    // Every message on the controls subject verifies with the control plane's key, and the
    // epochs on the subject only grow.
    let all = read_stream(
        &js,
        topology::BUNDLES_STREAM,
        &topology::controls_subject(&tenant).unwrap(),
    )
    .await;
    assert_eq!(all.len(), epochs.len(), "{}", cp.log());
    let on_subject: Vec<u64> = all
        .iter()
        .map(|m| match verified(&m.raw, &cp_key).event {
            Event::TenantControls(c) => c.epoch,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(on_subject, epochs);
}

/// `apr-` and 32 lowercase hex digits.
fn approval_id() -> String {
    let id = aegis_core::ids::EventId::random().unwrap();
    format!("apr-{}", id.as_str().trim_start_matches("evt-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approvers_grant_is_relayed_signed_by_the_control_plane() {
    let (_server, js, keys, _cp) = start_control_plane(&[]).await;
    let cp_key = keys.control_plane.clone();
    let tenant = TenantId::new("acme").unwrap();
    let [_alice, bob, _carol, pat] = setup_actors(&js, &keys, "acme").await;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let expires = aegis_core::events::envelope::format_time(
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .unwrap();
    let id = approval_id();
    let grant = RuntimeApprovalGranted {
        approval_id: id.clone(),
        call_digest: digest.clone(),
        expires_at: expires.clone(),
        comment: Some("once".into()),
    };

    // Not an approver: refused, nothing relayed.
    refuse(
        &js,
        &pat.sign(grant.clone()),
        "needs role admin or approver",
    )
    .await;

    let env = bob.sign(grant.clone());
    let record = accept(&js, &env).await;
    let subject = topology::approvals_subject(&tenant, &id).unwrap();
    let msg = eventually(Duration::from_secs(60), "the relayed decision", || async {
        aegis_nats::last_message(&js, topology::APPROVALS_STREAM, &subject)
            .await
            .ok()?
    })
    .await
    .unwrap();
    let Ok(ApprovalMessage::Decided(received, decided)) = ApprovalMessage::parse(&msg.payload)
    else {
        panic!("not a decision: {}", String::from_utf8_lossy(&msg.payload));
    };
    verified(&msg.payload, &cp_key);
    received.verify(cp_key.verifying_key()).unwrap();
    assert_eq!(received.envelope.actor.as_str(), "control-plane");
    assert_eq!(
        received.envelope.event_type(),
        EventType::RuntimeApprovalDecided
    );
    assert_eq!(
        decided,
        RuntimeApprovalDecided {
            approval_id: id.clone(),
            call_digest: digest.clone(),
            granted: true,
            expires_at: Some(expires),
            by: bob.actor.clone(),
            at: env.time.clone(),
            note: Some("once".into()),
            source_event: env.id.clone(),
        }
    );
    assert_eq!(Some(&received.envelope.time), record.time.as_ref());
    assert_eq!(
        msg.headers.get("Nats-Msg-Id").map(|v| v.to_string()),
        Some(format!("decided:{tenant}:{id}"))
    );

    // A second decision for the same request is refused and not relayed.
    refuse(
        &js,
        &bob.sign(RuntimeApprovalDenied {
            approval_id: id.clone(),
            call_digest: digest.clone(),
            reason: "changed my mind".into(),
        }),
        "already granted by bob",
    )
    .await;

    // A denial is relayed the same way.
    let other = approval_id();
    accept(
        &js,
        &bob.sign(RuntimeApprovalDenied {
            approval_id: other.clone(),
            call_digest: digest,
            reason: "too much".into(),
        }),
    )
    .await;
    let subject_other = topology::approvals_subject(&tenant, &other).unwrap();
    let msg = eventually(Duration::from_secs(60), "the relayed denial", || async {
        aegis_nats::last_message(&js, topology::APPROVALS_STREAM, &subject_other)
            .await
            .ok()?
    })
    .await
    .unwrap();
    let Ok(ApprovalMessage::Decided(received, decided)) = ApprovalMessage::parse(&msg.payload)
    else {
        panic!("not a decision");
    };
    verified(&msg.payload, &cp_key);
    received.verify(cp_key.verifying_key()).unwrap();
    assert!(!decided.granted);
    assert_eq!(decided.note.as_deref(), Some("too much"));
    assert_eq!(decided.expires_at, None);

    // One message per approval subject.
    let all = read_stream(&js, topology::APPROVALS_STREAM, &subject).await;
    assert_eq!(all.len(), 1);
}

/// Waits for the relayed decision on `approval_id`'s subject.
async fn relayed(js: &jetstream::Context, tenant: &TenantId, approval_id: &str) -> u64 {
    let subject = topology::approvals_subject(tenant, approval_id).unwrap();
    eventually(Duration::from_secs(60), "the relayed decision", || async {
        aegis_nats::last_message(js, topology::APPROVALS_STREAM, &subject)
            .await
            .ok()?
            .map(|m| m.sequence)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_publishes_what_the_outbox_holds_and_a_fresh_replica_repeats_nothing() {
    use aegis_tests::controlplane::{ControlPlane, publish as publish_env, rebuild, wait_outcome};
    let (server, js, keys, mut cp) = start_control_plane(&[]).await;
    let cp_key = keys.control_plane.clone();
    let tenant = TenantId::new("acme").unwrap();
    let ops = setup_actors(&js, &keys, "acme").await;
    let [_, bob, _, pat] = ops.clone();
    let r = publish(&js, &ops, 1001, 0, RolloutStage::Global).await;
    announced(&js, &tenant, 1).await;
    controls_at(&js, &tenant, &cp_key, &r).await;

    // Events arrive while the control plane is down, and are folded by a run that publishes
    // nothing: the controls state and the decision wait in its outbox.
    cp.terminate(Duration::from_secs(10));
    let block = pat.sign(AgentBlocked {
        agent: AgentId::new("planner").unwrap(),
        reason: "runaway".into(),
    });
    let id = format!("apr-{}", "0".repeat(32));
    let grant = bob.sign(RuntimeApprovalGranted {
        approval_id: id.clone(),
        call_digest: format!("sha256:{}", "cd".repeat(32)),
        expires_at: aegis_core::events::envelope::format_time(
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        )
        .unwrap(),
        comment: None,
    });
    publish_env(&js, &block, None).await.unwrap();
    publish_env(&js, &grant, None).await.unwrap();
    let out = rebuild(&server.url(), &keys, &cp.data_dir).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restarted: the outbox is published.
    cp.restart().unwrap();
    let r = wait_outcome(&js.client(), &tenant, &block.id, Duration::from_secs(60))
        .await
        .unwrap();
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    assert_eq!(c.payload.blocked_agents[0].id, "planner");
    relayed(&js, &tenant, &id).await;
    let controls_subject = topology::controls_subject(&tenant).unwrap();
    let approval_subject = topology::approvals_subject(&tenant, &id).unwrap();
    let controls_before = read_stream(&js, topology::BUNDLES_STREAM, &controls_subject)
        .await
        .len();
    assert_eq!(controls_before, 2);

    // A fresh replica folds the whole stream with effects on: it publishes nothing that is
    // already out, then carries on. (Within the streams' duplicate windows JetStream would drop
    // a repeat too; past them, the replica's check of the subjects' last messages does.)
    cp.terminate(Duration::from_secs(10));
    let _replica = ControlPlane::start(&server.url(), &keys, &[]).unwrap();
    let r = accept(
        &js,
        &pat.sign(ToolBlocked {
            tool: ToolId::new("payments").unwrap(),
            reason: "fraud".into(),
        }),
    )
    .await;
    let c = controls_at(&js, &tenant, &cp_key, &r).await;
    assert_eq!(
        (
            c.payload.blocked_agents.len(),
            c.payload.blocked_tools.len()
        ),
        (1, 1)
    );
    // A later approval (its outbox key sorts after the first) shows the relays have run.
    let later = format!("apr-{}", "f".repeat(32));
    accept(
        &js,
        &bob.sign(RuntimeApprovalDenied {
            approval_id: later.clone(),
            call_digest: format!("sha256:{}", "cd".repeat(32)),
            reason: "no".into(),
        }),
    )
    .await;
    relayed(&js, &tenant, &later).await;
    assert_eq!(
        read_stream(&js, topology::BUNDLES_STREAM, &controls_subject)
            .await
            .len(),
        controls_before + 1
    );
    assert_eq!(
        read_stream(&js, topology::APPROVALS_STREAM, &approval_subject)
            .await
            .len(),
        1
    );
}
