//! A local HTTP listener that records JSON posts: a stand-in for a chat webhook
//! (Slack-compatible incoming webhook) or an OTLP/HTTP JSON collector. It answers every request
//! with 200 and keeps each request's path and JSON body, in arrival order.
//!
//! Test support: a request that is not JSON (by its `Content-Type`) panics the connection's
//! thread, so the sender's retries and the test's wait both show it.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use serde_json::Value;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// The requests received: (request path, JSON body), in arrival order.
pub type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// The path [`webhook`] puts in its URL.
pub const WEBHOOK_PATH: &str = "/services/hook";

/// Starts a recorder on a free port of 127.0.0.1; returns `http://<addr>` and what it receives.
pub fn json_sink() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let store = store.clone();
            std::thread::spawn(move || serve(BufReader::new(stream), &store));
        }
    });
    (base, received)
}

/// A webhook URL (`http://<addr>/services/hook`) and what it receives.
pub fn webhook() -> (String, Received) {
    let (base, received) = json_sink();
    (format!("{base}{WEBHOOK_PATH}"), received)
}

/// The JSON bodies received so far.
pub fn bodies(received: &Received) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| body.clone())
        .collect()
}

/// Answers the requests of one keep-alive connection.
fn serve(mut reader: BufReader<std::net::TcpStream>, store: &Received) {
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut json_type = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
                if k.eq_ignore_ascii_case("content-type") {
                    json_type = v.trim().starts_with("application/json");
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert!(json_type, "the body is sent as JSON: {request_line}");
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        store
            .lock()
            .unwrap()
            .push((path, serde_json::from_slice(&body).unwrap_or(Value::Null)));
        let _ = reader.get_mut().write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        );
    }
}
