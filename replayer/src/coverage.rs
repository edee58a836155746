//! Coverage: for each agent and tool seen in a slice of the decision log, whether an explicit
//! rule decided its calls or they fell to default deny (reason `no_policy`: no rule covers
//! the agent, tool and action), the share of calls an explicit rule covered by agent, by tool
//! and by agent/tool/action, and each tool's risk tier from the policies of the version in
//! force (the newest version that decided a call of the slice), critical tools first.
//!
//! The slice is streamed ([`SliceReader`]): only the counters are held. A call is
//! - **covered** when its recorded decision names the rule that decided it (`rule` set);
//! - **default deny** when a reason is `no_policy` ([`aegis_core::decision::NO_POLICY`]);
//! - **other** otherwise: decided before any rule was looked up (no bundle, unverified identity,
//!   evaluation error, a block…). Such calls are counted but say nothing about coverage, so
//!   they are left out of the coverage percentage (covered / (covered + default deny)).
//!
//! Decisions with an unverified identity, or without an agent or tool, are counted as
//! unattributed and not grouped: their agent is a claim, not a fact.

use crate::candidate::{CandidateError, bundle_data, fetch_verified, published_digest};
use crate::report::{BoundsView, FilterView, SliceInfo};
use crate::slice::{Bounds, SliceSpec};
use crate::source::{Record, SkipCause, SliceReader, SourceError};
use aegis_core::decision::NO_POLICY;
use aegis_core::decision_log::DecisionEvent;
use aegis_core::ids::{AgentId, RuleId, ToolId};
use aegis_core::keys::TrustStore;
use aegis_core::policy::compile::{CompiledAgent, CompiledData};
use aegis_core::policy::model::RiskTier;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The JSON Schema of [`CoverageReport`].
pub const SCHEMA: &str = include_str!("../../schemas/coverage-report.schema.json");
/// The `schema_version` this code writes.
pub const COVERAGE_SCHEMA_VERSION: u32 = 1;

/// Why coverage could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// A tool's (or rule's) risk tier, `unknown` when no policy of the version in force has a rule
/// for it. Sorted critical first: high, medium, low, unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    High,
    Medium,
    Low,
    Unknown,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::High => "high",
            Tier::Medium => "medium",
            Tier::Low => "low",
            Tier::Unknown => "unknown",
        }
    }
}

impl From<RiskTier> for Tier {
    fn from(t: RiskTier) -> Tier {
        match t {
            RiskTier::High => Tier::High,
            RiskTier::Medium => Tier::Medium,
            RiskTier::Low => Tier::Low,
        }
    }
}

/// How the calls of one agent, tool and action were decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoverageStatus {
    /// Every call decided by the policy was decided by an explicit rule.
    Covered,
    /// Every call decided by the policy fell to default deny.
    DefaultDeny,
    /// Some of each (the policy changed within the slice, or different actions).
    Partial,
    /// No call was decided by the policy (all `other`).
    Undetermined,
}

/// Counters of one group of calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub calls: u64,
    /// Decided by an explicit rule.
    pub covered: u64,
    /// Fell to default deny (`no_policy`).
    pub default_deny: u64,
    /// Decided without looking up a rule (neither of the above).
    pub other: u64,
    /// `covered / (covered + default_deny)` in percent, two decimals; `None` when neither.
    pub coverage_percent: Option<f64>,
    /// Recorded decisions by kind.
    pub decisions: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, event: &DecisionEvent) {
        self.calls = self.calls.saturating_add(1);
        match classify(event) {
            Class::Covered => self.covered = self.covered.saturating_add(1),
            Class::DefaultDeny => self.default_deny = self.default_deny.saturating_add(1),
            Class::Other => self.other = self.other.saturating_add(1),
        }
        let n = self
            .decisions
            .entry(event.decision.as_str().to_owned())
            .or_insert(0);
        *n = n.saturating_add(1);
    }

    fn merge(&mut self, other: &Counts) {
        self.calls = self.calls.saturating_add(other.calls);
        self.covered = self.covered.saturating_add(other.covered);
        self.default_deny = self.default_deny.saturating_add(other.default_deny);
        self.other = self.other.saturating_add(other.other);
        for (k, n) in &other.decisions {
            let m = self.decisions.entry(k.clone()).or_insert(0);
            *m = m.saturating_add(*n);
        }
    }

    fn finish(mut self) -> Counts {
        self.coverage_percent = percent(self.covered, self.covered + self.default_deny);
        self
    }

    fn status(&self) -> CoverageStatus {
        match (self.covered, self.default_deny) {
            (0, 0) => CoverageStatus::Undetermined,
            (_, 0) => CoverageStatus::Covered,
            (0, _) => CoverageStatus::DefaultDeny,
            _ => CoverageStatus::Partial,
        }
    }
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    (whole > 0).then(|| (part as f64 * 10000.0 / whole as f64).round() / 100.0)
}

enum Class {
    Covered,
    DefaultDeny,
    Other,
}

fn classify(event: &DecisionEvent) -> Class {
    if event.rule.is_some() {
        Class::Covered
    } else if event.reasons.iter().any(|r| r.code == NO_POLICY) {
        Class::DefaultDeny
    } else {
        Class::Other
    }
}

/// The running counters of a slice: what [`CoverageReport::build`] needs.
#[derive(Debug, Clone, Default)]
pub struct CoverageTally {
    pub decisions: u64,
    pub unattributed: u64,
    pub skipped: BTreeMap<SkipCause, u64>,
    /// Per (agent, tool, action).
    pub calls: BTreeMap<(AgentId, ToolId, String), Counts>,
    /// Rules that decided at least one call, per agent.
    pub rules_seen: BTreeSet<(AgentId, String)>,
    /// Versions that decided calls, with a digest each (the newest is the version in force).
    pub versions: BTreeMap<u64, Option<String>>,
}

impl CoverageTally {
    /// Counts one record.
    pub fn push(&mut self, record: &Record) {
        match record {
            Record::Skipped { cause, .. } => {
                let n = self.skipped.entry(*cause).or_insert(0);
                *n = n.saturating_add(1);
            }
            Record::Decision { event, .. } => self.add(event),
        }
    }

    /// Counts one decision event.
    pub fn add(&mut self, event: &DecisionEvent) {
        self.decisions = self.decisions.saturating_add(1);
        if let Some(v) = event.policy_version {
            let digest = self.versions.entry(v).or_insert(None);
            if digest.is_none() {
                digest.clone_from(&event.bundle_digest);
            }
        }
        let (true, Some(agent), Some(tool)) =
            (event.identity_verified, &event.agent_id, &event.tool_id)
        else {
            self.unattributed = self.unattributed.saturating_add(1);
            return;
        };
        let action = event.action.clone().unwrap_or_default();
        self.calls
            .entry((agent.clone(), tool.clone(), action))
            .or_default()
            .add(event);
        if let Some(rule) = &event.rule {
            self.rules_seen.insert((agent.clone(), rule.clone()));
        }
    }

    /// The newest version that decided a call, with its recorded digest.
    pub fn version_in_force(&self) -> Option<(u64, Option<String>)> {
        self.versions
            .iter()
            .next_back()
            .map(|(v, d)| (*v, d.clone()))
    }
}

/// Whether the risk tiers come from a verified bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicySourceStatus {
    /// The version in force was fetched and verified: tiers and unexercised rules are listed.
    Verified,
    /// No call of the slice was decided by a bundle version.
    NoVersion,
    /// The version could not be fetched or verified (see `note`): every tier is `unknown`.
    Unavailable,
}

/// Where the risk tiers come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySource {
    pub status: PolicySourceStatus,
    /// The newest version that decided a call of the slice.
    pub version: Option<u64>,
    /// Its digest as published.
    pub digest: Option<String>,
    pub note: String,
}

/// One tool, over every agent that called it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCoverage {
    pub tool: String,
    /// The highest tier of the rules for this tool in the version in force.
    pub risk_tier: Tier,
    /// Agents that called it.
    pub agents: Vec<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// One agent, over every tool it called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCoverage {
    pub agent: String,
    /// Its policy in the version in force (`<tenant>/<name>`), `None` if it has none.
    pub policy: Option<String>,
    /// The policy's risk tier (`unknown` without a policy).
    pub risk_tier: Tier,
    #[serde(flatten)]
    pub counts: Counts,
}

/// One agent calling one tool with one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallCoverage {
    pub agent: String,
    pub tool: String,
    pub action: String,
    /// The tier of the rule that covers this call in the version in force; else the highest
    /// tier of the agent's rules for the tool; else `unknown`.
    pub risk_tier: Tier,
    /// The rule of the version in force that covers it, if any.
    pub rule: Option<String>,
    pub status: CoverageStatus,
    #[serde(flatten)]
    pub counts: Counts,
}

/// A rule of the version in force that decided no call of the slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnexercisedRule {
    pub agent: String,
    pub rule: String,
    pub tool: String,
    pub actions: Vec<String>,
    pub risk_tier: Tier,
}

/// Totals of a slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Records read (every kind).
    pub records: u64,
    /// Decision events that passed the filter.
    pub decision_events: u64,
    /// Decisions with an unverified identity, or without agent or tool: not grouped.
    pub unattributed: u64,
    /// Records that are not decisions (or filtered out), by cause.
    pub skipped: BTreeMap<SkipCause, u64>,
    /// Over every attributed call.
    #[serde(flatten)]
    pub counts: Counts,
}

/// The coverage report of a slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageReport {
    pub schema_version: u32,
    pub tenant: String,
    /// RFC 3339: when the report was made.
    pub generated_at: String,
    pub slice: SliceInfo,
    pub policy_source: PolicySource,
    pub totals: Totals,
    /// Critical first: by tier (high, medium, low, unknown), then lowest coverage, then name.
    pub tools: Vec<ToolCoverage>,
    /// Lowest coverage first, then name.
    pub agents: Vec<AgentCoverage>,
    /// Per agent, tool and action, in the tools' order.
    pub calls: Vec<CallCoverage>,
    /// Rules of the version in force that decided nothing in the slice (empty unless
    /// `policy_source.status` is `verified`).
    pub unexercised_rules: Vec<UnexercisedRule>,
}

/// Sort key for a coverage: lowest first, undetermined (`None`) last.
fn coverage_key(c: Option<f64>) -> (bool, i64) {
    #[allow(clippy::cast_possible_truncation)]
    match c {
        Some(p) => (false, (p * 100.0).round() as i64),
        None => (true, 0),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// The rule of `agent` that covers `tool`/`action` (specific action first, then `*`).
fn covering_rule<'a>(agent: &'a CompiledAgent, tool: &ToolId, action: &str) -> Option<&'a RuleId> {
    let actions = agent.tools.get(tool)?;
    actions.get(action).or_else(|| actions.get("*"))
}

fn max_tier<'a>(tiers: impl Iterator<Item = &'a RiskTier>) -> Tier {
    tiers.max().map_or(Tier::Unknown, |t| Tier::from(*t))
}

impl CoverageReport {
    /// Builds the report from a finished tally and the compiled data of the version in force
    /// (`None`: every tier unknown, no unexercised rules).
    pub fn build(
        spec: &SliceSpec,
        read: crate::source::SliceStats,
        tally: CoverageTally,
        policy_source: PolicySource,
        data: Option<&CompiledData>,
    ) -> CoverageReport {
        let empty = BTreeMap::new();
        let agents_data: &BTreeMap<AgentId, CompiledAgent> = data
            .and_then(|d| d.aegis.policies.get(&spec.tenant))
            .unwrap_or(&empty);
        let tool_tier = |tool: &ToolId| {
            max_tier(
                agents_data
                    .values()
                    .flat_map(|a| a.rules.values())
                    .filter(|r| &r.tool_id == tool)
                    .map(|r| &r.risk_tier),
            )
        };

        let mut by_tool: BTreeMap<ToolId, (Counts, BTreeSet<String>)> = BTreeMap::new();
        let mut by_agent: BTreeMap<AgentId, Counts> = BTreeMap::new();
        let mut totals = Counts::default();
        let mut calls = Vec::new();
        for ((agent, tool, action), counts) in &tally.calls {
            let (t, a) = by_tool.entry(tool.clone()).or_default();
            t.merge(counts);
            a.insert(agent.as_str().to_owned());
            by_agent.entry(agent.clone()).or_default().merge(counts);
            totals.merge(counts);
            let compiled = agents_data.get(agent);
            let rule = compiled.and_then(|c| covering_rule(c, tool, action));
            let risk_tier = match (compiled, rule) {
                (Some(c), Some(r)) => c
                    .rules
                    .get(r)
                    .map_or(Tier::Unknown, |r| Tier::from(r.risk_tier)),
                (Some(c), None) => max_tier(
                    c.rules
                        .values()
                        .filter(|r| &r.tool_id == tool)
                        .map(|r| &r.risk_tier),
                ),
                _ => Tier::Unknown,
            };
            let counts = counts.clone().finish();
            calls.push(CallCoverage {
                agent: agent.as_str().to_owned(),
                tool: tool.as_str().to_owned(),
                action: action.clone(),
                risk_tier,
                rule: rule.map(|r| r.as_str().to_owned()),
                status: counts.status(),
                counts,
            });
        }

        let mut tools: Vec<ToolCoverage> = by_tool
            .into_iter()
            .map(|(tool, (counts, agents))| ToolCoverage {
                tool: tool.as_str().to_owned(),
                risk_tier: tool_tier(&tool),
                agents: agents.into_iter().collect(),
                counts: counts.finish(),
            })
            .collect();
        tools.sort_by(|a, b| {
            (
                a.risk_tier,
                coverage_key(a.counts.coverage_percent),
                &a.tool,
            )
                .cmp(&(
                    b.risk_tier,
                    coverage_key(b.counts.coverage_percent),
                    &b.tool,
                ))
        });
        let tool_rank: BTreeMap<&str, usize> = tools
            .iter()
            .enumerate()
            .map(|(i, t)| (t.tool.as_str(), i))
            .collect();
        calls.sort_by(|a, b| {
            let key = |c: &CallCoverage| {
                (
                    tool_rank
                        .get(c.tool.as_str())
                        .copied()
                        .unwrap_or(usize::MAX),
                    c.risk_tier,
                    coverage_key(c.counts.coverage_percent),
                    c.agent.clone(),
                    c.action.clone(),
                )
            };
            key(a).cmp(&key(b))
        });

        let mut agents: Vec<AgentCoverage> = by_agent
            .into_iter()
            .map(|(agent, counts)| {
                let compiled = agents_data.get(&agent);
                AgentCoverage {
                    agent: agent.as_str().to_owned(),
                    policy: compiled.map(|c| c.policy.clone()),
                    risk_tier: compiled.map_or(Tier::Unknown, |c| Tier::from(c.risk_tier)),
                    counts: counts.finish(),
                }
            })
            .collect();
        agents.sort_by(|a, b| {
            (coverage_key(a.counts.coverage_percent), &a.agent)
                .cmp(&(coverage_key(b.counts.coverage_percent), &b.agent))
        });

        let rules_seen = &tally.rules_seen;
        let agent_filter = &spec.filter.agents;
        let tool_filter = &spec.filter.tools;
        let mut unexercised_rules: Vec<UnexercisedRule> = agents_data
            .iter()
            .filter(|(agent, _)| agent_filter.is_empty() || agent_filter.contains(agent))
            .flat_map(|(agent, compiled)| {
                compiled
                    .rules
                    .iter()
                    .filter(move |(id, _)| {
                        !rules_seen.contains(&(agent.clone(), id.as_str().to_owned()))
                    })
                    .map(move |(id, rule)| UnexercisedRule {
                        agent: agent.as_str().to_owned(),
                        rule: id.as_str().to_owned(),
                        tool: rule.tool_id.as_str().to_owned(),
                        actions: rule.actions.clone(),
                        risk_tier: Tier::from(rule.risk_tier),
                    })
            })
            .filter(|r| tool_filter.is_empty() || tool_filter.iter().any(|t| t.as_str() == r.tool))
            .collect();
        unexercised_rules.sort_by(|a, b| {
            (a.risk_tier, &a.agent, &a.rule).cmp(&(b.risk_tier, &b.agent, &b.rule))
        });

        let bounds = match spec.bounds {
            Bounds::Sequence { from, to } => BoundsView::Sequence { from, to },
            Bounds::Time { since, until } => BoundsView::Time {
                since: rfc3339(since),
                until: until.map(rfc3339),
            },
        };
        let filter = FilterView {
            agents: agent_filter.iter().map(|a| a.as_str().to_owned()).collect(),
            tools: tool_filter.iter().map(|t| t.as_str().to_owned()).collect(),
            decisions: spec.filter.decisions.clone(),
        };
        let skipped = SkipCause::ALL
            .iter()
            .map(|c| (*c, tally.skipped.get(c).copied().unwrap_or(0)))
            .collect();
        CoverageReport {
            schema_version: COVERAGE_SCHEMA_VERSION,
            tenant: spec.tenant.as_str().to_owned(),
            generated_at: rfc3339(OffsetDateTime::now_utc()),
            totals: Totals {
                records: read.records,
                decision_events: tally.decisions,
                unattributed: tally.unattributed,
                skipped,
                counts: totals.finish(),
            },
            slice: SliceInfo {
                bounds,
                filter,
                read,
            },
            policy_source,
            tools,
            agents,
            calls,
            unexercised_rules,
        }
    }

    /// The tool named `tool`, if it was called.
    pub fn tool(&self, tool: &str) -> Option<&ToolCoverage> {
        self.tools.iter().find(|t| t.tool == tool)
    }

    /// The agent named `agent`, if it called anything.
    pub fn agent(&self, agent: &str) -> Option<&AgentCoverage> {
        self.agents.iter().find(|a| a.agent == agent)
    }

    /// The calls of `agent` to `tool` with `action`, if any.
    pub fn call(&self, agent: &str, tool: &str, action: &str) -> Option<&CallCoverage> {
        self.calls
            .iter()
            .find(|c| c.agent == agent && c.tool == tool && c.action == action)
    }
}

/// The compiled data of published `version` of the slice's tenant, fetched from object store
/// `aegis-bundles` (digest from the control plane's history) and verified against `trust`.
pub async fn policies_in_force(
    js: &async_nats::jetstream::Context,
    spec: &SliceSpec,
    version: u64,
    trust: &TrustStore,
    timeout: Duration,
) -> Result<(String, CompiledData), CandidateError> {
    let digest = published_digest(&js.client(), &spec.tenant, version, timeout).await?;
    let verified = fetch_verified(js, &spec.tenant, &digest, trust).await?;
    if verified.manifest.version != version {
        return Err(CandidateError::Rejected {
            source_label: format!("version {version}"),
            detail: format!(
                "the bundle stored under {digest} is version {}",
                verified.manifest.version
            ),
        });
    }
    let data = bundle_data(&verified).ok_or_else(|| CandidateError::Rejected {
        source_label: format!("version {version}"),
        detail: "its data.json is missing or does not parse as compiled policies".to_owned(),
    })?;
    Ok((digest, data))
}

/// Reads the slice and reports its coverage. The risk tiers come from the newest version that
/// decided a call of the slice, fetched and verified with `trust`; when that is not possible
/// (no trust store, no such version, fetch or verification failure) the report says why in
/// `policy_source` and every tier is `unknown`. Fails only when the slice cannot be read.
pub async fn coverage(
    js: &async_nats::jetstream::Context,
    spec: &SliceSpec,
    trust: Option<&TrustStore>,
    timeout: Duration,
) -> Result<CoverageReport, CoverageError> {
    let mut reader = SliceReader::open(js, spec).await?;
    let mut tally = CoverageTally::default();
    while let Some(record) = reader.next().await {
        tally.push(&record?);
    }
    let read = reader.stats().clone();
    let (source, data) = match (tally.version_in_force(), trust) {
        (None, _) => (
            PolicySource {
                status: PolicySourceStatus::NoVersion,
                version: None,
                digest: None,
                note: "no call of the slice was decided by a bundle version: tiers are unknown"
                    .to_owned(),
            },
            None,
        ),
        (Some((version, recorded)), None) => (
            PolicySource {
                status: PolicySourceStatus::Unavailable,
                version: Some(version),
                digest: recorded,
                note: format!(
                    "no trust store: version {version}'s bundle was not fetched, tiers are unknown"
                ),
            },
            None,
        ),
        (Some((version, recorded)), Some(trust)) => {
            match policies_in_force(js, spec, version, trust, timeout).await {
                Ok((digest, data)) => (
                    PolicySource {
                        status: PolicySourceStatus::Verified,
                        version: Some(version),
                        digest: Some(digest),
                        note: format!(
                            "risk tiers from the policies of version {version}, the newest that decided a call of the slice"
                        ),
                    },
                    Some(data),
                ),
                Err(e) => (
                    PolicySource {
                        status: PolicySourceStatus::Unavailable,
                        version: Some(version),
                        digest: recorded,
                        note: format!(
                            "version {version}'s bundle could not be read: {e}; tiers are unknown"
                        ),
                    },
                    None,
                ),
            }
        }
    };
    Ok(CoverageReport::build(
        spec,
        read,
        tally,
        source,
        data.as_ref(),
    ))
}

static CHECK: crate::schema_check::EmbeddedSchema =
    crate::schema_check::EmbeddedSchema::new("coverage", SCHEMA);

/// Validates a coverage report (as JSON) against [`SCHEMA`]; the errors, if any.
pub fn validate(report: &Value) -> Result<(), Vec<String>> {
    CHECK.validate(report)
}

fn pct(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_owned(), |p| format!("{p:.2}%"))
}

fn decisions(d: &BTreeMap<String, u64>) -> String {
    d.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as Markdown tables: tools (critical first), agents, calls, unexercised rules.
pub fn render(report: &CoverageReport) -> String {
    let mut s = String::new();
    let t = &report.totals;
    let _ = writeln!(s, "# Policy coverage: tenant {}\n", report.tenant);
    let _ = writeln!(
        s,
        "{} decisions read ({} records): {} covered by an explicit rule, {} fell to default deny \
         (`no_policy`), {} decided before any rule was looked up, {} unattributed. Coverage: {}.\n",
        t.decision_events,
        t.records,
        t.counts.covered,
        t.counts.default_deny,
        t.counts.other,
        t.unattributed,
        pct(t.counts.coverage_percent),
    );
    let _ = writeln!(
        s,
        "Risk tiers: {} ({}).\n",
        report.policy_source.note,
        match report.policy_source.status {
            PolicySourceStatus::Verified => "verified",
            PolicySourceStatus::NoVersion => "no version",
            PolicySourceStatus::Unavailable => "unavailable",
        }
    );
    let _ = writeln!(s, "## Tools (critical first)\n");
    let _ = writeln!(
        s,
        "| risk tier | tool | calls | covered | default deny | other | coverage | agents |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|");
    for tool in &report.tools {
        let c = &tool.counts;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            tool.risk_tier.as_str(),
            tool.tool,
            c.calls,
            c.covered,
            c.default_deny,
            c.other,
            pct(c.coverage_percent),
            tool.agents.join(", ")
        );
    }
    let _ = writeln!(s, "\n## Agents\n");
    let _ = writeln!(
        s,
        "| agent | policy | risk tier | calls | covered | default deny | other | coverage |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|");
    for agent in &report.agents {
        let c = &agent.counts;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            agent.agent,
            agent.policy.as_deref().unwrap_or("(none)"),
            agent.risk_tier.as_str(),
            c.calls,
            c.covered,
            c.default_deny,
            c.other,
            pct(c.coverage_percent),
        );
    }
    let _ = writeln!(s, "\n## Calls by agent, tool and action\n");
    let _ = writeln!(
        s,
        "| risk tier | agent | tool | action | rule | status | calls | coverage | decisions |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---:|---:|---|");
    for call in &report.calls {
        let status = match call.status {
            CoverageStatus::Covered => "covered",
            CoverageStatus::DefaultDeny => "default deny",
            CoverageStatus::Partial => "partial",
            CoverageStatus::Undetermined => "undetermined",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            call.risk_tier.as_str(),
            call.agent,
            call.tool,
            call.action,
            call.rule.as_deref().unwrap_or("–"),
            status,
            call.counts.calls,
            pct(call.counts.coverage_percent),
            decisions(&call.counts.decisions),
        );
    }
    if report.policy_source.status == PolicySourceStatus::Verified {
        let _ = writeln!(s, "\n## Rules never exercised\n");
        if report.unexercised_rules.is_empty() {
            let _ = writeln!(s, "Every rule decided at least one call.");
        } else {
            let _ = writeln!(s, "| risk tier | agent | rule | tool | actions |");
            let _ = writeln!(s, "|---|---|---|---|---|");
            for r in &report.unexercised_rules {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    r.risk_tier.as_str(),
                    r.agent,
                    r.rule,
                    r.tool,
                    r.actions.join(", ")
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;

    #[test]
    fn percentages_round_to_two_decimals() {
        assert_eq!(percent(5, 7), Some(71.43));
        assert_eq!(percent(2, 3), Some(66.67));
        assert_eq!(percent(0, 2), Some(0.0));
        assert_eq!(percent(0, 0), None);
    }

    #[test]
    fn tiers_sort_critical_first() {
        let mut tiers = vec![Tier::Unknown, Tier::Low, Tier::High, Tier::Medium];
        tiers.sort();
        assert_eq!(tiers, [Tier::High, Tier::Medium, Tier::Low, Tier::Unknown]);
        assert!(coverage_key(Some(0.0)) < coverage_key(Some(50.0)));
        assert!(coverage_key(Some(100.0)) < coverage_key(None));
    }

    fn event(
        agent: &str,
        tool: &str,
        action: &str,
        rule: Option<&str>,
        code: &str,
    ) -> DecisionEvent {
        let decision = if code == "allowed" { "allow" } else { "deny" };
        serde_json::from_value(serde_json::json!({
            "id": "dec-00000000000000000000000000000001", "type": "decision", "schema_version": 1,
            "time": "2026-11-26T08:00:00.000Z", "tenant": "acme", "gateway": "gw1",
            "identity_verified": true, "agent_id": agent, "call_chain": [], "tool_id": tool,
            "action": action, "params": {}, "params_digest": "sha256:00", "context": {},
            "decision": decision,
            "reasons": [{"code": code, "message": "m", "policy": null, "rule": rule}],
            "policy": rule.map(|_| "acme/finance-agent"), "rule": rule, "policy_version": 1,
            "bundle_digest": "sha256:ab", "approval_id": null, "latency_us": 1,
            "rollout_stage": null, "trace_id": null, "span_id": null
        }))
        .unwrap()
    }

    #[test]
    fn a_report_without_policies_counts_and_validates() {
        let tenant = aegis_core::ids::TenantId::new("acme").unwrap();
        let spec = SliceSpec::all(tenant);
        let mut tally = CoverageTally::default();
        for e in [
            event(
                "finance-agent",
                "payments",
                "create_payment",
                Some("pay"),
                "allowed",
            ),
            event(
                "finance-agent",
                "payments",
                "create_payment",
                Some("pay"),
                "amount_over_limit",
            ),
            event("finance-agent", "payments", "refund", None, NO_POLICY),
            event("research-agent", "web", "search", None, NO_POLICY),
            event("research-agent", "web", "search", None, "no_bundle"),
        ] {
            tally.add(&e);
        }
        assert_eq!(
            tally.version_in_force(),
            Some((1, Some("sha256:ab".into())))
        );
        let source = PolicySource {
            status: PolicySourceStatus::Unavailable,
            version: Some(1),
            digest: None,
            note: "test".into(),
        };
        let report = CoverageReport::build(&spec, Default::default(), tally, source, None);
        let finance = report.agent("finance-agent").unwrap();
        assert_eq!(
            (
                finance.counts.calls,
                finance.counts.covered,
                finance.counts.default_deny
            ),
            (3, 2, 1)
        );
        assert_eq!(finance.counts.coverage_percent, Some(66.67));
        let research = report.agent("research-agent").unwrap();
        assert_eq!(
            (research.counts.other, research.counts.coverage_percent),
            (1, Some(0.0))
        );
        assert_eq!(
            report.agents[0].agent, "research-agent",
            "lowest coverage first"
        );
        assert_eq!(
            report
                .call("finance-agent", "payments", "refund")
                .unwrap()
                .status,
            CoverageStatus::DefaultDeny
        );
        assert_eq!(
            report
                .call("finance-agent", "payments", "create_payment")
                .unwrap()
                .status,
            CoverageStatus::Covered
        );
        assert_eq!(report.calls.len(), 3);
        let value = serde_json::to_value(&report).unwrap();
        if let Err(errors) = validate(&value) {
            panic!("{errors:#?}\n{value:#}");
        }
        let back: CoverageReport = serde_json::from_value(value).unwrap();
        assert_eq!(back, report);
        assert!(
            render(&report)
                .contains("| unknown | payments | 3 | 2 | 1 | 0 | 66.67% | finance-agent |"),
            "{}",
            render(&report)
        );
    }
}
