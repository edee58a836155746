//! The real gateway exports one OTLP span per decision to a collector, as a child of the
//! caller's W3C `traceparent`, with the GenAI and `aegis.*` attributes; the decision event
//! records the same trace. The collector here is a minimal OTLP/HTTP receiver that keeps every
//! request body it gets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_tests::stack::{ACME, Stack, pay};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the collector received: (request path, JSON body) per request.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// Accepts OTLP/HTTP posts on a free port; returns the endpoint and the bodies received.
fn collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let store = store.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_owned();
                    store
                        .lock()
                        .unwrap()
                        .push((path, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    let _ = reader
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
                }
            });
        }
    });
    (endpoint, received)
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[test]
fn each_decision_is_an_otlp_span_in_the_callers_trace() {
    let stack = Stack::start();
    let (endpoint, received) = collector();
    let options = stack
        .gateway_options("gw-otel")
        .arg("--otlp-endpoint")
        .arg(&endpoint);
    let gw = aegis_tests::gateway::Gateway::start(&options).unwrap();
    gw.wait_version(ACME, stack.version(), Duration::from_secs(60))
        .unwrap();
    let token = stack.token("finance-agent", &["planner"]);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let (status, text) = gw
        .client()
        .unwrap()
        .request(
            "POST",
            "/v1/decide",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("traceparent", &format!("00-{trace_id}-{parent}-01")),
            ],
            pay(6_000).to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let approval_id = answer["approval"]["id"].as_str().unwrap().to_owned();

    // The decision event names the caller's trace and the decision span.
    let id = answer["decision_id"].as_str().unwrap().to_owned();
    let records = stack.wait_decisions(
        "aegis.decisions.>",
        &BTreeSet::from([id.clone()]),
        Duration::from_secs(30),
    );
    let event = records.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(event["trace_id"], trace_id);
    let span_id = event["span_id"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(30);
    let span = loop {
        let found = received.lock().unwrap().iter().find_map(|(path, body)| {
            assert_eq!(path, "/v1/traces");
            body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()?
                .iter()
                .find(|s| s["spanId"] == span_id.as_str())
                .cloned()
        });
        if let Some(span) = found {
            break span;
        }
        assert!(Instant::now() < deadline, "no span {span_id} exported");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(span["traceId"], trace_id);
    assert_eq!(span["parentSpanId"], parent);
    assert_eq!(span["name"], "execute_tool payments");
    let attr = |k: &str| attribute(&span, k).cloned().unwrap_or(Value::Null);
    assert_eq!(attr("gen_ai.operation.name")["stringValue"], "execute_tool");
    assert_eq!(attr("gen_ai.agent.id")["stringValue"], "finance-agent");
    assert_eq!(attr("gen_ai.tool.name")["stringValue"], "payments");
    assert_eq!(attr("aegis.tenant")["stringValue"], "acme");
    assert_eq!(attr("aegis.decision")["stringValue"], "approval_needed");
    assert_eq!(
        attr("aegis.decision_reason")["stringValue"],
        "amount_requires_approval"
    );
    assert_eq!(
        attr("aegis.approval_id")["stringValue"],
        approval_id.as_str()
    );
    assert_eq!(
        attr("aegis.policy_version")["intValue"],
        stack.version().to_string()
    );
}
