//! What a gateway is told at start. The binary fills it from flags and environment variables
//! (`aegis-gateway run --help`); everything has a default except the tenants, the trust store
//! and the data directory.

use aegis_core::eval::EvalLimits;
use aegis_core::ids::TenantId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What to do when the disk spool of decision events is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnSpoolFull {
    /// Refuse new calls (`decision_log_full`, HTTP 503) until events can be recorded again.
    #[default]
    Deny,
    /// Keep deciding and count every decision that could not be recorded
    /// (`aegis_events_unrecorded_total`).
    Serve,
}

/// The gateway's whole configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This gateway's id: the last token of its decision subject and its KV key. Must match
    /// its NATS user's permissions (`aegis.decisions.*.<id>`).
    pub gateway_id: String,
    /// A free-form site label (e.g. `eu-west-edge-3`) reported in heartbeats and events.
    pub site: Option<String>,
    /// Tenants served. `/readyz` is ready only when each has a verified bundle.
    pub tenants: Vec<TenantId>,
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Local state: last known-good bundles, high-water marks, the decision spool.
    pub data_dir: PathBuf,
    /// File or directory of control-plane public keys bundles must be signed with.
    pub trust: PathBuf,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Clock skew allowed on token `exp` / `nbf`, seconds.
    pub token_leeway_seconds: i64,
    /// Bounds on one evaluation; exceeding one is a deny (`evaluation_error`).
    pub eval_limits: EvalLimits,
    /// How long an `approval_needed` answer's approval stays open.
    pub approval_ttl: Duration,
    /// Runtime approvals: the webhook, queues and timeouts.
    pub approvals: crate::approvals::ApprovalsConfig,
    pub nats: aegis_nats::ConnectOptions,
    pub heartbeat_interval: Duration,
    pub max_spool_bytes: u64,
    pub max_in_flight: usize,
    pub on_spool_full: OnSpoolFull,
    /// OTLP/HTTP endpoint for decision spans (e.g. `http://127.0.0.1:4318`); none: no export.
    pub otlp_endpoint: Option<String>,
    /// Serve `POST /v1/noop` (a constant answer through the same server stack): the baseline
    /// of the load benchmark. Off in production.
    pub noop_endpoint: bool,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Bound on the KV work of one call under a `global` rate limit or budget (waiting for its
    /// turn, reads, compare-and-set writes); past it the call is denied (`limit_unavailable`).
    pub global_limit_timeout: Duration,
}

impl GatewayConfig {
    /// Defaults for everything but identity, tenants, trust and storage.
    pub fn new(
        gateway_id: String,
        tenants: Vec<TenantId>,
        data_dir: PathBuf,
        trust: PathBuf,
    ) -> Self {
        Self {
            gateway_id,
            site: None,
            tenants,
            listen: SocketAddr::from(([127, 0, 0, 1], 8181)),
            data_dir,
            trust,
            audience: aegis_core::token::DEFAULT_AUDIENCE.to_owned(),
            token_leeway_seconds: 30,
            eval_limits: EvalLimits::default(),
            approval_ttl: Duration::from_secs(15 * 60),
            approvals: crate::approvals::ApprovalsConfig::default(),
            nats: aegis_nats::ConnectOptions::default(),
            heartbeat_interval: Duration::from_secs(5),
            max_spool_bytes: 1 << 30,
            max_in_flight: 1024,
            on_spool_full: OnSpoolFull::Deny,
            otlp_endpoint: None,
            noop_endpoint: false,
            max_body_bytes: 1 << 20,
            global_limit_timeout: crate::limits::global::DEFAULT_TIMEOUT,
        }
    }
}
