//! The OTLP/HTTP JSON span exporter.
//!
//! Spans are posted as an `ExportTraceServiceRequest` in the OTLP JSON encoding
//! (<https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding>) to `<endpoint>/v1/traces`
//! with `Content-Type: application/json`: `resourceSpans` → `scopeSpans` → `spans`; field names
//! in lowerCamelCase; trace and span ids as hex strings (not base64 as in the generic protobuf
//! JSON mapping); enums (`kind`, `status.code`) as integers; 64-bit integers (the timestamps,
//! `intValue`) as decimal strings.
//!
//! The request path never waits on telemetry: [`SpanExporter::export`] is a `try_send` into a
//! bounded queue, and a span that finds the queue full is dropped and counted. A background
//! task batches spans (up to [`ExporterConfig::max_batch`], or for at most
//! [`ExporterConfig::batch_interval`] after the first span of a batch) and posts each batch;
//! a failed post (connection error, timeout, 429, 502, 503, 504) is retried with exponential
//! backoff, honouring `Retry-After`, and after the last try its spans are counted as dropped
//! and a warning is logged. Other statuses are not retried. Spans a collector rejects in a
//! `partialSuccess` answer count as dropped too.
//!
//! The exporter speaks plain HTTP only (hyper-util's legacy client, no TLS stack): TLS is
//! expected to be terminated by a collector on the same host or pod (an OpenTelemetry Collector
//! agent or sidecar on `http://127.0.0.1:4318`) which forwards over TLS. An `https` endpoint is
//! refused at start rather than silently sent in clear.

use super::TelemetryError;
use super::span::{AttrValue, DecisionSpan};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The base endpoint of all signals; `/v1/traces` is appended for traces.
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces endpoint, used as is.
pub const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The protocol; this exporter speaks `http/json` only.
pub const ENV_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// Appended to a base endpoint.
pub const TRACES_PATH: &str = "v1/traces";

/// `SPAN_KIND_SERVER`: the decision span serves the caller's request.
pub const SPAN_KIND_SERVER: i32 = 2;
/// `STATUS_CODE_ERROR`.
pub const STATUS_CODE_ERROR: i32 = 2;
/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`: whether the parent is remote is known.
const SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
/// `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`: the parent is remote.
const SPAN_FLAGS_CONTEXT_IS_REMOTE: u32 = 0x200;

/// The instrumentation scope of every span.
pub const SCOPE_NAME: &str = "aegis-gateway";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");
const USER_AGENT_VALUE: &str = concat!("aegis-gateway/", env!("CARGO_PKG_VERSION"));

/// How much of a collector's answer is read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Time given to the background task, past a shutdown deadline, to report back.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

/// Where spans go, with the semantics of the OpenTelemetry exporter environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// As `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL, `/v1/traces` is appended.
    Base(String),
    /// As `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the traces URL, used as is.
    Traces(String),
}

impl Endpoint {
    /// The endpoint configured by the environment: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` if set
    /// and not empty (it takes precedence), else `OTEL_EXPORTER_OTLP_ENDPOINT`, else `None`.
    pub fn from_env() -> Option<Self> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(p) = var(ENV_PROTOCOL)
            && p.trim() != "http/json"
        {
            tracing::warn!(protocol = %p, "{ENV_PROTOCOL} is ignored: the gateway exports OTLP over http/json only");
        }
        var(ENV_TRACES_ENDPOINT)
            .map(|v| Self::Traces(v.trim().to_owned()))
            .or_else(|| var(ENV_ENDPOINT).map(|v| Self::Base(v.trim().to_owned())))
    }

    /// The URL spans are posted to.
    pub fn traces_url(&self) -> String {
        match self {
            Self::Base(base) if base.ends_with('/') => format!("{base}{TRACES_PATH}"),
            Self::Base(base) => format!("{base}/{TRACES_PATH}"),
            Self::Traces(url) => url.clone(),
        }
    }
}

/// Tuning of the exporter; the defaults suit the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterConfig {
    /// Spans waiting to be sent; more are dropped.
    pub queue_capacity: usize,
    /// Spans per request.
    pub max_batch: usize,
    /// The longest a span waits for its batch to fill.
    pub batch_interval: Duration,
    /// One request's time limit (the spec's `OTEL_EXPORTER_OTLP_TIMEOUT` default, 10 s).
    pub request_timeout: Duration,
    /// Tries after the first before a batch is dropped.
    pub max_retries: u32,
    /// The first backoff; it doubles with each retry.
    pub initial_backoff: Duration,
    /// The longest backoff, `Retry-After` included.
    pub max_backoff: Duration,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 2048,
            max_batch: 512,
            batch_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    /// Accepted into the queue and not yet exported or dropped.
    pending: AtomicU64,
    exported: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn resolve(&self, exported: u64, dropped: u64) {
        self.exported.fetch_add(exported, Ordering::Relaxed);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.pending
            .fetch_sub(exported + dropped, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Shutdown {
    deadline: Instant,
    ack: oneshot::Sender<()>,
}

/// Exports decision spans over OTLP/HTTP JSON from a background task.
#[derive(Debug)]
pub struct SpanExporter {
    spans: mpsc::Sender<DecisionSpan>,
    control: mpsc::Sender<Shutdown>,
    counters: Arc<Counters>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    traces_url: String,
}

impl SpanExporter {
    /// Starts exporting to `endpoint` taken as a base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`
    /// semantics: `http://127.0.0.1:4318` posts to `http://127.0.0.1:4318/v1/traces`), with
    /// `service.name` = `service_name` and `resource` as the other resource attributes.
    /// Must be called within a tokio runtime.
    pub fn start(
        endpoint: &str,
        service_name: &str,
        resource: &[(&str, AttrValue)],
    ) -> Result<SpanExporter, TelemetryError> {
        Self::start_with(
            &Endpoint::Base(endpoint.to_owned()),
            service_name,
            resource,
            ExporterConfig::default(),
        )
    }

    /// [`SpanExporter::start`] with an explicit [`Endpoint`] kind and tuning.
    pub fn start_with(
        endpoint: &Endpoint,
        service_name: &str,
        resource: &[(&str, AttrValue)],
        config: ExporterConfig,
    ) -> Result<SpanExporter, TelemetryError> {
        let traces_url = endpoint.traces_url();
        let uri = parse_http_uri(&traces_url)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
        let config = ExporterConfig {
            queue_capacity: config.queue_capacity.max(1),
            max_batch: config.max_batch.max(1),
            ..config
        };

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.request_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);

        let mut attributes = vec![(
            "service.name".to_owned(),
            AttrValue::String(service_name.to_owned()),
        )];
        attributes.extend(
            resource
                .iter()
                .filter(|(k, _)| *k != "service.name")
                .map(|(k, v)| ((*k).to_owned(), v.clone())),
        );

        let (spans, spans_rx) = mpsc::channel(config.queue_capacity);
        let (control, control_rx) = mpsc::channel(1);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            client,
            uri,
            resource: attributes,
            config,
            counters: counters.clone(),
        };
        let task = runtime.spawn(worker.run(spans_rx, control_rx));
        Ok(SpanExporter {
            spans,
            control,
            counters,
            task: std::sync::Mutex::new(Some(task)),
            traces_url,
        })
    }

    /// Queues a span for export. Never blocks or waits: when the queue is full (the collector
    /// is slow or down) or the exporter is shut down, the span is dropped and counted.
    pub fn export(&self, span: DecisionSpan) {
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        if self.spans.try_send(span).is_err() {
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans dropped: queue full, export failed after its retries, rejected by the collector,
    /// or left over at shutdown.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.counters.exported.load(Ordering::Relaxed)
    }

    /// The URL spans are posted to.
    pub fn traces_url(&self) -> &str {
        &self.traces_url
    }

    /// Stops accepting spans and sends those queued, giving up at `deadline` from now (spans
    /// not sent by then count as dropped). Idempotent; `Err` only when the background task
    /// failed to finish in time and was aborted.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), TelemetryError> {
        let until = Instant::now() + deadline;
        let (ack, acked) = oneshot::channel();
        let handle = match self.task.lock() {
            Ok(mut task) => task.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(handle) = handle else {
            return Ok(()); // shut down before (or by a concurrent call)
        };
        if self
            .control
            .try_send(Shutdown {
                deadline: until,
                ack,
            })
            .is_err()
        {
            // The task has ended already.
            let _ = handle.await;
            return Ok(());
        }
        let mut handle = handle;
        match tokio::time::timeout_at(until + SHUTDOWN_GRACE, acked).await {
            Ok(_) => {
                let _ = (&mut handle).await;
                Ok(())
            }
            Err(_) => {
                handle.abort();
                let _ = handle.await;
                let lost = self.counters.pending.swap(0, Ordering::Relaxed);
                self.counters.dropped.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(
                    spans = lost,
                    "OTLP exporter did not flush by its shutdown deadline; spans dropped"
                );
                Err(TelemetryError::ShutdownTimedOut { dropped: lost })
            }
        }
    }
}

fn parse_http_uri(url: &str) -> Result<Uri, TelemetryError> {
    let invalid = |reason: String| TelemetryError::InvalidEndpoint {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| invalid(e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(scheme) => {
            return Err(TelemetryError::UnsupportedScheme {
                url: url.to_owned(),
                scheme: scheme.to_owned(),
            });
        }
        None => return Err(invalid("no scheme (expected http://host:port)".to_owned())),
    }
    if uri.authority().is_none() {
        return Err(invalid("no host".to_owned()));
    }
    Ok(uri)
}

/// What became of one POST.
#[derive(Debug)]
enum Outcome {
    /// 2xx; the collector may have rejected some spans.
    Accepted {
        rejected: u64,
        message: String,
    },
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    Failed(String),
}

struct Worker {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    resource: Vec<(String, AttrValue)>,
    config: ExporterConfig,
    counters: Arc<Counters>,
}

impl Worker {
    async fn run(
        self,
        mut spans: mpsc::Receiver<DecisionSpan>,
        mut control: mpsc::Receiver<Shutdown>,
    ) {
        let mut batch: Vec<DecisionSpan> = Vec::new();
        // When the batch under way must go, full or not.
        let mut due = Instant::now();
        loop {
            tokio::select! {
                biased;
                shutdown = control.recv() => {
                    // `None`: the exporter was dropped without a shutdown.
                    let (deadline, ack) = match shutdown {
                        Some(s) => (s.deadline, Some(s.ack)),
                        None => (Instant::now() + self.config.request_timeout, None),
                    };
                    spans.close();
                    while let Some(span) = spans.recv().await {
                        batch.push(span);
                        if batch.len() >= self.config.max_batch {
                            self.send(std::mem::take(&mut batch), Some(deadline)).await;
                        }
                    }
                    if !batch.is_empty() {
                        self.send(batch, Some(deadline)).await;
                    }
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    return;
                }
                span = spans.recv() => match span {
                    Some(span) => {
                        if batch.is_empty() {
                            due = Instant::now() + self.config.batch_interval;
                        }
                        batch.push(span);
                        if batch.len() >= self.config.max_batch {
                            self.send(std::mem::take(&mut batch), None).await;
                        }
                    }
                    None => {
                        // Unreachable while `control`'s sender lives; handled like a drop.
                        if !batch.is_empty() {
                            let deadline = Instant::now() + self.config.request_timeout;
                            self.send(batch, Some(deadline)).await;
                        }
                        return;
                    }
                },
                () = tokio::time::sleep_until(due), if !batch.is_empty() => {
                    self.send(std::mem::take(&mut batch), None).await;
                }
            }
        }
    }

    /// Posts one batch, retrying as configured; every span ends up exported or dropped.
    async fn send(&self, batch: Vec<DecisionSpan>, deadline: Option<Instant>) {
        let n = batch.len() as u64;
        let body = match encode_export_request(&self.resource, &batch) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                tracing::warn!(spans = n, error = %e, "cannot encode OTLP spans; dropped");
                self.counters.resolve(0, n);
                return;
            }
        };
        drop(batch);
        let mut backoff = self.config.initial_backoff;
        let mut retries = 0u32;
        loop {
            let mut limit = self.config.request_timeout;
            if let Some(d) = deadline {
                limit = limit.min(d.saturating_duration_since(Instant::now()));
            }
            let outcome = if limit.is_zero() {
                Outcome::Failed("shutdown deadline passed".to_owned())
            } else {
                self.post(body.clone(), limit).await
            };
            match outcome {
                Outcome::Accepted { rejected, message } => {
                    let rejected = rejected.min(n);
                    if rejected > 0 {
                        tracing::warn!(
                            spans = rejected,
                            message = %message,
                            "OTLP collector rejected spans; dropped"
                        );
                    }
                    self.counters.resolve(n - rejected, rejected);
                    return;
                }
                Outcome::Retryable {
                    reason,
                    retry_after,
                } => {
                    let wait = retry_after
                        .map_or(backoff, |r| r.max(backoff))
                        .min(self.config.max_backoff);
                    let past_deadline = deadline.is_some_and(|d| Instant::now() + wait >= d);
                    if retries >= self.config.max_retries || past_deadline {
                        tracing::warn!(
                            spans = n,
                            url = %self.uri,
                            tries = retries + 1,
                            error = %reason,
                            "OTLP export failed; spans dropped"
                        );
                        self.counters.resolve(0, n);
                        return;
                    }
                    tracing::debug!(url = %self.uri, error = %reason, wait_ms = wait.as_millis() as u64, "OTLP export failed; retrying");
                    tokio::time::sleep(wait).await;
                    retries += 1;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
                Outcome::Failed(reason) => {
                    tracing::warn!(
                        spans = n,
                        url = %self.uri,
                        error = %reason,
                        "OTLP export failed; spans dropped"
                    );
                    self.counters.resolve(0, n);
                    return;
                }
            }
        }
    }

    async fn post(&self, body: Bytes, limit: Duration) -> Outcome {
        let request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Full::new(body));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let exchange = async {
            let response = match self.client.request(request).await {
                Ok(r) => r,
                Err(e) => {
                    return Outcome::Retryable {
                        reason: error_chain(&e),
                        retry_after: None,
                    };
                }
            };
            let status = response.status();
            let retry_after = retry_after(response.headers());
            // The body says what was rejected; a body that cannot be read is not a failure
            // of the export (the status said how it went).
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            classify(status, &body, retry_after)
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retryable {
                reason: format!("no answer within {} ms", limit.as_millis()),
                retry_after: None,
            },
        }
    }
}

/// The OTLP/HTTP answer: 2xx accepted (maybe partly), 429/502/503/504 retryable, the rest
/// final.
fn classify(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Outcome {
    if status.is_success() {
        let (rejected, message) = partial_success(body);
        return Outcome::Accepted { rejected, message };
    }
    let text = String::from_utf8_lossy(body);
    let snippet: String = text.chars().take(256).collect();
    let reason = format!("HTTP {status}: {snippet}");
    match status.as_u16() {
        429 | 502 | 503 | 504 => Outcome::Retryable {
            reason,
            retry_after,
        },
        _ => Outcome::Failed(reason),
    }
}

/// `partialSuccess.rejectedSpans` (an int64: a string, or a number from lenient collectors)
/// and `partialSuccess.errorMessage` of an `ExportTraceServiceResponse`.
fn partial_success(body: &[u8]) -> (u64, String) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (0, String::new());
    };
    let Some(p) = v.get("partialSuccess") else {
        return (0, String::new());
    };
    let rejected = match p.get("rejectedSpans") {
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    };
    let message = p
        .get("errorMessage")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    (rejected, message)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by collectors).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

// --- The OTLP JSON encoding of an ExportTraceServiceRequest. ---

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportTraceServiceRequest<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpans<'a> {
    scope: Scope,
    spans: Vec<Span<'a>>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Span<'a> {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    flags: u32,
    name: &'a str,
    kind: i32,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

#[derive(Serialize)]
struct Status {
    code: i32,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: AnyValue<'a>,
}

/// OTLP's `AnyValue`, externally tagged: `{"stringValue": ...}` and so on.
#[derive(Serialize)]
enum AnyValue<'a> {
    #[serde(rename = "stringValue")]
    String(&'a str),
    /// An int64, hence a decimal string.
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "boolValue")]
    Bool(bool),
}

fn key_value<'a>(key: &'a str, value: &'a AttrValue) -> KeyValue<'a> {
    let value = match value {
        AttrValue::String(s) => AnyValue::String(s),
        AttrValue::Int(i) => AnyValue::Int(i.to_string()),
        AttrValue::Bool(b) => AnyValue::Bool(*b),
    };
    KeyValue { key, value }
}

fn span_json(span: &DecisionSpan) -> Span<'_> {
    let remote = if span.parent_span_id.is_some() {
        SPAN_FLAGS_CONTEXT_IS_REMOTE
    } else {
        0
    };
    Span {
        trace_id: hex::encode(span.trace_id),
        span_id: hex::encode(span.span_id),
        parent_span_id: span.parent_span_id.map(hex::encode),
        flags: u32::from(span.trace_flags) | SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE | remote,
        name: &span.name,
        kind: SPAN_KIND_SERVER,
        start_time_unix_nano: span.start_unix_nanos.to_string(),
        end_time_unix_nano: span.end_unix_nanos.to_string(),
        attributes: span
            .attributes
            .iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        status: span.error.then_some(Status {
            code: STATUS_CODE_ERROR,
        }),
    }
}

/// The body of one export: `spans` under one resource (`resource`'s attributes) and the
/// `aegis-gateway` scope.
pub fn encode_export_request(
    resource: &[(String, AttrValue)],
    spans: &[DecisionSpan],
) -> Result<Vec<u8>, serde_json::Error> {
    let request = ExportTraceServiceRequest {
        resource_spans: [ResourceSpans {
            resource: Resource {
                attributes: resource.iter().map(|(k, v)| key_value(k, v)).collect(),
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: SCOPE_NAME,
                    version: SCOPE_VERSION,
                },
                spans: spans.iter().map(span_json).collect(),
            }],
        }],
    };
    serde_json::to_vec(&request)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use crate::telemetry::span::attr;
    use crate::telemetry::trace::{SpanId, TraceContext, parse_traceparent};
    use serde_json::{Value, json};
    use std::collections::VecDeque;
    use std::sync::Mutex;

    fn decision(ctx: &TraceContext, tool: &str, decision: &str) -> DecisionSpan {
        let mut s =
            DecisionSpan::execute_tool(ctx, SpanId::random(), tool, 1_700_000_000_000_000_000);
        s.end_unix_nanos = 1_700_000_000_000_250_000;
        s.set(attr::GEN_AI_AGENT_ID, "agent-7")
            .set(attr::AEGIS_TENANT, "acme")
            .set(attr::AEGIS_DECISION, decision)
            .set(attr::AEGIS_DECISION_REASON, "policy says so")
            .set(attr::AEGIS_POLICY_VERSION, 42_i64)
            .set(attr::AEGIS_GATEWAY, "gw-1")
            .set("aegis.cached", true);
        s
    }

    fn fast_config() -> ExporterConfig {
        ExporterConfig {
            queue_capacity: 64,
            max_batch: 512,
            batch_interval: Duration::from_millis(50),
            request_timeout: Duration::from_millis(500),
            max_retries: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        }
    }

    #[derive(Debug)]
    struct Received {
        path: String,
        content_type: Option<String>,
        body: Value,
    }

    #[derive(Clone)]
    struct Receiver {
        requests: mpsc::UnboundedSender<Received>,
        /// Answers to give, in order; then 200 `{}`.
        script: Arc<Mutex<VecDeque<(u16, String)>>>,
    }

    /// A tiny OTLP/HTTP receiver on a free loopback port; its base URL and what it received.
    async fn receiver(script: Vec<(u16, &str)>) -> (String, mpsc::UnboundedReceiver<Received>) {
        use axum::extract::State;
        use axum::http::{HeaderMap, Uri};
        async fn handle(
            State(r): State<Receiver>,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> (
            axum::http::StatusCode,
            [(&'static str, &'static str); 1],
            String,
        ) {
            let _ = r.requests.send(Received {
                path: uri.path().to_owned(),
                content_type: headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            let (status, answer) = r
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or((200, "{}".to_owned()));
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/json")],
                answer,
            )
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Receiver {
            requests: tx,
            script: Arc::new(Mutex::new(
                script.into_iter().map(|(s, b)| (s, b.to_owned())).collect(),
            )),
        };
        let app = axum::Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), rx)
    }

    fn attrs(v: &Value) -> Vec<(String, Value)> {
        v["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| (kv["key"].as_str().unwrap().to_owned(), kv["value"].clone()))
            .collect()
    }

    fn attr_of(v: &Value, key: &str) -> Value {
        attrs(v)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no attribute {key}"))
    }

    #[test]
    fn encoding_follows_the_otlp_json_mapping() {
        let ctx =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut with_parent = decision(&ctx, "fs.read", "allow");
        with_parent.span_id = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut root = decision(&TraceContext::new_root(), "shell.exec", "deny");
        root.error = true;
        let resource = vec![
            ("service.name".to_owned(), AttrValue::from("aegis-gateway")),
            ("service.instance.id".to_owned(), AttrValue::from("gw-1")),
        ];
        let body = encode_export_request(&resource, &[with_parent, root]).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();

        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"],
            json!([
                {"key": "service.name", "value": {"stringValue": "aegis-gateway"}},
                {"key": "service.instance.id", "value": {"stringValue": "gw-1"}},
            ])
        );
        let ss = &rs["scopeSpans"][0];
        assert_eq!(ss["scope"]["name"], "aegis-gateway");
        let spans = ss["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2);

        let s = &spans[0];
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["spanId"], "0102030405060708");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(s["name"], "execute_tool fs.read");
        assert_eq!(s["kind"], json!(2));
        assert_eq!(s["flags"], json!(0x301)); // sampled, parent known to be remote
        assert_eq!(s["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(s["endTimeUnixNano"], "1700000000000250000");
        assert_eq!(
            attr_of(s, "gen_ai.operation.name"),
            json!({"stringValue": "execute_tool"})
        );
        assert_eq!(
            attr_of(s, "gen_ai.tool.name"),
            json!({"stringValue": "fs.read"})
        );
        assert_eq!(
            attr_of(s, "aegis.policy_version"),
            json!({"intValue": "42"})
        );
        assert_eq!(attr_of(s, "aegis.cached"), json!({"boolValue": true}));
        assert!(s.get("status").is_none());

        let r = &spans[1];
        assert!(r.get("parentSpanId").is_none());
        assert_eq!(r["flags"], json!(0x101)); // a local root
        assert_eq!(r["status"], json!({"code": 2}));
        assert_eq!(r["traceId"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn endpoints_follow_the_otel_variables() {
        let base = |s: &str| Endpoint::Base(s.to_owned()).traces_url();
        assert_eq!(
            base("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            base("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            base("http://collector:4318/otlp"),
            "http://collector:4318/otlp/v1/traces"
        );
        assert_eq!(
            Endpoint::Traces("http://c:4318/custom/traces".to_owned()).traces_url(),
            "http://c:4318/custom/traces"
        );
        assert!(parse_http_uri("http://127.0.0.1:4318/v1/traces").is_ok());
        assert!(matches!(
            parse_http_uri("https://collector:4318/v1/traces"),
            Err(TelemetryError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            parse_http_uri("collector:4318"),
            Err(TelemetryError::UnsupportedScheme { .. } | TelemetryError::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            parse_http_uri("not a url"),
            Err(TelemetryError::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            parse_http_uri("/v1/traces"),
            Err(TelemetryError::InvalidEndpoint { .. })
        ));
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let r = SpanExporter::start("http://127.0.0.1:4318", "aegis-gateway", &[]);
        assert!(matches!(r, Err(TelemetryError::NoRuntime)));
    }

    #[test]
    fn collector_answers_are_classified() {
        assert!(matches!(
            classify(StatusCode::OK, b"{}", None),
            Outcome::Accepted { rejected: 0, .. }
        ));
        assert!(matches!(
            classify(StatusCode::OK, b"", None),
            Outcome::Accepted { rejected: 0, .. }
        ));
        assert!(matches!(
            classify(
                StatusCode::OK,
                br#"{"partialSuccess":{"rejectedSpans":"2","errorMessage":"bad"}}"#,
                None
            ),
            Outcome::Accepted { rejected: 2, .. }
        ));
        assert!(matches!(
            classify(
                StatusCode::OK,
                br#"{"partialSuccess":{"rejectedSpans":1}}"#,
                None
            ),
            Outcome::Accepted { rejected: 1, .. }
        ));
        for s in [429, 502, 503, 504] {
            assert!(matches!(
                classify(StatusCode::from_u16(s).unwrap(), b"", None),
                Outcome::Retryable { .. }
            ));
        }
        for s in [400, 401, 404, 413, 500] {
            assert!(matches!(
                classify(StatusCode::from_u16(s).unwrap(), b"", None),
                Outcome::Failed(_)
            ));
        }
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn exports_spans_to_an_otlp_http_receiver() {
        let (base, mut rx) = receiver(vec![]).await;
        let exporter = SpanExporter::start(
            &base,
            "aegis-gateway",
            &[("service.instance.id", AttrValue::from("gw-test"))],
        )
        .unwrap();
        assert_eq!(exporter.traces_url(), format!("{base}/v1/traces"));

        let incoming =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let spans = vec![
            decision(&incoming, "github.create_issue", "allow"),
            decision(&incoming, "fs.write", "deny"),
            decision(&TraceContext::new_root(), "shell.exec", "approval_needed"),
        ];
        for s in &spans {
            exporter.export(s.clone());
        }
        exporter.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!((exporter.exported(), exporter.dropped()), (3, 0));

        let got = rx.recv().await.unwrap();
        assert!(rx.try_recv().is_err(), "one batch expected");
        assert_eq!(got.path, "/v1/traces");
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        let rs = &got.body["resourceSpans"];
        assert_eq!(rs.as_array().unwrap().len(), 1);
        let resource = &rs[0]["resource"];
        assert_eq!(
            attr_of(resource, "service.name"),
            json!({"stringValue": "aegis-gateway"})
        );
        assert_eq!(
            attr_of(resource, "service.instance.id"),
            json!({"stringValue": "gw-test"})
        );
        let got_spans = rs[0]["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(got_spans.len(), 3);
        for (sent, got) in spans.iter().zip(got_spans) {
            assert_eq!(got["traceId"], hex::encode(sent.trace_id));
            assert_eq!(got["spanId"], hex::encode(sent.span_id));
            assert_eq!(got["name"], sent.name);
            assert_eq!(got["kind"], json!(SPAN_KIND_SERVER));
            assert_eq!(got["startTimeUnixNano"], sent.start_unix_nanos.to_string());
            assert_eq!(got["endTimeUnixNano"], sent.end_unix_nanos.to_string());
            assert_eq!(
                attr_of(got, attr::GEN_AI_OPERATION_NAME),
                json!({"stringValue": "execute_tool"})
            );
            assert_eq!(
                attr_of(got, attr::GEN_AI_AGENT_ID),
                json!({"stringValue": "agent-7"})
            );
            assert_eq!(
                attr_of(got, attr::AEGIS_TENANT),
                json!({"stringValue": "acme"})
            );
            assert_eq!(
                attr_of(got, attr::AEGIS_POLICY_VERSION),
                json!({"intValue": "42"})
            );
            assert_eq!(attrs(got).len(), sent.attributes.len());
        }
        // The caller's span is the parent of the first two; the third is a root.
        assert_eq!(got_spans[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(got_spans[0]["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(got_spans[1]["parentSpanId"], "00f067aa0ba902b7");
        assert!(got_spans[2].get("parentSpanId").is_none());
        assert_eq!(
            attr_of(&got_spans[1], attr::AEGIS_DECISION),
            json!({"stringValue": "deny"})
        );
        assert_eq!(
            attr_of(&got_spans[2], attr::GEN_AI_TOOL_NAME),
            json!({"stringValue": "shell.exec"})
        );

        // After shutdown, spans are dropped, not queued.
        exporter.export(spans[0].clone());
        assert_eq!(exporter.dropped(), 1);
        exporter.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_partial_batch_goes_after_the_batch_interval() {
        let (base, mut rx) = receiver(vec![]).await;
        let exporter = SpanExporter::start_with(
            &Endpoint::Traces(format!("{base}/v1/traces")),
            "aegis-gateway",
            &[],
            fast_config(),
        )
        .unwrap();
        exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the batch timer sends without a shutdown")
            .unwrap();
        assert_eq!(
            got.body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        exporter.shutdown(Duration::from_secs(1)).await.unwrap();
        assert_eq!(exporter.exported(), 1);
    }

    #[tokio::test]
    async fn full_batches_are_split_at_max_batch() {
        let (base, mut rx) = receiver(vec![]).await;
        let config = ExporterConfig {
            max_batch: 2,
            batch_interval: Duration::from_secs(60),
            ..fast_config()
        };
        let exporter =
            SpanExporter::start_with(&Endpoint::Base(base), "aegis-gateway", &[], config).unwrap();
        for _ in 0..5 {
            exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        }
        exporter.shutdown(Duration::from_secs(5)).await.unwrap();
        let mut sizes = Vec::new();
        while let Ok(r) = rx.try_recv() {
            sizes.push(
                r.body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .unwrap()
                    .len(),
            );
        }
        assert_eq!(sizes, vec![2, 2, 1]);
        assert_eq!(exporter.exported(), 5);
    }

    #[tokio::test]
    async fn retryable_failures_are_retried() {
        let (base, mut rx) = receiver(vec![(503, "busy"), (429, "slow down")]).await;
        let exporter =
            SpanExporter::start_with(&Endpoint::Base(base), "aegis-gateway", &[], fast_config())
                .unwrap();
        for _ in 0..3 {
            exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        }
        exporter.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!((exporter.exported(), exporter.dropped()), (3, 0));
        let mut posts = 0;
        while rx.try_recv().is_ok() {
            posts += 1;
        }
        assert_eq!(posts, 3);
    }

    #[tokio::test]
    async fn final_failures_and_rejections_count_as_dropped() {
        let (base, mut rx) = receiver(vec![
            (400, r#"{"code":3,"message":"bad request"}"#),
            (
                200,
                r#"{"partialSuccess":{"rejectedSpans":"1","errorMessage":"too old"}}"#,
            ),
        ])
        .await;
        let exporter =
            SpanExporter::start_with(&Endpoint::Base(base), "aegis-gateway", &[], fast_config())
                .unwrap();
        // First batch: 400, not retried.
        exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        rx.recv().await.unwrap();
        // Second batch: one of two rejected.
        tokio::time::sleep(Duration::from_millis(100)).await;
        exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        exporter.shutdown(Duration::from_secs(5)).await.unwrap();
        assert_eq!((exporter.exported(), exporter.dropped()), (1, 3));
        rx.recv().await.unwrap();
        assert!(rx.try_recv().is_err(), "a 400 is not retried");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_never_blocks_export_and_counts_drops() {
        // A port nothing listens on: connections are refused.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = ExporterConfig {
            queue_capacity: 8,
            ..fast_config()
        };
        let exporter = SpanExporter::start_with(
            &Endpoint::Base(format!("http://127.0.0.1:{port}")),
            "aegis-gateway",
            &[],
            config,
        )
        .unwrap();
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "export must not wait"
        );
        // At most the queue's worth is held; the rest is dropped at once.
        assert!(
            exporter.dropped() >= 1000 - 8,
            "dropped {}",
            exporter.dropped()
        );
        let started = std::time::Instant::now();
        exporter.shutdown(Duration::from_secs(3)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!((exporter.exported(), exporter.dropped()), (0, 1000));
    }

    #[tokio::test]
    async fn a_collector_that_never_answers_does_not_block_export_or_shutdown() {
        // Accepts connections, reads, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let config = ExporterConfig {
            queue_capacity: 4,
            request_timeout: Duration::from_secs(30),
            ..fast_config()
        };
        let exporter = SpanExporter::start_with(
            &Endpoint::Base(format!("http://{addr}")),
            "aegis-gateway",
            &[],
            config,
        )
        .unwrap();
        exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        // Let the worker take that span and hang in its POST.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        for _ in 0..100 {
            exporter.export(decision(&TraceContext::new_root(), "a", "allow"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "export must not wait"
        );
        // One span in flight, four queued, the rest dropped at once.
        assert_eq!(exporter.dropped(), 96);
        // Shutdown gives up at its deadline, not at the 30 s request timeout: the hung POST
        // is abandoned and what it and the queue held is counted as dropped.
        let started = std::time::Instant::now();
        let result = exporter.shutdown(Duration::from_millis(500)).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(result, Err(TelemetryError::ShutdownTimedOut { dropped: 5 })),
            "{result:?}"
        );
        assert_eq!((exporter.exported(), exporter.dropped()), (0, 101));
    }
}
