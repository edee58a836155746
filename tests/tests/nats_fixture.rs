//! The nats-server fixture: a real server with JetStream, cleaned up on drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpStream;
use std::time::Duration;

use aegis_tests::NatsServer;
use aegis_tests::nats_server::{MIN_VERSION, Version};

fn port_is_closed(server_addr: std::net::SocketAddr) -> bool {
    TcpStream::connect_timeout(&server_addr, Duration::from_millis(500)).is_err()
}

#[test]
fn starts_with_jetstream_and_cleans_up_on_drop() {
    let server = NatsServer::start().expect("start nats-server (run ./scripts/setup.sh)");

    // A fresh INFO greeting: JetStream on, a recent enough version.
    let info = server.read_info().unwrap();
    assert_eq!(
        info["jetstream"],
        serde_json::Value::Bool(true),
        "INFO: {info}"
    );
    let version = Version::parse(info["version"].as_str().unwrap()).unwrap();
    assert!(
        version >= MIN_VERSION,
        "server version {version} < {MIN_VERSION}"
    );
    assert_eq!(version, server.version(), "INFO and --version disagree");
    assert_eq!(info["port"].as_u64(), Some(u64::from(server.port())));
    assert!(server.url().starts_with("nats://127.0.0.1:"));

    // Monitoring answers and reports the fixture's store dir.
    let (status, jsz) = server.monitor_get("/jsz").unwrap();
    assert_eq!(status, 200, "{jsz}");
    let jsz: serde_json::Value = serde_json::from_str(&jsz).unwrap();
    let store = jsz["config"]["store_dir"].as_str().unwrap();
    assert!(
        store.starts_with(server.store_dir().to_str().unwrap()),
        "jsz store_dir {store} not under {}",
        server.store_dir().display()
    );

    let addr = server.addr();
    let monitor = server.monitor_addr();
    let store_dir = server.store_dir().to_owned();
    let root = server.config_file().parent().unwrap().to_owned();
    assert!(store_dir.is_dir());
    assert!(server.pid().is_some());

    drop(server);

    assert!(
        port_is_closed(addr),
        "client port {addr} still open after drop"
    );
    assert!(
        port_is_closed(monitor),
        "monitor port {monitor} still open after drop"
    );
    assert!(!store_dir.exists(), "{} still exists", store_dir.display());
    assert!(!root.exists(), "{} still exists", root.display());
}

#[test]
fn kill_and_restart_keep_ports_and_store() {
    let mut server = NatsServer::start().unwrap();
    let addr = server.addr();
    let marker = server.store_dir().join("marker");
    std::fs::write(&marker, b"kept").unwrap();

    server.kill().unwrap();
    assert!(server.pid().is_none());
    assert!(port_is_closed(addr));
    assert!(server.read_info().is_err());
    assert!(marker.exists(), "kill must keep the store");

    server.restart().unwrap();
    assert_eq!(server.addr(), addr);
    assert_eq!(server.read_info().unwrap()["jetstream"], true);
    assert!(marker.exists());

    let root = server.config_file().parent().unwrap().to_owned();
    server.stop().unwrap();
    assert!(port_is_closed(addr));
    assert!(!root.exists());
}

#[test]
fn servers_in_parallel_get_their_own_ports_and_stores() {
    let a = NatsServer::start().unwrap();
    let b = NatsServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.monitor_port(), b.monitor_port());
    assert_ne!(a.store_dir(), b.store_dir());
    assert_ne!(a.info()["server_id"], b.info()["server_id"]);
}

#[test]
fn a_server_that_cannot_start_reports_its_output() {
    let options = aegis_tests::NatsServerOptions {
        extra_config: "jetstream { this is not valid".to_owned(),
        ..Default::default()
    };
    let error = NatsServer::start_with(options).unwrap_err();
    assert!(
        matches!(error, aegis_tests::NatsServerError::Exited { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("stderr"), "{error}");
}
