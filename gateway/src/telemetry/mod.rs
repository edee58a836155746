//! Telemetry of the gateway: one span per decision exported over OTLP, W3C trace context
//! propagation, and structured logs.
//!
//! - [`trace`]: W3C Trace Context Level 1 `traceparent`: parsing (version `00` exactly, later
//!   versions by the spec's forward-compatibility rule), random trace and span ids, and the
//!   header the gateway answers with so that the caller's next span is a child of the decision.
//! - [`span`]: the decision span, named and attributed per the OpenTelemetry GenAI semantic
//!   conventions for tool execution (`execute_tool {gen_ai.tool.name}`,
//!   `gen_ai.operation.name = execute_tool`, `gen_ai.agent.id`, `gen_ai.tool.name`) plus the
//!   `aegis.*` attributes (tenant, decision, reason, policy version, approval id, gateway).
//! - [`otlp`]: an OTLP/HTTP exporter in the JSON encoding: a bounded queue that the request
//!   path `try_send`s into (dropping and counting when full, never waiting), a background task
//!   that batches and posts `ExportTraceServiceRequest`s to `<endpoint>/v1/traces`, with
//!   retries and a flushing shutdown.
//! - [`logs`]: JSON-lines (or text) logging through `tracing-subscriber`, filtered by
//!   `RUST_LOG`.
//!
//! Why no OpenTelemetry SDK: the gateway emits exactly one kind of span, finished and
//! complete when it is recorded, so the SDK's tracer, context, sampler and processor layers
//! would carry nothing, while the `opentelemetry`, `opentelemetry_sdk` and
//! `opentelemetry-otlp` crates (with tonic/prost or reqwest) roughly double the gateway's
//! compile time. The two wire formats involved, `traceparent` and OTLP's JSON encoding, are
//! small, stable and specified, so they are implemented here directly and tested against the
//! specs' examples and a live HTTP receiver. Anything richer (protobuf, gRPC, TLS, tail
//! sampling) is left to an OpenTelemetry Collector next to the gateway.

pub mod logs;
pub mod otlp;
pub mod span;
pub mod trace;

pub use logs::{LogFormat, init_logging};
pub use otlp::{Endpoint, ExporterConfig, SpanExporter};
pub use span::{AttrValue, DecisionSpan, attr, now_unix_nanos};
pub use trace::{
    SpanId, TraceContext, parse_traceparent, span_id_hex, trace_id_hex, traceparent_header,
};

/// Errors of telemetry setup. Exporting itself never fails the caller: failures are counted
/// and logged.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid OTLP endpoint {url:?}: {reason}")]
    InvalidEndpoint { url: String, reason: String },
    #[error(
        "OTLP endpoint {url:?} uses {scheme}; only plain http is supported (terminate TLS at a local collector)"
    )]
    UnsupportedScheme { url: String, scheme: String },
    #[error("the OTLP exporter must be started within a tokio runtime")]
    NoRuntime,
    #[error("the OTLP exporter did not flush by its shutdown deadline; {dropped} spans dropped")]
    ShutdownTimedOut { dropped: u64 },
    #[error("invalid log filter {filter:?}: {source}")]
    InvalidLogFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("unknown log format {0:?} (expected json or text)")]
    UnknownLogFormat(String),
    #[error("logging is already initialised: {0}")]
    LoggingAlreadyInitialised(String),
}
