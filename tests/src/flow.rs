//! Steps and assertions the control-plane tests share: a control plane on a fresh nats-server,
//! outcome checks, the finance proposal, the usual cast of operators, waiting for a version to
//! be announced, fetching and verifying a bundle, reading a stream back.
//!
//! Test support: a failed step panics with what went wrong, like an assertion.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use crate::NatsServer;
use crate::controlplane::{ControlPlane, Keys, Operator, eventually, query, submit};
use aegis_core::bundle::{VerifiedBundle, VerifyPolicy, verify};
use aegis_core::events::{
    ChangeProposed, DocumentFormat, Envelope, ProposedDocument, Role, RoleGranted, VectorDocument,
};
use aegis_core::ids::{ChangeId, PolicyName, TenantId};
use aegis_core::keys::TrustStore;
use aegis_core::query::{
    EventRecord, Outcome, QueryAnswer, QueryRequest, TenantStatus, VersionView,
};
use async_nats::jetstream;
use futures::StreamExt as _;
use std::time::Duration;

/// The finance template's policy document.
pub const FINANCE_POLICY: &str = include_str!("../../policies/templates/finance/policy.yaml");
/// The finance template's test vectors.
pub const FINANCE_VECTORS: &str = include_str!("../../policies/templates/finance/vectors.yaml");

/// A fresh nats-server with the topology provisioned, a JetStream context on it, fresh keys,
/// and the control plane running against it with `extra` flags.
pub async fn start_control_plane(
    extra: &[&str],
) -> (NatsServer, jetstream::Context, Keys, ControlPlane) {
    let server = NatsServer::start().unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    aegis_nats::provision(&js, &aegis_nats::Topology::single())
        .await
        .unwrap();
    let keys = Keys::generate().unwrap();
    let cp = ControlPlane::start(&server.url(), &keys, extra).unwrap();
    (server, js, keys, cp)
}

/// Asserts the event was accepted.
pub fn accepted(r: &EventRecord) {
    assert_eq!(
        r.outcome,
        Outcome::Accepted,
        "{}: {:?}",
        r.summary,
        r.outcome
    );
}

/// Asserts the event was rejected with a reason containing `needle`; returns the reason.
pub fn rejected_with(r: &EventRecord, needle: &str) -> String {
    match &r.outcome {
        Outcome::Rejected { reason } => {
            assert!(
                reason.contains(needle),
                "expected a rejection mentioning {needle:?}, got {reason:?}"
            );
            reason.clone()
        }
        Outcome::Accepted => panic!(
            "expected a rejection ({needle}), got accepted: {}",
            r.summary
        ),
    }
}

/// A proposal of the finance policy `document` (written against live `base_revision`) with the
/// template's vectors.
pub fn finance_proposal(id: &ChangeId, document: &str, base_revision: u64) -> ChangeProposed {
    finance_proposal_with_vectors(id, document, base_revision, FINANCE_VECTORS)
}

/// [`finance_proposal`] with other test vectors (the template's, rewritten for another tenant).
pub fn finance_proposal_with_vectors(
    id: &ChangeId,
    document: &str,
    base_revision: u64,
    vectors: &str,
) -> ChangeProposed {
    ChangeProposed {
        change_id: id.clone(),
        intent: "finance agent thresholds".into(),
        ticket: Some("FIN-1001".into()),
        documents: vec![ProposedDocument {
            name: PolicyName::new("finance-agent").unwrap(),
            format: DocumentFormat::Yaml,
            document: document.into(),
            base_revision,
        }],
        deleted: vec![],
        vectors: vec![VectorDocument {
            name: "finance-vectors.yaml".into(),
            format: DocumentFormat::Yaml,
            document: vectors.into(),
        }],
    }
}

/// Registers alice (editor and approver), bob and carol (approvers) and pat (publisher) in
/// `tenant`, signed by the root admin.
pub async fn setup_actors(js: &jetstream::Context, keys: &Keys, tenant: &str) -> [Operator; 4] {
    let t = TenantId::new(tenant).unwrap();
    let root = keys.root_operator(&t);
    let alice = Operator::new(tenant, "alice");
    let bob = Operator::new(tenant, "bob");
    let carol = Operator::new(tenant, "carol");
    let pat = Operator::new(tenant, "pat");
    for (op, roles) in [
        (&alice, &[Role::Editor, Role::Approver][..]),
        (&bob, &[Role::Approver][..]),
        (&carol, &[Role::Approver][..]),
        (&pat, &[Role::Publisher][..]),
    ] {
        accept(js, &root.register(op)).await;
        for role in roles {
            let grant = root.sign(RoleGranted {
                actor: op.actor.clone(),
                role: *role,
            });
            accept(js, &grant).await;
        }
    }
    [alice, bob, carol, pat]
}

/// Waits until `version` of `tenant` is in the object store and announced.
pub async fn announced(js: &jetstream::Context, tenant: &TenantId, version: u64) -> VersionView {
    eventually(
        Duration::from_secs(60),
        "the bundle to be announced",
        || async {
            match query(&js.client(), tenant, QueryRequest::History).await {
                Ok(QueryAnswer::History(h)) => {
                    h.into_iter().find(|v| v.version == version && v.announced)
                }
                _ => None,
            }
        },
    )
    .await
    .unwrap()
}

/// The bundle stored under `digest` in the object store, verified against `trust` now.
pub async fn fetch_verified(
    js: &jetstream::Context,
    trust: &TrustStore,
    digest: &str,
) -> VerifiedBundle {
    let bucket = js.get_object_store("aegis-bundles").await.unwrap();
    let mut object = bucket.get(digest).await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
        .await
        .unwrap();
    verify(
        &bytes,
        trust,
        &VerifyPolicy::new(time::OffsetDateTime::now_utc()),
    )
    .unwrap_or_else(|e| panic!("bundle {digest} does not verify: {e}"))
}

/// The tenant's status, if the control plane answers.
pub async fn status(client: &async_nats::Client, tenant: &TenantId) -> Option<TenantStatus> {
    match query(client, tenant, QueryRequest::Status).await {
        Ok(QueryAnswer::Status(s)) => Some(s),
        _ => None,
    }
}

/// The state of `stream` now: message count, first and last sequence, ...
pub async fn stream_state(js: &jetstream::Context, stream: &str) -> jetstream::stream::State {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .clone()
}

/// The last sequence of `stream`.
pub async fn stream_last(js: &jetstream::Context, stream: &str) -> u64 {
    stream_state(js, stream).await.last_sequence
}

/// A message read back from a stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub raw: Vec<u8>,
}

impl Stored {
    /// The message as an envelope, if it is one.
    pub fn envelope(&self) -> Option<Envelope> {
        serde_json::from_slice(&self.raw).ok()
    }
}

/// Every message on `filter` in stream order (an ordered consumer, up to the stream's last
/// sequence at the time of the call).
pub async fn read_stream(js: &jetstream::Context, stream: &str, filter: &str) -> Vec<Stored> {
    let stream = js.get_stream(stream).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut msgs = consumer.messages().await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(2), msgs.next()).await;
        let Ok(Some(Ok(m))) = next else { break };
        let seq = m.info().unwrap().stream_sequence;
        out.push(Stored {
            seq,
            subject: m.subject.to_string(),
            raw: m.payload.to_vec(),
        });
        if seq >= last {
            break;
        }
    }
    out
}

/// The messages that are envelopes, parsed.
pub fn envelopes(msgs: &[Stored]) -> Vec<Envelope> {
    msgs.iter().filter_map(Stored::envelope).collect()
}

/// Submits `env`, waits for the fold, and asserts it was accepted.
pub async fn accept(js: &jetstream::Context, env: &Envelope) -> EventRecord {
    let r = submit(js, env).await.unwrap();
    accepted(&r);
    r
}

/// Submits `env`, waits for the fold, and asserts it was rejected with a reason containing
/// `needle`; returns the reason.
pub async fn refuse(js: &jetstream::Context, env: &Envelope, needle: &str) -> String {
    rejected_with(&submit(js, env).await.unwrap(), needle)
}
