//! The whole change workflow against a real nats-server and the real control-plane binary:
//! actors and roles → propose → checks → approvals by other operators → publish → the bundle in
//! the object store verifies with the trust store → a second version → rollback → freeze blocks
//! publishing → unfreeze → the audit chain verifies against the signed checkpoints.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::events::chain::{StreamMessage, verify as verify_chain};
use aegis_core::events::*;
use aegis_core::ids::{ChangeId, TenantId};
use aegis_core::keys::TrustStore;
use aegis_core::query::{ChangeState, ChangeView, QueryAnswer, QueryRequest};
use aegis_tests::controlplane::{eventually, query};
use aegis_tests::flow::{
    FINANCE_POLICY, accept, announced, fetch_verified, finance_proposal, read_stream, refuse,
    setup_actors, start_control_plane,
};
use async_nats::jetstream;
use std::time::Duration;

async fn change(js: &jetstream::Context, tenant: &TenantId, id: &ChangeId) -> ChangeView {
    match query(
        &js.client(),
        tenant,
        QueryRequest::Change {
            change_id: id.clone(),
        },
    )
    .await
    .unwrap()
    {
        QueryAnswer::Change(c) => *c,
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_approve_publish_rollback_freeze_and_audit() {
    let (_server, js, keys, cp) = start_control_plane(&[]).await;
    let tenant = TenantId::new("acme").unwrap();
    let [alice, bob, carol, pat] = setup_actors(&js, &keys, "acme").await;
    let mut trust = TrustStore::new();
    trust.trust(keys.control_plane.public_key().clone());

    // Propose: checks run and pass; high risk needs two approvals.
    let c1 = ChangeId::random().unwrap();
    accept(&js, &alice.sign(finance_proposal(&c1, FINANCE_POLICY, 0))).await;
    let view = change(&js, &tenant, &c1).await;
    let checks = view.checks.clone().expect("checks ran");
    assert!(checks.passed, "{checks:#?}\n{}", cp.log());
    assert!(checks.vectors_run > 5, "{checks:?}");
    assert_eq!(view.required_approvals, 2);
    assert_eq!(view.state, ChangeState::Open);

    // Nobody approves their own change — not even alice, an editor who is also an approver —
    // and nothing goes live without its approvals.
    refuse(
        &js,
        &alice.sign(ChangeApproved {
            change_id: c1.clone(),
            comment: None,
        }),
        "four eyes",
    )
    .await;
    refuse(
        &js,
        &pat.sign(ChangePublished {
            change_id: c1.clone(),
            stage: RolloutStage::Global,
        }),
        "needs 2 approval",
    )
    .await;
    accept(
        &js,
        &bob.sign(ChangeApproved {
            change_id: c1.clone(),
            comment: Some("ok".into()),
        }),
    )
    .await;
    refuse(
        &js,
        &bob.sign(ChangeApproved {
            change_id: c1.clone(),
            comment: None,
        }),
        "already approved",
    )
    .await;
    accept(
        &js,
        &carol.sign(ChangeApproved {
            change_id: c1.clone(),
            comment: None,
        }),
    )
    .await;
    assert_eq!(change(&js, &tenant, &c1).await.state, ChangeState::Approved);

    // Publish: version 1 lands in the object store, signed, and verifies.
    accept(
        &js,
        &pat.sign(ChangePublished {
            change_id: c1.clone(),
            stage: RolloutStage::Global,
        }),
    )
    .await;
    let v1 = announced(&js, &tenant, 1).await;
    assert_eq!(v1.approved_by.len(), 2);
    let b1 = fetch_verified(&js, &trust, &v1.digest).await;
    assert_eq!(b1.manifest.version, 1);
    assert_eq!(b1.manifest.source_change.as_deref(), Some(c1.as_str()));
    assert_eq!(
        b1.manifest.created_at, v1.created_at,
        "created_at comes from the publish event"
    );
    // The announcement is on aegis.bundles.acme.
    let last = aegis_nats::last_message(&js, "AEGIS_BUNDLES", "aegis.bundles.acme")
        .await
        .unwrap()
        .unwrap();
    let announced_env: Envelope = serde_json::from_slice(&last.payload).unwrap();
    match announced_env.event {
        Event::BundlePublished(b) => {
            assert_eq!((b.version, b.digest.as_str()), (1, v1.digest.as_str()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        change(&js, &tenant, &c1).await.state,
        ChangeState::Published
    );

    // Version 2: a stricter limit. A change based on the old live revision is stale.
    let stricter = FINANCE_POLICY.replace("ticket: FIN-1001", "ticket: FIN-1002");
    let stale = ChangeId::random().unwrap();
    refuse(
        &js,
        &alice.sign(finance_proposal(&stale, &stricter, 0)),
        "stale",
    )
    .await;
    let c2 = ChangeId::random().unwrap();
    accept(&js, &alice.sign(finance_proposal(&c2, &stricter, 1))).await;
    for op in [&bob, &carol] {
        accept(
            &js,
            &op.sign(ChangeApproved {
                change_id: c2.clone(),
                comment: None,
            }),
        )
        .await;
    }
    accept(
        &js,
        &pat.sign(ChangePublished {
            change_id: c2.clone(),
            stage: RolloutStage::Global,
        }),
    )
    .await;
    let v2 = announced(&js, &tenant, 2).await;
    assert_ne!(v2.digest, v1.digest);

    // Rollback to 1: a new version 3 whose content is version 1's.
    accept(
        &js,
        &pat.sign(RollbackRequested {
            to_version: 1,
            reason: "incident 42".into(),
            emergency: false,
        }),
    )
    .await;
    let v3 = announced(&js, &tenant, 3).await;
    assert_eq!(v3.rollback_of, Some(1));
    let b3 = fetch_verified(&js, &trust, &v3.digest).await;
    assert_eq!(b3.manifest.version, 3);
    assert_eq!(b3.data(), b1.data(), "rollback content is version 1's");

    // Freeze blocks publish and rollback, and says so.
    accept(
        &js,
        &pat.sign(TenantFrozen {
            reason: "quarter close".into(),
        }),
    )
    .await;
    let c3 = ChangeId::random().unwrap();
    let again = FINANCE_POLICY.replace("ticket: FIN-1001", "ticket: FIN-1003");
    accept(&js, &alice.sign(finance_proposal(&c3, &again, 3))).await;
    for op in [&bob, &carol] {
        accept(
            &js,
            &op.sign(ChangeApproved {
                change_id: c3.clone(),
                comment: None,
            }),
        )
        .await;
    }
    refuse(
        &js,
        &pat.sign(ChangePublished {
            change_id: c3.clone(),
            stage: RolloutStage::Global,
        }),
        "frozen",
    )
    .await;
    refuse(
        &js,
        &pat.sign(RollbackRequested {
            to_version: 2,
            reason: "x".into(),
            emergency: false,
        }),
        "frozen",
    )
    .await;
    accept(&js, &pat.sign(TenantUnfrozen { reason: None })).await;
    accept(
        &js,
        &pat.sign(ChangePublished {
            change_id: c3.clone(),
            stage: RolloutStage::Global,
        }),
    )
    .await;
    announced(&js, &tenant, 4).await;

    // Audit: the checkpoints cover the whole chain and the stream matches them.
    let status = match query(&js.client(), &tenant, QueryRequest::Status)
        .await
        .unwrap()
    {
        QueryAnswer::Status(s) => s,
        other => panic!("{other:?}"),
    };
    let checkpoints = eventually(
        Duration::from_secs(30),
        "checkpoints up to the chain head",
        || {
            let js = js.clone();
            let want = status.chain_position;
            async move {
                let cps = read_checkpoints(&js, "aegis.audit.acme").await;
                (cps.last().map(|c| c.to_position) >= Some(want)).then_some(cps)
            }
        },
    )
    .await
    .unwrap();
    let messages: Vec<StreamMessage> = read_stream(&js, "AEGIS_CHANGES", "aegis.changes.acme.>")
        .await
        .into_iter()
        .map(|m| StreamMessage {
            seq: m.seq,
            raw: m.raw,
        })
        .collect();
    let report = verify_chain(&tenant, &messages, &checkpoints);
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.events, status.chain_position);
    assert!(report.checkpointed >= status.chain_position);
    drop(cp);
}

/// The audit checkpoints on `subject`.
pub async fn read_checkpoints(js: &jetstream::Context, subject: &str) -> Vec<AuditCheckpoint> {
    read_stream(js, "AEGIS_AUDIT", subject)
        .await
        .into_iter()
        .filter_map(|m| match m.envelope()?.event {
            Event::AuditCheckpoint(c) => Some(c),
            _ => None,
        })
        .collect()
}
