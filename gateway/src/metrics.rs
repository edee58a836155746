//! Prometheus metrics, rendered in the text exposition format on `/metrics`.
//!
//! Counters are plain atomics (the request path never takes a lock for them); the few labelled
//! series whose label sets are open-ended (rejections by reason, auth failures by code) sit
//! behind a mutex because they are rare.

use aegis_core::decision::DecisionKind;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the decision latency histogram.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
];

const KINDS: [DecisionKind; 4] = [
    DecisionKind::Allow,
    DecisionKind::Deny,
    DecisionKind::Sanitize,
    DecisionKind::ApprovalNeeded,
];

fn kind_index(kind: DecisionKind) -> usize {
    match kind {
        DecisionKind::Allow => 0,
        DecisionKind::Deny => 1,
        DecisionKind::Sanitize => 2,
        DecisionKind::ApprovalNeeded => 3,
    }
}

/// Decisions of one tenant, by outcome.
#[derive(Debug, Default)]
pub struct DecisionCounters([AtomicU64; 4]);

impl DecisionCounters {
    pub fn inc(&self, kind: DecisionKind) {
        if let Some(c) = self.0.get(kind_index(kind)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn get(&self, kind: DecisionKind) -> u64 {
        self.0
            .get(kind_index(kind))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe_ns(&self, ns: u64) {
        let secs = ns as f64 / 1e9;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b)
            && let Some(b) = self.buckets.get(i)
        {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// Counters of the bundle watcher and the decision path.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `aegis_decisions_total{tenant, decision}`; tenants not served land under
    /// `_unauthenticated`.
    decisions: std::sync::RwLock<BTreeMap<String, std::sync::Arc<DecisionCounters>>>,
    pub latency: Histogram,
    auth_failures: Mutex<BTreeMap<String, u64>>,
    bundles_rejected: ByTenantAndReason,
    pub bundles_applied: AtomicU64,
    refused_unrecordable: AtomicU64,
    /// `aegis_shadow_disagreements_total{tenant}`: the enforced and the other version of a
    /// rollout answered differently.
    shadow_disagreements: std::sync::RwLock<BTreeMap<String, std::sync::Arc<AtomicU64>>>,
    /// `aegis_bundles_pinned_total{tenant}`: global bundles held back by a data-plane freeze.
    bundles_pinned: Mutex<BTreeMap<String, u64>>,
    /// `aegis_controls_rejected_total{tenant, reason}`.
    controls_rejected: ByTenantAndReason,
}

/// One tenant's rollout and kill-switch state, as `/metrics` reports it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RolloutGauges {
    pub tenant: String,
    /// The candidate version (None: no rollout).
    pub candidate_version: Option<u64>,
    pub blocked_agents: usize,
    pub blocked_tools: usize,
    pub frozen: bool,
    pub controls_epoch: u64,
}

/// The shipper's counters, as `/metrics` and `/v1/status` report them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SinkStats {
    pub spool_events: u64,
    pub spool_bytes: u64,
    pub shipped: u64,
    pub failed: u64,
    pub spooled: u64,
    pub unrecorded: u64,
    pub in_flight: u64,
    pub accepting: bool,
}

/// Values owned elsewhere (bundle slots, the shipper) that `/metrics` reports.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// tenant → version in force
    pub bundle_versions: Vec<(String, Option<u64>)>,
    pub sink: SinkStats,
    pub ready: bool,
    /// Per tenant: candidate, blocks, freeze, controls epoch.
    pub rollout: Vec<RolloutGauges>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The per-tenant decision counters (created on first use). Hold on to the `Arc` to count
    /// without the map lock.
    pub fn decisions_for(&self, tenant: &str) -> std::sync::Arc<DecisionCounters> {
        // Every request counts here: a shared read lock, the write lock only for a new tenant.
        if let Ok(map) = self.decisions.read()
            && let Some(c) = map.get(tenant)
        {
            return c.clone();
        }
        match self.decisions.write() {
            Ok(mut map) => map.entry(tenant.to_owned()).or_default().clone(),
            Err(_) => std::sync::Arc::default(),
        }
    }

    /// A call refused because its decision could not have been recorded.
    pub fn refused_unrecordable(&self) {
        self.refused_unrecordable.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failure(&self, code: &str) {
        if let Ok(mut map) = self.auth_failures.lock() {
            *map.entry(code.to_owned()).or_default() += 1;
        }
    }

    pub fn bundle_rejected(&self, tenant: &str, reason_code: &str) {
        count_reason(&self.bundles_rejected, tenant, reason_code);
    }

    /// The enforced and the other version of a rollout disagreed on a call of `tenant`.
    pub fn shadow_disagreement(&self, tenant: &str) {
        if let Ok(map) = self.shadow_disagreements.read()
            && let Some(c) = map.get(tenant)
        {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Ok(mut map) = self.shadow_disagreements.write() {
            map.entry(tenant.to_owned())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Disagreements counted for `tenant`.
    pub fn shadow_disagreements_for(&self, tenant: &str) -> u64 {
        self.shadow_disagreements
            .read()
            .ok()
            .and_then(|m| m.get(tenant).map(|c| c.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }

    /// A global bundle of `tenant` was held back by the data-plane freeze.
    pub fn bundle_pinned(&self, tenant: &str) {
        if let Ok(mut map) = self.bundles_pinned.lock() {
            *map.entry(tenant.to_owned()).or_default() += 1;
        }
    }

    /// A controls state of `tenant` was not applied.
    pub fn controls_rejected(&self, tenant: &str, reason_code: &str) {
        count_reason(&self.controls_rejected, tenant, reason_code);
    }

    /// Controls states of `tenant` not applied, all reasons.
    pub fn controls_rejected_for(&self, tenant: &str) -> u64 {
        total_of(&self.controls_rejected, tenant)
    }

    /// Total bundles rejected for `tenant`.
    pub fn rejected_for(&self, tenant: &str) -> u64 {
        total_of(&self.bundles_rejected, tenant)
    }

    /// The exposition text.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP aegis_decisions_total Decisions answered, by tenant and outcome."
        );
        let _ = writeln!(out, "# TYPE aegis_decisions_total counter");
        if let Ok(map) = self.decisions.read() {
            for (tenant, c) in map.iter() {
                for kind in KINDS {
                    let _ = writeln!(
                        out,
                        "aegis_decisions_total{{tenant=\"{}\",decision=\"{}\"}} {}",
                        escape(tenant),
                        kind,
                        c.get(kind)
                    );
                }
            }
        }

        let _ = writeln!(
            out,
            "# HELP aegis_decision_duration_seconds Time from request to answer on /v1/decide."
        );
        let _ = writeln!(out, "# TYPE aegis_decision_duration_seconds histogram");
        let mut cumulative = 0u64;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(self.latency.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "aegis_decision_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "aegis_decision_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "aegis_decision_duration_seconds_sum {}",
            self.latency.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "aegis_decision_duration_seconds_count {count}");

        let _ = writeln!(
            out,
            "# HELP aegis_auth_failures_total Calls refused because the token did not verify, by reason code."
        );
        let _ = writeln!(out, "# TYPE aegis_auth_failures_total counter");
        if let Ok(map) = self.auth_failures.lock() {
            for (code, n) in map.iter() {
                let _ = writeln!(
                    out,
                    "aegis_auth_failures_total{{code=\"{}\"}} {n}",
                    escape(code)
                );
            }
        }

        let _ = writeln!(
            out,
            "# HELP aegis_bundle_version Version of the bundle in force per tenant (0: none)."
        );
        let _ = writeln!(out, "# TYPE aegis_bundle_version gauge");
        let _ = writeln!(
            out,
            "# HELP aegis_bundle_loaded 1 when the tenant has a verified bundle in force."
        );
        let _ = writeln!(out, "# TYPE aegis_bundle_loaded gauge");
        for (tenant, version) in &snap.bundle_versions {
            let t = escape(tenant);
            let _ = writeln!(
                out,
                "aegis_bundle_version{{tenant=\"{t}\"}} {}",
                version.unwrap_or(0)
            );
            let _ = writeln!(
                out,
                "aegis_bundle_loaded{{tenant=\"{t}\"}} {}",
                u8::from(version.is_some())
            );
        }
        let _ = writeln!(
            out,
            "# HELP aegis_bundles_applied_total Bundles verified and swapped in."
        );
        let _ = writeln!(out, "# TYPE aegis_bundles_applied_total counter");
        let _ = writeln!(
            out,
            "aegis_bundles_applied_total {}",
            self.bundles_applied.load(Ordering::Relaxed)
        );
        by_tenant_and_reason(
            &mut out,
            "aegis_bundles_rejected_total",
            "Bundles refused (the previous one stays in force), by tenant and reason.",
            self.bundles_rejected.lock().ok().as_deref(),
        );

        self.render_rollout(&mut out, snap);

        let gauges: [(&str, &str, &str, u64); 8] = [
            (
                "aegis_calls_refused_unrecordable_total",
                "counter",
                "Calls refused (decision_log_full) because their decision could not be recorded.",
                self.refused_unrecordable.load(Ordering::Relaxed),
            ),
            (
                "aegis_spool_events",
                "gauge",
                "Decision events waiting in the local disk spool.",
                snap.sink.spool_events,
            ),
            (
                "aegis_spool_bytes",
                "gauge",
                "Bytes in the local disk spool.",
                snap.sink.spool_bytes,
            ),
            (
                "aegis_events_in_flight",
                "gauge",
                "Decision events published and awaiting their JetStream ack.",
                snap.sink.in_flight,
            ),
            (
                "aegis_events_shipped_total",
                "counter",
                "Decision events acknowledged by JetStream.",
                snap.sink.shipped,
            ),
            (
                "aegis_events_failed_total",
                "counter",
                "Publish attempts that failed or timed out (the event was spooled and retried).",
                snap.sink.failed,
            ),
            (
                "aegis_events_spooled_total",
                "counter",
                "Decision events written to the disk spool.",
                snap.sink.spooled,
            ),
            (
                "aegis_events_unrecorded_total",
                "counter",
                "Decisions answered that could not be recorded (spool full under on_spool_full=serve).",
                snap.sink.unrecorded,
            ),
        ];
        for (name, kind, help, value) in gauges {
            describe(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP aegis_ready 1 when every configured tenant has a verified bundle."
        );
        let _ = writeln!(out, "# TYPE aegis_ready gauge");
        let _ = writeln!(out, "aegis_ready {}", u8::from(snap.ready));
        out
    }
}

impl Metrics {
    /// The rollout, kill-switch and freeze series.
    fn render_rollout(&self, out: &mut String, snap: &Snapshot) {
        by_tenant(
            out,
            "aegis_shadow_disagreements_total",
            "counter",
            "Calls on which the enforced and the other version of a rollout answered differently, by tenant.",
            self.shadow_disagreements
                .read()
                .ok()
                .iter()
                .flat_map(|map| {
                    map.iter()
                        .map(|(t, n)| (t.as_str(), n.load(Ordering::Relaxed)))
                }),
        );
        by_tenant(
            out,
            "aegis_bundles_pinned_total",
            "counter",
            "Global bundles not applied because the data plane is frozen, by tenant.",
            self.bundles_pinned
                .lock()
                .ok()
                .iter()
                .flat_map(|map| map.iter().map(|(t, n)| (t.as_str(), *n))),
        );
        by_tenant_and_reason(
            out,
            "aegis_controls_rejected_total",
            "Controls states not applied (unknown or revoked key, bad signature, older epoch), by tenant and reason.",
            self.controls_rejected.lock().ok().as_deref(),
        );
        type Series = (&'static str, &'static str, fn(&RolloutGauges) -> u64);
        let series: [Series; 5] = [
            (
                "aegis_candidate_version",
                "Version of the rollout candidate per tenant (0: no rollout).",
                |g| g.candidate_version.unwrap_or(0),
            ),
            (
                "aegis_blocked_agents",
                "Agents blocked by the kill switch, per tenant.",
                |g| g.blocked_agents as u64,
            ),
            (
                "aegis_blocked_tools",
                "Tools blocked by the kill switch, per tenant.",
                |g| g.blocked_tools as u64,
            ),
            (
                "aegis_data_plane_frozen",
                "1 while the tenant's data plane is frozen.",
                |g| u64::from(g.frozen),
            ),
            (
                "aegis_controls_epoch",
                "Epoch of the controls state in force per tenant (0: none).",
                |g| g.controls_epoch,
            ),
        ];
        for (name, help, value) in series {
            let samples = snap.rollout.iter().map(|g| (g.tenant.as_str(), value(g)));
            by_tenant(out, name, "gauge", help, samples);
        }
    }
}

/// Counts by tenant and reason code.
type ByTenantAndReason = Mutex<BTreeMap<(String, String), u64>>;

/// One more `reason_code` for `tenant` in `counts`.
fn count_reason(counts: &ByTenantAndReason, tenant: &str, reason_code: &str) {
    if let Ok(mut map) = counts.lock() {
        *map.entry((tenant.to_owned(), reason_code.to_owned()))
            .or_default() += 1;
    }
}

/// The count of `tenant` in `counts`, all reasons.
fn total_of(counts: &ByTenantAndReason, tenant: &str) -> u64 {
    counts
        .lock()
        .map(|m| {
            m.iter()
                .filter(|((t, _), _)| t == tenant)
                .map(|(_, n)| *n)
                .sum()
        })
        .unwrap_or(0)
}

/// The `# HELP` and `# TYPE` lines of metric `name`.
fn describe(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Metric `name` with one sample per tenant, after its HELP and TYPE lines.
fn by_tenant<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    describe(out, name, kind, help);
    for (tenant, n) in samples {
        let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {n}", escape(tenant));
    }
}

/// Counter `name` by tenant and reason code, after its HELP and TYPE lines (`counts` is None
/// when its lock is poisoned: the lines alone).
fn by_tenant_and_reason(
    out: &mut String,
    name: &str,
    help: &str,
    counts: Option<&BTreeMap<(String, String), u64>>,
) {
    describe(out, name, "counter", help);
    for ((tenant, reason), n) in counts.into_iter().flatten() {
        let _ = writeln!(
            out,
            "{name}{{tenant=\"{}\",reason=\"{}\"}} {n}",
            escape(tenant),
            escape(reason)
        );
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let m = Metrics::new();
        m.decisions_for("acme").inc(DecisionKind::Deny);
        m.decisions_for("acme").inc(DecisionKind::Deny);
        m.latency.observe_ns(300_000);
        m.bundle_rejected("acme", "bad_signature");
        let text = m.render(&Snapshot {
            bundle_versions: vec![("acme".into(), Some(4))],
            sink: SinkStats {
                spool_events: 3,
                ..SinkStats::default()
            },
            ..Snapshot::default()
        });
        assert!(
            text.contains("aegis_decisions_total{tenant=\"acme\",decision=\"deny\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("aegis_decision_duration_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("aegis_decision_duration_seconds_bucket{le=\"0.00025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("aegis_bundle_version{tenant=\"acme\"} 4"),
            "{text}"
        );
        assert!(
            text.contains(
                "aegis_bundles_rejected_total{tenant=\"acme\",reason=\"bad_signature\"} 1"
            )
        );
        assert!(text.contains("aegis_spool_events 3"));
    }
}
