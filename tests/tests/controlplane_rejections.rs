//! Every way an event is refused, against a real nats-server and the real control plane: each is
//! recorded as rejected with a reason that says what is wrong, and changes nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::events::*;
use aegis_core::ids::{ChangeId, EventId, PolicyName, TenantId};
use aegis_core::query::{ChangeState, Outcome, QueryAnswer, QueryRequest};
use aegis_tests::NatsServer;
use aegis_tests::controlplane::{
    ControlPlane, Keys, Operator, publish, publish_raw, query, submit, wait_outcome,
};
use aegis_tests::flow::{
    FINANCE_POLICY, FINANCE_VECTORS, accept, accepted, refuse, rejected_with, start_control_plane,
};
use async_nats::jetstream;
use std::time::Duration;

fn upsert(name: &str, document: &str, base_revision: u64) -> PolicyUpserted {
    PolicyUpserted {
        name: PolicyName::new(name).unwrap(),
        format: DocumentFormat::Yaml,
        document: document.into(),
        base_revision,
        change_id: None,
    }
}

struct World {
    _server: NatsServer,
    cp: ControlPlane,
    js: jetstream::Context,
    keys: Keys,
    tenant: TenantId,
    alice: Operator,
    bob: Operator,
    pat: Operator,
}

async fn world() -> World {
    let (server, js, keys, cp) = start_control_plane(&[]).await;
    let tenant = TenantId::new("acme").unwrap();
    let root = keys.root_operator(&tenant);
    let alice = Operator::new("acme", "alice");
    let bob = Operator::new("acme", "bob");
    let pat = Operator::new("acme", "pat");
    for (op, role) in [
        (&alice, Role::Editor),
        (&bob, Role::Approver),
        (&pat, Role::Publisher),
    ] {
        accept(&js, &root.register(op)).await;
        accept(
            &js,
            &root.sign(RoleGranted {
                actor: op.actor.clone(),
                role,
            }),
        )
        .await;
    }
    World {
        _server: server,
        cp,
        js,
        keys,
        tenant,
        alice,
        bob,
        pat,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_recorded_with_their_reason() {
    let w = world().await;
    let js = &w.js;

    // Missing role: an approver cannot propose, an editor cannot publish or grant roles.
    let c = ChangeId::random().unwrap();
    let proposal = ChangeProposed {
        change_id: c.clone(),
        intent: "thresholds".into(),
        ticket: None,
        documents: vec![ProposedDocument {
            name: PolicyName::new("finance-agent").unwrap(),
            format: DocumentFormat::Yaml,
            document: FINANCE_POLICY.into(),
            base_revision: 0,
        }],
        deleted: vec![],
        vectors: vec![VectorDocument {
            name: "finance-vectors.yaml".into(),
            format: DocumentFormat::Yaml,
            document: FINANCE_VECTORS.into(),
        }],
    };
    refuse(
        js,
        &w.bob.sign(proposal.clone()),
        "needs role admin or editor",
    )
    .await;
    refuse(
        js,
        &w.alice.sign(RoleGranted {
            actor: w.alice.actor.clone(),
            role: Role::Admin,
        }),
        "needs role admin",
    )
    .await;

    // Bad signature: the payload was altered after signing.
    let mut env = w.alice.sign(proposal.clone());
    if let Event::ChangeProposed(p) = &mut env.event {
        p.intent = "something else".into();
    }
    refuse(js, &env, "bad signature").await;

    // Unknown key: alice signs with a key nobody registered.
    let impostor = Operator {
        key: aegis_core::keys::Keypair::generate().unwrap(),
        ..w.alice.clone()
    };
    refuse(js, &impostor.sign(proposal.clone()), "unknown key").await;

    // Unknown actor.
    let mallory = Operator::new("acme", "mallory");
    refuse(
        js,
        &mallory.sign(proposal.clone()),
        "unknown actor `mallory`",
    )
    .await;

    // A message that is not an envelope at all still gets a chain position, rejected.
    publish_raw(
        js,
        "aegis.changes.acme.control",
        b"not json".to_vec(),
        "garbage-1",
        None,
    )
    .await
    .unwrap();

    // Failing its schema: an empty intent is signed correctly but invalid.
    let empty_intent = w.alice.sign(ChangeProposed {
        intent: String::new(),
        change_id: ChangeId::random().unwrap(),
        ..proposal.clone()
    });
    refuse(js, &empty_intent, "schema").await;

    // Published on another tenant's subject.
    let wrong = w.alice.sign(TenantFrozen { reason: "x".into() });
    publish_raw(
        js,
        "aegis.changes.globex.control",
        wrong.to_bytes().unwrap(),
        wrong.id.as_str(),
        None,
    )
    .await
    .unwrap();
    let r = wait_outcome(
        &js.client(),
        &TenantId::new("globex").unwrap(),
        &wrong.id,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    rejected_with(&r, "published on tenant `globex`");

    // The valid proposal goes through; the proposer cannot approve it.
    accept(js, &w.alice.sign(proposal.clone())).await;
    let root = w.keys.root_operator(&w.tenant);
    accept(
        js,
        &root.sign(RoleGranted {
            actor: w.alice.actor.clone(),
            role: Role::Approver,
        }),
    )
    .await;
    refuse(
        js,
        &w.alice.sign(ChangeApproved {
            change_id: c.clone(),
            comment: None,
        }),
        "four eyes",
    )
    .await;

    // A duplicate id (a retried publish after the duplicate window) is ignored, not re-applied.
    let approve = w.bob.sign(ChangeApproved {
        change_id: c.clone(),
        comment: None,
    });
    accept(js, &approve).await;
    publish_raw(
        js,
        &Operator::subject(&approve),
        approve.to_bytes().unwrap(),
        "a-different-msg-id",
        None,
    )
    .await
    .unwrap();

    // Revoked key: bob's key is revoked; his next approval is refused.
    accept(
        js,
        &root.sign(KeyRevoked {
            actor: w.bob.actor.clone(),
            key_id: w.bob.key.key_id().clone(),
            reason: Some("laptop lost".into()),
        }),
    )
    .await;
    refuse(
        js,
        &w.bob.sign(ChangeRejected {
            change_id: c.clone(),
            reason: "no".into(),
        }),
        "revoked",
    )
    .await;

    // The change has exactly one approval (the duplicate was ignored).
    let view = match query(
        &js.client(),
        &w.tenant,
        QueryRequest::Change {
            change_id: c.clone(),
        },
    )
    .await
    .unwrap()
    {
        QueryAnswer::Change(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(view.approvals.len(), 1, "{view:?}");

    // Events lists the garbage message as rejected, with no actor.
    let events = match query(
        &js.client(),
        &w.tenant,
        QueryRequest::Events {
            from_position: None,
            limit: None,
        },
    )
    .await
    .unwrap()
    {
        QueryAnswer::Events(e) => e,
        other => panic!("{other:?}"),
    };
    let garbage = events
        .iter()
        .find(|e| e.id == "-")
        .expect("garbage recorded");
    assert!(
        matches!(&garbage.outcome, Outcome::Rejected { reason } if reason.contains("not a valid event envelope"))
    );
    assert!(
        events
            .iter()
            .filter(|e| e.id == approve.id.as_str())
            .count()
            == 1,
        "a repeated id takes no chain position"
    );
    drop(w.cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_stale_edits_of_one_policy_cannot_both_land() {
    let w = world().await;
    let js = &w.js;
    let carol = Operator::new("acme", "carol");
    let root = w.keys.root_operator(&w.tenant);
    accept(js, &root.register(&carol)).await;
    accept(
        js,
        &root.sign(RoleGranted {
            actor: carol.actor.clone(),
            role: Role::Editor,
        }),
    )
    .await;

    // First edit of a new policy: base revision 0, subject must be empty.
    let first = w.alice.sign(upsert("finance-agent", FINANCE_POLICY, 0));
    let ack = publish(js, &first, Some(0)).await.unwrap();
    accepted(
        &wait_outcome(&js.client(), &w.tenant, &first.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );

    // Alice and Carol both edit from revision `ack.sequence`; only the first lands at NATS.
    let edit_a = w.alice.sign(upsert(
        "finance-agent",
        &FINANCE_POLICY.replace("FIN-1001", "FIN-2001"),
        ack.sequence,
    ));
    let edit_c = carol.sign(upsert(
        "finance-agent",
        &FINANCE_POLICY.replace("FIN-1001", "FIN-3001"),
        ack.sequence,
    ));
    publish(js, &edit_a, Some(ack.sequence)).await.unwrap();
    match publish(js, &edit_c, Some(ack.sequence)).await {
        Err(aegis_nats::PublishError::Conflict { expected, .. }) => {
            assert_eq!(expected, ack.sequence)
        }
        other => panic!("the second concurrent edit must conflict, got {other:?}"),
    }
    accepted(
        &wait_outcome(&js.client(), &w.tenant, &edit_a.id, Duration::from_secs(30))
            .await
            .unwrap(),
    );

    // A client that skips the header is still refused by the fold: stale base revision.
    let stale = carol.sign(upsert(
        "finance-agent",
        &FINANCE_POLICY.replace("FIN-1001", "FIN-4001"),
        ack.sequence,
    ));
    let r = submit(js, &stale).await.unwrap();
    rejected_with(&r, "stale edit of policy `finance-agent`");

    // The draft is Alice's second edit.
    let drafts = match query(&js.client(), &w.tenant, QueryRequest::Drafts)
        .await
        .unwrap()
    {
        QueryAnswer::Drafts(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].by, w.alice.actor);

    // A document for another tenant is refused as a draft.
    let other = w.alice.sign(upsert(
        "finance-agent",
        &FINANCE_POLICY.replace("tenant: acme", "tenant: globex"),
        r.seq,
    ));
    refuse(js, &other, "for tenant `globex`").await;
    let _ = &w.bob;
    let _ = &w.pat;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_vectors_fail_cannot_be_published() {
    let w = world().await;
    let js = &w.js;
    let carol = Operator::new("acme", "carol");
    let root = w.keys.root_operator(&w.tenant);
    accept(js, &root.register(&carol)).await;
    accept(
        js,
        &root.sign(RoleGranted {
            actor: carol.actor.clone(),
            role: Role::Approver,
        }),
    )
    .await;
    // Raise the deny threshold so the "50,000 -> deny" vector now fails.
    let loosened = FINANCE_POLICY.replace("25000", "90000");
    assert_ne!(
        loosened, FINANCE_POLICY,
        "the template has a 25000 threshold"
    );
    let c = ChangeId::random().unwrap();
    accept(
        js,
        &w.alice.sign(ChangeProposed {
            change_id: c.clone(),
            intent: "raise the hard limit".into(),
            ticket: None,
            documents: vec![ProposedDocument {
                name: PolicyName::new("finance-agent").unwrap(),
                format: DocumentFormat::Yaml,
                document: loosened,
                base_revision: 0,
            }],
            deleted: vec![],
            vectors: vec![VectorDocument {
                name: "finance-vectors.yaml".into(),
                format: DocumentFormat::Yaml,
                document: FINANCE_VECTORS.into(),
            }],
        }),
    )
    .await;
    let view = match query(
        &js.client(),
        &w.tenant,
        QueryRequest::Change {
            change_id: c.clone(),
        },
    )
    .await
    .unwrap()
    {
        QueryAnswer::Change(v) => v,
        other => panic!("{other:?}"),
    };
    let checks = view.checks.clone().unwrap();
    assert!(!checks.passed);
    assert!(checks.vectors_failed >= 1, "{checks:?}");
    let vectors = checks
        .results
        .iter()
        .find(|r| r.check == "vectors")
        .unwrap();
    assert!(
        vectors.details.iter().any(|d| d.contains("50,000")),
        "the failing vector is named: {vectors:?}"
    );
    for op in [&w.bob, &carol] {
        accept(
            js,
            &op.sign(ChangeApproved {
                change_id: c.clone(),
                comment: None,
            }),
        )
        .await;
    }
    assert_eq!(view.state, ChangeState::Open);
    refuse(
        js,
        &w.pat.sign(ChangePublished {
            change_id: c.clone(),
            stage: RolloutStage::Global,
        }),
        "failed its checks (vectors)",
    )
    .await;
    // And the verdict is on the stream as the control plane's own signed event.
    let checks_id =
        aegis_controlplane::fold::derived_event_id(&["checks", "acme", c.as_str()]).unwrap();
    let r = wait_outcome(&js.client(), &w.tenant, &checks_id, Duration::from_secs(30))
        .await
        .unwrap();
    accepted(&r);
    assert_eq!(r.event_type, Some(EventType::ChecksCompleted));
    let _: EventId = checks_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_approvals_follow_the_tenant_configuration() {
    let w = world().await;
    let js = &w.js;
    let root = w.keys.root_operator(&w.tenant);
    let configure = |low, medium, high| {
        root.sign(TenantConfigured {
            required_approvals: RequiredApprovals { low, medium, high },
            bundle_expiry_days: Some(30),
            rollout_readiness: Default::default(),
        })
    };
    // Only an admin configures the tenant.
    refuse(
        js,
        &w.pat.sign(TenantConfigured {
            required_approvals: RequiredApprovals {
                low: 0,
                medium: 0,
                high: 0,
            },
            bundle_expiry_days: None,
            rollout_readiness: Default::default(),
        }),
        "needs role admin",
    )
    .await;
    accept(js, &configure(0, 0, 1)).await;
    let c = ChangeId::random().unwrap();
    accept(
        js,
        &w.alice.sign(ChangeProposed {
            change_id: c.clone(),
            intent: "thresholds".into(),
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
    .await;
    accept(
        js,
        &w.bob.sign(ChangeApproved {
            change_id: c.clone(),
            comment: None,
        }),
    )
    .await;
    // The tenant now demands three approvals for high risk: one is not enough any more.
    accept(js, &configure(0, 1, 3)).await;
    let publish = || {
        w.pat.sign(ChangePublished {
            change_id: c.clone(),
            stage: RolloutStage::Global,
        })
    };
    refuse(js, &publish(), "needs 3 approval(s)").await;
    // Back to one: it publishes, and the bundle expires 30 days after the publish event.
    accept(js, &configure(0, 0, 1)).await;
    let published = publish();
    accept(js, &published).await;
    let history = match query(&js.client(), &w.tenant, QueryRequest::History)
        .await
        .unwrap()
    {
        QueryAnswer::History(h) => h,
        other => panic!("{other:?}"),
    };
    let v = &history[0];
    assert_eq!(v.created_at, published.time);
    let created = aegis_core::events::envelope::parse_time(&v.created_at).unwrap();
    let expires =
        aegis_core::events::envelope::parse_time(v.expires_at.as_deref().unwrap()).unwrap();
    assert_eq!(expires - created, time::Duration::days(30));
}
