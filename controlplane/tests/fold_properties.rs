//! Properties of the fold, in process against real RocksDB (no NATS: the messages are built
//! here with the sequences JetStream would give them).
//!
//! - Determinism: the same messages give byte-identical state, whether folded in one go or with
//!   the store closed and reopened at arbitrary points and messages redelivered.
//! - Four eyes and approvals: whatever the order of events, no version is ever cut for a change
//!   without the required approvals from someone other than its proposer, and no publish lands
//!   while the tenant is frozen.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_controlplane::fold::{Applied, FoldConfig, Folder, InMessage};
use aegis_controlplane::queries::Queries;
use aegis_controlplane::store::Store;
use aegis_core::events::*;
use aegis_core::ids::{ActorId, ChangeId, EventId, PolicyName, TenantId};
use aegis_core::keys::Keypair;
use aegis_core::query::{ChangeState, Outcome};
use proptest::prelude::*;
use std::collections::BTreeMap;

const FINANCE_POLICY: &str = include_str!("../../policies/templates/finance/policy.yaml");

struct Cast {
    config: FoldConfig,
    root: Keypair,
    people: Vec<(ActorId, Keypair)>,
    changes: Vec<ChangeId>,
    tenant: TenantId,
}

fn cast() -> Cast {
    let root = Keypair::from_seed(&[1; 32]);
    let mut root_admins = BTreeMap::new();
    root_admins.insert(
        ActorId::new("root").unwrap(),
        vec![root.public_key().clone()],
    );
    Cast {
        config: FoldConfig {
            root_admins,
            control_plane_actor: ActorId::new("control-plane").unwrap(),
            signing_key: Keypair::from_seed(&[2; 32]),
        },
        root,
        people: ["alice", "bob", "carol", "pat"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    ActorId::new(*n).unwrap(),
                    Keypair::from_seed(&[10 + i as u8; 32]),
                )
            })
            .collect(),
        changes: (0..3)
            .map(|i| ChangeId::new(format!("chg-{i:016}")).unwrap())
            .collect(),
        tenant: TenantId::new("acme").unwrap(),
    }
}

/// One step of a scenario, chosen by proptest.
#[derive(Debug, Clone)]
enum Step {
    Setup,
    Propose { who: usize, change: usize },
    Approve { who: usize, change: usize },
    Reject { who: usize, change: usize },
    Publish { who: usize, change: usize },
    Freeze { who: usize },
    Unfreeze { who: usize },
    Rollback { who: usize, to: u64 },
    Tampered { who: usize, change: usize },
    Garbage,
}

fn step() -> impl Strategy<Value = Step> {
    let who = 0usize..4;
    let change = 0usize..3;
    prop_oneof![
        1 => Just(Step::Setup),
        2 => (who.clone(), change.clone()).prop_map(|(who, change)| Step::Propose { who, change }),
        6 => (who.clone(), change.clone()).prop_map(|(who, change)| Step::Approve { who, change }),
        1 => (who.clone(), change.clone()).prop_map(|(who, change)| Step::Reject { who, change }),
        4 => (who.clone(), change.clone()).prop_map(|(who, change)| Step::Publish { who, change }),
        1 => who.clone().prop_map(|who| Step::Freeze { who }),
        1 => who.clone().prop_map(|who| Step::Unfreeze { who }),
        1 => (who.clone(), 1u64..4).prop_map(|(who, to)| Step::Rollback { who, to }),
        1 => (who.clone(), change.clone()).prop_map(|(who, change)| Step::Tampered { who, change }),
        1 => Just(Step::Garbage),
    ]
}

/// Turns steps into stream messages, numbered from 1 (times fixed, ids derived: reproducible).
fn messages(cast: &Cast, steps: &[Step]) -> Vec<InMessage> {
    let mut out = Vec::new();
    let mut n = 0u64;
    let time = |n: u64| {
        time::OffsetDateTime::UNIX_EPOCH
            + time::Duration::days(20_000)
            + time::Duration::seconds(n as i64)
    };
    let mut push =
        |actor: &ActorId, key: &Keypair, event: Event, tamper: bool, out: &mut Vec<InMessage>| {
            n += 1;
            let env = Envelope::sign(
                EventId::new(format!("evt-{n:032}")).unwrap(),
                cast.tenant.clone(),
                actor.clone(),
                key,
                time(n),
                event,
            )
            .unwrap();
            let subject = format!(
                "aegis.changes.acme.{}",
                EventType::changes_subject_suffix(&env.event).unwrap()
            );
            let mut payload = env.to_bytes().unwrap();
            if tamper {
                // Point the signed approval at another change: the signature no longer matches.
                let text = String::from_utf8(payload)
                    .unwrap()
                    .replacen("\"chg-", "\"chg-9", 1);
                payload = text.into_bytes();
            }
            out.push(InMessage {
                seq: out.len() as u64 + 1,
                subject,
                payload,
            });
        };
    let root = ActorId::new("root").unwrap();
    let roles = [
        Role::Editor,
        Role::Approver,
        Role::Approver,
        Role::Publisher,
    ];
    for s in steps {
        match s {
            Step::Setup => {
                for (i, (actor, key)) in cast.people.iter().enumerate() {
                    push(
                        &root,
                        &cast.root,
                        Event::ActorRegistered(ActorRegistered {
                            actor: actor.clone(),
                            public_key: key.public_key().to_base64(),
                            key_id: key.key_id().clone(),
                            display_name: None,
                        }),
                        false,
                        &mut out,
                    );
                    push(
                        &root,
                        &cast.root,
                        Event::RoleGranted(RoleGranted {
                            actor: actor.clone(),
                            role: roles[i],
                        }),
                        false,
                        &mut out,
                    );
                    if i == 0 {
                        push(
                            &root,
                            &cast.root,
                            Event::RoleGranted(RoleGranted {
                                actor: actor.clone(),
                                role: Role::Approver,
                            }),
                            false,
                            &mut out,
                        );
                    }
                }
            }
            Step::Propose { who, change } => {
                let (a, k) = &cast.people[*who];
                push(
                    a,
                    k,
                    Event::ChangeProposed(ChangeProposed {
                        change_id: cast.changes[*change].clone(),
                        intent: "x".into(),
                        ticket: None,
                        documents: vec![ProposedDocument {
                            name: PolicyName::new("finance-agent").unwrap(),
                            format: DocumentFormat::Yaml,
                            document: FINANCE_POLICY.replace("FIN-1001", &format!("FIN-{change}")),
                            base_revision: 0,
                        }],
                        deleted: vec![],
                        vectors: vec![],
                    }),
                    false,
                    &mut out,
                );
            }
            Step::Approve { who, change } => {
                let (a, k) = &cast.people[*who];
                push(
                    a,
                    k,
                    Event::ChangeApproved(ChangeApproved {
                        change_id: cast.changes[*change].clone(),
                        comment: None,
                    }),
                    false,
                    &mut out,
                );
            }
            Step::Reject { who, change } => {
                let (a, k) = &cast.people[*who];
                push(
                    a,
                    k,
                    Event::ChangeRejected(ChangeRejected {
                        change_id: cast.changes[*change].clone(),
                        reason: "no".into(),
                    }),
                    false,
                    &mut out,
                );
            }
            Step::Publish { who, change } => {
                let (a, k) = &cast.people[*who];
                push(
                    a,
                    k,
                    Event::ChangePublished(ChangePublished {
                        change_id: cast.changes[*change].clone(),
                        stage: RolloutStage::Global,
                    }),
                    false,
                    &mut out,
                );
            }
            Step::Freeze { who } => {
                let (a, k) = &cast.people[*who];
                push(
                    a,
                    k,
                    Event::TenantFrozen(TenantFrozen { reason: "r".into() }),
                    false,
                    &mut out,
                );
            }
            Step::Unfreeze { who } => {
                let (a, k) = &cast.people[*who];
                push(
                    a,
                    k,
                    Event::TenantUnfrozen(TenantUnfrozen { reason: None }),
                    false,
                    &mut out,
                );
            }
            Step::Rollback { who, to } => {
                let (a, k) = &cast.people[*who];
                push(
                    a,
                    k,
                    Event::RollbackRequested(RollbackRequested {
                        to_version: *to,
                        reason: "r".into(),
                        emergency: false,
                    }),
                    false,
                    &mut out,
                );
            }
            Step::Tampered { who, change } => {
                let (a, k) = &cast.people[*who];
                push(
                    a,
                    k,
                    Event::ChangeApproved(ChangeApproved {
                        change_id: cast.changes[*change].clone(),
                        comment: None,
                    }),
                    true,
                    &mut out,
                );
            }
            Step::Garbage => {
                out.push(InMessage {
                    seq: out.len() as u64 + 1,
                    subject: "aegis.changes.acme.control".into(),
                    payload: b"{not json".to_vec(),
                });
            }
        }
    }
    out
}

fn fold_all(cast: &Cast, msgs: &[InMessage], cuts: &[usize]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut start: usize = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (msgs.len() + 1)).collect();
    bounds.sort();
    bounds.push(msgs.len());
    for end in bounds {
        // Reopen, and redeliver from a little before where we stopped (as a consumer might).
        let store = Store::open(&path).unwrap();
        let folder = Folder {
            store: &store,
            config: &cast.config,
        };
        for m in &msgs[start.saturating_sub(3)..end.max(start)] {
            folder.apply(m).unwrap();
        }
        start = end.max(start);
    }
    let store = Store::open(&path).unwrap();
    let digest = store.state_digest().unwrap().digest;
    (dir, digest)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn same_messages_same_state_whatever_the_restarts(
        steps in prop::collection::vec(step(), 1..40),
        cuts in prop::collection::vec(0usize..200, 0..5),
    ) {
        let cast = cast();
        let mut steps = steps;
        steps.insert(0, Step::Setup);
        let msgs = messages(&cast, &steps);
        let (_a, one_go) = fold_all(&cast, &msgs, &[]);
        let (_b, with_restarts) = fold_all(&cast, &msgs, &cuts);
        prop_assert_eq!(one_go, with_restarts);
    }

    #[test]
    fn nothing_is_published_without_other_peoples_approvals_or_while_frozen(
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let cast = cast();
        let mut steps = steps;
        steps.insert(0, Step::Setup);
        let msgs = messages(&cast, &steps);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let folder = Folder { store: &store, config: &cast.config };
        let mut frozen = false;
        for m in &msgs {
            let applied = folder.apply(m).unwrap();
            let Applied::Folded { record, .. } = applied else { continue };
            let accepted = record.outcome == Outcome::Accepted;
            match record.event_type {
                Some(EventType::TenantFrozen) if accepted => frozen = true,
                Some(EventType::TenantUnfrozen) if accepted => frozen = false,
                Some(EventType::ChangePublished | EventType::RollbackRequested) if accepted => {
                    prop_assert!(!frozen, "published while frozen: {}", record.summary);
                }
                _ => {}
            }
        }
        let queries = Queries { store: &store, root_admins: &cast.config.root_admins };
        for c in queries.changes(&cast.tenant).unwrap() {
            prop_assert!(c.approvals.iter().all(|a| a.actor != c.proposed.actor), "self-approval: {c:?}");
            if c.state == ChangeState::Published {
                prop_assert!(c.approvals.len() as u32 >= 2, "high-risk change published with {} approvals", c.approvals.len());
                prop_assert!(c.checks.as_ref().is_some_and(|k| k.passed));
            }
        }
        for v in queries.history(&cast.tenant).unwrap() {
            if let Some(change) = &v.change_id {
                prop_assert!(v.approved_by.len() >= 2, "version {} of {change} has {:?}", v.version, v.approved_by);
            }
        }
    }
}

/// The generators above can publish: a fixed scenario that does, so the properties are not
/// vacuous.
#[test]
fn a_fixed_scenario_publishes_rolls_back_and_replays_identically() {
    let cast = cast();
    let steps = vec![
        Step::Setup,
        Step::Propose { who: 0, change: 0 },
        Step::Approve { who: 0, change: 0 },
        Step::Approve { who: 1, change: 0 },
        Step::Publish { who: 3, change: 0 },
        Step::Approve { who: 2, change: 0 },
        Step::Freeze { who: 3 },
        Step::Publish { who: 3, change: 0 },
        Step::Unfreeze { who: 3 },
        Step::Publish { who: 3, change: 0 },
        Step::Propose { who: 0, change: 1 },
        Step::Garbage,
        Step::Tampered { who: 1, change: 1 },
    ];
    let msgs = messages(&cast, &steps);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let folder = Folder {
        store: &store,
        config: &cast.config,
    };
    let outcomes: Vec<Outcome> = msgs
        .iter()
        .filter_map(|m| match folder.apply(m).unwrap() {
            Applied::Folded { record, .. } => Some(record.outcome),
            _ => None,
        })
        .collect();
    let rejected = |i: usize| matches!(outcomes[i], Outcome::Rejected { .. });
    // 9 setup events, then: propose ok, self-approval refused, bob ok, publish refused (one
    // approval), carol ok, freeze ok, publish refused (frozen), unfreeze ok, publish ok, ...
    assert!(!rejected(9));
    assert!(rejected(10));
    assert!(!rejected(11));
    assert!(rejected(12));
    assert!(!rejected(13));
    assert!(!rejected(14));
    assert!(rejected(15));
    assert!(!rejected(16));
    assert!(!rejected(17), "{:?}", outcomes[17]);
    assert!(rejected(19), "garbage");
    assert!(rejected(20), "tampered");
    let queries = Queries {
        store: &store,
        root_admins: &cast.config.root_admins,
    };
    assert_eq!(queries.history(&cast.tenant).unwrap().len(), 1);
    let digest = store.state_digest().unwrap().digest;
    drop(store);
    let (_d, again) = fold_all(&cast, &msgs, &[5, 12]);
    assert_eq!(digest, again);
}
