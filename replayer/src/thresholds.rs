//! Which numeric bounds a candidate moved: the conditions (`lt`, `lte`, `gt`, `gte` on a
//! parameter) of the same rule whose value differs between the recorded and the candidate
//! compiled data. Found from `data.json` alone, so it needs the recorded version's bundle; the
//! report marks them on the histograms of the same parameter.

use aegis_core::ids::TenantId;
use aegis_core::policy::compile::{Check, CompiledData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A numeric bound of one rule, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdChange {
    pub agent: String,
    pub rule: String,
    pub tool: String,
    pub actions: Vec<String>,
    pub param: String,
    /// `lt`, `lte`, `gt` or `gte`.
    pub op: String,
    /// `deny` or `approval_needed`: what breaking the bound leads to.
    pub effect: String,
    pub code: String,
    /// None: the bound is new in the candidate.
    pub recorded: Option<f64>,
    /// None: the candidate dropped the bound.
    pub candidate: Option<f64>,
}

const NUMERIC_OPS: [&str; 4] = ["lt", "lte", "gt", "gte"];

fn numeric_checks(checks: &[Check]) -> BTreeMap<(String, String, String), (f64, &Check)> {
    let mut out = BTreeMap::new();
    for c in checks {
        let [source, param] = c.path.as_slice() else {
            continue;
        };
        if source != "params" || !NUMERIC_OPS.contains(&c.op.as_str()) {
            continue;
        }
        if let Some(v) = c.value.as_f64() {
            out.insert((param.clone(), c.op.clone(), c.code.clone()), (v, c));
        }
    }
    out
}

fn effect_name(c: &Check) -> String {
    c.effect.as_str().to_owned()
}

/// Every numeric bound of `tenant`'s rules that differs from `recorded` to `candidate`.
pub fn changed_thresholds(
    tenant: &TenantId,
    recorded: &CompiledData,
    candidate: &CompiledData,
) -> Vec<ThresholdChange> {
    let empty = BTreeMap::new();
    let old = recorded.aegis.policies.get(tenant).unwrap_or(&empty);
    let new = candidate.aegis.policies.get(tenant).unwrap_or(&empty);
    let mut out = Vec::new();
    for (agent, new_agent) in new {
        let Some(old_agent) = old.get(agent) else {
            continue;
        };
        for (rule_id, new_rule) in &new_agent.rules {
            let Some(old_rule) = old_agent.rules.get(rule_id) else {
                continue;
            };
            let before = numeric_checks(&old_rule.checks);
            let after = numeric_checks(&new_rule.checks);
            let keys: std::collections::BTreeSet<_> = before.keys().chain(after.keys()).collect();
            for key in keys {
                let b = before.get(key);
                let a = after.get(key);
                if b.map(|x| x.0) == a.map(|x| x.0) {
                    continue;
                }
                let Some((_, check)) = a.or(b) else {
                    continue;
                };
                out.push(ThresholdChange {
                    agent: agent.as_str().to_owned(),
                    rule: rule_id.as_str().to_owned(),
                    tool: new_rule.tool_id.as_str().to_owned(),
                    actions: new_rule.actions.clone(),
                    param: key.0.clone(),
                    op: key.1.clone(),
                    effect: effect_name(check),
                    code: key.2.clone(),
                    recorded: b.map(|x| x.0),
                    candidate: a.map(|x| x.0),
                });
            }
        }
    }
    out
}
