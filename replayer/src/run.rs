//! One replay end to end: read a slice from JetStream, feed the engine, build the report.

use crate::candidate::Candidate;
use crate::engine::{Engine, EngineError, EngineOptions};
use crate::report::Report;
use crate::slice::SliceSpec;
use crate::source::{SliceReader, SourceError};
use crate::thresholds::changed_thresholds;
use aegis_core::keys::TrustStore;

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Replays `spec` against `candidate`.
pub async fn replay(
    js: &async_nats::jetstream::Context,
    spec: &SliceSpec,
    candidate: &Candidate,
    options: EngineOptions,
) -> Result<Report, ReplayError> {
    let mut reader = SliceReader::open(js, spec).await?;
    let engine = Engine::new(candidate.evaluator.clone(), options);
    let mut session = engine.start()?;
    while let Some(record) = reader.next().await {
        session.push(record?).await?;
    }
    let tally = session.finish()?;
    Ok(Report::build(
        spec,
        candidate.info.clone(),
        reader.stats().clone(),
        tally,
    ))
}

/// Marks the bounds the candidate moved, when every replayed decision was made by one
/// version: fetches that version's bundle from object store `aegis-bundles`, verifies it with
/// `trust`, and compares its compiled data with the candidate's. Otherwise says why not.
pub async fn mark_thresholds(
    js: &async_nats::jetstream::Context,
    report: Report,
    candidate: &Candidate,
    trust: Option<&TrustStore>,
) -> Report {
    let Some(candidate_data) = &candidate.data else {
        return report.thresholds_unavailable("the candidate's data.json does not parse".into());
    };
    let Some(recorded) = report.single_recorded_version().cloned() else {
        let n = report.recorded_versions.len();
        return report.thresholds_unavailable(format!(
            "{n} recorded versions made the replayed decisions (thresholds are compared for one)"
        ));
    };
    let Some(digest) = recorded.bundle_digest else {
        return report
            .thresholds_unavailable("the replayed decisions record no bundle digest".into());
    };
    let Some(trust) = trust else {
        return report.thresholds_unavailable(format!(
            "no trust store to verify the recorded bundle {digest} with"
        ));
    };
    let Ok(tenant) = aegis_core::ids::TenantId::new(report.tenant.clone()) else {
        return report.thresholds_unavailable("invalid tenant".into());
    };
    match crate::candidate::fetch_verified(js, &tenant, &digest, trust).await {
        Ok(verified) => match crate::candidate::bundle_data(&verified) {
            Some(recorded_data) => {
                let changes = changed_thresholds(&tenant, &recorded_data, candidate_data);
                let note = format!(
                    "compiled data of recorded version {} ({digest}) against the candidate's",
                    verified.manifest.version
                );
                report.with_thresholds(changes, note)
            }
            None => report.thresholds_unavailable(format!(
                "the recorded bundle {digest} has no readable data.json"
            )),
        },
        Err(e) => report.thresholds_unavailable(format!("recorded bundle unavailable: {e}")),
    }
}
