//! Policy documents → the compiled index in `data.json`: `aegis.policies[tenant][agent]` with
//! `tools[tool][action] -> rule id` and `rules[rule id]`, so the evaluator finds the rule for a
//! call in O(1) lookups. Everything that does not depend on the request (reason sentences, the
//! allow answer, obligations, merged caller constraints) is computed here, once, not per call.

use super::model::{
    CallerConstraints, Condition, Effect, LimitScope, PolicyDocument, RiskTier, SanitizeStep,
};
use super::validate::custom_package;
use crate::ids::{AgentId, RuleId, TenantId, ToolId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The whole `data.json` payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompiledData {
    pub aegis: CompiledIndex,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompiledIndex {
    pub policies: BTreeMap<TenantId, BTreeMap<AgentId, CompiledAgent>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledAgent {
    /// `<tenant>/<name>`.
    pub policy: String,
    pub risk_tier: RiskTier,
    pub owner: String,
    /// Package name of the custom module (`aegis.custom.<name>`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<String>,
    pub log_mask: Vec<String>,
    pub tools: BTreeMap<ToolId, BTreeMap<String, RuleId>>,
    pub rules: BTreeMap<RuleId, CompiledRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledRule {
    pub risk_tier: RiskTier,
    pub tool_id: ToolId,
    pub actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<MergedCallers>,
    pub checks: Vec<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitize: Option<CompiledSanitize>,
    /// The answer for an allowed call, precomputed.
    pub allowed: Value,
    /// The answer for a sanitized call, without `params`.
    pub sanitized: Value,
}

/// Policy-level and rule-level caller constraints combined (both must hold): the same shape as
/// a document's `callers`, with the lists intersected / united and the depths tightened.
pub type MergedCallers = CallerConstraints;

/// One operator on one value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `["params", ...]` or `["context", ...]`.
    pub path: Vec<String>,
    pub op: String,
    pub value: Value,
    pub effect: Effect,
    pub code: String,
    pub message: String,
    /// Sentence used when the value is missing.
    pub missing: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledSanitize {
    pub drop: Vec<String>,
    pub redact: Vec<String>,
    pub mask: Vec<CompiledMask>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledMask {
    pub pattern: String,
    pub replacement: String,
    pub params: Vec<String>,
}

/// Compiles validated documents. Documents must already have passed
/// [`super::validate::validate_document`] and the set checks; this function does not re-check.
pub fn compile(docs: &[&PolicyDocument]) -> CompiledData {
    let mut index = CompiledIndex::default();
    for doc in docs {
        let agent = compile_agent(doc);
        index
            .policies
            .entry(doc.metadata.tenant.clone())
            .or_default()
            .insert(doc.spec.agent_id.clone(), agent);
    }
    CompiledData { aegis: index }
}

fn compile_agent(doc: &PolicyDocument) -> CompiledAgent {
    let policy = format!("{}/{}", doc.metadata.tenant, doc.metadata.name);
    let log_mask = doc
        .spec
        .log_masking
        .as_ref()
        .map(|l| l.params.clone())
        .unwrap_or_default();
    let mut tools: BTreeMap<ToolId, BTreeMap<String, RuleId>> = BTreeMap::new();
    let mut rules = BTreeMap::new();
    for rule in &doc.spec.rules {
        for action in &rule.actions {
            tools
                .entry(rule.tool_id.clone())
                .or_default()
                .entry(action.clone())
                .or_insert_with(|| rule.id.clone());
        }
        let callers = merge_callers(doc.spec.callers.as_ref(), rule.callers.as_ref());
        let checks = rule.conditions.iter().flat_map(compile_condition).collect();
        let sanitize = compile_sanitize(&rule.sanitize);
        let mut obligations = serde_json::Map::new();
        obligations.insert("log_mask".into(), json!(log_mask));
        if !rule.budgets.is_empty() {
            obligations.insert(
                "budgets".into(),
                Value::Array(rule.budgets.iter().map(|b| json!({"param": b.param, "max": b.max, "window_seconds": b.window_seconds, "scope": scope(b.scope)})).collect()),
            );
        }
        if !rule.rate_limits.is_empty() {
            obligations.insert(
                "rate_limits".into(),
                Value::Array(rule.rate_limits.iter().map(|l| json!({"calls": l.calls, "window_seconds": l.window_seconds, "scope": scope(l.scope)})).collect()),
            );
        }
        let reason = |code: &str, message: String| json!({"code": code, "message": message, "policy": policy, "rule": rule.id});
        let allowed = json!({
            "decision": "allow",
            "reasons": [reason("allowed", format!("allowed by rule {} of policy {policy}", rule.id))],
            "policy": policy,
            "rule": rule.id,
            "obligations": obligations,
        });
        let sanitized = json!({
            "decision": "sanitize",
            "reasons": [reason("params_sanitized", format!("allowed by rule {} of policy {policy} with parameters sanitized", rule.id))],
            "policy": policy,
            "rule": rule.id,
            "obligations": obligations,
        });
        rules.insert(
            rule.id.clone(),
            CompiledRule {
                risk_tier: rule.risk_tier.unwrap_or(doc.metadata.risk_tier),
                tool_id: rule.tool_id.clone(),
                actions: rule.actions.clone(),
                callers,
                checks,
                sanitize,
                allowed,
                sanitized,
            },
        );
    }
    CompiledAgent {
        policy,
        risk_tier: doc.metadata.risk_tier,
        owner: doc.metadata.owner.clone(),
        custom: doc
            .spec
            .custom_rego
            .as_deref()
            .and_then(|r| custom_package(r).ok()),
        log_mask,
        tools,
        rules,
    }
}

fn scope(s: LimitScope) -> &'static str {
    match s {
        LimitScope::Gateway => "gateway",
        LimitScope::Global => "global",
    }
}

fn merge_callers(
    a: Option<&CallerConstraints>,
    b: Option<&CallerConstraints>,
) -> Option<MergedCallers> {
    let parts: Vec<&CallerConstraints> = a.into_iter().chain(b).collect();
    if parts.is_empty() {
        return None;
    }
    let mut m = MergedCallers::default();
    for c in parts {
        if let Some(allowed) = &c.allowed_direct {
            m.allowed_direct = Some(match m.allowed_direct.take() {
                None => allowed.clone(),
                Some(prev) => prev.into_iter().filter(|x| allowed.contains(x)).collect(),
            });
        }
        for n in &c.never {
            if !m.never.contains(n) {
                m.never.push(n.clone());
            }
        }
        m.max_depth = match (m.max_depth, c.max_depth) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        m.min_depth = match (m.min_depth, c.min_depth) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
    }
    m.never.sort();
    if m == MergedCallers::default() {
        None
    } else {
        Some(m)
    }
}

fn num(v: f64) -> Value {
    // Integers stay integers in data.json so OPA and humans read them as written.
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        #[allow(clippy::cast_possible_truncation)]
        let i = v as i64;
        json!(i)
    } else {
        json!(v)
    }
}

fn compile_condition(c: &Condition) -> Vec<Check> {
    let Some((source, path)) = c.subject() else {
        return Vec::new();
    };
    let last = path.rsplit('.').next().unwrap_or(path);
    let stem: String = last
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() {
                ch.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let noun = if source == "params" {
        format!("parameter `{path}`")
    } else {
        format!("context `{path}`")
    };
    let tail = match c.on_violation {
        Effect::Deny => "",
        Effect::ApprovalNeeded => " without approval",
    };
    let mut out = Vec::new();
    let mut push = |op: &str, value: Value, default_code: String, sentence: String| {
        out.push(Check {
            path: std::iter::once(source.to_owned())
                .chain(path.split('.').map(str::to_owned))
                .collect(),
            op: op.to_owned(),
            value,
            effect: c.on_violation,
            code: c.code.clone().unwrap_or(default_code),
            message: c.message.clone().unwrap_or(sentence),
            missing: format!(
                "{noun} is required{}",
                c.message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        });
    };
    let range = format!("{stem}_out_of_range");
    if let Some(v) = c.lt {
        push(
            "lt",
            num(v),
            range.clone(),
            format!("{noun} must be below {v}{tail}"),
        );
    }
    if let Some(v) = c.lte {
        push(
            "lte",
            num(v),
            range.clone(),
            format!("{noun} must be at most {v}{tail}"),
        );
    }
    if let Some(v) = c.gt {
        push(
            "gt",
            num(v),
            range.clone(),
            format!("{noun} must be above {v}{tail}"),
        );
    }
    if let Some(v) = c.gte {
        push(
            "gte",
            num(v),
            range,
            format!("{noun} must be at least {v}{tail}"),
        );
    }
    if let Some(v) = &c.eq {
        push(
            "eq",
            v.clone(),
            format!("{stem}_not_allowed"),
            format!("{noun} must be {v}{tail}"),
        );
    }
    if let Some(v) = &c.one_of {
        push(
            "one_of",
            Value::Array(v.clone()),
            format!("{stem}_not_allowed"),
            format!("{noun} must be one of {}{tail}", Value::Array(v.clone())),
        );
    }
    if let Some(v) = &c.none_of {
        push(
            "none_of",
            Value::Array(v.clone()),
            format!("{stem}_not_allowed"),
            format!(
                "{noun} must not be any of {}{tail}",
                Value::Array(v.clone())
            ),
        );
    }
    if let Some(v) = &c.regex {
        push(
            "regex",
            json!(v),
            format!("{stem}_mismatch"),
            format!("{noun} must match /{v}/{tail}"),
        );
    }
    if let Some(v) = &c.prefix {
        push(
            "prefix",
            json!(v),
            format!("{stem}_mismatch"),
            format!("{noun} must start with {v:?}{tail}"),
        );
    }
    out
}

fn compile_sanitize(steps: &[SanitizeStep]) -> Option<CompiledSanitize> {
    if steps.is_empty() {
        return None;
    }
    let mut s = CompiledSanitize::default();
    for step in steps {
        match step {
            SanitizeStep::Drop(p) => s.drop.push(p.clone()),
            SanitizeStep::Redact(p) => s.redact.push(p.clone()),
            SanitizeStep::Mask(m) => s.mask.push(CompiledMask {
                pattern: m.pattern.clone(),
                replacement: m.replacement.clone(),
                params: m.params.clone(),
            }),
        }
    }
    Some(s)
}

impl CompiledData {
    /// The index as a JSON value (what `data.json` holds).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
