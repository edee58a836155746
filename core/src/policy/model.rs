//! The policy document as users write it (YAML or JSON). `schemas/policy.schema.json` is the
//! canonical description of the same shape; both reject unknown fields.

use crate::ids::{AgentId, PolicyName, RuleId, TenantId, ToolId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only `apiVersion` this release understands.
pub const API_VERSION: &str = "aegis.dev/v1";
/// `kind` of a policy document.
pub const POLICY_KIND: &str = "AgentPolicy";

/// One policy document: everything one agent of one tenant may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskTier {
    Low,
    Medium,
    High,
}

impl RiskTier {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskTier::Low => "low",
            RiskTier::Medium => "medium",
            RiskTier::High => "high",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub tenant: TenantId,
    pub name: PolicyName,
    pub owner: String,
    pub risk_tier: RiskTier,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub agent_id: AgentId,
    /// Constraints on the chain of callers, applied to every rule of this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<CallerConstraints>,
    pub rules: Vec<Rule>,
    /// Parameters never written in clear to the decision log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_masking: Option<LogMasking>,
    /// Escape hatch: a Rego module whose `deny` / `approval_needed` sets add reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_rego: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: RuleId,
    pub tool_id: ToolId,
    /// Actions this rule covers; `"*"` covers every action no other rule of the tool names.
    pub actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Overrides `metadata.risk_tier` for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_tier: Option<RiskTier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<CallerConstraints>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sanitize: Vec<SanitizeStep>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
}

/// What a violated condition yields.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    #[default]
    Deny,
    ApprovalNeeded,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Deny => "deny",
            Effect::ApprovalNeeded => "approval_needed",
        }
    }
}

/// One condition on a request parameter or context value. Exactly one of `param` / `context`
/// names the value; every operator present must hold. A missing value violates the condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Dotted path into `params` (`amount`, `recipient.iban`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// Dotted path into `context` (`purpose`, `destination`, `region`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eq: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none_of: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default)]
    pub on_violation: Effect,
    /// Reason code reported when violated (default derived from the value's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human sentence reported when violated (default generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Condition {
    /// `("params", path)` or `("context", path)`; `None` when neither or both are set
    /// (validation reports that).
    pub fn subject(&self) -> Option<(&'static str, &str)> {
        match (&self.param, &self.context) {
            (Some(p), None) => Some(("params", p.as_str())),
            (None, Some(c)) => Some(("context", c.as_str())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CallerConstraints {
    /// The direct caller (last element of the call chain) must be one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_direct: Option<Vec<AgentId>>,
    /// These may never appear anywhere in the chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub never: Vec<AgentId>,
    /// At most this many callers in the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// At least this many callers (1 = the agent may not act on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_depth: Option<u32>,
}

/// One sanitize step. Applied to allowed calls: drops, then redactions, then masks in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SanitizeStep {
    /// Remove a top-level parameter.
    Drop(String),
    /// Replace a top-level parameter's value with `"[REDACTED]"`.
    Redact(String),
    /// Replace every match of a regex inside string parameters.
    Mask(MaskStep),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskStep {
    pub pattern: String,
    #[serde(default = "default_mask_replacement")]
    pub replacement: String,
    /// Top-level parameters to mask in; empty = every string parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
}

fn default_mask_replacement() -> String {
    "****".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Counted by each gateway on its own (the default).
    #[default]
    Gateway,
    /// Shared by every gateway through JetStream KV.
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// At most `calls` calls per `window_seconds`, per agent and tool.
    pub calls: u64,
    pub window_seconds: u64,
    #[serde(default)]
    pub scope: LimitScope,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Top-level numeric parameter summed over the window (e.g. `amount`).
    pub param: String,
    pub max: f64,
    pub window_seconds: u64,
    #[serde(default)]
    pub scope: LimitScope,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogMasking {
    /// Top-level parameters replaced by `"[MASKED]"` in decision events.
    #[serde(default)]
    pub params: Vec<String>,
}
