//! What a gateway writes into KV bucket `aegis-gateways` under `<tenant>.<gateway>`: which
//! bundle it enforces for that tenant, and when it last said so. `aegisctl gateways` reads the
//! bucket and flags gateways that are behind the latest published version or have gone quiet.

use crate::ids::TenantId;
use serde::{Deserialize, Serialize};

/// One gateway's report for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub tenant: TenantId,
    /// Version in force (None: no verified bundle; the gateway denies this tenant's calls).
    pub version: Option<u64>,
    pub digest: Option<String>,
    /// RFC 3339: when that version was applied.
    pub applied_at: Option<String>,
    /// Rollout stage of the version in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The rollout candidate's version, while there is one (evaluated in shadow or enforced
    /// for a partial cohort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_version: Option<u64>,
    /// Whether the gateway as a whole is ready (every tenant it serves has a bundle).
    pub ready: bool,
    /// Bundles refused since start.
    #[serde(default)]
    pub rejected: u64,
    /// The newest refusal, as `v<version> <reason_code>: <reason>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<String>,
    /// Decision events waiting in the gateway's disk spool.
    #[serde(default)]
    pub spool_events: u64,
    /// RFC 3339: when the gateway process started.
    pub started_at: String,
    /// RFC 3339: when this record was written.
    pub updated_at: String,
    /// Seconds between heartbeats; a record older than three of these is stale.
    pub interval_seconds: u64,
    /// The gateway's build version.
    pub build: String,
}
