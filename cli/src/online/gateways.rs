//! `aegisctl gateways`: the fleet at a glance — which version each gateway enforces for each
//! tenant, against the latest version published for that tenant.
//!
//! Reads every entry of KV bucket `aegis-gateways` (key `<tenant>.<gateway>`, value a JSON
//! [`Heartbeat`]) with an ordered push consumer on its stream (last message per key), and for
//! each tenant its latest version from `aegis.bundles.<tenant>`:
//!
//! - without `--trust`, the last message there, a `bundle_published` envelope read
//!   **unverified** (the gateways verify what they apply, but a forged announcement of a high
//!   version would make every gateway of the tenant look behind here);
//! - with `--trust` (control-plane public keys), the newest `bundle_published` whose envelope
//!   signature verifies with a trusted key: the last message if it does, else the stream's
//!   messages on the subject are read in order (an ordered consumer, what tenant credentials
//!   allow) and newer announcements that do not verify are ignored, and reported.
//!
//! Each gateway is then
//!
//! - `stale` when its record is older than 3 × its `interval_seconds`,
//! - `no bundle` when it enforces nothing for the tenant,
//! - `behind (vN < vM)` when it enforces an older version than the latest published,
//! - `current` otherwise.
//!
//! The fleet has converged when every gateway is current (and at least one reported); else
//! the command exits [`Exit::NotConverged`] (8). `--wait` polls until converged.

use super::render::{Table, truncate};
use crate::duration::{human, parse_duration};
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::envelope::parse_time;
use aegis_core::events::{Event, ReceivedEnvelope};
use aegis_core::heartbeat::Heartbeat;
use aegis_core::ids::TenantId;
use aegis_core::keys::TrustStore;
use aegis_nats::ReadError;
use aegis_nats::ordered::{ConsumeError, ordered};
use aegis_nats::topology::{self, BUNDLES_STREAM, GATEWAYS_KV, kv_stream};
use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::Ordered;
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use time::OffsetDateTime;

/// A gateway whose record is older than this many of its heartbeat intervals is stale.
pub const STALE_AFTER_INTERVALS: u64 = 3;
/// How often `--wait` reads the fleet again.
pub const WAIT_POLL: Duration = Duration::from_millis(500);
/// How long reading the bucket or a bundle subject may wait for the next message.
const READ_IDLE: Duration = Duration::from_secs(10);

/// Options for [`run`]; also the `aegisctl gateways` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GatewaysArgs {
    /// Only this tenant's gateways
    #[arg(long, env = "AEGIS_TENANT", value_name = "T")]
    pub tenant: Option<TenantId>,
    /// Poll until the fleet has converged, for at most DURATION (e.g. 30s); exit 8 if it has
    /// not by then
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Control-plane public key(s): a *.pub.json, a trust file or a directory of *.pub.json.
    /// Only bundle_published announcements signed by a trusted key count as a tenant's latest
    /// version. Without it the latest version is read UNVERIFIED: a forged announcement of a
    /// higher version makes every gateway of the tenant look behind
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub trust: Option<PathBuf>,
}

/// Why the fleet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Subject(#[from] aegis_nats::TopologyError),
    /// `what`: `KV bucket aegis-gateways`, or the bundle subject read back.
    #[error("reading {what}: {source}")]
    Consume {
        what: String,
        #[source]
        source: ConsumeError,
    },
    #[error("reading {what} stalled: {got} of {pending} messages after {idle:?} without one")]
    Stalled {
        what: String,
        got: usize,
        pending: u64,
        idle: Duration,
    },
    #[error("reading {what} failed: {detail}")]
    Read { what: String, detail: String },
    #[error("the latest published version of tenant {tenant}: {source}")]
    Latest {
        tenant: String,
        #[source]
        source: ReadError,
    },
}

impl From<FleetError> for CliError {
    fn from(e: FleetError) -> CliError {
        let exit = match &e {
            FleetError::Subject(_) => Exit::Invalid,
            FleetError::Consume {
                source: ConsumeError::TimedOut { .. },
                ..
            }
            | FleetError::Stalled { .. }
            | FleetError::Latest {
                source: ReadError::TimedOut { .. },
                ..
            } => Exit::Unavailable,
            _ => Exit::Failure,
        };
        CliError {
            exit,
            message: e.to_string(),
        }
    }
}

/// One entry of the bucket, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// `<tenant>.<gateway>`.
    pub key: String,
    pub value: Vec<u8>,
}

/// The latest version published for a tenant, as far as `aegis.bundles.<tenant>` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Latest {
    /// The last message (with a trust store: the newest one signed by a trusted key) is a
    /// `bundle_published` for this version.
    Published {
        version: u64,
        digest: String,
        stage: String,
        /// With a trust store: the newer messages on the subject that did not verify.
        #[serde(skip_serializing_if = "Option::is_none")]
        ignored: Option<Ignored>,
    },
    /// Nothing published yet.
    None,
    /// The last message is not a `bundle_published` envelope of the tenant (with a trust store:
    /// no message is one that verifies).
    Unreadable { detail: String },
}

/// Announcements newer than the latest verified one, ignored because they did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    pub count: u64,
    /// Why the newest of them was ignored.
    pub last: String,
}

/// What was read: every live entry and each tenant's latest version.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub entries: Vec<KvEntry>,
    pub latest: BTreeMap<String, Latest>,
    /// The tenant asked for, if any (reported on even with no gateway).
    pub tenant: Option<TenantId>,
    /// Whether the latest versions were checked against a trust store.
    pub verified: bool,
}

/// A gateway's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Current,
    Behind,
    NoBundle,
    Stale,
    /// The tenant's latest version is not known (nothing readable published).
    Unknown,
    /// The record is not a readable heartbeat.
    Invalid,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayReport {
    pub tenant: String,
    pub gateway: String,
    pub state: State,
    /// `current`, `behind (v3 < v4)`, `no bundle`, `stale (last heartbeat 95s ago)`, ...
    pub status: String,
    pub version: Option<u64>,
    pub latest: Option<u64>,
    /// Seconds since the record was written.
    pub age_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Heartbeat>,
}

/// What `gateways` prints.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub converged: bool,
    /// One line: `all 3 gateways current` or `1 of 3 gateways current: 1 behind, 1 stale`.
    pub summary: String,
    pub gateways: Vec<GatewayReport>,
    /// Each tenant's latest published version.
    pub latest: BTreeMap<String, Latest>,
    /// Whether only announcements signed by a trusted key (`--trust`) counted as the latest.
    pub latest_verified: bool,
}

/// Reads the bucket (only `tenant`'s keys when given) and the latest version of each tenant
/// seen (see [`latest_published`] for `trust`).
pub async fn read_fleet(
    js: &jetstream::Context,
    tenant: Option<&TenantId>,
    trust: Option<&TrustStore>,
) -> Result<Fleet, FleetError> {
    let filter = match tenant {
        Some(t) => format!(
            "$KV.{GATEWAYS_KV}.{}.>",
            topology::subject_token(t.as_str())?
        ),
        None => format!("$KV.{GATEWAYS_KV}.>"),
    };
    let what = format!("KV bucket {GATEWAYS_KV}");
    let (messages, pending) = ordered(
        js,
        &kv_stream(GATEWAYS_KV),
        &filter,
        DeliverPolicy::LastPerSubject,
        "aegisctl-gateways",
    )
    .await
    .map_err(|source| FleetError::Consume {
        what: what.clone(),
        source,
    })?;
    let mut entries = Vec::new();
    let prefix = format!("$KV.{GATEWAYS_KV}.");
    drain(messages, pending, u64::MAX, &what, |message| {
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if !deleted {
            let subject = message.subject.as_str();
            entries.push(KvEntry {
                key: subject.strip_prefix(&prefix).unwrap_or(subject).to_owned(),
                value: message.payload.to_vec(),
            });
        }
    })
    .await?;
    let mut tenants: Vec<String> = entries
        .iter()
        .filter_map(|e| e.key.split_once('.').map(|(t, _)| t.to_owned()))
        .collect();
    if let Some(t) = tenant {
        tenants.push(t.to_string());
    }
    tenants.sort();
    tenants.dedup();
    let mut latest = BTreeMap::new();
    for name in tenants {
        let Ok(id) = TenantId::new(name.clone()) else {
            latest.insert(
                name.clone(),
                Latest::Unreadable {
                    detail: format!("{name:?} is not a tenant id"),
                },
            );
            continue;
        };
        let found = latest_published(js, &id, trust).await?;
        latest.insert(name, found);
    }
    Ok(Fleet {
        entries,
        latest,
        tenant: tenant.cloned(),
        verified: trust.is_some(),
    })
}

/// Hands `each` every message of an ordered consumer, in stream order, until none is pending (`pending`: when the consumer was created) or the message at
/// stream sequence `until` or later has been handed over.
async fn drain(
    messages: Ordered,
    pending: u64,
    until: u64,
    what: &str,
    mut each: impl FnMut(&jetstream::Message),
) -> Result<(), FleetError> {
    if pending == 0 {
        return Ok(());
    }
    let read = |detail: String| FleetError::Read {
        what: what.to_owned(),
        detail,
    };
    let mut messages = Box::pin(messages);
    let mut got = 0usize;
    loop {
        let message = match tokio::time::timeout(READ_IDLE, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(read(e.to_string())),
            Ok(None) => return Err(read("the consumer ended".to_owned())),
            Err(_) => {
                return Err(FleetError::Stalled {
                    what: what.to_owned(),
                    got,
                    pending,
                    idle: READ_IDLE,
                });
            }
        };
        got = got.saturating_add(1);
        let info = message
            .info()
            .map_err(|e| read(format!("message without JetStream info: {e}")))?;
        let (seq, left) = (info.stream_sequence, info.pending);
        each(&message);
        if left == 0 || seq >= until {
            return Ok(());
        }
    }
}

/// The tenant's latest version from `aegis.bundles.<tenant>`. Without `trust`: the last
/// message there, unverified. With `trust`: the newest `bundle_published` signed by a trusted
/// key — the last message if it verifies, else found by reading the subject's messages in order
/// with an ordered consumer (direct gets by sequence are not allowed to tenant operators); the
/// newer ones that did not verify are counted in [`Latest::Published::ignored`].
pub async fn latest_published(
    js: &jetstream::Context,
    tenant: &TenantId,
    trust: Option<&TrustStore>,
) -> Result<Latest, FleetError> {
    let subject = topology::bundles_subject(tenant)?;
    let last = aegis_nats::last_message(js, BUNDLES_STREAM, &subject)
        .await
        .map_err(|source| FleetError::Latest {
            tenant: tenant.to_string(),
            source,
        })?;
    let Some(last) = last else {
        return Ok(Latest::None);
    };
    let Some(trust) = trust else {
        return Ok(latest_from(tenant, &last.payload));
    };
    if let Ok(latest) = verified_from(tenant, &last.payload, trust) {
        return Ok(latest);
    }
    // Walk back: the newest message that verifies, and how many after it did not.
    let (messages, pending) = ordered(
        js,
        BUNDLES_STREAM,
        &subject,
        DeliverPolicy::All,
        "aegisctl-gateways",
    )
    .await
    .map_err(|source| FleetError::Consume {
        what: subject.clone(),
        source,
    })?;
    let mut newest: Option<Latest> = None;
    let mut ignored: Option<Ignored> = None;
    drain(
        messages,
        pending,
        last.sequence,
        &subject,
        |message| match verified_from(tenant, &message.payload, trust) {
            Ok(latest) => {
                newest = Some(latest);
                ignored = None;
            }
            Err(why) => {
                let count = ignored.as_ref().map_or(0, |i| i.count).saturating_add(1);
                ignored = Some(Ignored { count, last: why });
            }
        },
    )
    .await?;
    Ok(match newest {
        Some(Latest::Published {
            version,
            digest,
            stage,
            ..
        }) => Latest::Published {
            version,
            digest,
            stage,
            ignored,
        },
        Some(other) => other,
        None => Latest::Unreadable {
            detail: format!(
                "no bundle_published on {subject} is signed by a trusted key{}",
                ignored
                    .map(|i| format!(" (the last bundle event {})", i.last))
                    .unwrap_or_default()
            ),
        },
    })
}

/// Reads a `bundle_published` envelope of `tenant` (signature not checked).
pub fn latest_from(tenant: &TenantId, payload: &[u8]) -> Latest {
    match ReceivedEnvelope::parse(payload) {
        Err(e) => Latest::Unreadable {
            detail: format!("the last bundle event is not an envelope: {e}"),
        },
        Ok(received) => published_from(tenant, received).unwrap_or_else(|why| Latest::Unreadable {
            detail: format!("the last bundle event {why}"),
        }),
    }
}

/// Reads a `bundle_published` envelope of `tenant` whose signature verifies with a key in
/// `trust` (not revoked); else why not (`is signed by key …, which is not trusted`, …).
pub fn verified_from(
    tenant: &TenantId,
    payload: &[u8],
    trust: &TrustStore,
) -> Result<Latest, String> {
    let received =
        ReceivedEnvelope::parse(payload).map_err(|e| format!("is not an envelope: {e}"))?;
    let key = trust
        .lookup(&received.envelope.key_id)
        .map_err(|e| format!("is signed by a key that is not accepted: {e}"))?;
    received
        .verify(key)
        .map_err(|e| format!("does not verify: {e}"))?;
    published_from(tenant, received)
}

/// The version a (parsed) `bundle_published` envelope of `tenant` announces; else why it is
/// not one (`is for tenant …`, `is a …, not bundle_published`).
fn published_from(tenant: &TenantId, received: ReceivedEnvelope) -> Result<Latest, String> {
    if &received.envelope.tenant != tenant {
        return Err(format!(
            "on tenant {tenant}'s subject is for tenant {}",
            received.envelope.tenant
        ));
    }
    match received.envelope.event {
        Event::BundlePublished(b) => Ok(Latest::Published {
            version: b.version,
            digest: b.digest,
            stage: b.stage.to_string(),
            ignored: None,
        }),
        other => Err(format!("is a {}, not bundle_published", other.event_type())),
    }
}

/// Judges every gateway against its tenant's latest version at `now`.
pub fn assess(fleet: &Fleet, now: OffsetDateTime) -> FleetReport {
    let mut gateways: Vec<GatewayReport> = fleet
        .entries
        .iter()
        .map(|entry| assess_one(entry, &fleet.latest, now))
        .collect();
    gateways.sort_by(|a, b| (&a.tenant, &a.gateway).cmp(&(&b.tenant, &b.gateway)));
    let total = gateways.len();
    let current = gateways
        .iter()
        .filter(|g| g.state == State::Current)
        .count();
    let converged = total > 0 && current == total;
    let summary = if total == 0 {
        match &fleet.tenant {
            Some(t) => format!("no gateway has reported for tenant {t}"),
            None => "no gateway has reported".to_owned(),
        }
    } else if converged {
        format!(
            "all {total} gateway{} current",
            if total == 1 { "" } else { "s" }
        )
    } else {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for g in gateways.iter().filter(|g| g.state != State::Current) {
            let name = match g.state {
                State::Behind => "behind",
                State::NoBundle => "without a bundle",
                State::Stale => "stale",
                State::Unknown => "with an unknown latest version",
                State::Invalid => "with an unreadable record",
                State::Current => "current",
            };
            *counts.entry(name).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!(
            "{current} of {total} gateways current: {}; not converged",
            parts.join(", ")
        )
    };
    FleetReport {
        converged,
        summary,
        gateways,
        latest: fleet.latest.clone(),
        latest_verified: fleet.verified,
    }
}

fn assess_one(
    entry: &KvEntry,
    latest: &BTreeMap<String, Latest>,
    now: OffsetDateTime,
) -> GatewayReport {
    let (key_tenant, key_gateway) = entry
        .key
        .split_once('.')
        .unwrap_or((entry.key.as_str(), ""));
    let latest_version = match latest.get(key_tenant) {
        Some(Latest::Published { version, .. }) => Some(*version),
        _ => None,
    };
    let invalid = |status: String| GatewayReport {
        tenant: key_tenant.to_owned(),
        gateway: key_gateway.to_owned(),
        state: State::Invalid,
        status,
        version: None,
        latest: latest_version,
        age_seconds: None,
        heartbeat: None,
    };
    let heartbeat: Heartbeat = match serde_json::from_slice(&entry.value) {
        Ok(h) => h,
        Err(e) => return invalid(format!("unreadable record: {e}")),
    };
    if heartbeat.tenant.as_str() != key_tenant || heartbeat.gateway != key_gateway {
        return invalid(format!(
            "record of {}.{} under key {}",
            heartbeat.tenant, heartbeat.gateway, entry.key
        ));
    }
    let updated = match parse_time(&heartbeat.updated_at) {
        Ok(t) => t,
        Err(e) => return invalid(format!("unreadable updated_at: {e}")),
    };
    let age = u64::try_from((now - updated).whole_seconds()).unwrap_or(0);
    let stale_after = heartbeat
        .interval_seconds
        .max(1)
        .saturating_mul(STALE_AFTER_INTERVALS);
    let (state, status) = if age > stale_after {
        (
            State::Stale,
            format!(
                "stale (last heartbeat {} ago)",
                human(Duration::from_secs(age))
            ),
        )
    } else {
        match (heartbeat.version, latest.get(key_tenant)) {
            (None, _) => (State::NoBundle, "no bundle".to_owned()),
            (Some(v), Some(Latest::Published { version, .. })) if v < *version => {
                (State::Behind, format!("behind (v{v} < v{version})"))
            }
            (Some(_), Some(Latest::Published { .. })) => (State::Current, "current".to_owned()),
            (Some(_), Some(Latest::None) | None) => (
                State::Unknown,
                "unknown (nothing published for the tenant)".to_owned(),
            ),
            (Some(_), Some(Latest::Unreadable { detail })) => {
                (State::Unknown, format!("unknown ({detail})"))
            }
        }
    };
    GatewayReport {
        tenant: key_tenant.to_owned(),
        gateway: key_gateway.to_owned(),
        state,
        status,
        version: heartbeat.version,
        latest: latest_version,
        age_seconds: Some(age),
        heartbeat: Some(heartbeat),
    }
}

/// The report as text: the table, each gateway's last bundle rejection, the summary.
pub fn write_report(report: &FleetReport, out: &mut dyn Write) -> std::io::Result<()> {
    let version = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("v{v}"));
    if !report.gateways.is_empty() {
        let mut table = Table::new(&[
            "TENANT",
            "GATEWAY",
            "SITE",
            "VERSION",
            "LATEST",
            "STATUS",
            "READY",
            "SPOOL",
            "LAST-SEEN",
        ]);
        for g in &report.gateways {
            let hb = g.heartbeat.as_ref();
            table.row(vec![
                g.tenant.clone(),
                g.gateway.clone(),
                hb.and_then(|h| h.site.clone())
                    .unwrap_or_else(|| "-".to_owned()),
                version(g.version),
                version(g.latest),
                truncate(&g.status, 80),
                hb.map_or("-", |h| if h.ready { "yes" } else { "no" })
                    .to_owned(),
                hb.map_or_else(|| "-".to_owned(), |h| h.spool_events.to_string()),
                g.age_seconds.map_or_else(
                    || "-".to_owned(),
                    |a| format!("{} ago", human(Duration::from_secs(a))),
                ),
            ]);
        }
        table.write(out)?;
        for g in &report.gateways {
            if let Some(h) = g.heartbeat.as_ref().filter(|h| h.rejected > 0) {
                writeln!(
                    out,
                    "{}/{}: {} bundle{} rejected since start, last: {}",
                    g.tenant,
                    g.gateway,
                    h.rejected,
                    if h.rejected == 1 { "" } else { "s" },
                    h.last_rejection.as_deref().unwrap_or("-")
                )?;
            }
        }
    }
    for (tenant, latest) in &report.latest {
        if let Latest::Published {
            version,
            ignored: Some(ignored),
            ..
        } = latest
        {
            writeln!(
                out,
                "{tenant}: latest v{version} is the newest announcement signed by a trusted key; \
                 {} newer ignored, the last {}",
                ignored.count, ignored.last
            )?;
        }
    }
    writeln!(out, "{}", report.summary)
}

/// Reads and judges the fleet; with `--wait`, again every [`WAIT_POLL`] until it has converged
/// or the wait is over. Prints the last report. Exit 0 when converged, 8 otherwise.
pub async fn run(js: &jetstream::Context, args: &GatewaysArgs, out: &mut dyn Write) -> CliResult {
    let trust = match &args.trust {
        Some(path) => Some(super::audit::load_trust(path)?),
        None => None,
    };
    let deadline = args.wait.map(|w| tokio::time::Instant::now() + w);
    let report = loop {
        let fleet = read_fleet(js, args.tenant.as_ref(), trust.as_ref()).await?;
        let report = assess(&fleet, OffsetDateTime::now_utc());
        match deadline {
            Some(deadline) if !report.converged && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(WAIT_POLL).await;
            }
            _ => break report,
        }
    };
    if args.json {
        write_json(out, &report)?;
    } else {
        write_report(&report, out)?;
    }
    Ok(if report.converged {
        Exit::Ok
    } else {
        Exit::NotConverged
    })
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
    use aegis_core::events::{BundlePublished, Envelope, RolloutStage};
    use aegis_core::keys::Keypair;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn heartbeat(tenant: &str, gateway: &str, version: Option<u64>, age: i64) -> KvEntry {
        let updated = now() - time::Duration::seconds(age);
        let hb = Heartbeat {
            gateway: gateway.into(),
            site: Some("edge-1".into()),
            tenant: tenant.parse().unwrap(),
            version,
            digest: version.map(|v| format!("sha256:{v}")),
            applied_at: None,
            stage: None,
            candidate_version: None,
            ready: version.is_some(),
            rejected: 0,
            last_rejection: None,
            spool_events: 2,
            started_at: "2026-01-01T00:00:00Z".into(),
            updated_at: aegis_core::events::envelope::format_time(updated).unwrap(),
            interval_seconds: 10,
            build: "test".into(),
        };
        KvEntry {
            key: format!("{tenant}.{gateway}"),
            value: serde_json::to_vec(&hb).unwrap(),
        }
    }

    fn published(version: u64) -> Latest {
        Latest::Published {
            version,
            digest: "sha256:x".into(),
            stage: "global".into(),
            ignored: None,
        }
    }

    #[test]
    fn each_gateway_is_judged_against_its_tenant() {
        let mut latest = BTreeMap::new();
        latest.insert("acme".to_owned(), published(4));
        latest.insert("globex".to_owned(), Latest::None);
        let mut rejected = heartbeat("acme", "gw5", Some(4), 1);
        let mut hb: Heartbeat = serde_json::from_slice(&rejected.value).unwrap();
        hb.rejected = 2;
        hb.last_rejection = Some("v5 bad_signature: nope".into());
        rejected.value = serde_json::to_vec(&hb).unwrap();
        let fleet = Fleet {
            entries: vec![
                heartbeat("acme", "gw1", Some(4), 5),
                heartbeat("acme", "gw2", Some(3), 5),
                heartbeat("acme", "gw3", Some(4), 31),
                heartbeat("acme", "gw4", None, 5),
                rejected,
                heartbeat("globex", "gw1", Some(1), 5),
                KvEntry {
                    key: "acme.gw6".into(),
                    value: b"not json".to_vec(),
                },
            ],
            latest,
            tenant: None,
            verified: false,
        };
        let report = assess(&fleet, now());
        let status: Vec<(&str, &str, &str)> = report
            .gateways
            .iter()
            .map(|g| (g.tenant.as_str(), g.gateway.as_str(), g.status.as_str()))
            .collect();
        assert_eq!(status[0], ("acme", "gw1", "current"));
        assert_eq!(status[1], ("acme", "gw2", "behind (v3 < v4)"));
        assert_eq!(status[2], ("acme", "gw3", "stale (last heartbeat 31s ago)"));
        assert_eq!(status[3], ("acme", "gw4", "no bundle"));
        assert_eq!(status[4], ("acme", "gw5", "current"));
        assert_eq!(status[5].2.split(':').next(), Some("unreadable record"));
        assert_eq!(
            status[6],
            (
                "globex",
                "gw1",
                "unknown (nothing published for the tenant)"
            )
        );
        assert!(!report.converged);
        assert_eq!(
            report.summary,
            "2 of 7 gateways current: 1 behind, 1 stale, 1 with an unknown latest version, \
             1 with an unreadable record, 1 without a bundle; not converged"
        );
        let mut out = Vec::new();
        write_report(&report, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("TENANT  GATEWAY  SITE"), "{text}");
        assert!(
            text.contains("acme/gw5: 2 bundles rejected since start, last: v5 bad_signature: nope"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["converged"], false);
        assert_eq!(json["gateways"][1]["state"], "behind");
        assert_eq!(json["latest"]["acme"]["state"], "published");
        assert_eq!(json["latest"]["acme"]["version"], 4);
    }

    #[test]
    fn convergence() {
        let mut latest = BTreeMap::new();
        latest.insert("acme".to_owned(), published(4));
        let fleet = Fleet {
            entries: vec![
                heartbeat("acme", "gw1", Some(4), 5),
                heartbeat("acme", "gw2", Some(5), 0),
            ],
            latest: latest.clone(),
            tenant: None,
            verified: false,
        };
        let report = assess(&fleet, now());
        assert!(report.converged, "{report:?}");
        assert_eq!(report.summary, "all 2 gateways current");
        let empty = Fleet {
            entries: vec![],
            latest,
            tenant: Some("acme".parse().unwrap()),
            verified: false,
        };
        let report = assess(&empty, now());
        assert!(!report.converged);
        assert_eq!(report.summary, "no gateway has reported for tenant acme");
    }

    #[test]
    fn the_latest_version_comes_from_a_bundle_published_envelope() {
        let key = Keypair::from_seed(&[3; 32]);
        let acme: TenantId = "acme".parse().unwrap();
        let envelope = Envelope::sign(
            aegis_core::ids::EventId::random().unwrap(),
            acme.clone(),
            "controlplane".parse().unwrap(),
            &key,
            now(),
            Event::BundlePublished(BundlePublished {
                version: 7,
                digest: "sha256:abc".into(),
                size: 10,
                created_at: "2026-01-01T00:00:00Z".into(),
                change_id: None,
                rollback_of: None,
                stage: RolloutStage::Global,
                signer: key.key_id().clone(),
            }),
        )
        .unwrap();
        let bytes = envelope.to_bytes().unwrap();
        assert_eq!(
            latest_from(&acme, &bytes),
            Latest::Published {
                version: 7,
                digest: "sha256:abc".into(),
                stage: "global".into(),
                ignored: None,
            }
        );
        assert!(matches!(
            latest_from(&"globex".parse().unwrap(), &bytes),
            Latest::Unreadable { .. }
        ));
        assert!(matches!(
            latest_from(&acme, b"BundlePublished sha256-abc"),
            Latest::Unreadable { .. }
        ));

        // With a trust store: only the trusted key's signature counts.
        let mut trust = TrustStore::new();
        trust.trust(key.public_key().clone());
        assert_eq!(
            verified_from(&acme, &bytes, &trust),
            Ok(latest_from(&acme, &bytes))
        );
        let rogue = Keypair::from_seed(&[4; 32]);
        let forged = Envelope::sign(
            aegis_core::ids::EventId::random().unwrap(),
            acme.clone(),
            "controlplane".parse().unwrap(),
            &rogue,
            now(),
            envelope.event.clone(),
        )
        .unwrap()
        .to_bytes()
        .unwrap();
        let why = verified_from(&acme, &forged, &trust).unwrap_err();
        assert!(why.contains("not trusted"), "{why}");
        let tampered = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"version\":7", "\"version\":99");
        assert_ne!(tampered.as_bytes(), bytes.as_slice());
        let why = verified_from(&acme, tampered.as_bytes(), &trust).unwrap_err();
        assert!(why.contains("does not verify"), "{why}");
        trust.revoke(key.key_id().clone());
        let why = verified_from(&acme, &bytes, &trust).unwrap_err();
        assert!(why.contains("revoked"), "{why}");
    }

    #[test]
    fn ignored_announcements_are_reported() {
        let mut latest = BTreeMap::new();
        latest.insert(
            "acme".to_owned(),
            Latest::Published {
                version: 2,
                digest: "sha256:x".into(),
                stage: "global".into(),
                ignored: Some(Ignored {
                    count: 1,
                    last: "is signed by a key that is not accepted: key k is not trusted".into(),
                }),
            },
        );
        let fleet = Fleet {
            entries: vec![heartbeat("acme", "gw1", Some(2), 1)],
            latest,
            tenant: None,
            verified: true,
        };
        let report = assess(&fleet, now());
        assert!(report.converged);
        let mut out = Vec::new();
        write_report(&report, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "acme: latest v2 is the newest announcement signed by a trusted key; 1 newer \
                 ignored, the last is signed by a key that is not accepted: key k is not trusted"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["latest_verified"], true);
        assert_eq!(json["latest"]["acme"]["ignored"]["count"], 1);
    }
}
