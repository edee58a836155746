//! The replay report: what a candidate would have done to a slice of recorded traffic.
//! Serialized as JSON (schema: `schemas/replay-report.schema.json`, [`SCHEMA`]) and rendered
//! as Markdown by [`crate::markdown`].

use crate::candidate::CandidateInfo;
use crate::engine::{Example, GroupCounts, NotReplayable, Tally};
use crate::histogram::BucketCounts;
use crate::slice::{Bounds, Filter, SliceSpec};
use crate::source::{SkipCause, SliceStats};
use crate::thresholds::ThresholdChange;
use aegis_core::decision::DecisionKind;
use aegis_core::events::{ShadowReportAttached, ShadowSlice, ShadowTransition};
use aegis_core::ids::ChangeId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `schemas/replay-report.schema.json`.
pub const SCHEMA: &str = include_str!("../../schemas/replay-report.schema.json");
/// The `schema_version` this code writes.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// A replay report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub tenant: String,
    /// RFC 3339: when the report was made.
    pub generated_at: String,
    pub candidate: CandidateInfo,
    pub slice: SliceInfo,
    pub counts: Counts,
    /// Share of replayed decisions the candidate denies (None: nothing replayed).
    pub would_deny_rate: Option<f64>,
    /// Share of replayed decisions that were recorded as deny (None: nothing replayed).
    pub recorded_deny_rate: Option<f64>,
    /// Every recorded → candidate pair seen among replayed decisions, unchanged ones included.
    pub transitions: Vec<TransitionCount>,
    pub by_agent: BTreeMap<String, GroupCounts>,
    pub by_tool: BTreeMap<String, GroupCounts>,
    /// The first examples (stream order) of each changed transition.
    pub examples: Vec<TransitionExamples>,
    /// The versions that made the replayed decisions.
    pub recorded_versions: Vec<RecordedVersion>,
    /// For each numeric parameter of the calls whose decision changed: its distribution over
    /// every replayed call of the same tool and action.
    pub histograms: Vec<ParamHistogram>,
    pub thresholds: Thresholds,
}

/// The slice as asked for and as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceInfo {
    pub bounds: BoundsView,
    pub filter: FilterView,
    pub read: SliceStats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BoundsView {
    Sequence {
        from: u64,
        to: Option<u64>,
    },
    Time {
        since: String,
        until: Option<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterView {
    pub agents: Vec<String>,
    pub tools: Vec<String>,
    pub decisions: Vec<DecisionKind>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Records read from the stream (every kind).
    pub records: u64,
    /// Decision events that passed the filter.
    pub decisions: u64,
    pub replayed: u64,
    pub not_replayable: u64,
    /// By cause (every cause listed).
    pub not_replayable_by_cause: BTreeMap<NotReplayable, u64>,
    /// Records not replayed at all, by cause (every cause listed).
    pub skipped: BTreeMap<SkipCause, u64>,
    /// Replayed decisions whose decision changed.
    pub changed: u64,
    pub unchanged: u64,
    /// Unchanged decisions whose reason codes changed.
    pub reasons_changed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionCount {
    pub from: DecisionKind,
    pub to: DecisionKind,
    pub changed: bool,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionExamples {
    pub from: DecisionKind,
    pub to: DecisionKind,
    pub count: u64,
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedVersion {
    pub policy_version: Option<u64>,
    pub bundle_digest: Option<String>,
    pub decisions: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamHistogram {
    pub tool: String,
    pub action: String,
    pub param: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub buckets: Vec<Bucket>,
    /// Bounds on this parameter that the candidate moved (empty when unknown: see
    /// [`Report::thresholds`]).
    pub thresholds: Vec<ThresholdChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Inclusive lower bound (None: unbounded, the bucket of zero and below).
    pub from: Option<f64>,
    /// Exclusive upper bound (inclusive 0 for the bucket of zero and below).
    pub to: f64,
    #[serde(flatten)]
    pub counts: BucketCounts,
}

/// Whether changed bounds could be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdStatus {
    /// The recorded version's compiled data was compared with the candidate's.
    Compared,
    /// Not compared (the recorded version's bundle was not available, or several versions
    /// made the replayed decisions): `changes` is empty and histograms are not marked.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub status: ThresholdStatus,
    /// Why, when unavailable; what was compared, otherwise.
    pub note: String,
    pub changes: Vec<ThresholdChange>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl Report {
    /// Builds a report from a finished tally. Thresholds start as unavailable: see
    /// [`Report::with_thresholds`].
    pub fn build(
        spec: &SliceSpec,
        candidate: CandidateInfo,
        read: SliceStats,
        tally: Tally,
    ) -> Report {
        let bounds = match spec.bounds {
            Bounds::Sequence { from, to } => BoundsView::Sequence { from, to },
            Bounds::Time { since, until } => BoundsView::Time {
                since: rfc3339(since),
                until: until.map(rfc3339),
            },
        };
        let filter = filter_view(&spec.filter);
        let changed: u64 = tally
            .transitions
            .iter()
            .filter(|(t, _)| t.is_change())
            .map(|(_, n)| n)
            .sum();
        let recorded_denies: u64 = tally
            .transitions
            .iter()
            .filter(|(t, _)| t.from == DecisionKind::Deny)
            .map(|(_, n)| n)
            .sum();
        let not_replayable_by_cause: BTreeMap<NotReplayable, u64> = NotReplayable::ALL
            .iter()
            .map(|c| (*c, tally.not_replayable.get(c).copied().unwrap_or(0)))
            .collect();
        let skipped: BTreeMap<SkipCause, u64> = SkipCause::ALL
            .iter()
            .map(|c| (*c, tally.skipped.get(c).copied().unwrap_or(0)))
            .collect();
        let counts = Counts {
            records: read.records,
            decisions: tally.decisions,
            replayed: tally.replayed,
            not_replayable: not_replayable_by_cause.values().sum(),
            not_replayable_by_cause,
            skipped,
            changed,
            unchanged: tally.replayed.saturating_sub(changed),
            reasons_changed: tally.reasons_changed,
        };
        let transitions = tally
            .transitions
            .iter()
            .map(|(t, n)| TransitionCount {
                from: t.from,
                to: t.to,
                changed: t.is_change(),
                count: *n,
            })
            .collect();
        let examples = tally
            .examples
            .into_iter()
            .map(|(t, examples)| TransitionExamples {
                from: t.from,
                to: t.to,
                count: tally.transitions.get(&t).copied().unwrap_or(0),
                examples,
            })
            .collect();
        let recorded_versions = tally
            .recorded_versions
            .into_iter()
            .map(
                |((policy_version, bundle_digest), decisions)| RecordedVersion {
                    policy_version,
                    bundle_digest,
                    decisions,
                },
            )
            .collect();
        let histograms = tally
            .histograms
            .into_iter()
            .filter(|(key, _)| tally.changed_params.contains(key))
            .map(|((tool, action, param), h)| ParamHistogram {
                tool,
                action,
                param,
                min: h.min,
                max: h.max,
                buckets: h
                    .buckets
                    .into_iter()
                    .map(|(key, counts)| {
                        let (from, to) = key.bounds();
                        Bucket { from, to, counts }
                    })
                    .collect(),
                thresholds: Vec::new(),
            })
            .collect();
        Report {
            schema_version: REPORT_SCHEMA_VERSION,
            tenant: spec.tenant.as_str().to_owned(),
            generated_at: rfc3339(OffsetDateTime::now_utc()),
            candidate,
            slice: SliceInfo {
                bounds,
                filter,
                read,
            },
            would_deny_rate: rate(tally.candidate_denies, tally.replayed),
            recorded_deny_rate: rate(recorded_denies, tally.replayed),
            counts,
            transitions,
            by_agent: tally.by_agent,
            by_tool: tally.by_tool,
            examples,
            recorded_versions,
            histograms,
            thresholds: Thresholds {
                status: ThresholdStatus::Unavailable,
                note: "the recorded version's compiled data was not compared with the candidate's"
                    .to_owned(),
                changes: Vec::new(),
            },
        }
    }

    /// The single version that made every replayed decision, if there is one.
    pub fn single_recorded_version(&self) -> Option<&RecordedVersion> {
        match self.recorded_versions.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Records the bounds the candidate moved (from [`crate::thresholds::changed_thresholds`])
    /// and marks each on the histogram of its parameter.
    pub fn with_thresholds(mut self, changes: Vec<ThresholdChange>, note: String) -> Report {
        for h in &mut self.histograms {
            h.thresholds = changes
                .iter()
                .filter(|c| c.tool == h.tool && c.param == h.param && c.actions.contains(&h.action))
                .cloned()
                .collect();
        }
        self.thresholds = Thresholds {
            status: ThresholdStatus::Compared,
            note,
            changes,
        };
        self
    }

    /// Says why thresholds were not compared.
    pub fn thresholds_unavailable(mut self, note: String) -> Report {
        self.thresholds.note = note;
        self
    }

    /// The count of `from → to` among replayed decisions.
    pub fn transition(&self, from: DecisionKind, to: DecisionKind) -> u64 {
        self.transitions
            .iter()
            .find(|t| t.from == from && t.to == to)
            .map_or(0, |t| t.count)
    }

    /// The summary attached to a proposed change (`aegisctl replay --change`): counts,
    /// transitions and the slice read, tied to the full report by `report_digest`. The
    /// candidate digest is the compiled `data.json` the report replayed.
    pub fn shadow_attachment(
        &self,
        change_id: ChangeId,
        report_digest: String,
    ) -> ShadowReportAttached {
        ShadowReportAttached {
            change_id,
            candidate_digest: self.candidate.digest.clone().unwrap_or_default(),
            slice: ShadowSlice {
                first_seq: self.slice.read.first_sequence,
                last_seq: self.slice.read.last_sequence,
                first_time: self.slice.read.first_time.clone(),
                last_time: self.slice.read.last_time.clone(),
            },
            decisions: self.counts.decisions,
            replayed: self.counts.replayed,
            not_replayable: self.counts.not_replayable,
            changed: self.counts.changed,
            would_deny: self
                .transitions
                .iter()
                .filter(|t| t.to == DecisionKind::Deny)
                .map(|t| t.count)
                .sum(),
            transitions: self
                .transitions
                .iter()
                .map(|t| ShadowTransition {
                    from: t.from,
                    to: t.to,
                    count: t.count,
                })
                .collect(),
            report_digest,
        }
    }
}

fn filter_view(filter: &Filter) -> FilterView {
    FilterView {
        agents: filter
            .agents
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        tools: filter.tools.iter().map(|t| t.as_str().to_owned()).collect(),
        decisions: filter.decisions.clone(),
    }
}

static CHECK: crate::schema_check::EmbeddedSchema =
    crate::schema_check::EmbeddedSchema::new("report", SCHEMA);

/// Validates a report (as JSON) against [`SCHEMA`]; the errors, if any.
pub fn validate(report: &Value) -> Result<(), Vec<String>> {
    CHECK.validate(report)
}
