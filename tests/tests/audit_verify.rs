//! `aegisctl audit verify` against hand-built streams. A real control plane folds a tenant's
//! events and signs checkpoints of its hash chain; then the tenant's history is copied, event by
//! event, onto a second nats-server — once faithfully, once with one event edited, once with one
//! dropped, once with two swapped — next to the genuine checkpoints. Verify must pass the
//! faithful copy and name the position of each forgery.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::events::chain::{FindingKind, StreamMessage};
use aegis_core::events::*;
use aegis_core::ids::{ChangeId, PolicyName, TenantId};
use aegis_core::keys::TrustStore;
use aegis_core::query::{QueryAnswer, QueryRequest};
use aegis_tests::NatsServer;
use aegis_tests::controlplane::{ControlPlane, Keys, Operator, eventually, query, submit};
use aegisctl::online::audit::{read_all, read_streams, verify_streams};
use async_nats::jetstream;
use std::time::Duration;

const FINANCE_POLICY: &str = include_str!("../../policies/templates/finance/policy.yaml");

/// A tenant's genuine history and checkpoints, from a real control plane.
async fn genuine_history(keys: &Keys) -> (Vec<StreamMessage>, Vec<StreamMessage>) {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    aegis_nats::provision(&js, &aegis_nats::Topology::single())
        .await
        .unwrap();
    let cp = ControlPlane::start(&server.url(), keys, &["--checkpoint-every", "4"]).unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let root = keys.root_operator(&tenant);
    let alice = Operator::new("acme", "alice");
    submit(&js, &root.register(&alice)).await.unwrap();
    submit(
        &js,
        &root.sign(RoleGranted {
            actor: alice.actor.clone(),
            role: Role::Editor,
        }),
    )
    .await
    .unwrap();
    for i in 0..6 {
        submit(
            &js,
            &alice.sign(ChangeProposed {
                change_id: ChangeId::random().unwrap(),
                intent: format!("edit number {i}"),
                ticket: None,
                documents: vec![ProposedDocument {
                    name: PolicyName::new("finance-agent").unwrap(),
                    format: DocumentFormat::Yaml,
                    document: FINANCE_POLICY.into(),
                    base_revision: 0,
                }],
                deleted: vec![],
                vectors: vec![],
            }),
        )
        .await
        .unwrap();
    }
    // Wait until the checkpoints cover the whole chain (checks events included).
    let status = eventually(Duration::from_secs(60), "a quiet chain", || {
        let js = js.clone();
        let tenant = tenant.clone();
        async move {
            let a = query(&js.client(), &tenant, QueryRequest::Status)
                .await
                .ok()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let b = query(&js.client(), &tenant, QueryRequest::Status)
                .await
                .ok()?;
            match (a, b) {
                (QueryAnswer::Status(a), QueryAnswer::Status(b))
                    if a.chain_position == b.chain_position && a.chain_position >= 14 =>
                {
                    Some(b)
                }
                _ => None,
            }
        }
    })
    .await
    .unwrap();
    let checkpoints = eventually(Duration::from_secs(60), "checkpoints to the head", || {
        let js = js.clone();
        async move {
            let cps = read_all(
                &js,
                "AEGIS_AUDIT",
                "aegis.audit.acme",
                Duration::from_secs(5),
            )
            .await
            .ok()?;
            let to = cps
                .last()
                .and_then(|m| serde_json::from_slice::<Envelope>(&m.raw).ok())
                .and_then(|e| match e.event {
                    Event::AuditCheckpoint(c) => Some(c.to_position),
                    _ => None,
                })?;
            (to >= status.chain_position).then_some(cps)
        }
    })
    .await
    .unwrap();
    assert!(checkpoints.len() >= 3, "several checkpoints expected");
    let changes = read_all(
        &js,
        "AEGIS_CHANGES",
        "aegis.changes.acme.>",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(changes.len() as u64, status.chain_position);
    drop(cp);
    (changes, checkpoints)
}

/// Subject of a raw change message, from its envelope.
fn subject_of(raw: &[u8]) -> String {
    let env: Envelope = serde_json::from_slice(raw).unwrap();
    Operator::subject(&env)
}

/// Copies `changes` and `checkpoints` onto a fresh server and verifies them there.
async fn verify_copy(
    keys: &Keys,
    changes: &[Vec<u8>],
    subjects: &[String],
    checkpoints: &[StreamMessage],
) -> aegis_core::events::chain::ChainReport {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    aegis_nats::provision(&js, &aegis_nats::Topology::single())
        .await
        .unwrap();
    for (raw, subject) in changes.iter().zip(subjects) {
        // No msg id: a forged copy may repeat ids, and the copy must hold exactly these bytes.
        aegis_nats::publish(&js, aegis_nats::Publish::new(subject.clone(), raw.clone()))
            .await
            .unwrap();
    }
    for cp in checkpoints {
        aegis_nats::publish(
            &js,
            aegis_nats::Publish::new("aegis.audit.acme".to_owned(), cp.raw.clone()),
        )
        .await
        .unwrap();
    }
    let mut trust = TrustStore::new();
    trust.trust(keys.control_plane.public_key().clone());
    let tenant = TenantId::new("acme").unwrap();
    let streams = read_streams(&js, &tenant, Some(&trust), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        streams.bad_checkpoints.is_empty(),
        "genuine checkpoints must all verify: {:?}",
        streams.bad_checkpoints
    );
    verify_streams(&tenant, &streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_edited_dropped_or_reordered_position() {
    let keys = Keys::generate().unwrap();
    let (changes, checkpoints) = genuine_history(&keys).await;
    let raws: Vec<Vec<u8>> = changes.iter().map(|m| m.raw.clone()).collect();
    let subjects: Vec<String> = raws.iter().map(|r| subject_of(r)).collect();

    // The faithful copy verifies.
    let report = verify_copy(&keys, &raws, &subjects, &checkpoints).await;
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.checkpointed, raws.len() as u64);

    // A proposal in the middle edited: its intent changed, its signature left alone.
    let target = (5..raws.len())
        .find(|&i| String::from_utf8_lossy(&raws[i]).contains("edit number"))
        .unwrap();
    let mut edited = raws.clone();
    let text = String::from_utf8(edited[target].clone()).unwrap();
    edited[target] = text.replace("edit number", "EDIT NUMBER").into_bytes();
    let report = verify_copy(&keys, &edited, &subjects, &checkpoints).await;
    assert!(!report.ok());
    let f = &report.findings[0];
    assert_eq!(
        (f.kind.clone(), f.position),
        (FindingKind::Edited, target as u64 + 1),
        "{report:#?}"
    );

    // Position 5 dropped.
    let mut dropped_raws = raws.clone();
    let mut dropped_subjects = subjects.clone();
    dropped_raws.remove(4);
    dropped_subjects.remove(4);
    let report = verify_copy(&keys, &dropped_raws, &dropped_subjects, &checkpoints).await;
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::Missing && f.position == 5),
        "{report:#?}"
    );

    // Positions 9 and 10 swapped.
    let mut swapped_raws = raws.clone();
    let mut swapped_subjects = subjects.clone();
    swapped_raws.swap(8, 9);
    swapped_subjects.swap(8, 9);
    let report = verify_copy(&keys, &swapped_raws, &swapped_subjects, &checkpoints).await;
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::Reordered && (f.position == 9 || f.position == 10)),
        "{report:#?}"
    );
}
