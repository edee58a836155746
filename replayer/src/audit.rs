//! Audit replay: every recorded decision re-evaluated against the bundle version it records
//! (`policy_version` + `bundle_digest`), fetched from object store `aegis-bundles` by digest
//! and verified with the control plane's key, to prove that the log and the versions agree.
//!
//! The slice is read once, in stream order. The first time a digest is seen its bundle is
//! fetched, checked against the digest, verified (signature, hashes, tenant, and expiry at the
//! time of that decision) and compiled; the evaluator is cached for the rest of the slice. A
//! digest that cannot be fetched, verified or compiled, a verified bundle whose version is not
//! the recorded one, or policies that call a machine-dependent builtin
//! ([`aegis_core::eval::NONDETERMINISTIC_BUILTINS`]) make that version **unverifiable**: its
//! events are counted as such, never as agreeing. Decisions that cannot be evaluated again
//! are counted as not replayable by the replay engine's causes ([`NotReplayable`]).
//!
//! Evaluation runs on worker threads (one per core by default), each fed through its own
//! bounded channel with the event and the evaluator of its version; evaluators keep one
//! regorus VM per thread, so there is no lock on the hot path. Each worker keeps its own
//! [`AuditTally`]; they are merged at the end.
//!
//! A recorded decision **agrees** with its version when the replayed decision and its reason
//! codes (in order) are the recorded ones.

use crate::candidate::{Candidate, CandidateError, CandidateKind, fetch_verified_at};
use crate::engine::NotReplayable;
use crate::report::{BoundsView, FilterView};
use crate::slice::{Bounds, SliceSpec};
use crate::source::{Record, SkipCause, SliceReader, SliceStats, SourceError};
use aegis_core::decision::DecisionKind;
use aegis_core::decision_log::DecisionEvent;
use aegis_core::eval::Evaluator;
use aegis_core::keys::TrustStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::thread::JoinHandle;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

/// `schemas/audit-replay-report.schema.json`.
pub const SCHEMA: &str = include_str!("../../schemas/audit-replay-report.schema.json");
/// The `schema_version` this code writes.
pub const AUDIT_SCHEMA_VERSION: u32 = 1;

/// How an audit replay runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Events queued per worker before the reader waits.
    pub queue: usize,
    /// Most disagreements listed (the first ones, in stream order); `None`: all of them.
    /// Disagreements are always all counted.
    pub max_disagreements: Option<usize>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            workers: 0,
            queue: 256,
            max_disagreements: None,
        }
    }
}

/// Why an audit replay could not finish (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot start an audit worker: {0}")]
    Spawn(std::io::Error),
    #[error("an audit worker stopped early")]
    WorkerGone,
    #[error("an audit worker panicked")]
    WorkerPanicked,
    /// The object store itself could not be opened (as opposed to one digest missing from
    /// it): nothing could be verified, which is not a finding about the log.
    #[error(transparent)]
    Bundles(crate::candidate::CandidateError),
}

/// A recorded version: `policy_version` and `bundle_digest` as the events record them.
pub type VersionKey = (Option<u64>, Option<String>);

/// One side of a disagreement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub decision: DecisionKind,
    pub reasons: Vec<String>,
}

/// A recorded decision its own version decides otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    pub decision_id: String,
    pub sequence: u64,
    pub time: String,
    pub agent: String,
    pub tool: String,
    pub action: String,
    pub policy_version: Option<u64>,
    pub bundle_digest: Option<String>,
    pub recorded: Outcome,
    pub replayed: Outcome,
}

/// Counts for one recorded version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCounts {
    /// Decision events recording this version (replayable or not).
    pub decisions: u64,
    pub checked: u64,
    pub agreeing: u64,
    pub disagreeing: u64,
    pub not_replayable: u64,
    /// Replayable events not checked because the version is unverifiable.
    pub unverifiable: u64,
}

impl VersionCounts {
    fn merge(&mut self, o: &VersionCounts) {
        self.decisions += o.decisions;
        self.checked += o.checked;
        self.agreeing += o.agreeing;
        self.disagreeing += o.disagreeing;
        self.not_replayable += o.not_replayable;
        self.unverifiable += o.unverifiable;
    }
}

/// The mergeable result of checking events. Tallies of disjoint events merge by
/// [`AuditTally::merge`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditTally {
    /// Decision events that passed the filter.
    pub decisions: u64,
    pub checked: u64,
    pub agreeing: u64,
    pub disagreeing: u64,
    pub not_replayable: BTreeMap<NotReplayable, u64>,
    pub unverifiable: u64,
    pub skipped: BTreeMap<SkipCause, u64>,
    pub by_version: BTreeMap<VersionKey, VersionCounts>,
    /// The first disagreements by stream sequence (at most `limit`).
    pub disagreements: Vec<Disagreement>,
    /// How many disagreements to keep (`None`: all).
    pub limit: Option<usize>,
}

fn key(event: &DecisionEvent) -> VersionKey {
    (event.policy_version, event.bundle_digest.clone())
}

fn codes(reasons: &[aegis_core::decision::Reason]) -> Vec<String> {
    reasons.iter().map(|r| r.code.clone()).collect()
}

impl AuditTally {
    pub fn new(limit: Option<usize>) -> AuditTally {
        AuditTally {
            limit,
            ..AuditTally::default()
        }
    }

    fn version(&mut self, event: &DecisionEvent) -> &mut VersionCounts {
        let counts = self.by_version.entry(key(event)).or_default();
        counts.decisions += 1;
        counts
    }

    /// Counts an event that cannot be evaluated again.
    pub fn not_replayable(&mut self, event: &DecisionEvent, cause: NotReplayable) {
        self.decisions += 1;
        *self.not_replayable.entry(cause).or_default() += 1;
        self.version(event).not_replayable += 1;
    }

    /// Counts a replayable event whose version could not be verified.
    pub fn unverifiable(&mut self, event: &DecisionEvent) {
        self.decisions += 1;
        self.unverifiable += 1;
        self.version(event).unverifiable += 1;
    }

    /// Evaluates one replayable event against its own version's evaluator and counts it.
    pub fn check(&mut self, sequence: u64, event: &DecisionEvent, evaluator: &Evaluator) {
        let Some(input) = event.replay_input() else {
            self.not_replayable(event, NotReplayable::MissingInput);
            return;
        };
        self.decisions += 1;
        self.checked += 1;
        let decision = evaluator.decide(&input);
        let recorded = Outcome {
            decision: event.decision,
            reasons: codes(&event.reasons),
        };
        let replayed = Outcome {
            decision: decision.decision,
            reasons: codes(&decision.reasons),
        };
        let agrees = recorded == replayed;
        let counts = self.version(event);
        counts.checked += 1;
        if agrees {
            counts.agreeing += 1;
            self.agreeing += 1;
            return;
        }
        counts.disagreeing += 1;
        self.disagreeing += 1;
        if self.limit.is_none_or(|l| self.disagreements.len() < l) {
            self.disagreements.push(Disagreement {
                decision_id: event.id.clone(),
                sequence,
                time: event.time.clone(),
                agent: input.agent_id.as_str().to_owned(),
                tool: input.tool_id.as_str().to_owned(),
                action: input.action,
                policy_version: event.policy_version,
                bundle_digest: event.bundle_digest.clone(),
                recorded,
                replayed,
            });
        }
    }

    /// Counts a skipped record.
    pub fn skip(&mut self, cause: SkipCause) {
        *self.skipped.entry(cause).or_default() += 1;
    }

    /// Adds `other` (a tally of other events) to this one.
    pub fn merge(&mut self, other: AuditTally) {
        self.decisions += other.decisions;
        self.checked += other.checked;
        self.agreeing += other.agreeing;
        self.disagreeing += other.disagreeing;
        self.unverifiable += other.unverifiable;
        for (k, n) in other.not_replayable {
            *self.not_replayable.entry(k).or_default() += n;
        }
        for (k, n) in other.skipped {
            *self.skipped.entry(k).or_default() += n;
        }
        for (k, c) in &other.by_version {
            self.by_version.entry(k.clone()).or_default().merge(c);
        }
        self.disagreements.extend(other.disagreements);
        self.disagreements.sort_by_key(|d| d.sequence);
        if let Some(limit) = self.limit {
            self.disagreements.truncate(limit);
        }
    }
}

/// The audit's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every replayable decision agrees with its own version, and every version verified.
    Consistent,
    /// At least one disagreement or one unverifiable version.
    Inconsistent,
}

/// Whether a recorded version could be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    /// Fetched, verified and compiled: its decisions were checked.
    Verified,
    /// Could not be fetched, verified or compiled (see `note`): its replayable decisions were
    /// not checked and count as unverifiable.
    Unverifiable,
    /// Only not-replayable decisions record it: nothing was fetched.
    NotNeeded,
}

/// One recorded version in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReport {
    pub policy_version: Option<u64>,
    pub bundle_digest: Option<String>,
    pub status: VersionStatus,
    /// Why unverifiable.
    pub note: Option<String>,
    #[serde(flatten)]
    pub counts: VersionCounts,
}

/// Counts over the slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditCounts {
    /// Records read from the stream (every kind).
    pub records: u64,
    /// Decision events that passed the filter.
    pub decisions: u64,
    /// Replayable decisions evaluated against their own verified version.
    pub checked: u64,
    pub agreeing: u64,
    pub disagreeing: u64,
    pub not_replayable: u64,
    /// By cause (every cause listed).
    pub not_replayable_by_cause: BTreeMap<NotReplayable, u64>,
    /// Replayable decisions whose version is unverifiable.
    pub unverifiable: u64,
    /// Records not checked at all, by cause (every cause listed).
    pub skipped: BTreeMap<SkipCause, u64>,
}

/// The slice as asked for and as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditSlice {
    pub bounds: BoundsView,
    pub filter: FilterView,
    pub read: SliceStats,
}

/// An audit replay report (`schemas/audit-replay-report.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    pub schema_version: u32,
    pub tenant: String,
    /// RFC 3339: when the report was made.
    pub generated_at: String,
    pub verdict: Verdict,
    pub slice: AuditSlice,
    pub counts: AuditCounts,
    /// Every version recorded by a decision of the slice.
    pub versions: Vec<VersionReport>,
    /// The first disagreements in stream order (all of them unless bounded: see
    /// `disagreements_complete`).
    pub disagreements: Vec<Disagreement>,
    /// Whether `disagreements` lists every disagreement.
    pub disagreements_complete: bool,
}

impl AuditReport {
    /// Builds the report from a finished tally and what was learnt about each version.
    pub fn build(
        spec: &SliceSpec,
        read: SliceStats,
        tally: AuditTally,
        status: &BTreeMap<VersionKey, (VersionStatus, Option<String>)>,
    ) -> AuditReport {
        let bounds = match spec.bounds {
            Bounds::Sequence { from, to } => BoundsView::Sequence { from, to },
            Bounds::Time { since, until } => BoundsView::Time {
                since: rfc3339(since),
                until: until.map(rfc3339),
            },
        };
        let filter = FilterView {
            agents: spec
                .filter
                .agents
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            tools: spec
                .filter
                .tools
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            decisions: spec.filter.decisions.clone(),
        };
        let mut not_replayable_by_cause: BTreeMap<NotReplayable, u64> =
            NotReplayable::ALL.iter().map(|c| (*c, 0)).collect();
        for (c, n) in &tally.not_replayable {
            *not_replayable_by_cause.entry(*c).or_default() += n;
        }
        let mut skipped: BTreeMap<SkipCause, u64> =
            SkipCause::ALL.iter().map(|c| (*c, 0)).collect();
        for (c, n) in &tally.skipped {
            *skipped.entry(*c).or_default() += n;
        }
        let versions = tally
            .by_version
            .into_iter()
            .map(|(key, counts)| {
                let (status, note) = status
                    .get(&key)
                    .cloned()
                    .unwrap_or((VersionStatus::NotNeeded, None));
                VersionReport {
                    policy_version: key.0,
                    bundle_digest: key.1,
                    status,
                    note,
                    counts,
                }
            })
            .collect();
        let verdict = if tally.disagreeing == 0 && tally.unverifiable == 0 {
            Verdict::Consistent
        } else {
            Verdict::Inconsistent
        };
        let disagreements_complete = tally.disagreements.len() as u64 == tally.disagreeing;
        AuditReport {
            schema_version: AUDIT_SCHEMA_VERSION,
            tenant: spec.tenant.as_str().to_owned(),
            generated_at: rfc3339(OffsetDateTime::now_utc()),
            verdict,
            counts: AuditCounts {
                records: read.records,
                decisions: tally.decisions,
                checked: tally.checked,
                agreeing: tally.agreeing,
                disagreeing: tally.disagreeing,
                not_replayable: tally.not_replayable.values().sum(),
                not_replayable_by_cause,
                unverifiable: tally.unverifiable,
                skipped,
            },
            slice: AuditSlice {
                bounds,
                filter,
                read,
            },
            versions,
            disagreements: tally.disagreements,
            disagreements_complete,
        }
    }

    pub fn is_consistent(&self) -> bool {
        self.verdict == Verdict::Consistent
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

static CHECK: crate::schema_check::EmbeddedSchema =
    crate::schema_check::EmbeddedSchema::new("audit report", SCHEMA);

/// Validates an audit report (as JSON) against [`SCHEMA`]; the errors, if any.
pub fn validate(report: &Value) -> Result<(), Vec<String>> {
    CHECK.validate(report)
}

type Job = (u64, Box<DecisionEvent>, Evaluator);

/// Worker threads checking events against the evaluator sent with each.
struct Workers {
    senders: Vec<mpsc::Sender<Job>>,
    handles: Vec<JoinHandle<AuditTally>>,
    next: usize,
}

impl Workers {
    fn start(options: AuditOptions) -> Result<Workers, AuditError> {
        let n = if options.workers > 0 {
            options.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for i in 0..n {
            let (tx, mut rx) = mpsc::channel::<Job>(options.queue.max(1));
            let limit = options.max_disagreements;
            let handle = std::thread::Builder::new()
                .name(format!("aegis-audit-{i}"))
                .spawn(move || {
                    let mut tally = AuditTally::new(limit);
                    while let Some((sequence, event, evaluator)) = rx.blocking_recv() {
                        tally.check(sequence, &event, &evaluator);
                    }
                    tally
                })
                .map_err(AuditError::Spawn)?;
            senders.push(tx);
            handles.push(handle);
        }
        Ok(Workers {
            senders,
            handles,
            next: 0,
        })
    }

    async fn push(&mut self, job: Job) -> Result<(), AuditError> {
        let worker = self.next;
        self.next = (self.next + 1) % self.senders.len().max(1);
        let tx = self.senders.get(worker).ok_or(AuditError::WorkerGone)?;
        tx.send(job).await.map_err(|_| AuditError::WorkerGone)
    }

    fn finish(self, mut tally: AuditTally) -> Result<AuditTally, AuditError> {
        drop(self.senders);
        for handle in self.handles {
            let part = handle.join().map_err(|_| AuditError::WorkerPanicked)?;
            tally.merge(part);
        }
        Ok(tally)
    }
}

/// The verified evaluator of each recorded version, fetched once.
struct Versions<'a> {
    js: &'a async_nats::jetstream::Context,
    spec: &'a SliceSpec,
    trust: &'a TrustStore,
    cache: HashMap<VersionKey, Result<Evaluator, String>>,
}

impl Versions<'_> {
    /// The version's evaluator, or why it is unverifiable; an error when the object store
    /// cannot be opened at all.
    async fn evaluator(
        &mut self,
        event: &DecisionEvent,
    ) -> Result<Result<Evaluator, String>, AuditError> {
        let key = key(event);
        if let Some(known) = self.cache.get(&key) {
            return Ok(known.clone());
        }
        let prepared = self.prepare(event).await?;
        self.cache.insert(key, prepared.clone());
        Ok(prepared)
    }

    async fn prepare(
        &self,
        event: &DecisionEvent,
    ) -> Result<Result<Evaluator, String>, AuditError> {
        match self.verified(event).await {
            Err(e @ CandidateError::ObjectStoreUnavailable { .. }) => Err(AuditError::Bundles(e)),
            Err(e) => Ok(Err(e.to_string())),
            Ok(Err(why)) => Ok(Err(why)),
            Ok(Ok(evaluator)) => Ok(Ok(evaluator)),
        }
    }

    async fn verified(
        &self,
        event: &DecisionEvent,
    ) -> Result<Result<Evaluator, String>, CandidateError> {
        let Some(digest) = &event.bundle_digest else {
            return Ok(Err("the decisions record no bundle digest".to_owned()));
        };
        let at = match OffsetDateTime::parse(&event.time, &Rfc3339) {
            Ok(at) => at,
            Err(e) => {
                return Ok(Err(format!(
                    "the decision time {:?} does not parse: {e}",
                    event.time
                )));
            }
        };
        let verified =
            fetch_verified_at(self.js, &self.spec.tenant, digest, self.trust, at).await?;
        if event.policy_version != Some(verified.manifest.version) {
            return Ok(Err(format!(
                "the bundle stored under {digest} is version {}, the decisions record {}",
                verified.manifest.version,
                event
                    .policy_version
                    .map_or_else(|| "none".to_owned(), |v| v.to_string())
            )));
        }
        let candidate =
            Candidate::from_verified(&verified, CandidateKind::PublishedVersion, digest.clone())?;
        let machine = candidate.evaluator.nondeterministic_builtins();
        if !machine.is_empty() {
            return Ok(Err(format!(
                "its policies call {}, whose result depends on the machine: its decisions \
                 cannot be reproduced",
                machine.join(", ")
            )));
        }
        Ok(Ok(candidate.evaluator))
    }

    fn status(&self) -> BTreeMap<VersionKey, (VersionStatus, Option<String>)> {
        self.cache
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Ok(_) => (VersionStatus::Verified, None),
                    Err(e) => (VersionStatus::Unverifiable, Some(e.clone())),
                };
                (k.clone(), s)
            })
            .collect()
    }
}

/// Audits `spec`: each recorded decision against its own recorded version, verified with
/// `trust` (the control plane's public key).
pub async fn audit_replay(
    js: &async_nats::jetstream::Context,
    spec: &SliceSpec,
    trust: &TrustStore,
    options: AuditOptions,
) -> Result<AuditReport, AuditError> {
    let mut reader = SliceReader::open(js, spec).await?;
    let mut versions = Versions {
        js,
        spec,
        trust,
        cache: HashMap::new(),
    };
    let mut workers = Workers::start(options)?;
    let mut local = AuditTally::new(options.max_disagreements);
    while let Some(record) = reader.next().await {
        match record? {
            Record::Skipped { cause, .. } => local.skip(cause),
            Record::Decision { sequence, event } => {
                if let Some(cause) = NotReplayable::of(&event) {
                    local.not_replayable(&event, cause);
                    continue;
                }
                match versions.evaluator(&event).await? {
                    Ok(evaluator) => workers.push((sequence, event, evaluator)).await?,
                    Err(_) => local.unverifiable(&event),
                }
            }
        }
    }
    let tally = workers.finish(local)?;
    Ok(AuditReport::build(
        spec,
        reader.stats().clone(),
        tally,
        &versions.status(),
    ))
}

/// The report for a human: the verdict first, then the counts per version, then the
/// disagreements.
pub fn render_text(report: &AuditReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let c = &report.counts;
    match report.verdict {
        Verdict::Consistent => {
            let _ = writeln!(
                s,
                "CONSISTENT: all {} replayable decisions of tenant {} agree with the version they record",
                c.checked, report.tenant
            );
        }
        Verdict::Inconsistent => {
            let _ = writeln!(
                s,
                "INCONSISTENT: {} disagreement(s), {} decision(s) of unverifiable versions (tenant {})",
                c.disagreeing, c.unverifiable, report.tenant
            );
        }
    }
    let _ = writeln!(
        s,
        "{} records read, {} decisions: {} checked ({} agree, {} disagree), {} not replayable, {} unverifiable",
        c.records,
        c.decisions,
        c.checked,
        c.agreeing,
        c.disagreeing,
        c.not_replayable,
        c.unverifiable
    );
    let causes: Vec<String> = c
        .not_replayable_by_cause
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{} {n}", k.as_str()))
        .collect();
    if !causes.is_empty() {
        let _ = writeln!(s, "not replayable: {}", causes.join(", "));
    }
    let _ = writeln!(s, "\nVersions:");
    let _ = writeln!(
        s,
        "  {:<8} {:<14} {:>9} {:>7} {:>7} {:>8} {:>7} {:>12}  digest",
        "version", "status", "decisions", "checked", "agree", "disagree", "not_rep", "unverifiable"
    );
    for v in &report.versions {
        let status = match v.status {
            VersionStatus::Verified => "verified",
            VersionStatus::Unverifiable => "UNVERIFIABLE",
            VersionStatus::NotNeeded => "not_needed",
        };
        let _ = writeln!(
            s,
            "  {:<8} {:<14} {:>9} {:>7} {:>7} {:>8} {:>7} {:>12}  {}",
            v.policy_version
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            status,
            v.counts.decisions,
            v.counts.checked,
            v.counts.agreeing,
            v.counts.disagreeing,
            v.counts.not_replayable,
            v.counts.unverifiable,
            v.bundle_digest.as_deref().unwrap_or("-"),
        );
        if let Some(note) = &v.note {
            let _ = writeln!(s, "           {note}");
        }
    }
    if !report.disagreements.is_empty() {
        let _ = writeln!(
            s,
            "\nDisagreements ({} of {}):",
            report.disagreements.len(),
            c.disagreeing
        );
        for d in &report.disagreements {
            let _ = writeln!(
                s,
                "  {} seq {} {} agent {} tool {} action {} version {}: recorded {} [{}], replayed {} [{}]",
                d.decision_id,
                d.sequence,
                d.time,
                d.agent,
                d.tool,
                d.action,
                d.policy_version
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                d.recorded.decision,
                d.recorded.reasons.join(", "),
                d.replayed.decision,
                d.replayed.reasons.join(", "),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use aegis_core::ids::TenantId;

    fn disagreement(sequence: u64) -> Disagreement {
        Disagreement {
            decision_id: format!("dec-{sequence}"),
            sequence,
            time: "2026-11-26T08:00:00Z".to_owned(),
            agent: "billing-agent".to_owned(),
            tool: "payments".to_owned(),
            action: "refund".to_owned(),
            policy_version: Some(2),
            bundle_digest: Some("sha256:ab".to_owned()),
            recorded: Outcome {
                decision: DecisionKind::Allow,
                reasons: vec![],
            },
            replayed: Outcome {
                decision: DecisionKind::Deny,
                reasons: vec!["amount_over_limit".to_owned()],
            },
        }
    }

    fn tally(limit: Option<usize>, sequences: &[u64]) -> AuditTally {
        let mut t = AuditTally::new(limit);
        for s in sequences {
            t.decisions += 1;
            t.checked += 1;
            t.disagreeing += 1;
            t.disagreements.push(disagreement(*s));
        }
        t
    }

    #[test]
    fn merged_disagreements_are_in_stream_order_and_bounded() {
        let mut a = tally(Some(3), &[2, 7]);
        a.merge(tally(Some(3), &[1, 5]));
        let seqs: Vec<u64> = a.disagreements.iter().map(|d| d.sequence).collect();
        assert_eq!(seqs, [1, 2, 5]);
        assert_eq!(a.disagreeing, 4);
        let mut all = tally(None, &[9, 3]);
        all.merge(tally(None, &[4]));
        assert_eq!(all.disagreements.len(), 3);
    }

    #[test]
    fn reports_validate_against_the_schema_and_say_why_they_are_inconsistent() {
        let spec = SliceSpec::all(TenantId::new("acme").unwrap());
        let key: VersionKey = (Some(2), Some("sha256:ab".to_owned()));
        let mut t = tally(Some(1), &[4]);
        t.agreeing = 10;
        t.checked += 10;
        t.decisions += 12;
        t.unverifiable = 1;
        t.not_replayable.insert(NotReplayable::DecidedByGateway, 1);
        t.by_version.insert(
            key.clone(),
            VersionCounts {
                decisions: 11,
                checked: 11,
                agreeing: 10,
                disagreeing: 1,
                not_replayable: 0,
                unverifiable: 0,
            },
        );
        let gone: VersionKey = (Some(3), Some("sha256:cd".to_owned()));
        t.by_version.insert(
            gone.clone(),
            VersionCounts {
                decisions: 1,
                unverifiable: 1,
                ..VersionCounts::default()
            },
        );
        let mut status = BTreeMap::new();
        status.insert(key, (VersionStatus::Verified, None));
        status.insert(
            gone,
            (VersionStatus::Unverifiable, Some("not in the store".into())),
        );
        let report = AuditReport::build(&spec, SliceStats::default(), t, &status);
        assert_eq!(report.verdict, Verdict::Inconsistent);
        assert!(report.disagreements_complete);
        let json = serde_json::to_value(&report).unwrap();
        validate(&json).unwrap();
        let text = render_text(&report);
        assert!(text.starts_with("INCONSISTENT"), "{text}");
        assert!(text.contains("UNVERIFIABLE"), "{text}");
        assert!(
            text.contains("recorded allow [], replayed deny [amount_over_limit]"),
            "{text}"
        );

        let clean = AuditReport::build(
            &spec,
            SliceStats::default(),
            AuditTally::new(None),
            &BTreeMap::new(),
        );
        assert!(clean.is_consistent());
        validate(&serde_json::to_value(&clean).unwrap()).unwrap();
        let mut broken = serde_json::to_value(&clean).unwrap();
        broken["verdict"] = "fine".into();
        assert!(validate(&broken).is_err());
    }
}
