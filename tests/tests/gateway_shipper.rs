//! The gateway's decision shipper against a real nats-server: every event submitted lands in
//! `AEGIS_DECISIONS` exactly once — with NATS up, across nats-server kills and restarts, across a
//! gateway restart with NATS down, and the spool-full policies hold.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_gateway::shipper::{
    self, Outgoing, ShipError, ShipperConfig, ShipperHandle, ShipperStats, SpoolFullPolicy,
};
use aegis_tests::NatsServer;
use aegis_tests::flow::stream_state;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt as _;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

const STREAM: &str = "AEGIS_DECISIONS";

/// A client that, like the gateway's, starts even when no server answers and reconnects forever.
async fn client(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
        .unwrap()
}

async fn connected(client: &async_nats::Client) {
    eventually(Duration::from_secs(10), "the client to connect", || async {
        (client.connection_state() == async_nats::connection::State::Connected).then_some(())
    })
    .await;
}

/// Starts a server with the Aegis streams.
async fn provisioned_server() -> NatsServer {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    aegis_nats::provision(&js, &aegis_nats::Topology::single())
        .await
        .unwrap();
    server
}

fn config(dir: &Path) -> ShipperConfig {
    ShipperConfig {
        ack_timeout: Duration::from_secs(2),
        ..ShipperConfig::new(dir)
    }
}

fn event_id(run: &str, i: usize) -> String {
    format!("{run}-{i:06}")
}

fn event(run: &str, i: usize) -> Outgoing {
    let id = event_id(run, i);
    Outgoing {
        subject: format!("aegis.decisions.acme.gw-{}", i % 2),
        payload: Bytes::from(format!(
            r#"{{"id":"{id}","type":"decision","tenant":"acme","decision":"allow","n":{i}}}"#
        )),
        id,
    }
}

async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until nothing is queued, in flight or spooled.
async fn drained(handle: &ShipperHandle, timeout: Duration) -> ShipperStats {
    eventually(timeout, "the shipper to drain", || async {
        let s = handle.stats();
        (s.queued == 0 && s.in_flight == 0 && s.spool_events == 0).then_some(s)
    })
    .await
}

async fn stream_messages(js: &jetstream::Context) -> u64 {
    stream_state(js, STREAM).await.messages
}

/// Every `Nats-Msg-Id` in the stream, in stream order.
async fn stored_ids(js: &jetstream::Context) -> Vec<String> {
    let stream = js.get_stream(STREAM).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    if last == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "aegis.decisions.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("reading the stream back stalled");
        let message = next.expect("stream ended").unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
            .expect("every message has a Nats-Msg-Id");
        let seq = message.info().unwrap().stream_sequence;
        // The payload is the event: its id matches the header.
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["id"].as_str(), Some(id.as_str()));
        ids.push(id);
        if seq >= last {
            break;
        }
    }
    ids
}

/// Asserts the stream holds exactly one message per id in `expected`, and nothing else.
async fn assert_exactly_once(js: &jetstream::Context, expected: &BTreeSet<String>) {
    let ids = stored_ids(js).await;
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "{} duplicate messages in the stream",
        ids.len() - unique.len()
    );
    let missing: Vec<_> = expected.difference(&unique).take(10).collect();
    let extra: Vec<_> = unique.difference(expected).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "stream and submitted events differ: missing (first 10) {missing:?}, unexpected {extra:?}; \
         {} stored, {} submitted",
        unique.len(),
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_nats_ships_every_event_once() {
    let server = provisioned_server().await;
    let dir = tempfile::tempdir().unwrap();
    let nats = client(&server.url()).await;
    // Until the first connect completes the client is "pending" and events would be spooled.
    connected(&nats).await;
    let js = jetstream::new(nats.clone());
    // A generous ack timeout: on a loaded test machine, 1,024 publishes in flight against a
    // server that fsyncs every message can take more than the 2 s the other tests use, and a
    // late ack counts as "NATS slow" (spooled), which is not what this test is about.
    let healthy = ShipperConfig {
        ack_timeout: Duration::from_secs(60),
        ..config(dir.path())
    };
    let handle = shipper::start(nats, healthy).await.unwrap();

    let run = "healthy";
    let started = Instant::now();
    for i in 0..5_000 {
        handle.submit(event(run, i)).unwrap();
    }
    let stats = eventually(Duration::from_secs(60), "5,000 acks", || async {
        let s = handle.stats();
        (s.shipped == 5_000 && s.in_flight == 0).then_some(s)
    })
    .await;
    eprintln!("5,000 events shipped in {:?}", started.elapsed());
    assert_eq!(
        stats.spooled, 0,
        "nothing spooled while NATS is healthy: {stats:?}"
    );
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stream_messages(&js).await, 5_000);
    let expected: BTreeSet<String> = (0..5_000).map(|i| event_id(run, i)).collect();
    assert_exactly_once(&js, &expected).await;

    handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(handle.submit(event(run, 9_999)), Err(ShipError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarts_while_shipping_lose_and_duplicate_nothing() {
    let server = provisioned_server().await;
    let dir = tempfile::tempdir().unwrap();
    let nats = client(&server.url()).await;
    connected(&nats).await;
    let js = jetstream::new(nats.clone());
    let handle = shipper::start(nats, config(dir.path())).await.unwrap();

    // Kill and restart the server twice while events stream in at 1,000/s for 20 s: slow
    // enough that a test machine's server (which fsyncs every message) can drain the spool
    // between the outages, so the shipper goes direct → spool → direct twice.
    let chaos = tokio::task::spawn_blocking(move || {
        let mut server = server;
        for _ in 0..2 {
            std::thread::sleep(Duration::from_secs(3));
            server.kill().unwrap();
            std::thread::sleep(Duration::from_secs(2));
            server.restart().unwrap();
            std::thread::sleep(Duration::from_secs(3));
        }
        server
    });
    let run = "chaos";
    let total = 20_000;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut i = 0;
    while i < total {
        ticker.tick().await;
        for _ in 0..20 {
            handle
                .submit(event(run, i))
                .unwrap_or_else(|e| panic!("event {i} refused: {e}; {:?}", handle.stats()));
            i += 1;
        }
    }
    let server = chaos.await.unwrap();

    let stats = drained(&handle, Duration::from_secs(120)).await;
    eprintln!("after two nats-server restarts: {stats:?}");
    assert!(
        stats.spooled > 0,
        "the outages sent events through the spool: {stats:?}"
    );
    assert_eq!(stats.unrecorded, 0, "{stats:?}");
    let expected: BTreeSet<String> = (0..total).map(|i| event_id(run, i)).collect();
    assert_exactly_once(&js, &expected).await;
    assert_eq!(stream_messages(&js).await, total as u64);

    handle.shutdown(Duration::from_secs(5)).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_spooled_while_nats_is_down_are_sent_after_a_gateway_restart() {
    let mut server = provisioned_server().await;
    let url = server.url();
    tokio::task::block_in_place(|| server.kill()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = "restart";

    // First gateway life: NATS never answers; everything goes to the spool.
    {
        let nats = client(&url).await;
        let handle = shipper::start(nats, config(dir.path())).await.unwrap();
        for i in 0..1_000 {
            handle.submit(event(run, i)).unwrap();
        }
        eventually(Duration::from_secs(30), "1,000 events spooled", || async {
            let s = handle.stats();
            (s.spool_events == 1_000).then_some(())
        })
        .await;
        handle.shutdown(Duration::from_secs(5)).await;
        let stats = handle.stats();
        assert_eq!(stats.shipped, 0, "{stats:?}");
        assert_eq!(stats.spooled, 1_000, "{stats:?}");
        assert_eq!(stats.spool_events, 1_000, "{stats:?}");
    }

    // NATS comes back; a new gateway on the same spool directory sends them.
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let nats = client(&url).await;
    let js = jetstream::new(nats.clone());
    let handle = shipper::start(nats, config(dir.path())).await.unwrap();
    assert_eq!(handle.stats().spool_events, 1_000, "recovered from disk");
    let stats = drained(&handle, Duration::from_secs(60)).await;
    assert_eq!(stats.shipped, 1_000, "{stats:?}");
    let expected: BTreeSet<String> = (0..1_000).map(|i| event_id(run, i)).collect();
    assert_exactly_once(&js, &expected).await;

    // New events go straight out again once the spool is empty.
    handle.submit(event(run, 1_000)).unwrap();
    let stats = drained(&handle, Duration::from_secs(30)).await;
    assert_eq!(stats.shipped, 1_001, "{stats:?}");
    assert_eq!(stats.spooled, 0, "{stats:?}");
    handle.shutdown(Duration::from_secs(5)).await;
}

/// A spool of a few KiB, NATS down: fills after a few dozen events.
fn tiny(dir: &Path, policy: SpoolFullPolicy) -> ShipperConfig {
    ShipperConfig {
        max_spool_bytes: 16 << 10,
        on_spool_full: policy,
        ..config(dir)
    }
}

/// Submits one event every millisecond until one is refused; returns the accepted ids.
async fn submit_until_full(handle: &ShipperHandle, run: &str) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    let mut i = 0;
    let started = Instant::now();
    loop {
        match handle.submit(event(run, i)) {
            Ok(()) => {
                accepted.insert(event_id(run, i));
            }
            Err(ShipError::Full) => return accepted,
            Err(e) => panic!("unexpected {e}"),
        }
        i += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the spool never filled: {:?}",
            handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_denies_or_serves_by_policy() {
    let mut server = provisioned_server().await;
    let url = server.url();
    tokio::task::block_in_place(|| server.kill()).unwrap();

    // Serve: the request path keeps answering; submit says Full and the caller counts.
    let serve_dir = tempfile::tempdir().unwrap();
    let serve = shipper::start(
        client(&url).await,
        tiny(serve_dir.path(), SpoolFullPolicy::Serve),
    )
    .await
    .unwrap();
    assert!(serve.accepting());
    submit_until_full(&serve, "serve").await;
    assert!(serve.accepting(), "Serve keeps accepting calls");
    assert_eq!(serve.submit(event("serve", 999_999)), Err(ShipError::Full));
    serve.count_unrecorded();
    assert_eq!(serve.stats().unrecorded, 1);
    let stats = serve.stats();
    assert!(
        stats.spool_bytes <= 16 << 10,
        "the spool stays under its limit while running: {stats:?}"
    );
    serve.shutdown(Duration::from_secs(2)).await;

    // Deny: accepting() turns false, so the request path refuses calls before deciding.
    let deny_dir = tempfile::tempdir().unwrap();
    let deny = shipper::start(
        client(&url).await,
        tiny(deny_dir.path(), SpoolFullPolicy::Deny),
    )
    .await
    .unwrap();
    assert!(deny.accepting());
    let accepted = submit_until_full(&deny, "deny").await;
    eventually(
        Duration::from_secs(10),
        "accepting() to turn false",
        || async { (!deny.accepting()).then_some(()) },
    )
    .await;
    assert_eq!(deny.submit(event("deny", 999_999)), Err(ShipError::Full));

    // NATS returns: the spool drains, room comes back, and every accepted event is stored once.
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    eventually(
        Duration::from_secs(60),
        "accepting() to turn true",
        || async { deny.accepting().then_some(()) },
    )
    .await;
    drained(&deny, Duration::from_secs(60)).await;
    assert_exactly_once(&js, &accepted).await;
    deny.shutdown(Duration::from_secs(2)).await;
}
