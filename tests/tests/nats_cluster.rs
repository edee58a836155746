//! A 3-node JetStream cluster: the production shape (R3 streams) provisions, and an
//! acknowledged event survives losing a node, the stream leader included.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use aegis_core::ids::TenantId;
use aegis_nats::publish::Publish;
use aegis_nats::topology::{self, BUNDLE_OBJECT_STORE, CHANGES_STREAM, GATEWAYS_KV, Topology};
use aegis_nats::{ConnectOptions, Outcome, connect, jetstream, last_message, provision, publish};
use aegis_tests::{NatsCluster, NatsServerError};
use bytes::Bytes;
use serde_json::Value;

/// Messages node `index` holds for `stream`, from its own monitoring endpoint.
fn messages_on_node(cluster: &NatsCluster, index: usize, stream: &str) -> Option<u64> {
    let (_, body) = cluster
        .node(index)
        .unwrap()
        .monitor_get("/jsz?streams=true")
        .ok()?;
    let jsz: Value = serde_json::from_str(&body).ok()?;
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|account| {
            account["stream_detail"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|detail| detail["name"] == stream)?["state"]["messages"]
        .as_u64()
}

#[test]
fn the_fixture_starts_a_cluster_with_a_meta_leader() {
    let cluster = NatsCluster::start(3).expect("start a 3-node cluster (run ./scripts/setup.sh)");
    assert_eq!(cluster.size(), 3);
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    assert!(urls.iter().all(|u| u.starts_with("nats://127.0.0.1:")));
    assert_eq!(cluster.url_list(), urls.join(","));
    let leader = cluster.meta_leader(0).unwrap().expect("a meta leader");
    for i in 1..3 {
        assert_eq!(
            cluster.meta_leader(i).unwrap().as_deref(),
            Some(leader.as_str())
        );
    }
    let names: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.info()["server_name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert!(matches!(
        cluster.node(3),
        Err(NatsServerError::NoSuchNode { index: 3, size: 3 })
    ));
    assert!(matches!(
        NatsCluster::start(0),
        Err(NatsServerError::BadClusterSize(0))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_streams_keep_an_acknowledged_event_when_a_node_dies() {
    let mut cluster =
        NatsCluster::start(3).expect("start a 3-node cluster (run ./scripts/setup.sh)");
    let client = connect(&ConnectOptions::new(cluster.url_list()))
        .await
        .unwrap();
    let js = jetstream(client);

    let report = provision(&js, &Topology::cluster()).await.unwrap();
    assert!(
        report
            .resources
            .iter()
            .all(|r| r.outcome == Outcome::Created),
        "{report}"
    );
    assert!(
        provision(&js, &Topology::cluster())
            .await
            .unwrap()
            .all_unchanged()
    );
    for config in Topology::cluster().stream_configs() {
        let mut stream = js.get_stream(&config.name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{}", config.name);
        let cluster_info = info.cluster.as_ref().expect("cluster info");
        assert_eq!(
            cluster_info.replicas.len(),
            2,
            "{}: leader + 2",
            config.name
        );
    }
    for bucket_stream in [
        topology::object_store_stream(BUNDLE_OBJECT_STORE),
        topology::kv_stream(GATEWAYS_KV),
    ] {
        let stream = js.get_stream(&bucket_stream).await.unwrap();
        assert_eq!(
            stream.cached_info().config.num_replicas,
            3,
            "{bucket_stream}"
        );
    }

    let acme = TenantId::new("acme").unwrap();
    let subject = topology::changes_subject(&acme, "policy.payments").unwrap();
    // A freshly created R3 stream may still be electing its leader: until it has one, a
    // publish finds no responder (NoStream). Retry that alone (the msg id makes it safe).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let first = loop {
        match publish(
            &js,
            Publish::new(subject.clone(), "edit 1")
                .msg_id("evt-1")
                .expect_last_subject_sequence(0),
        )
        .await
        {
            Err(aegis_nats::PublishError::NoStream { .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => break other.unwrap(),
        }
    };

    // Kill the stream's leader: the hardest node to lose.
    let mut stream = js.get_stream(CHANGES_STREAM).await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a stream leader");
    let victim = cluster
        .nodes()
        .iter()
        .position(|n| n.info()["server_name"] == leader.as_str())
        .expect("leader is one of ours");
    tokio::task::block_in_place(|| cluster.kill(victim)).unwrap();

    // The two survivors elect a new leader; the event is still there and writes continue
    // (retried while the election runs).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let second = loop {
        let attempt = async {
            let last = last_message(&js, CHANGES_STREAM, &subject).await.ok()??;
            let ack = publish(
                &js,
                Publish::new(subject.clone(), "edit 2")
                    .msg_id("evt-2")
                    .expect_last_subject_sequence(last.sequence),
            )
            .await
            .ok()?;
            Some((last, ack))
        };
        if let Some((last, ack)) = attempt.await {
            assert_eq!(last.sequence, first.sequence);
            assert_eq!(last.payload, Bytes::from("edit 1"));
            break ack;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster did not recover from losing {leader}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(second.sequence > first.sequence);

    // The dead node comes back and catches up from its peers.
    tokio::task::block_in_place(|| cluster.restart(victim)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while messages_on_node(&cluster, victim, CHANGES_STREAM) != Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "restarted node holds {:?} messages",
            messages_on_node(&cluster, victim, CHANGES_STREAM)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
