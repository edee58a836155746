//! Provisioning, drift, conflicts and dedup against a real nats-server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use aegis_core::ids::TenantId;
use aegis_nats::provision::{Outcome, ProvisionError, ProvisionOptions, provision_with};
use aegis_nats::publish::{MSG_ID_HEADER, Publish, PublishError};
use aegis_nats::topology::{
    self, APPROVALS_STREAM, AUDIT_STREAM, BUNDLE_OBJECT_STORE, BUNDLES_STREAM, CHANGES_STREAM,
    DECISIONS_STREAM, GATEWAYS_KV, LIMITS_KV, Topology,
};
use aegis_nats::{ConnectError, ConnectOptions, connect, jetstream, provision, publish};
use aegis_tests::NatsServer;
use async_nats::jetstream::Context;

async fn setup() -> (NatsServer, Context) {
    let server = NatsServer::start().expect("start nats-server (run ./scripts/setup.sh)");
    let client = connect(&ConnectOptions::new(server.url())).await.unwrap();
    (server, jetstream(client))
}

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

#[tokio::test]
async fn provisioning_twice_creates_then_changes_nothing() {
    let (_server, js) = setup().await;
    let topo = Topology::single();

    let first = provision(&js, &topo).await.unwrap();
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            CHANGES_STREAM,
            BUNDLES_STREAM,
            DECISIONS_STREAM,
            APPROVALS_STREAM,
            AUDIT_STREAM,
            BUNDLE_OBJECT_STORE,
            GATEWAYS_KV,
            LIMITS_KV
        ]
    );
    assert!(
        first
            .resources
            .iter()
            .all(|r| r.outcome == Outcome::Created),
        "{first}"
    );

    let second = provision(&js, &topo).await.unwrap();
    assert!(
        second.all_unchanged(),
        "second run changed something:\n{second}"
    );
    assert_eq!(second.resources.len(), 8);
}

#[tokio::test]
async fn streams_carry_the_protections_of_the_topology() {
    let (_server, js) = setup().await;
    provision(&js, &Topology::single()).await.unwrap();

    for (name, deny_delete, deny_purge) in [
        (CHANGES_STREAM, true, true),
        (BUNDLES_STREAM, true, true),
        (DECISIONS_STREAM, true, false),
        (APPROVALS_STREAM, true, true),
        (AUDIT_STREAM, true, true),
    ] {
        let mut stream = js.get_stream(name).await.unwrap();
        let config = stream.info().await.unwrap().config.clone();
        assert_eq!(config.deny_delete, deny_delete, "{name} deny_delete");
        assert_eq!(config.deny_purge, deny_purge, "{name} deny_purge");
        assert!(config.allow_direct, "{name} allow_direct");
        assert_eq!(config.num_replicas, 1, "{name}");
    }
    let changes = js.get_stream(CHANGES_STREAM).await.unwrap();
    let info = changes.cached_info();
    assert_eq!(info.config.max_age, Duration::ZERO);
    assert_eq!(info.config.max_message_size, 8 * 1024 * 1024);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    let decisions = js.get_stream(DECISIONS_STREAM).await.unwrap();
    assert_eq!(
        decisions.cached_info().config.max_age,
        Duration::from_secs(30 * 86_400)
    );
    let kv = js.get_key_value(GATEWAYS_KV).await.unwrap();
    let status = kv.status().await.unwrap();
    assert_eq!(status.history(), 1);
    assert_eq!(status.max_age(), Duration::from_secs(86_400));
    let limits = js.get_key_value(LIMITS_KV).await.unwrap();
    let status = limits.status().await.unwrap();
    assert_eq!(status.history(), 1, "one value per global counter");
    assert_eq!(status.max_age(), Duration::from_secs(31 * 86_400));
    js.get_object_store(BUNDLE_OBJECT_STORE).await.unwrap();

    // A change event cannot be deleted or purged.
    let subject = topology::changes_subject(&acme(), "policy.payments").unwrap();
    let ack = publish(&js, Publish::new(subject, "{}")).await.unwrap();
    let delete = changes.delete_message(ack.sequence).await;
    assert!(delete.is_err(), "deleting from AEGIS_CHANGES succeeded");
    assert!(
        delete.unwrap_err().to_string().contains("delete"),
        "unexpected error"
    );
    assert!(
        changes.purge().await.is_err(),
        "purging AEGIS_CHANGES succeeded"
    );
    let last = aegis_nats::last_subject_sequence(&js, CHANGES_STREAM, "aegis.changes.acme.>")
        .await
        .unwrap();
    assert_eq!(last, Some(ack.sequence), "the event is still there");
}

#[tokio::test]
async fn a_drifted_max_age_is_reported_and_fixed_only_when_asked() {
    let (_server, js) = setup().await;
    let topo = Topology::single();
    let mut by_hand = topo.stream_config(CHANGES_STREAM).unwrap();
    by_hand.max_age = Duration::from_secs(3600);
    js.create_stream(by_hand).await.unwrap();

    let error = provision(&js, &topo).await.unwrap_err();
    match &error {
        ProvisionError::Drift {
            stream,
            field,
            expected,
            actual,
            other_fields,
            ..
        } => {
            assert_eq!(stream, CHANGES_STREAM);
            assert_eq!(*field, "max_age");
            assert_eq!(expected, "unlimited");
            assert_eq!(actual, "1h");
            assert!(other_fields.is_empty(), "{other_fields:?}");
        }
        other => panic!("expected Drift, got {other}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("AEGIS_CHANGES") && text.contains("max_age"),
        "{text}"
    );
    // Nothing was changed.
    let info = js.get_stream(CHANGES_STREAM).await.unwrap();
    assert_eq!(info.cached_info().config.max_age, Duration::from_secs(3600));

    let fixed = provision_with(&js, &topo, ProvisionOptions { fix_drift: true })
        .await
        .unwrap();
    assert_eq!(
        fixed.outcome(CHANGES_STREAM),
        Some(Outcome::Updated),
        "{fixed}"
    );
    let line = &fixed.resources[0];
    assert_eq!(line.fixed.len(), 1);
    assert_eq!(line.fixed[0].field, "max_age");
    // The others did not exist yet.
    assert_eq!(fixed.outcome(BUNDLES_STREAM), Some(Outcome::Created));
    let info = js.get_stream(CHANGES_STREAM).await.unwrap();
    assert_eq!(info.cached_info().config.max_age, Duration::ZERO);

    assert!(provision(&js, &topo).await.unwrap().all_unchanged());
}

#[tokio::test]
async fn drifted_subjects_and_protections_are_named() {
    let (_server, js) = setup().await;
    let topo = Topology::single();
    let mut audit = topo.stream_config(AUDIT_STREAM).unwrap();
    audit.subjects = vec!["aegis.audit.*".to_owned()];
    audit.deny_delete = false;
    audit.deny_purge = false;
    js.create_stream(audit).await.unwrap();
    // Everything before AUDIT is created; AUDIT drifts.
    let error = provision(&js, &topo).await.unwrap_err();
    match &error {
        ProvisionError::Drift {
            stream,
            field,
            expected,
            actual,
            other_fields,
            ..
        } => {
            assert_eq!(stream, AUDIT_STREAM);
            assert_eq!(*field, "subjects");
            assert_eq!(expected, "[aegis.audit.>]");
            assert_eq!(actual, "[aegis.audit.*]");
            assert_eq!(other_fields, &["deny_delete", "deny_purge"]);
        }
        other => panic!("expected Drift, got {other}"),
    }
    let report = provision_with(&js, &topo, ProvisionOptions { fix_drift: true })
        .await
        .unwrap();
    assert_eq!(report.outcome(AUDIT_STREAM), Some(Outcome::Updated));
    assert_eq!(report.outcome(CHANGES_STREAM), Some(Outcome::Unchanged));
    let info = js.get_stream(AUDIT_STREAM).await.unwrap();
    let config = &info.cached_info().config;
    assert_eq!(config.subjects, ["aegis.audit.>"]);
    assert!(config.deny_delete && config.deny_purge);
}

#[tokio::test]
async fn the_second_of_two_writers_with_the_same_expectation_gets_a_conflict() {
    let (_server, js) = setup().await;
    provision(&js, &Topology::single()).await.unwrap();
    let subject = topology::changes_subject(&acme(), "policy.payments").unwrap();

    let seen = aegis_nats::last_subject_sequence(&js, CHANGES_STREAM, &subject)
        .await
        .unwrap();
    assert_eq!(seen, None, "fresh subject");
    let expected = seen.unwrap_or(0);

    let first = publish(
        &js,
        Publish::new(subject.clone(), "edit by alice").expect_last_subject_sequence(expected),
    )
    .await
    .unwrap();
    let second = publish(
        &js,
        Publish::new(subject.clone(), "edit by bob").expect_last_subject_sequence(expected),
    )
    .await
    .unwrap_err();
    match &second {
        PublishError::Conflict {
            subject: s,
            expected: e,
            actual,
        } => {
            assert_eq!(s, &subject);
            assert_eq!(*e, 0);
            assert_eq!(*actual, Some(first.sequence));
        }
        other => panic!("expected Conflict, got {other}"),
    }
    let text = second.to_string();
    assert!(text.contains("someone else changed it first"), "{text}");
    assert!(text.contains("re-read it and retry"), "{text}");

    // Bob re-reads and retries: it lands.
    let now = aegis_nats::last_subject_sequence(&js, CHANGES_STREAM, &subject)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now, first.sequence);
    let retry = publish(
        &js,
        Publish::new(subject.clone(), "edit by bob").expect_last_subject_sequence(now),
    )
    .await
    .unwrap();
    assert!(retry.sequence > first.sequence);
    // Another subject of the same stream is not affected by the expectation.
    let other = topology::changes_subject(&acme(), "policy.ehr").unwrap();
    publish(
        &js,
        Publish::new(other, "x").expect_last_subject_sequence(0),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_retried_msg_id_is_stored_once() {
    let (_server, js) = setup().await;
    provision(&js, &Topology::single()).await.unwrap();
    let subject = topology::decisions_subject(&acme(), "gw1").unwrap();

    let first = publish(&js, Publish::new(subject.clone(), "d1").msg_id("evt-1"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.stream, DECISIONS_STREAM);
    let again = publish(&js, Publish::new(subject.clone(), "d1").msg_id("evt-1"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);

    let last = aegis_nats::last_message(&js, DECISIONS_STREAM, &subject)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.sequence, first.sequence);
    assert_eq!(&last.payload[..], b"d1");
    assert_eq!(last.subject, subject);
    assert_eq!(last.headers.get(MSG_ID_HEADER).unwrap().as_str(), "evt-1");
    let stream = js.get_stream(DECISIONS_STREAM).await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 1);
}

#[tokio::test]
async fn publishing_where_no_stream_listens_and_reading_a_missing_stream_fail_clearly() {
    let (_server, js) = setup().await;
    let error = publish(&js, Publish::new("aegis.changes.acme.x", "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, PublishError::NoStream { .. }),
        "expected NoStream, got {error}"
    );
    assert!(error.to_string().contains("provisioned"), "{error}");
    let error = aegis_nats::last_message(&js, CHANGES_STREAM, "aegis.changes.acme.x")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("AEGIS_CHANGES"), "{error}");
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast_and_names_the_url() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    let error = connect(&ConnectOptions::new(url.clone()))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(error, ConnectError::Unreachable { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains(&url), "{text}");
    assert!(text.contains("AEGIS_NATS_URL"), "{text}");
}

#[tokio::test]
async fn provisioning_r3_on_a_single_server_fails_with_the_reason() {
    let (_server, js) = setup().await;
    let error = provision(&js, &Topology::cluster()).await.unwrap_err();
    assert!(
        matches!(error, ProvisionError::Create { .. }),
        "expected Create, got {error}"
    );
    assert!(error.to_string().contains("AEGIS_CHANGES"), "{error}");
}
