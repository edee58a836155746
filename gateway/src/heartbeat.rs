//! The gateway's heartbeat: one [`Heartbeat`] record per served tenant in KV bucket
//! `aegis-gateways` under `<tenant>.<gateway>` — the version, digest and stage in force, when it
//! was applied, whether the gateway is ready, how many bundles it refused and the newest
//! refusal, the spool depth. `aegisctl gateways` reads the bucket to show which gateways lag
//! behind the latest version or have gone quiet (older than three intervals).
//!
//! The task beats every [`HeartbeatConfig::interval`] (default 5 s) and at once whenever its
//! [`Notify`] is poked — the bundle watchers poke it after every swap and refusal, so the fleet
//! view follows a rollout without waiting for the next tick. Several pokes before a beat make
//! one beat.
//!
//! **Failure handling.** A failed put (NATS away, bucket missing) is logged — a warning the
//! first time, then quietly until a put succeeds again — and retried on the next tick; the
//! bucket handle is looked up again after a failure. The task never exits on errors; abort its
//! handle to stop it. Heartbeats are best effort and never block the decision path.

use crate::metrics::Metrics;
use crate::tenants::{Registry, TenantSlot};
use aegis_core::events::envelope::format_time;
use aegis_core::heartbeat::Heartbeat;
use aegis_nats::topology::{self, GATEWAYS_KV};
use async_nats::jetstream::{self, kv};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Default pause between heartbeats.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on one KV put.
const PUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the decision spool's depth (owned by the shipper) for the heartbeat.
pub type SpoolGauge = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What every record carries besides the tenant's bundle.
#[derive(Clone)]
pub struct HeartbeatConfig {
    pub gateway: String,
    pub site: Option<String>,
    pub interval: Duration,
    /// RFC 3339: when the process started.
    pub started_at: String,
    /// The build version reported (`CARGO_PKG_VERSION` by default).
    pub build: String,
    /// Decision events waiting in the spool; `None` reports 0.
    pub spool_events: Option<SpoolGauge>,
}

impl std::fmt::Debug for HeartbeatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatConfig")
            .field("gateway", &self.gateway)
            .field("site", &self.site)
            .field("interval", &self.interval)
            .field("started_at", &self.started_at)
            .field("build", &self.build)
            .finish_non_exhaustive()
    }
}

impl HeartbeatConfig {
    /// Every [`DEFAULT_INTERVAL`], started now, this crate's version, no spool gauge.
    pub fn new(gateway: impl Into<String>, site: Option<String>) -> Self {
        Self {
            gateway: gateway.into(),
            site,
            interval: DEFAULT_INTERVAL,
            started_at: now_rfc3339(),
            build: env!("CARGO_PKG_VERSION").to_owned(),
            spool_events: None,
        }
    }
}

/// Why one beat failed.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("cannot open KV bucket {GATEWAYS_KV}: {0}")]
    Bucket(String),
    #[error("no KV key for tenant {tenant}: {source}")]
    Key {
        tenant: String,
        #[source]
        source: topology::TopologyError,
    },
    #[error("cannot serialize the heartbeat: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("cannot put {key}: {reason}")]
    Put { key: String, reason: String },
}

/// The record for one tenant, as of now.
pub fn record(
    registry: &Registry,
    slot: &TenantSlot,
    metrics: &Metrics,
    config: &HeartbeatConfig,
) -> Heartbeat {
    let active = slot.active();
    let last_rejection = slot.rejections().last().map(|r| {
        let version = r
            .version
            .map_or_else(|| "v?".to_owned(), |v| format!("v{v}"));
        format!("{version} {}: {}", r.reason_code, r.reason)
    });
    Heartbeat {
        gateway: config.gateway.clone(),
        site: config.site.clone(),
        tenant: slot.tenant.clone(),
        version: active.as_ref().map(|a| a.version),
        digest: active.as_ref().map(|a| a.digest.clone()),
        applied_at: active.as_ref().map(|a| a.applied_at.clone()),
        stage: active.as_ref().map(|a| a.stage.to_string()),
        candidate_version: slot.candidate().map(|c| c.bundle.version),
        ready: registry.ready(),
        rejected: metrics.rejected_for(slot.tenant.as_str()),
        last_rejection,
        spool_events: config.spool_events.as_ref().map_or(0, |f| f()),
        started_at: config.started_at.clone(),
        updated_at: now_rfc3339(),
        interval_seconds: config.interval.as_secs().max(1),
        build: config.build.clone(),
    }
}

/// Puts one record per tenant into `kv`. Returns how many were written; stops at the first
/// failure.
pub async fn beat_once(
    kv: &kv::Store,
    registry: &Registry,
    metrics: &Metrics,
    config: &HeartbeatConfig,
) -> Result<usize, HeartbeatError> {
    let mut written = 0;
    for slot in registry.slots() {
        let key = topology::gateway_kv_key(&slot.tenant, &config.gateway).map_err(|source| {
            HeartbeatError::Key {
                tenant: slot.tenant.to_string(),
                source,
            }
        })?;
        let beat = record(registry, slot, metrics, config);
        let bytes = serde_json::to_vec(&beat).map_err(HeartbeatError::Serialize)?;
        match tokio::time::timeout(PUT_TIMEOUT, kv.put(key.as_str(), bytes.into())).await {
            Ok(Ok(_)) => written += 1,
            Ok(Err(e)) => {
                return Err(HeartbeatError::Put {
                    key,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(HeartbeatError::Put {
                    key,
                    reason: format!("no answer within {PUT_TIMEOUT:?}"),
                });
            }
        }
    }
    Ok(written)
}

/// Starts the heartbeat task: a beat at once, then every `config.interval` and whenever
/// `trigger` is notified. Runs until the handle is aborted.
pub fn spawn(
    js: jetstream::Context,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    config: HeartbeatConfig,
    trigger: Arc<Notify>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut bucket: Option<kv::Store> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = trigger.notified() => {}
            }
            let result = async {
                if bucket.is_none() {
                    let store = tokio::time::timeout(PUT_TIMEOUT, js.get_key_value(GATEWAYS_KV))
                        .await
                        .map_err(|_| {
                            HeartbeatError::Bucket(format!("no answer within {PUT_TIMEOUT:?}"))
                        })?
                        .map_err(|e| HeartbeatError::Bucket(e.to_string()))?;
                    bucket = Some(store);
                }
                match &bucket {
                    Some(kv) => beat_once(kv, &registry, &metrics, &config).await,
                    None => Ok(0),
                }
            }
            .await;
            match result {
                Ok(written) => {
                    if failing {
                        tracing::info!(written, "heartbeat written again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if failing {
                        tracing::debug!(error = %e, "heartbeat failed; retrying next tick");
                    } else {
                        tracing::warn!(error = %e, "heartbeat failed; retrying next tick");
                    }
                    failing = true;
                    bucket = None;
                }
            }
        }
    })
}

fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    format_time(now).unwrap_or_else(|_| now.to_string())
}
