//! The running gateway. Start order matters:
//!
//! 1. **Local state first.** Each tenant's last known-good bundle is verified again and served
//!    at once (`bundles::restore_all`) — before NATS is even dialled, so a gateway restarted
//!    during a NATS outage decides from the moment it listens.
//! 2. **NATS** is connected with retry-on-initial-connect: start never waits for it.
//! 3. **The shipper** recovers its disk spool and ships decision events (and `bundle_rejected`
//!    records) whenever NATS is reachable.
//! 4. **Watchers** (one per tenant) and **the heartbeat** run in the background.
//! 5. **HTTP** listens; the bound address is written to `<data>/gateway.addr`.
//!
//! SIGTERM or Ctrl-C: stop accepting, finish in-flight requests, publish queued approval
//! requests (at most 3 s), then flush the shipper (what
//! cannot reach NATS within the deadline stays in the spool for the next start) and the span
//! exporter.

use crate::bundles::{self, BundleContext, BundleLimits, LocalStore, RejectionSink, Restored};
use crate::config::{GatewayConfig, OnSpoolFull};
use crate::decide::{Decider, EventSink, Outcome};
use crate::heartbeat::{self, HeartbeatConfig};
use crate::http::{App, DecisionHook, router};
use crate::metrics::{Metrics, SinkStats};
use crate::shipper::{self, Outgoing, ShipperConfig, ShipperHandle, SpoolFullPolicy};
use crate::telemetry::{self, AttrValue, DecisionSpan, LogFormat, SpanExporter, attr};
use crate::tenants::Registry;
use aegis_core::decision_log::BundleRejected;
use aegis_core::keys::TrustStore;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::{Notify, mpsc};

/// How long shutdown waits for the shipper to publish what it holds.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the trust store {path}: {reason}")]
    Trust { path: String, reason: String },
    #[error("local bundle store: {0}")]
    Store(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("decision shipper: {0}")]
    Shipper(String),
    #[error("approvals: {0}")]
    Approvals(#[from] crate::approvals::ApprovalsError),
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
}

/// Structured logs on stderr: JSON lines (default) or text; `RUST_LOG` overrides the filter.
pub fn init_logging(json: bool) -> Result<(), RuntimeError> {
    let format = if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    telemetry::init_logging(format, "info").map_err(|e| RuntimeError::Telemetry(e.to_string()))
}

/// The shipper as the decision path's sink.
#[derive(Debug, Clone)]
struct ShipperSink(ShipperHandle);

impl EventSink for ShipperSink {
    fn accepting(&self) -> bool {
        self.0.accepting()
    }
    fn submit(&self, subject: String, id: String, payload: Bytes) -> bool {
        self.0
            .submit(Outgoing {
                subject,
                id,
                payload,
            })
            .is_ok()
    }
    fn count_unrecorded(&self) {
        self.0.count_unrecorded();
    }
    fn stats(&self) -> SinkStats {
        let s = self.0.stats();
        SinkStats {
            spool_events: s.spool_events,
            spool_bytes: s.spool_bytes,
            shipped: s.shipped,
            failed: s.failed,
            spooled: s.spooled,
            unrecorded: s.unrecorded,
            in_flight: s.in_flight,
            accepting: self.0.accepting(),
        }
    }
}

/// Runs until SIGTERM / Ctrl-C.
pub async fn run(config: GatewayConfig) -> Result<(), RuntimeError> {
    let started_at = now_rfc3339();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| RuntimeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let trust = TrustStore::load(&config.trust).map_err(|e| RuntimeError::Trust {
        path: config.trust.display().to_string(),
        reason: e.to_string(),
    })?;
    let registry = Arc::new(Registry::new(config.tenants.clone()));
    let metrics = Arc::new(Metrics::new());
    let store =
        LocalStore::open(&config.data_dir).map_err(|e| RuntimeError::Store(e.to_string()))?;
    let beat = Arc::new(Notify::new());
    let (rejected_tx, rejected_rx) = mpsc::unbounded_channel::<BundleRejected>();
    let trust = Arc::new(trust);
    let ctx = BundleContext {
        gateway: config.gateway_id.clone(),
        site: config.site.clone(),
        trust: trust.clone(),
        store: Arc::new(store),
        metrics: metrics.clone(),
        limits: BundleLimits {
            eval: config.eval_limits,
            ..BundleLimits::default()
        },
        on_rejected: RejectionSink::channel(rejected_tx),
        beat: beat.clone(),
    };

    // 1. Serve from local state at once.
    for (tenant, restored) in bundles::restore_all(&registry, &ctx) {
        match restored {
            Restored::Served { version, digest } => {
                tracing::info!(%tenant, version, %digest, "serving the last known-good bundle from local state");
            }
            Restored::Nothing => {
                tracing::info!(%tenant, "no local bundle: denying this tenant's calls until NATS delivers one");
            }
            Restored::Refused(refusal) => {
                tracing::error!(%tenant, reason_code = refusal.reason_code, reason = %refusal.reason, "the local bundle was refused: denying this tenant's calls until NATS delivers one");
            }
        }
    }

    // 2. NATS, without waiting for it.
    let client = aegis_nats::connect(&config.nats)
        .await
        .map_err(|e| RuntimeError::Nats(e.to_string()))?;
    let js = aegis_nats::jetstream(client.clone());

    // 3. The shipper.
    let shipper = shipper::start(
        client.clone(),
        ShipperConfig {
            max_spool_bytes: config.max_spool_bytes,
            max_in_flight: config.max_in_flight,
            on_spool_full: match config.on_spool_full {
                OnSpoolFull::Deny => SpoolFullPolicy::Deny,
                OnSpoolFull::Serve => SpoolFullPolicy::Serve,
            },
            ..ShipperConfig::new(config.data_dir.join("spool"))
        },
    )
    .await
    .map_err(|e| RuntimeError::Shipper(e.to_string()))?;
    let forwarder = tokio::spawn(forward_rejections(
        rejected_rx,
        shipper.clone(),
        config.gateway_id.clone(),
    ));

    // 4. Watchers and heartbeat.
    let watchers = bundles::watcher::spawn_all(
        &js,
        &registry,
        &ctx,
        &bundles::watcher::WatcherOptions::default(),
    );
    let gauge_shipper = shipper.clone();
    let heartbeat = heartbeat::spawn(
        js.clone(),
        registry.clone(),
        metrics.clone(),
        HeartbeatConfig {
            interval: config.heartbeat_interval,
            started_at: started_at.clone(),
            spool_events: Some(Arc::new(move || gauge_shipper.stats().spool_events)),
            ..HeartbeatConfig::new(config.gateway_id.clone(), config.site.clone())
        },
        beat,
    );

    let exporter = match &config.otlp_endpoint {
        Some(endpoint) => {
            let resource: Vec<(&str, AttrValue)> = vec![
                ("service.instance.id", config.gateway_id.as_str().into()),
                ("aegis.gateway", config.gateway_id.as_str().into()),
                ("aegis.site", config.site.clone().unwrap_or_default().into()),
            ];
            let exporter = SpanExporter::start(endpoint, "aegis-gateway", &resource)
                .map_err(|e| RuntimeError::Telemetry(e.to_string()))?;
            tracing::info!(
                url = exporter.traces_url(),
                "exporting decision spans over OTLP/HTTP"
            );
            Some(Arc::new(exporter))
        }
        None => None,
    };

    // Runtime approvals: requests and webhook posts in the background; grants are checked
    // against the same trust store as bundle announcements (the control plane's key).
    let approvals = Arc::new(crate::approvals::Approvals::start(
        config.gateway_id.clone(),
        js.clone(),
        trust.clone(),
        &config.approvals,
    )?);
    if let Some(url) = &config.approvals.webhook {
        tracing::info!(url, "posting approval requests to the webhook");
    }

    // 5. HTTP.
    let sink: Arc<dyn EventSink> = Arc::new(ShipperSink(shipper.clone()));
    let decider = Decider {
        gateway_id: config.gateway_id.clone(),
        site: config.site.clone(),
        audience: config.audience.clone(),
        token_leeway_seconds: config.token_leeway_seconds,
        approval_ttl: config.approval_ttl,
        on_spool_full: config.on_spool_full,
        registry: registry.clone(),
        metrics: metrics.clone(),
        sink,
        limits: crate::limits::Limiter::with_global(crate::limits::GlobalCounters::new(
            client.clone(),
            config.global_limit_timeout,
        )),
        approvals: Some(approvals.clone()),
    };
    let app = Arc::new(App {
        decider,
        registry: registry.clone(),
        started_at,
        site: config.site.clone(),
        on_decision: Some(decision_hook(exporter.clone(), config.gateway_id.clone())),
        noop: config.noop_endpoint,
        max_body_bytes: config.max_body_bytes,
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RuntimeError::Listen {
            addr: config.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(RuntimeError::Serve)?;
    let addr_file = config.data_dir.join("gateway.addr");
    if let Err(e) = std::fs::write(&addr_file, format!("{bound}\n")) {
        tracing::warn!(path = %addr_file.display(), error = %e, "cannot write the bound address");
    }
    tracing::info!(
        gateway = %config.gateway_id,
        addr = %bound,
        tenants = ?config.tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        ready = registry.ready(),
        "listening"
    );

    let served = axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await;

    tracing::info!("shutting down: flushing approval requests and decision events");
    approvals.shutdown(Duration::from_secs(3)).await;
    for w in &watchers {
        w.abort();
    }
    heartbeat.abort();
    // The watchers and `ctx` hold the only senders of refusal records: once they are gone the
    // forwarder hands over what is queued and ends, before the shipper flushes.
    drop(ctx);
    for w in watchers {
        let _ = w.await;
    }
    if tokio::time::timeout(Duration::from_secs(1), forwarder)
        .await
        .is_err()
    {
        tracing::warn!("bundle_rejected records still queued at shutdown were not recorded");
    }
    shipper.shutdown(SHUTDOWN_FLUSH).await;
    if let Some(exporter) = exporter
        && let Err(e) = exporter.shutdown(Duration::from_secs(3)).await
    {
        tracing::warn!(error = %e, "span export did not finish");
    }
    let stats = shipper.stats();
    tracing::info!(
        shipped = stats.shipped,
        spooled_for_next_start = stats.spool_events,
        "stopped"
    );
    served.map_err(RuntimeError::Serve)
}

/// Ships `bundle_rejected` records beside the decision events.
async fn forward_rejections(
    mut rx: mpsc::UnboundedReceiver<BundleRejected>,
    shipper: ShipperHandle,
    gateway: String,
) {
    while let Some(record) = rx.recv().await {
        let subject = match aegis_nats::topology::decisions_subject(&record.tenant, &gateway) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "bundle_rejected record has no subject");
                continue;
            }
        };
        let payload = match aegis_core::canonical::to_canonical_vec_of(&record) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a bundle_rejected record");
                continue;
            }
        };
        if let Err(e) = shipper.submit(Outgoing {
            subject,
            id: record.id.clone(),
            payload: Bytes::from(payload),
        }) {
            tracing::error!(error = %e, id = %record.id, "bundle_rejected record could not be recorded");
        }
    }
}

/// After every decision: the OTLP span (when configured) and a debug log line.
fn decision_hook(exporter: Option<Arc<SpanExporter>>, gateway: String) -> DecisionHook {
    Arc::new(move |outcome: &Outcome| {
        let response = &outcome.response;
        let reason = response
            .reasons
            .first()
            .map(|r| r.code.as_str())
            .unwrap_or_default();
        let event = outcome.event.as_ref();
        tracing::debug!(
            decision_id = %response.decision_id,
            decision = %response.decision,
            reason,
            status = outcome.status,
            tenant = event.map(|e| e.tenant.as_str()),
            agent = event.and_then(|e| e.agent_id.as_ref()).map(|a| a.as_str()),
            tool = event.and_then(|e| e.tool_id.as_ref()).map(|t| t.as_str()),
            latency_us = u64::try_from(outcome.elapsed.as_micros()).unwrap_or(u64::MAX),
            "decision"
        );
        let Some(exporter) = &exporter else {
            return;
        };
        let start = outcome
            .started_at
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let tool = event
            .and_then(|e| e.tool_id.as_ref())
            .map_or("unknown", |t| t.as_str());
        let mut span =
            DecisionSpan::execute_tool(&outcome.trace.context, outcome.trace.span, tool, start);
        span.end_unix_nanos =
            start.saturating_add(u64::try_from(outcome.elapsed.as_nanos()).unwrap_or(0));
        span.set(attr::AEGIS_GATEWAY, gateway.as_str())
            .set(attr::AEGIS_DECISION, response.decision.as_str())
            .set(attr::AEGIS_DECISION_REASON, reason);
        if let Some(e) = event {
            span.set(attr::AEGIS_TENANT, e.tenant.as_str());
            if let Some(agent) = &e.agent_id {
                span.set(attr::GEN_AI_AGENT_ID, agent.as_str());
            }
        }
        if let Some(v) = response.policy_version {
            span.set(
                attr::AEGIS_POLICY_VERSION,
                i64::try_from(v).unwrap_or(i64::MAX),
            );
        }
        if let Some(a) = &response.approval {
            span.set(attr::AEGIS_APPROVAL_ID, a.id.as_str());
        }
        span.error = outcome.status >= 500 || reason == aegis_core::decision::EVALUATION_ERROR;
        exporter.export(span);
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("signal received: no new connections; finishing in-flight requests");
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    aegis_core::events::envelope::format_time(now).unwrap_or_else(|_| now.to_string())
}
