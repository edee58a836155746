//! Rollout readiness: how a candidate version compares with the version beside it on live
//! traffic, and whether that is good enough to promote it.
//!
//! During a rollout every decision event of the tenant carries two answers (see
//! [`crate::decision_log::DecisionEvent`]): the enforced one (`decision`, `policy_version`)
//! and the other version's (`shadow`). In `shadow` stage the enforced answer is the stable
//! version's and `shadow` the candidate's; in `partial` stage the cohort's enforced answer is
//! the candidate's and `shadow` the stable version's. [`Tally`] counts, for one candidate
//! version, the decisions that carry both its answer and another version's, how many of them
//! disagree, and how many the candidate would deny where the other version did not.
//!
//! [`verdict`] weighs such counts against a tenant's [`ReadinessThresholds`]. Everything is
//! integer arithmetic (rates in basis points, 1/10,000), so the control plane's fold, which
//! applies the verdict when a version is promoted, stays deterministic.
//!
//! This module is pure: the control plane's readiness task and `aegisctl rollout readiness`
//! feed it decision events read from `AEGIS_DECISIONS`.

use crate::decision::DecisionKind;
use crate::decision_log::DecisionEvent;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use time::OffsetDateTime;

/// A tenant's conditions for promoting a candidate by a publisher alone (`tenant_configured`,
/// `rollout_readiness`). Below them a promotion needs another actor's approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessThresholds {
    /// Whole days the version must have been the candidate (shadow or partial), counted from
    /// the event that published it to the event that promotes it.
    pub min_shadow_days: u32,
    /// Most disagreements allowed, in basis points of the decisions compared (100 = 1%).
    pub max_disagreement_basis_points: u32,
    /// Fewest decisions compared (carrying both answers) for the rate to mean anything.
    pub min_decisions: u64,
}

impl Default for ReadinessThresholds {
    /// At least 7 days in shadow, at most 1% disagreement, over at least 100 decisions.
    fn default() -> Self {
        Self {
            min_shadow_days: 7,
            max_disagreement_basis_points: 100,
            min_decisions: 100,
        }
    }
}

/// The two answers a decision event holds about one candidate version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sides {
    /// The candidate's answer.
    pub candidate: DecisionKind,
    /// The other version's answer (the stable version's).
    pub other: DecisionKind,
}

impl Sides {
    /// Whether the two answers differ.
    pub fn disagree(self) -> bool {
        self.candidate != self.other
    }

    /// Whether the candidate denies where the other version did not.
    pub fn would_deny(self) -> bool {
        self.candidate == DecisionKind::Deny && self.other != DecisionKind::Deny
    }
}

/// The candidate's and the other version's answers in `event`, if it carries both: one of
/// `policy_version` and `shadow.policy_version` is `version`, the other another version.
pub fn sides(event: &DecisionEvent, version: u64) -> Option<Sides> {
    let shadow = event.shadow.as_ref()?;
    let enforced = event.policy_version?;
    let beside = shadow.policy_version?;
    if enforced == version && beside != version {
        Some(Sides {
            candidate: event.decision,
            other: shadow.decision,
        })
    } else if beside == version && enforced != version {
        Some(Sides {
            candidate: shadow.decision,
            other: event.decision,
        })
    } else {
        None
    }
}

/// Decisions compared, and how many disagreed or would be denied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Decisions carrying both the candidate's and the other version's answer.
    pub decisions: u64,
    /// Of those, the ones where the two answers differ.
    pub disagreements: u64,
    /// Of those, the ones the candidate denies and the other version did not.
    pub would_deny: u64,
}

impl Counts {
    fn add(&mut self, sides: Sides) {
        self.decisions = self.decisions.saturating_add(1);
        if sides.disagree() {
            self.disagreements = self.disagreements.saturating_add(1);
        }
        if sides.would_deny() {
            self.would_deny = self.would_deny.saturating_add(1);
        }
    }

    /// Disagreements in basis points of the decisions, rounded up (0 without decisions).
    pub fn disagreement_basis_points(&self) -> u64 {
        basis_points_ceil(self.disagreements, self.decisions)
    }

    /// Whether the disagreement rate is at most `max` basis points (exact, no rounding).
    pub fn disagreement_within(&self, max: u32) -> bool {
        u128::from(self.disagreements) * 10_000 <= u128::from(max) * u128::from(self.decisions)
    }
}

/// `part / whole` in basis points, rounded up; 0 when `whole` is 0.
pub fn basis_points_ceil(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    let bp = (u128::from(part) * 10_000).div_ceil(u128::from(whole));
    u64::try_from(bp).unwrap_or(u64::MAX)
}

/// Basis points as a percentage with two decimals: 125 → `1.25%`.
pub fn percent(basis_points: u64) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}

/// Counts for one agent or tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessEntry {
    /// The agent or tool id.
    pub id: String,
    pub decisions: u64,
    pub disagreements: u64,
    pub would_deny: u64,
}

/// How many agents and tools a measurement names (those with the most disagreements).
pub const TOP: usize = 5;

/// Counts decision events for one candidate version, as they are read in stream order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tally {
    version: u64,
    counts: Counts,
    first_sequence: Option<u64>,
    last_sequence: Option<u64>,
    by_agent: BTreeMap<String, Counts>,
    by_tool: BTreeMap<String, Counts>,
}

impl Tally {
    /// An empty tally for candidate `version`.
    pub fn new(version: u64) -> Tally {
        Tally {
            version,
            ..Tally::default()
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Notes that the record at stream `sequence` was read (whatever it was).
    pub fn saw(&mut self, sequence: u64) {
        if self.first_sequence.is_none() {
            self.first_sequence = Some(sequence);
        }
        self.last_sequence = Some(self.last_sequence.map_or(sequence, |l| l.max(sequence)));
    }

    /// Reads one decision event stored at `sequence`; returns whether it was compared (it
    /// carries the candidate's answer and another version's).
    pub fn add(&mut self, sequence: u64, event: &DecisionEvent) -> bool {
        self.saw(sequence);
        let Some(sides) = sides(event, self.version) else {
            return false;
        };
        self.counts.add(sides);
        let agent = event.agent_id.as_ref().map_or("-", |a| a.as_str());
        self.by_agent
            .entry(agent.to_owned())
            .or_default()
            .add(sides);
        let tool = event.tool_id.as_ref().map_or("-", |t| t.as_str());
        self.by_tool.entry(tool.to_owned()).or_default().add(sides);
        true
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The first and last stream sequence read.
    pub fn range(&self) -> Option<(u64, u64)> {
        Some((self.first_sequence?, self.last_sequence?))
    }

    /// The agents with the most disagreements (then the most decisions), at most [`TOP`],
    /// only those that disagreed at all.
    pub fn top_agents(&self) -> Vec<ReadinessEntry> {
        top(&self.by_agent)
    }

    /// [`Tally::top_agents`] for tools.
    pub fn top_tools(&self) -> Vec<ReadinessEntry> {
        top(&self.by_tool)
    }
}

fn top(map: &BTreeMap<String, Counts>) -> Vec<ReadinessEntry> {
    let mut entries: Vec<(&String, &Counts)> =
        map.iter().filter(|(_, c)| c.disagreements > 0).collect();
    entries.sort_by(|a, b| {
        b.1.disagreements
            .cmp(&a.1.disagreements)
            .then(b.1.decisions.cmp(&a.1.decisions))
            .then(a.0.cmp(b.0))
    });
    entries
        .into_iter()
        .take(TOP)
        .map(|(id, c)| ReadinessEntry {
            id: id.clone(),
            decisions: c.decisions,
            disagreements: c.disagreements,
            would_deny: c.would_deny,
        })
        .collect()
}

/// A threshold a candidate does not meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "condition", rename_all = "snake_case")]
pub enum Unmet {
    /// Not long enough the candidate.
    ShadowDays {
        min_days: u32,
        /// Seconds from becoming the candidate to the moment judged.
        elapsed_seconds: u64,
    },
    /// Too few decisions compared.
    Decisions { min: u64, have: u64 },
    /// Too many disagreements.
    Disagreement {
        max_basis_points: u32,
        /// The measured rate, rounded up.
        basis_points: u64,
        disagreements: u64,
        decisions: u64,
    },
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmet::ShadowDays {
                min_days,
                elapsed_seconds,
            } => write!(
                f,
                "candidate for {}, at least {min_days} day(s) needed",
                duration(*elapsed_seconds)
            ),
            Unmet::Decisions { min, have } => write!(
                f,
                "{have} decision(s) compared with the stable version, at least {min} needed"
            ),
            Unmet::Disagreement {
                max_basis_points,
                basis_points,
                disagreements,
                decisions,
            } => write!(
                f,
                "disagreement {} ({disagreements} of {decisions} decisions), at most {} allowed",
                percent(*basis_points),
                percent(u64::from(*max_basis_points))
            ),
        }
    }
}

/// `3d 4h 5m`, `4h 5m`, `5m 6s`.
fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {s}s")
    }
}

/// Whether a candidate meets the thresholds, and if not, every condition it misses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmet: Vec<Unmet>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ready {
            return f.write_str("ready");
        }
        let unmet: Vec<String> = self.unmet.iter().map(ToString::to_string).collect();
        write!(f, "not ready: {}", unmet.join("; "))
    }
}

/// Judges a candidate that became the candidate at `since`, as of `at`, with `counts` (its
/// latest measurement; zero counts when there is none).
pub fn verdict(
    thresholds: &ReadinessThresholds,
    since: OffsetDateTime,
    at: OffsetDateTime,
    counts: &Counts,
) -> Verdict {
    let mut unmet = Vec::new();
    let elapsed = u64::try_from((at - since).whole_seconds()).unwrap_or(0);
    if elapsed < u64::from(thresholds.min_shadow_days) * 86_400 {
        unmet.push(Unmet::ShadowDays {
            min_days: thresholds.min_shadow_days,
            elapsed_seconds: elapsed,
        });
    }
    if counts.decisions < thresholds.min_decisions {
        unmet.push(Unmet::Decisions {
            min: thresholds.min_decisions,
            have: counts.decisions,
        });
    }
    if !counts.disagreement_within(thresholds.max_disagreement_basis_points) {
        unmet.push(Unmet::Disagreement {
            max_basis_points: thresholds.max_disagreement_basis_points,
            basis_points: counts.disagreement_basis_points(),
            disagreements: counts.disagreements,
            decisions: counts.decisions,
        });
    }
    Verdict {
        ready: unmet.is_empty(),
        unmet,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::decision_log::ShadowResult;

    fn event(
        agent: &str,
        enforced: (DecisionKind, u64),
        shadow: Option<(DecisionKind, u64)>,
    ) -> DecisionEvent {
        serde_json::from_value(serde_json::json!({
            "id": "dec-00000000000000000000000000000001",
            "type": "decision",
            "schema_version": 1,
            "time": "2026-11-26T10:00:00.000Z",
            "tenant": "acme",
            "gateway": "gw1",
            "identity_verified": true,
            "agent_id": agent,
            "tool_id": "payments",
            "action": "create_payment",
            "params_digest": "sha256:00",
            "decision": enforced.0,
            "reasons": [],
            "policy": null,
            "rule": null,
            "policy_version": enforced.1,
            "bundle_digest": null,
            "approval_id": null,
            "latency_us": 1,
            "rollout_stage": "shadow",
            "shadow": shadow.map(|(d, v)| ShadowResult {
                decision: d,
                reasons: vec![],
                policy_version: Some(v),
                bundle_digest: None,
            }),
            "trace_id": null,
            "span_id": null,
        }))
        .unwrap()
    }

    use DecisionKind::{Allow, ApprovalNeeded, Deny};

    #[test]
    fn both_stages_are_counted_from_the_candidates_side() {
        let mut t = Tally::new(2);
        // Shadow: stable 1 enforced, candidate 2 beside it.
        assert!(t.add(10, &event("a", (Allow, 1), Some((Deny, 2)))));
        assert!(t.add(11, &event("a", (Allow, 1), Some((Allow, 2)))));
        // Partial cohort: candidate enforced, stable beside it.
        assert!(t.add(12, &event("b", (Deny, 2), Some((ApprovalNeeded, 1)))));
        assert!(t.add(13, &event("b", (Allow, 2), Some((Deny, 1)))));
        // Not about version 2: no shadow, or another candidate.
        assert!(!t.add(14, &event("c", (Allow, 1), None)));
        assert!(!t.add(15, &event("c", (Allow, 1), Some((Deny, 3)))));
        t.saw(17);
        assert_eq!(
            t.counts(),
            Counts {
                decisions: 4,
                disagreements: 3,
                would_deny: 2
            }
        );
        assert_eq!(t.range(), Some((10, 17)));
        let agents = t.top_agents();
        assert_eq!(agents[0].id, "b");
        assert_eq!((agents[0].disagreements, agents[0].would_deny), (2, 1));
        assert_eq!(agents[1].id, "a");
        assert_eq!(t.top_tools()[0].decisions, 4);
    }

    #[test]
    fn the_verdict_names_every_unmet_condition() {
        let th = ReadinessThresholds::default();
        let since = time::macros::datetime!(2026-11-01 00:00 UTC);
        let counts = Counts {
            decisions: 50,
            disagreements: 1,
            would_deny: 1,
        };
        let v = verdict(&th, since, since + time::Duration::hours(3), &counts);
        assert!(!v.ready);
        assert_eq!(v.unmet.len(), 3, "{v}");
        let text = v.to_string();
        assert!(
            text.contains("candidate for 3h 0m, at least 7 day(s) needed"),
            "{text}"
        );
        assert!(text.contains("50 decision(s) compared"), "{text}");
        assert!(
            text.contains("disagreement 2.00% (1 of 50 decisions)"),
            "{text}"
        );
        // 2 of 100 = 2% > 1%.
        let counts = Counts {
            decisions: 100,
            disagreements: 2,
            would_deny: 0,
        };
        let v = verdict(&th, since, since + time::Duration::days(7), &counts);
        assert_eq!(
            v.unmet,
            vec![Unmet::Disagreement {
                max_basis_points: 100,
                basis_points: 200,
                disagreements: 2,
                decisions: 100
            }]
        );
        assert!(
            v.to_string()
                .contains("disagreement 2.00% (2 of 100 decisions), at most 1.00% allowed")
        );
        // Exactly 1% is within; 7 days exactly is enough.
        let counts = Counts {
            decisions: 300,
            disagreements: 3,
            would_deny: 3,
        };
        assert!(verdict(&th, since, since + time::Duration::days(7), &counts).ready);
        // Rounded up for display: 1 of 301 is 0.34%.
        assert_eq!(basis_points_ceil(1, 301), 34);
        assert_eq!(percent(5), "0.05%");
        // No thresholds: ready with nothing measured.
        let none = ReadinessThresholds {
            min_shadow_days: 0,
            max_disagreement_basis_points: 0,
            min_decisions: 0,
        };
        assert!(verdict(&none, since, since, &Counts::default()).ready);
    }
}
