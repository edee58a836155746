//! The readiness task: while a tenant has a rollout candidate, every interval it reads the
//! tenant's new decision records from `AEGIS_DECISIONS` (incrementally: it remembers where it
//! stopped, per tenant and candidate), tallies them with [`aegis_core::readiness::Tally`], and
//! when the counts differ from the latest measurement the fold recorded, publishes a signed
//! `rollout_readiness_measured` on `aegis.changes.<tenant>.readiness`. The fold folds it like
//! any event (and judges promotions by it); nothing here ever waits on or blocks the fold.
//!
//! Measurements are cumulative from the version's publish (the first read starts at the
//! records stored from ten minutes before the version was published, so clocks a little
//! apart lose nothing; only decisions carrying the candidate's answer count anyway). After a
//! restart the task reads the candidate's records again from there, which gives the same
//! counts, so it publishes nothing new until new decisions arrive.
//!
//! Several control planes may run the task at once: a measurement's event id derives from
//! the tenant, version, stream range and counts, so two control planes that read the same
//! records publish the same event (folded once); one that lags publishes an older range, which
//! the fold refuses as stale. The latest measurement wins either way.

use crate::fold::{FoldConfig, derived_event_id};
use crate::records::{TenantRecord, keys};
use crate::store::{Family, Store};
use aegis_core::events::envelope::format_time;
use aegis_core::events::{Envelope, Event, RolloutReadinessMeasured};
use aegis_core::ids::TenantId;
use aegis_core::query::VersionView;
use aegis_core::readiness::{Counts, Tally};
use aegis_nats::Publish;
use aegis_replayer::slice::Bounds;
use async_nats::jetstream;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long before a version's publish its first read starts (clock differences between the
/// control plane that signed the publish and NATS).
const LOOKBACK: time::Duration = time::Duration::minutes(10);
/// How long a read waits for a record it knows is there.
const IDLE: Duration = Duration::from_secs(10);

/// Where the task is with one tenant's candidate.
#[derive(Debug)]
struct Progress {
    tally: Tally,
    /// The counts last published (until the fold records them).
    published: Option<Counts>,
}

/// Runs until aborted: a measurement round every `interval`.
pub async fn run(js: jetstream::Context, store: Arc<Store>, fold: FoldConfig, interval: Duration) {
    let mut progress: BTreeMap<TenantId, Progress> = BTreeMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let records = candidates(&store);
        progress.retain(|t, _| records.iter().any(|r| &r.tenant == t));
        for record in records {
            if let Err(e) = measure(&js, &store, &fold, &mut progress, &record).await {
                tracing::warn!(tenant = %record.tenant, error = %e, "readiness measurement failed; will retry");
            }
        }
    }
}

/// The records of every tenant with a candidate.
fn candidates(store: &Store) -> Vec<TenantRecord> {
    let tenants = crate::records::tenant_ids(store);
    tenants
        .iter()
        .filter_map(|t| {
            store
                .get::<TenantRecord>(Family::State, &keys::tenant(t))
                .ok()
                .flatten()
        })
        .filter(|r| r.candidate.is_some())
        .collect()
}

/// One round for one tenant: read what is new, publish when the counts changed.
async fn measure(
    js: &jetstream::Context,
    store: &Store,
    fold: &FoldConfig,
    progress: &mut BTreeMap<TenantId, Progress>,
    record: &TenantRecord,
) -> Result<(), String> {
    let Some(candidate) = &record.candidate else {
        return Ok(());
    };
    let tenant = &record.tenant;
    let version = candidate.version;
    let p = progress.entry(tenant.clone()).or_insert_with(|| Progress {
        tally: Tally::new(version),
        published: None,
    });
    if p.tally.version() != version {
        *p = Progress {
            tally: Tally::new(version),
            published: None,
        };
    }
    let bounds = match p.tally.range() {
        Some((_, last)) => Bounds::Sequence {
            from: last + 1,
            to: None,
        },
        None => {
            let view = store
                .get::<VersionView>(Family::State, &keys::version(tenant, version))
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("version {version} is not stored"))?;
            let published = aegis_core::events::envelope::parse_time(&view.created_at)
                .map_err(|e| e.to_string())?;
            Bounds::Time {
                since: published - LOOKBACK,
                until: None,
            }
        }
    };
    // Whatever was read before an error stays counted; the next round goes on from there.
    let read = aegis_replayer::readiness::read_into(js, tenant, bounds, IDLE, &mut p.tally).await;
    let counts = p.tally.counts();
    let recorded = record
        .readiness
        .as_ref()
        .filter(|r| r.version == version)
        .and_then(|r| r.measurement.as_ref())
        .map(RolloutReadinessMeasured::counts);
    let changed = match recorded {
        Some(c) => c != counts,
        None => counts.decisions > 0,
    };
    if changed
        && p.published != Some(counts)
        && let Some((from, to)) = p.tally.range()
    {
        let event = RolloutReadinessMeasured {
            version,
            from_sequence: from,
            to_sequence: to,
            decisions: counts.decisions,
            disagreements: counts.disagreements,
            would_deny: counts.would_deny,
            measured_at: String::new(),
            top_agents: p.tally.top_agents(),
            top_tools: p.tally.top_tools(),
        };
        publish(js, fold, tenant, event).await?;
        p.published = Some(counts);
        tracing::info!(%tenant, version, from, to, decisions = counts.decisions, disagreements = counts.disagreements, would_deny = counts.would_deny, "readiness measurement published");
    }
    read.map(|_| ()).map_err(|e| e.to_string())
}

/// Signs `event` (stamped now) as the control plane and publishes it. The id derives from the
/// measurement, so the same measurement published twice is one event.
async fn publish(
    js: &jetstream::Context,
    fold: &FoldConfig,
    tenant: &TenantId,
    mut event: RolloutReadinessMeasured,
) -> Result<(), String> {
    let now = time::OffsetDateTime::now_utc();
    event.measured_at = format_time(now).map_err(|e| e.to_string())?;
    let parts = [
        "readiness".to_owned(),
        tenant.to_string(),
        event.version.to_string(),
        event.from_sequence.to_string(),
        event.to_sequence.to_string(),
        event.decisions.to_string(),
        event.disagreements.to_string(),
        event.would_deny.to_string(),
    ];
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let id = derived_event_id(&parts).ok_or("cannot derive an event id")?;
    let event = Event::RolloutReadinessMeasured(event);
    let subject =
        aegis_nats::topology::change_event_subject(tenant, &event).map_err(|e| e.to_string())?;
    let envelope = Envelope::sign(
        id.clone(),
        tenant.clone(),
        fold.control_plane_actor.clone(),
        &fold.signing_key,
        now,
        event,
    )
    .map_err(|e| e.to_string())?;
    let bytes = envelope.to_bytes().map_err(|e| e.to_string())?;
    aegis_nats::publish(js, Publish::new(subject, bytes).msg_id(id.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
