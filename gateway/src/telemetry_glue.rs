//! Placeholder until telemetry lands.
use crate::decide::TraceIds;

pub fn trace_for(traceparent: Option<&str>) -> TraceIds {
    let _ = traceparent;
    TraceIds {
        trace_id: crate::decide::new_id("x")
            .trim_start_matches("x-")
            .to_owned(),
        span_id: crate::decide::new_id("x")
            .get(2..18)
            .unwrap_or_default()
            .to_owned(),
        parent_span_id: None,
        sampled: true,
    }
}
