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
use aegis_tests::webhook::json_sink;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

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
    let (endpoint, received) = json_sink();
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
