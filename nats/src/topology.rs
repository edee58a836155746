//! The one place that knows Aegis' streams, subjects, object store and KV bucket.
//!
//! Every other crate builds subjects with the functions here and provisions the server with
//! [`crate::provision::provision`], which takes its configs from [`Topology`]. The names are
//! part of the contract (see `DESIGN.md`, "Streams").
//!
//! Subjects all have the shape `aegis.<kind>.<tenant>[.<rest>]`: **the tenant is always the third
//! token**. The per-tenant permissions in `nats/conf/` rely on that.

use std::time::Duration;

use aegis_core::ids::TenantId;
use async_nats::jetstream::{
    kv, object_store,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

/// Policy edits, change requests, approvals of changes, publish, rollback, freeze, actors and
/// keys, rollout stages. The source of truth: never deleted, never purged, never expires.
pub const CHANGES_STREAM: &str = "AEGIS_CHANGES";
/// `BundlePublished` / `RolloutChanged` events; the bytes live in [`BUNDLE_OBJECT_STORE`].
pub const BUNDLES_STREAM: &str = "AEGIS_BUNDLES";
/// One event per decision a gateway made.
pub const DECISIONS_STREAM: &str = "AEGIS_DECISIONS";
/// Runtime approval requests, grants, denials and consumption.
pub const APPROVALS_STREAM: &str = "AEGIS_APPROVALS";
/// Signed checkpoints of the hash chain over each tenant's events.
pub const AUDIT_STREAM: &str = "AEGIS_AUDIT";
/// Object store holding bundle bytes, keyed by digest (stream `OBJ_aegis-bundles`).
pub const BUNDLE_OBJECT_STORE: &str = "aegis-bundles";
/// KV bucket: which bundle each gateway runs, and its heartbeat (stream `KV_aegis-gateways`).
pub const GATEWAYS_KV: &str = "aegis-gateways";
/// KV bucket: rate-limit and budget counters with `scope: global`, shared by every gateway and
/// updated with compare-and-set (stream `KV_aegis-limits`).
pub const LIMITS_KV: &str = "aegis-limits";
/// How long a global counter lives after its last update.
pub const LIMITS_ENTRY_MAX_AGE: Duration = Duration::from_secs(31 * 24 * 60 * 60);

/// Subject prefix of [`CHANGES_STREAM`].
pub const CHANGES_PREFIX: &str = "aegis.changes";
/// Subject prefix of [`BUNDLES_STREAM`].
pub const BUNDLES_PREFIX: &str = "aegis.bundles";
/// Subject prefix of [`DECISIONS_STREAM`].
pub const DECISIONS_PREFIX: &str = "aegis.decisions";
/// Subject prefix of [`APPROVALS_STREAM`].
pub const APPROVALS_PREFIX: &str = "aegis.approvals";
/// Subject prefix of [`AUDIT_STREAM`].
pub const AUDIT_PREFIX: &str = "aegis.audit";
/// Subject prefix of the query service (request/reply, not a stream).
pub const QUERY_PREFIX: &str = "aegis.query";

/// Largest change event (policy documents travel inside them).
pub const CHANGES_MAX_MSG_SIZE: i32 = 8 * 1024 * 1024;
/// Largest message on the other streams (events that reference bundles, decisions, approvals,
/// checkpoints).
pub const EVENT_MAX_MSG_SIZE: i32 = 1024 * 1024;
/// Dedup window of [`CHANGES_STREAM`], [`DECISIONS_STREAM`], [`APPROVALS_STREAM`],
/// [`AUDIT_STREAM`]: a client retrying a publish with the same `Nats-Msg-Id` within it gets the
/// first message's sequence back instead of a second copy.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);
/// Dedup window of [`BUNDLES_STREAM`]: longer, because two control planes fed the same stream
/// publish the same bundle with the same `Nats-Msg-Id`, possibly minutes apart.
pub const BUNDLES_DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Default retention of [`DECISIONS_STREAM`]: 30 days.
pub const DEFAULT_DECISIONS_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How long a gateway's KV entry lives without being rewritten: a gateway that has not
/// heartbeated for a day drops out of the fleet view.
pub const DEFAULT_GATEWAY_ENTRY_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// What is wrong with a would-be subject token, or a topology setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The value cannot be one NATS subject token.
    #[error(
        "{what} {value:?} cannot be used on the message bus: {why} \
         (ids used in NATS subjects must be one subject token)"
    )]
    InvalidToken {
        /// What the value is (`tenant id`, `gateway id`, ...).
        what: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A subject suffix is empty or has an empty token (`a..b`, trailing `.`).
    #[error("subject suffix {rest:?} is invalid: {why}")]
    InvalidSuffix {
        /// The suffix.
        rest: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The event does not travel on `AEGIS_CHANGES`.
    #[error("a `{0}` event is not a change event (it does not go on AEGIS_CHANGES)")]
    NotAChangeEvent(aegis_core::events::EventType),
    /// The replica count is not 1..=5.
    #[error("replicas must be between 1 and 5, got {0}")]
    InvalidReplicas(usize),
}

/// Checks that `value` can be one NATS subject token and returns it.
///
/// Rejects empty values and values containing `.` (the token separator), the wildcards `*` and
/// `>`, whitespace or control characters. Aegis ids may contain `.` (see
/// `aegis_core::ids`), so a tenant named `acme.eu` is valid as an id but cannot be used on the
/// bus: that is an error here, never a silent rewrite (a rewrite could map two tenants onto one
/// subject).
pub fn subject_token(value: &str) -> Result<String, TopologyError> {
    checked_token("subject token", value).map(str::to_owned)
}

fn checked_token<'a>(what: &'static str, value: &'a str) -> Result<&'a str, TopologyError> {
    let err = |why| TopologyError::InvalidToken {
        what,
        value: value.to_owned(),
        why,
    };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    if value.contains('.') {
        return Err(err("it contains '.', the subject token separator"));
    }
    if value.contains(['*', '>']) {
        return Err(err("it contains a wildcard ('*' or '>')"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("it contains whitespace or a control character"));
    }
    Ok(value)
}

fn tenant_token(tenant: &TenantId) -> Result<&str, TopologyError> {
    checked_token("tenant id", tenant.as_str())
}

/// Checks a gateway id (a plain string) as a subject token.
pub fn gateway_token(gateway: &str) -> Result<&str, TopologyError> {
    checked_token("gateway id", gateway)
}

/// Checks an approval id as a subject token.
pub fn approval_token(approval: &str) -> Result<&str, TopologyError> {
    checked_token("approval id", approval)
}

/// Checks a multi-token subject suffix: non-empty tokens separated by `.`, no wildcards.
fn checked_suffix(rest: &str) -> Result<&str, TopologyError> {
    let err = |why| TopologyError::InvalidSuffix {
        rest: rest.to_owned(),
        why,
    };
    if rest.is_empty() {
        return Err(err("it is empty"));
    }
    for token in rest.split('.') {
        if token.is_empty() {
            return Err(err(
                "it has an empty token (leading, trailing or double '.')",
            ));
        }
        checked_token("subject token", token).map_err(|_| {
            err("a token contains a wildcard ('*' or '>'), whitespace or a control character")
        })?;
    }
    Ok(rest)
}

/// `aegis.changes.<tenant>.<rest>`; `rest` may have several tokens (`policy.payments`).
pub fn changes_subject(tenant: &TenantId, rest: &str) -> Result<String, TopologyError> {
    Ok(format!(
        "{CHANGES_PREFIX}.{}.{}",
        tenant_token(tenant)?,
        checked_suffix(rest)?
    ))
}

/// The subject a change event goes on: `aegis.changes.<tenant>.<suffix>`, the suffix given by
/// [`EventType::changes_subject_suffix`](aegis_core::events::EventType::changes_subject_suffix)
/// (`actors`, `config`, `policy.<name>`, `change.<id>`, `control`, `issuers`,
/// `approval.<id>`, `readiness`).
pub fn change_event_subject(
    tenant: &TenantId,
    event: &aegis_core::events::Event,
) -> Result<String, TopologyError> {
    let suffix = aegis_core::events::EventType::changes_subject_suffix(event)
        .ok_or(TopologyError::NotAChangeEvent(event.event_type()))?;
    changes_subject(tenant, &suffix)
}

/// `aegis.changes.<tenant>.>`: every change of one tenant (consumer filter).
pub fn changes_filter(tenant: &TenantId) -> Result<String, TopologyError> {
    Ok(format!("{CHANGES_PREFIX}.{}.>", tenant_token(tenant)?))
}

/// `aegis.bundles.<tenant>`.
pub fn bundles_subject(tenant: &TenantId) -> Result<String, TopologyError> {
    Ok(format!("{BUNDLES_PREFIX}.{}", tenant_token(tenant)?))
}

/// `aegis.bundles.<tenant>.controls`: the tenant's signed `tenant_controls` state (stable and
/// candidate versions, kill switch, data-plane freeze).
pub fn controls_subject(tenant: &TenantId) -> Result<String, TopologyError> {
    Ok(format!(
        "{BUNDLES_PREFIX}.{}.controls",
        tenant_token(tenant)?
    ))
}

/// `aegis.decisions.<tenant>.<gateway>`.
pub fn decisions_subject(tenant: &TenantId, gateway: &str) -> Result<String, TopologyError> {
    Ok(format!(
        "{DECISIONS_PREFIX}.{}.{}",
        tenant_token(tenant)?,
        gateway_token(gateway)?
    ))
}

/// `aegis.decisions.<tenant>.>`: every decision of one tenant (consumer filter).
pub fn decisions_filter(tenant: &TenantId) -> Result<String, TopologyError> {
    Ok(format!("{DECISIONS_PREFIX}.{}.>", tenant_token(tenant)?))
}

/// `aegis.approvals.<tenant>.<approval>`.
pub fn approvals_subject(tenant: &TenantId, approval: &str) -> Result<String, TopologyError> {
    Ok(format!(
        "{APPROVALS_PREFIX}.{}.{}",
        tenant_token(tenant)?,
        approval_token(approval)?
    ))
}

/// The approval id of `aegis.approvals.<tenant>.<approval>` (the inverse of
/// [`approvals_subject`]); None for a subject of another tenant or kind, or with more tokens.
pub fn approval_id_of<'a>(tenant: &TenantId, subject: &'a str) -> Option<&'a str> {
    let id = subject
        .strip_prefix(APPROVALS_PREFIX)?
        .strip_prefix('.')?
        .strip_prefix(tenant.as_str())?
        .strip_prefix('.')?;
    approval_token(id).ok()
}

/// `aegis.approvals.<tenant>.>`: every approval of one tenant (consumer filter).
pub fn approvals_filter(tenant: &TenantId) -> Result<String, TopologyError> {
    Ok(format!("{APPROVALS_PREFIX}.{}.>", tenant_token(tenant)?))
}

/// `aegis.audit.<tenant>`.
pub fn audit_subject(tenant: &TenantId) -> Result<String, TopologyError> {
    Ok(format!("{AUDIT_PREFIX}.{}", tenant_token(tenant)?))
}

/// `aegis.query.<tenant>.<rest>`: request subject of the query service.
pub fn query_subject(tenant: &TenantId, rest: &str) -> Result<String, TopologyError> {
    Ok(format!(
        "{QUERY_PREFIX}.{}.{}",
        tenant_token(tenant)?,
        checked_suffix(rest)?
    ))
}

/// `<tenant>.<gateway>`: a gateway's key in [`GATEWAYS_KV`].
pub fn gateway_kv_key(tenant: &TenantId, gateway: &str) -> Result<String, TopologyError> {
    Ok(format!(
        "{}.{}",
        tenant_token(tenant)?,
        gateway_token(gateway)?
    ))
}

/// The deployment shape: replica count and the retention knobs. Everything else about the
/// streams is fixed by this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    replicas: usize,
    decisions_max_age: Duration,
    gateway_entry_max_age: Duration,
}

impl Topology {
    /// One server (development, tests): every stream R1.
    pub fn single() -> Self {
        Self {
            replicas: 1,
            decisions_max_age: DEFAULT_DECISIONS_MAX_AGE,
            gateway_entry_max_age: DEFAULT_GATEWAY_ENTRY_MAX_AGE,
        }
    }

    /// A 3-node cluster (production): every stream, the object store and the KV bucket R3.
    pub fn cluster() -> Self {
        Self {
            replicas: 3,
            ..Self::single()
        }
    }

    /// Another replica count (1..=5, JetStream's limit).
    pub fn with_replicas(mut self, replicas: usize) -> Result<Self, TopologyError> {
        if !(1..=5).contains(&replicas) {
            return Err(TopologyError::InvalidReplicas(replicas));
        }
        self.replicas = replicas;
        Ok(self)
    }

    /// How long decision events are kept (default 30 days).
    pub fn with_decisions_max_age(mut self, max_age: Duration) -> Self {
        self.decisions_max_age = max_age;
        self
    }

    /// How long a gateway's KV entry lives without a heartbeat (default 1 day).
    pub fn with_gateway_entry_max_age(mut self, max_age: Duration) -> Self {
        self.gateway_entry_max_age = max_age;
        self
    }

    /// Replicas of every stream, the object store and the KV bucket.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Retention of [`DECISIONS_STREAM`].
    pub fn decisions_max_age(&self) -> Duration {
        self.decisions_max_age
    }

    /// Max age of [`GATEWAYS_KV`] entries.
    pub fn gateway_entry_max_age(&self) -> Duration {
        self.gateway_entry_max_age
    }

    fn stream(
        &self,
        name: &str,
        prefix: &str,
        description: &str,
        max_msg_size: i32,
        duplicate_window: Duration,
    ) -> stream::Config {
        stream::Config {
            name: name.to_owned(),
            description: Some(description.to_owned()),
            subjects: vec![format!("{prefix}.>")],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: self.replicas,
            discard: DiscardPolicy::Old,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            max_age: Duration::ZERO,
            max_message_size: max_msg_size,
            duplicate_window,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            ..Default::default()
        }
    }

    /// The five streams, in the order they are provisioned.
    pub fn stream_configs(&self) -> Vec<stream::Config> {
        let changes = self.stream(
            CHANGES_STREAM,
            CHANGES_PREFIX,
            "Aegis change events (policy edits, approvals, publish, rollback, keys); \
             the source of truth, never deleted",
            CHANGES_MAX_MSG_SIZE,
            DEFAULT_DUPLICATE_WINDOW,
        );
        let bundles = self.stream(
            BUNDLES_STREAM,
            BUNDLES_PREFIX,
            "Aegis BundlePublished / RolloutChanged events",
            EVENT_MAX_MSG_SIZE,
            BUNDLES_DUPLICATE_WINDOW,
        );
        let decisions = stream::Config {
            max_age: self.decisions_max_age,
            // Retention is by age; an operator may still purge (e.g. a data-subject request).
            deny_purge: false,
            ..self.stream(
                DECISIONS_STREAM,
                DECISIONS_PREFIX,
                "Aegis decision events, one per decision",
                EVENT_MAX_MSG_SIZE,
                DEFAULT_DUPLICATE_WINDOW.min(self.decisions_max_age),
            )
        };
        let approvals = self.stream(
            APPROVALS_STREAM,
            APPROVALS_PREFIX,
            "Aegis runtime approval requests, grants, denials, consumption",
            EVENT_MAX_MSG_SIZE,
            DEFAULT_DUPLICATE_WINDOW,
        );
        let audit = self.stream(
            AUDIT_STREAM,
            AUDIT_PREFIX,
            "Aegis signed hash-chain checkpoints per tenant",
            EVENT_MAX_MSG_SIZE,
            DEFAULT_DUPLICATE_WINDOW,
        );
        vec![changes, bundles, decisions, approvals, audit]
    }

    /// The stream config named `name`, if it is one of ours.
    pub fn stream_config(&self, name: &str) -> Option<stream::Config> {
        self.stream_configs().into_iter().find(|c| c.name == name)
    }

    /// The bundle object store: bundle bytes by digest, kept forever.
    pub fn object_store_config(&self) -> object_store::Config {
        object_store::Config {
            bucket: BUNDLE_OBJECT_STORE.to_owned(),
            description: Some("Aegis signed bundle bytes, by digest".to_owned()),
            max_age: Duration::ZERO,
            max_bytes: -1,
            storage: StorageType::File,
            num_replicas: self.replicas,
            compression: false,
            placement: None,
        }
    }

    /// The gateways KV bucket: one entry per `<tenant>.<gateway>`, history 1, entries expire
    /// after [`Topology::gateway_entry_max_age`] without a rewrite.
    pub fn kv_config(&self) -> kv::Config {
        kv::Config {
            bucket: GATEWAYS_KV.to_owned(),
            description: "Aegis gateways: running bundle and heartbeat".to_owned(),
            history: 1,
            max_age: self.gateway_entry_max_age,
            max_value_size: 64 * 1024,
            max_bytes: -1,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The global limits KV bucket: one counter per tenant, agent, tool, limit and window,
    /// history 1, entries expire [`LIMITS_ENTRY_MAX_AGE`] after their last update.
    pub fn limits_kv_config(&self) -> kv::Config {
        kv::Config {
            bucket: LIMITS_KV.to_owned(),
            description: "Aegis global rate-limit and budget counters".to_owned(),
            history: 1,
            max_age: LIMITS_ENTRY_MAX_AGE,
            max_value_size: 1024,
            max_bytes: -1,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Every KV bucket, in the order they are provisioned.
    pub fn kv_configs(&self) -> Vec<kv::Config> {
        vec![self.kv_config(), self.limits_kv_config()]
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::single()
    }
}

/// Name of the stream behind the object store `bucket`.
pub fn object_store_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// Name of the stream behind the KV `bucket`.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[test]
    fn builds_subjects() {
        let acme = tenant("acme");
        assert_eq!(
            changes_subject(&acme, "policy.payments").unwrap(),
            "aegis.changes.acme.policy.payments"
        );
        assert_eq!(changes_filter(&acme).unwrap(), "aegis.changes.acme.>");
        assert_eq!(bundles_subject(&acme).unwrap(), "aegis.bundles.acme");
        assert_eq!(
            decisions_subject(&acme, "gw1").unwrap(),
            "aegis.decisions.acme.gw1"
        );
        assert_eq!(
            approvals_subject(&acme, "ap-1").unwrap(),
            "aegis.approvals.acme.ap-1"
        );
        assert_eq!(
            approval_id_of(&acme, "aegis.approvals.acme.ap-1"),
            Some("ap-1")
        );
        for other in [
            "aegis.approvals.acme2.ap-1",
            "aegis.approvals.acme.ap-1.x",
            "aegis.approvals.acme.",
            "aegis.decisions.acme.ap-1",
        ] {
            assert_eq!(approval_id_of(&acme, other), None, "{other}");
        }
        assert_eq!(audit_subject(&acme).unwrap(), "aegis.audit.acme");
        assert_eq!(gateway_kv_key(&acme, "gw1").unwrap(), "acme.gw1");
        assert_eq!(
            query_subject(&acme, "policies.list").unwrap(),
            "aegis.query.acme.policies.list"
        );
        // ids may carry ':' '@' '/' and still be one token
        assert_eq!(
            bundles_subject(&tenant("org:acme@eu/1")).unwrap(),
            "aegis.bundles.org:acme@eu/1"
        );
    }

    #[test]
    fn rejects_what_is_not_one_token() {
        let dotted = tenant("acme.eu");
        let err = changes_filter(&dotted).unwrap_err();
        assert!(err.to_string().contains("tenant id \"acme.eu\""), "{err}");
        assert!(err.to_string().contains("'.'"), "{err}");
        for bad in ["", "a.b", "a*", ">", "a b", "a\tb", "a\n"] {
            assert!(subject_token(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(subject_token("acme-1_x:y@z/w").unwrap(), "acme-1_x:y@z/w");
        assert!(decisions_subject(&tenant("acme"), "gw.1").is_err());
        assert!(decisions_subject(&tenant("acme"), "*").is_err());
        assert!(approvals_subject(&tenant("acme"), "").is_err());
        let acme = tenant("acme");
        for bad in ["", ".x", "x.", "a..b", "a.>", "a.*.b", "a b"] {
            assert!(changes_subject(&acme, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn topologies() {
        let single = Topology::single();
        let streams = single.stream_configs();
        let names: Vec<_> = streams.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                CHANGES_STREAM,
                BUNDLES_STREAM,
                DECISIONS_STREAM,
                APPROVALS_STREAM,
                AUDIT_STREAM
            ]
        );
        assert!(
            streams
                .iter()
                .all(|c| c.num_replicas == 1 && c.allow_direct)
        );
        assert!(streams.iter().all(|c| c.deny_delete));
        let changes = single.stream_config(CHANGES_STREAM).unwrap();
        assert_eq!(changes.subjects, ["aegis.changes.>"]);
        assert!(changes.deny_purge);
        assert_eq!(changes.max_age, Duration::ZERO);
        assert_eq!(changes.max_message_size, 8 * 1024 * 1024);
        assert_eq!(changes.duplicate_window, Duration::from_secs(120));
        let decisions = single.stream_config(DECISIONS_STREAM).unwrap();
        assert_eq!(decisions.max_age, Duration::from_secs(30 * 86_400));
        assert!(!decisions.deny_purge);
        assert_eq!(
            single
                .stream_config(BUNDLES_STREAM)
                .unwrap()
                .duplicate_window,
            Duration::from_secs(600)
        );
        let cluster = Topology::cluster();
        assert!(cluster.stream_configs().iter().all(|c| c.num_replicas == 3));
        assert_eq!(cluster.kv_config().num_replicas, 3);
        assert_eq!(cluster.object_store_config().num_replicas, 3);
        assert_eq!(cluster.kv_config().history, 1);
        assert!(Topology::single().with_replicas(0).is_err());
        assert!(Topology::single().with_replicas(6).is_err());
        let short = Topology::single().with_decisions_max_age(Duration::from_secs(60));
        let decisions = short.stream_config(DECISIONS_STREAM).unwrap();
        assert!(decisions.duplicate_window <= decisions.max_age);
    }
}
