//! The control plane rides out a nats-server restart: events published after the server comes
//! back are folded, queries are answered again, and bundles are still announced.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::events::*;
use aegis_core::ids::{ChangeId, PolicyName, TenantId};
use aegis_core::query::{Outcome, QueryAnswer, QueryRequest};
use aegis_tests::controlplane::{Operator, eventually, query, submit};
use aegis_tests::flow::start_control_plane;
use std::time::Duration;

const FINANCE_POLICY: &str = include_str!("../../policies/templates/finance/policy.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folding_and_publishing_resume_after_nats_restarts() {
    let (mut server, js, keys, cp) = start_control_plane(&[]).await;
    let tenant = TenantId::new("acme").unwrap();
    let root = keys.root_operator(&tenant);
    let alice = Operator::new("acme", "alice");
    let bob = Operator::new("acme", "bob");
    for (op, role) in [(&alice, Role::Editor), (&bob, Role::Publisher)] {
        assert_eq!(
            submit(&js, &root.register(op)).await.unwrap().outcome,
            Outcome::Accepted
        );
        let grant = root.sign(RoleGranted {
            actor: op.actor.clone(),
            role,
        });
        assert_eq!(
            submit(&js, &grant).await.unwrap().outcome,
            Outcome::Accepted
        );
    }

    // The server goes away and comes back (same port, same store).
    tokio::task::block_in_place(|| server.restart()).unwrap();

    // The test's own client reconnects; then a proposal is folded and published.
    let low_risk = FINANCE_POLICY.replace("risk_tier: high", "risk_tier: low");
    let c = ChangeId::random().unwrap();
    let proposal = alice.sign(ChangeProposed {
        change_id: c.clone(),
        intent: "after the restart".into(),
        ticket: None,
        documents: vec![ProposedDocument {
            name: PolicyName::new("finance-agent").unwrap(),
            format: DocumentFormat::Yaml,
            document: low_risk,
            base_revision: 0,
        }],
        deleted: vec![],
        vectors: vec![],
    });
    let r = eventually(Duration::from_secs(60), "the proposal to be folded", || {
        let js = js.clone();
        let proposal = proposal.clone();
        async move { submit(&js, &proposal).await.ok() }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log()));
    assert_eq!(r.outcome, Outcome::Accepted, "{r:?}");

    // Once more, mid-flight: restart again, then publish.
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let publish = bob.sign(ChangePublished {
        change_id: c.clone(),
        stage: RolloutStage::Global,
    });
    let r = eventually(Duration::from_secs(60), "the publish to be folded", || {
        let js = js.clone();
        let publish = publish.clone();
        async move { submit(&js, &publish).await.ok() }
    })
    .await
    .unwrap();
    assert_eq!(r.outcome, Outcome::Accepted, "{r:?}");
    eventually(Duration::from_secs(60), "version 1 announced", || {
        let js = js.clone();
        let tenant = tenant.clone();
        async move {
            match query(&js.client(), &tenant, QueryRequest::History).await {
                Ok(QueryAnswer::History(h)) => h.first().filter(|v| v.announced).cloned(),
                _ => None,
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log()));
    let last = aegis_nats::last_message(&js, "AEGIS_BUNDLES", "aegis.bundles.acme")
        .await
        .unwrap();
    assert!(last.is_some(), "bundle_published is on the stream");
}
