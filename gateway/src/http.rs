//! The HTTP API (axum on hyper, HTTP/1.1):
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/decide` | a decision (`schemas/decide-response.schema.json`); 200, or 400/401/503 with a deny |
//! | `GET /healthz` | 200 while the process serves HTTP |
//! | `GET /readyz` | 200 when every configured tenant has a verified bundle, else 503 and which lack one |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/status` | versions, digests, stages, rollout candidate, kill switch, freeze, refused bundles, shipper counters (JSON) |
//! | `POST /v1/noop` | only with `--noop-endpoint`: a constant answer through the same stack (benchmark baseline) |
//!
//! The handler reads the body into memory (bounded), runs [`Decider::decide`] on the
//! worker thread (evaluation is CPU-bound and sub-millisecond; the evaluator keeps one VM per
//! thread), and answers. Nothing on this path awaits NATS or the disk, except a call under a
//! rule with a `global` rate limit or budget (its KV round trip, bounded) and a retry with an
//! `approval_id` that still needs approval, which reads (and may consume) the grant on
//! `AEGIS_APPROVALS`, bounded by a timeout.

use crate::decide::{CallMeta, DecideResponse, Decider, Outcome, TraceIds};
use crate::metrics::Snapshot;
use crate::tenants::Registry;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Called after every decision (span export, logging). Must not block.
pub type DecisionHook = Arc<dyn Fn(&Outcome) + Send + Sync>;

/// Shared state of the HTTP handlers.
pub struct App {
    pub decider: Decider,
    pub registry: Arc<Registry>,
    pub started_at: String,
    pub site: Option<String>,
    pub on_decision: Option<DecisionHook>,
    pub noop: bool,
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("decider", &self.decider)
            .finish_non_exhaustive()
    }
}

/// The router.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.max_body_bytes;
    let mut router = Router::new()
        .route("/v1/decide", post(decide))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status));
    if app.noop {
        router = router.route("/v1/noop", post(noop));
    }
    router.layer(DefaultBodyLimit::max(limit)).with_state(app)
}

async fn decide(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let received = Instant::now();
    let received_at = SystemTime::now();
    let trace =
        TraceIds::from_traceparent(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    let meta = CallMeta {
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        trace: &trace,
        received,
        received_at,
    };
    let outcome = match &body {
        Ok(bytes) => app.decider.decide(meta, Ok(bytes)).await,
        Err(rejection) => app.decider.decide(meta, Err(rejection.body_text())).await,
    };
    if let Some(hook) = &app.on_decision {
        hook(&outcome);
    }
    answer(&outcome)
}

fn answer(outcome: &Outcome) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = (status, axum::Json(&outcome.response)).into_response();
    if let Ok(v) = HeaderValue::from_str(&outcome.trace.traceparent()) {
        response.headers_mut().insert("traceparent", v);
    }
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    waiting_for: Vec<String>,
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let waiting_for: Vec<String> = app
        .registry
        .slots()
        .filter(|s| s.active().is_none())
        .map(|s| s.tenant.to_string())
        .collect();
    let ready = app.registry.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Readiness { ready, waiting_for })).into_response()
}

fn snapshot(app: &App) -> Snapshot {
    Snapshot {
        bundle_versions: app
            .registry
            .slots()
            .map(|s| (s.tenant.to_string(), s.active().map(|a| a.version)))
            .collect(),
        sink: app.decider.sink.stats(),
        ready: app.registry.ready(),
        rollout: app
            .registry
            .slots()
            .map(|s| {
                let controls = s.controls();
                crate::metrics::RolloutGauges {
                    tenant: s.tenant.to_string(),
                    candidate_version: s.candidate().map(|c| c.bundle.version),
                    blocked_agents: controls.blocked_agents.len(),
                    blocked_tools: controls.blocked_tools.len(),
                    frozen: controls.data_plane_frozen.is_some(),
                    controls_epoch: controls.epoch,
                }
            })
            .collect(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut text = app.decider.metrics.render(&snapshot(&app));
    if let Some(approvals) = &app.decider.approvals {
        approvals.stats.render(&mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(Serialize)]
struct TenantStatus {
    tenant: String,
    version: Option<u64>,
    digest: Option<String>,
    stage: Option<String>,
    applied_at: Option<String>,
    source: Option<&'static str>,
    created_at: Option<String>,
    expires_at: Option<String>,
    source_change: Option<String>,
    token_issuers: usize,
    rejected: Vec<crate::tenants::Rejection>,
    /// The stable version (what `version`/`digest` above name).
    stable: Option<BundleStatus>,
    /// The rollout candidate, if any.
    candidate: Option<BundleStatus>,
    blocked_agents: Vec<aegis_core::events::BlockEntry>,
    blocked_tools: Vec<aegis_core::events::BlockEntry>,
    data_plane_frozen: Option<aegis_core::events::DataPlaneFreeze>,
    /// Epoch of the controls state in force (0: none).
    controls_epoch: u64,
    /// Why every call is denied (`controls_unavailable`), if the stored controls state could
    /// not be verified and none arrived yet.
    controls_unavailable: Option<String>,
    /// The newest global bundle the data-plane freeze kept out.
    held_back: Option<crate::tenants::HeldBack>,
}

/// One bundle of a rollout in `/v1/status`.
#[derive(Serialize)]
struct BundleStatus {
    version: u64,
    digest: String,
    stage: String,
    /// For a partial candidate: the agents named, and the percentage.
    #[serde(skip_serializing_if = "Option::is_none")]
    agents: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    percent: Option<u8>,
}

#[derive(Serialize)]
struct Status {
    gateway: String,
    site: Option<String>,
    ready: bool,
    started_at: String,
    build: &'static str,
    tenants: Vec<TenantStatus>,
    decision_log: crate::metrics::SinkStats,
}

async fn status(State(app): State<Arc<App>>) -> Response {
    let tenants = app
        .registry
        .slots()
        .map(|slot| {
            let deployment = slot.deployment();
            let active = deployment.stable.clone();
            let controls = slot.controls();
            TenantStatus {
                tenant: slot.tenant.to_string(),
                version: active.as_ref().map(|a| a.version),
                digest: active.as_ref().map(|a| a.digest.clone()),
                stage: active.as_ref().map(|a| a.stage.to_string()),
                applied_at: active.as_ref().map(|a| a.applied_at.clone()),
                source: active.as_ref().map(|a| a.source),
                created_at: active.as_ref().map(|a| a.manifest.created_at.clone()),
                expires_at: active.as_ref().and_then(|a| a.manifest.expires_at.clone()),
                source_change: active
                    .as_ref()
                    .and_then(|a| a.manifest.source_change.clone()),
                token_issuers: active.as_ref().map_or(0, |a| a.issuers.len()),
                rejected: slot.rejections(),
                stable: active.as_ref().map(|a| BundleStatus {
                    version: a.version,
                    digest: a.digest.clone(),
                    stage: aegis_core::events::RolloutStage::Global.to_string(),
                    agents: None,
                    percent: None,
                }),
                candidate: deployment.candidate.as_ref().map(|c| BundleStatus {
                    version: c.bundle.version,
                    digest: c.bundle.digest.clone(),
                    stage: c.stage.to_string(),
                    agents: (c.stage == aegis_core::events::RolloutStage::Partial)
                        .then(|| c.agents.iter().map(ToString::to_string).collect()),
                    percent: c.percent,
                }),
                blocked_agents: controls.blocked_agents.values().cloned().collect(),
                blocked_tools: controls.blocked_tools.values().cloned().collect(),
                data_plane_frozen: controls.data_plane_frozen.clone(),
                controls_epoch: controls.epoch,
                controls_unavailable: controls.unavailable.clone(),
                held_back: slot.held_back(),
            }
        })
        .collect();
    axum::Json(Status {
        gateway: app.decider.gateway_id.clone(),
        site: app.site.clone(),
        ready: app.registry.ready(),
        started_at: app.started_at.clone(),
        build: env!("CARGO_PKG_VERSION"),
        tenants,
        decision_log: app.decider.sink.stats(),
    })
    .into_response()
}

/// The benchmark baseline: same router, same JSON encoding, no work.
async fn noop(_body: Bytes) -> Response {
    static ANSWER: std::sync::OnceLock<DecideResponse> = std::sync::OnceLock::new();
    let body = ANSWER.get_or_init(|| DecideResponse {
        decision_id: "dec-00000000000000000000000000000000".to_owned(),
        decision: aegis_core::decision::DecisionKind::Allow,
        reasons: vec![aegis_core::decision::Reason {
            code: "allowed".to_owned(),
            message: "no-op".to_owned(),
            policy: None,
            rule: None,
        }],
        policy_version: None,
        bundle_digest: None,
        params: None,
        approval: None,
    });
    axum::Json(body).into_response()
}
