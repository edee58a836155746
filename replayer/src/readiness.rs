//! Rollout readiness on the decision stream: reads a tenant's `AEGIS_DECISIONS` records into an
//! [`aegis_core::readiness::Tally`] for one candidate version. Used by the control plane's
//! readiness task (incrementally, every interval) and by `aegisctl rollout readiness` (once,
//! on demand); both count exactly the same way.

use crate::slice::{Bounds, Filter, SliceSpec};
use crate::source::{Record, SliceReader, SourceError};
use aegis_core::ids::TenantId;
use aegis_core::readiness::Tally;
use async_nats::jetstream;
use std::time::Duration;

/// Reads `tenant`'s decision records from `bounds` to the end of the stream as it is when
/// reading starts, adding each to `tally`. Returns the last stream sequence read (None when
/// nothing was there). On an error the records read so far stay counted, and
/// [`Tally::range`] says how far it got.
pub async fn read_into(
    js: &jetstream::Context,
    tenant: &TenantId,
    bounds: Bounds,
    idle: Duration,
    tally: &mut Tally,
) -> Result<Option<u64>, SourceError> {
    let spec = SliceSpec {
        tenant: tenant.clone(),
        bounds,
        filter: Filter::default(),
    };
    let mut reader = SliceReader::open(js, &spec).await?.with_idle_timeout(idle);
    let mut last = None;
    while let Some(record) = reader.next().await {
        match record? {
            Record::Decision { sequence, event } => {
                tally.add(sequence, &event);
                last = Some(sequence);
            }
            Record::Skipped { sequence, .. } => {
                tally.saw(sequence);
                last = Some(sequence);
            }
        }
    }
    Ok(last)
}
