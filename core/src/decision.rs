//! The decide input and the decision, as typed values (`schemas/decide-input.schema.json`,
//! `schemas/decision.schema.json`).

use crate::ids::{AgentId, TenantId, ToolId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// What the evaluator decides on. Tenant and agent come from the verified token at the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideInput {
    pub tenant: TenantId,
    pub agent_id: AgentId,
    /// Callers from the origin to the direct caller (last).
    #[serde(default)]
    pub call_chain: Vec<AgentId>,
    pub tool_id: ToolId,
    pub action: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    #[serde(default)]
    pub context: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allow,
    Deny,
    Sanitize,
    ApprovalNeeded,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Allow => "allow",
            DecisionKind::Deny => "deny",
            DecisionKind::Sanitize => "sanitize",
            DecisionKind::ApprovalNeeded => "approval_needed",
        }
    }
    /// Whether the call may go ahead (possibly with changed parameters).
    pub fn permits(self) -> bool {
        matches!(self, DecisionKind::Allow | DecisionKind::Sanitize)
    }
    pub fn parse(s: &str) -> Option<DecisionKind> {
        Some(match s {
            "allow" => DecisionKind::Allow,
            "deny" => DecisionKind::Deny,
            "sanitize" => DecisionKind::Sanitize,
            "approval_needed" => DecisionKind::ApprovalNeeded,
            _ => return None,
        })
    }
}

impl fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why: a machine-readable code, a sentence for people, and what decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: String,
    pub message: String,
    pub policy: Option<String>,
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Obligations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalObligation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetObligation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitObligation>,
    /// Parameters to mask in the decision log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_mask: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalObligation {
    pub codes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetObligation {
    pub param: String,
    pub max: f64,
    pub window_seconds: u64,
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitObligation {
    pub calls: u64,
    pub window_seconds: u64,
    pub scope: String,
}

/// A decision. Built only by the evaluator; any failure there becomes a deny.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub decision: DecisionKind,
    pub reasons: Vec<Reason>,
    pub policy: Option<String>,
    pub rule: Option<String>,
    /// Sanitized parameters, when `decision` is `sanitize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
    #[serde(default)]
    pub obligations: Obligations,
    /// Version of the bundle that decided (`None` for a local policy tree).
    pub policy_version: Option<u64>,
    /// `sha256:<hex>` of the bundle that decided.
    pub bundle_digest: Option<String>,
}

/// Reason code for any failure inside evaluation.
pub const EVALUATION_ERROR: &str = "evaluation_error";
/// Reason code for a call no rule covers.
pub const NO_POLICY: &str = "no_policy";

impl Decision {
    /// A deny with one reason and nothing else: the fail-closed answer.
    pub fn deny(code: &str, message: impl Into<String>) -> Decision {
        Decision {
            decision: DecisionKind::Deny,
            reasons: vec![Reason {
                code: code.to_owned(),
                message: message.into(),
                policy: None,
                rule: None,
            }],
            policy: None,
            rule: None,
            params: None,
            obligations: Obligations::default(),
            policy_version: None,
            bundle_digest: None,
        }
    }

    /// The reason codes, in order.
    pub fn codes(&self) -> Vec<&str> {
        self.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    /// `params` as they may be written to the decision log: every parameter named in the
    /// policy's log masking replaced by `"[MASKED]"`.
    pub fn logged_params(&self, params: &Map<String, Value>) -> Map<String, Value> {
        let mut out = params.clone();
        for k in &self.obligations.log_mask {
            if let Some(v) = out.get_mut(k) {
                *v = Value::String("[MASKED]".to_owned());
            }
        }
        out
    }
}
