//! Semantic diff of two compiled policy sets: which agent, tool, action or rule became stricter
//! (denies or escalates more) or looser (allows more), and what merely changed.

use crate::policy::compile::{Check, CompiledAgent, CompiledData, CompiledRule, MergedCallers};
use crate::policy::model::Effect;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Some call that was allowed (or needed approval) may now be denied or need approval.
    Stricter,
    /// Some call that was denied (or needed approval) may now be allowed.
    Looser,
    /// Changed in a way that is neither (sanitizing, masking, custom Rego, metadata).
    Changed,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Stricter => "stricter",
            Direction::Looser => "looser",
            Direction::Changed => "changed",
        }
    }
}

/// One semantic change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub direction: Direction,
    pub tenant: String,
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub what: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<8} {}/{}",
            self.direction.as_str(),
            self.tenant,
            self.agent
        )?;
        if let Some(t) = &self.tool {
            write!(f, " {t}")?;
            if let Some(a) = &self.action {
                write!(f, ":{a}")?;
            }
        }
        if let Some(r) = &self.rule {
            write!(f, " (rule {r})")?;
        }
        write!(f, ": {}", self.what)
    }
}

struct Ctx<'a> {
    tenant: &'a str,
    agent: &'a str,
    out: &'a mut Vec<Change>,
}

impl Ctx<'_> {
    fn push(
        &mut self,
        direction: Direction,
        tool: Option<&str>,
        action: Option<&str>,
        rule: Option<&str>,
        what: String,
    ) {
        self.out.push(Change {
            direction,
            tenant: self.tenant.to_owned(),
            agent: self.agent.to_owned(),
            tool: tool.map(str::to_owned),
            action: action.map(str::to_owned),
            rule: rule.map(str::to_owned),
            what,
        });
    }
}

/// Every semantic difference from `old` to `new`, sorted by tenant, agent, tool, action.
pub fn diff(old: &CompiledData, new: &CompiledData) -> Vec<Change> {
    let mut out = Vec::new();
    let tenants: BTreeSet<_> = old
        .aegis
        .policies
        .keys()
        .chain(new.aegis.policies.keys())
        .collect();
    for tenant in tenants {
        let empty = BTreeMap::new();
        let o = old.aegis.policies.get(tenant).unwrap_or(&empty);
        let n = new.aegis.policies.get(tenant).unwrap_or(&empty);
        let agents: BTreeSet<_> = o.keys().chain(n.keys()).collect();
        for agent in agents {
            let mut ctx = Ctx {
                tenant: tenant.as_str(),
                agent: agent.as_str(),
                out: &mut out,
            };
            match (o.get(agent), n.get(agent)) {
                (None, Some(a)) => ctx.push(
                    Direction::Looser,
                    None,
                    None,
                    None,
                    format!("new policy {} with {} rule(s)", a.policy, a.rules.len()),
                ),
                (Some(a), None) => ctx.push(
                    Direction::Stricter,
                    None,
                    None,
                    None,
                    format!(
                        "policy {} removed: every call of this agent falls to default deny",
                        a.policy
                    ),
                ),
                (Some(a), Some(b)) => diff_agent(&mut ctx, a, b),
                (None, None) => {}
            }
        }
    }
    out.sort_by(|a, b| {
        (
            &a.tenant,
            &a.agent,
            &a.tool,
            &a.action,
            &a.rule,
            a.direction,
        )
            .cmp(&(
                &b.tenant,
                &b.agent,
                &b.tool,
                &b.action,
                &b.rule,
                b.direction,
            ))
    });
    out
}

fn diff_agent(ctx: &mut Ctx<'_>, a: &CompiledAgent, b: &CompiledAgent) {
    if a.risk_tier != b.risk_tier {
        ctx.push(
            Direction::Changed,
            None,
            None,
            None,
            format!(
                "risk tier {} -> {}",
                a.risk_tier.as_str(),
                b.risk_tier.as_str()
            ),
        );
    }
    if a.custom != b.custom {
        ctx.push(
            Direction::Changed,
            None,
            None,
            None,
            "custom Rego module changed".into(),
        );
    }
    if a.log_mask != b.log_mask {
        ctx.push(
            Direction::Changed,
            None,
            None,
            None,
            format!("decision-log masking {:?} -> {:?}", a.log_mask, b.log_mask),
        );
    }
    let tools: BTreeSet<_> = a.tools.keys().chain(b.tools.keys()).collect();
    for tool in tools {
        let empty = BTreeMap::new();
        let ta = a.tools.get(tool).unwrap_or(&empty);
        let tb = b.tools.get(tool).unwrap_or(&empty);
        let actions: BTreeSet<_> = ta.keys().chain(tb.keys()).collect();
        for action in actions {
            let (t, ac) = (Some(tool.as_str()), Some(action.as_str()));
            match (
                ta.get(action).and_then(|r| a.rules.get(r).map(|x| (r, x))),
                tb.get(action).and_then(|r| b.rules.get(r).map(|x| (r, x))),
            ) {
                (None, Some((rid, _))) => ctx.push(
                    Direction::Looser,
                    t,
                    ac,
                    Some(rid.as_str()),
                    "newly covered (was default deny)".into(),
                ),
                (Some((rid, _)), None) => ctx.push(
                    Direction::Stricter,
                    t,
                    ac,
                    Some(rid.as_str()),
                    "no longer covered: default deny".into(),
                ),
                (Some((_, ra)), Some((rid, rb))) => diff_rule(ctx, t, ac, rid.as_str(), ra, rb),
                (None, None) => {}
            }
        }
    }
}

fn diff_rule(
    ctx: &mut Ctx<'_>,
    t: Option<&str>,
    ac: Option<&str>,
    rid: &str,
    a: &CompiledRule,
    b: &CompiledRule,
) {
    let r = Some(rid);
    let key = |c: &Check| (c.path.join("."), c.op.clone(), c.effect);
    let ca: BTreeMap<_, &Check> = a.checks.iter().map(|c| (key(c), c)).collect();
    let cb: BTreeMap<_, &Check> = b.checks.iter().map(|c| (key(c), c)).collect();
    let keys: BTreeSet<_> = ca.keys().chain(cb.keys()).cloned().collect();
    for k in keys {
        let (path, op, effect) = &k;
        let eff = if *effect == Effect::Deny {
            "deny"
        } else {
            "approval_needed"
        };
        match (ca.get(&k), cb.get(&k)) {
            (None, Some(c)) => ctx.push(
                Direction::Stricter,
                t,
                ac,
                r,
                format!("adds condition {path} {op} {} ({eff})", c.value),
            ),
            (Some(c), None) => ctx.push(
                Direction::Looser,
                t,
                ac,
                r,
                format!("drops condition {path} {op} {} ({eff})", c.value),
            ),
            (Some(x), Some(y)) if x.value != y.value => {
                let dir = compare_values(op, &x.value, &y.value);
                ctx.push(
                    dir,
                    t,
                    ac,
                    r,
                    format!("{path} {op} {} -> {} ({eff})", x.value, y.value),
                );
            }
            _ => {}
        }
    }
    diff_callers(ctx, t, ac, r, a.callers.as_ref(), b.callers.as_ref());
    if a.sanitize != b.sanitize {
        ctx.push(
            Direction::Changed,
            t,
            ac,
            r,
            "sanitize steps changed".into(),
        );
    }
    let obligations =
        |x: &CompiledRule| x.allowed.get("obligations").cloned().unwrap_or(Value::Null);
    let (oa, ob) = (obligations(a), obligations(b));
    for kind in ["budgets", "rate_limits"] {
        if oa.get(kind) != ob.get(kind) {
            ctx.push(
                Direction::Changed,
                t,
                ac,
                r,
                format!(
                    "{kind} {} -> {}",
                    oa.get(kind).unwrap_or(&Value::Null),
                    ob.get(kind).unwrap_or(&Value::Null)
                ),
            );
        }
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(Value::to_string).collect())
        .unwrap_or_default()
}

/// How moving a check's operand from `a` to `b` changes what passes.
fn compare_values(op: &str, a: &Value, b: &Value) -> Direction {
    match (op, num(a), num(b)) {
        ("lt" | "lte", Some(x), Some(y)) => {
            if y < x {
                Direction::Stricter
            } else {
                Direction::Looser
            }
        }
        ("gt" | "gte", Some(x), Some(y)) => {
            if y > x {
                Direction::Stricter
            } else {
                Direction::Looser
            }
        }
        ("one_of", _, _) => subset_direction(&set(a), &set(b), false),
        ("none_of", _, _) => subset_direction(&set(a), &set(b), true),
        _ => Direction::Changed,
    }
}

/// For an allow-list (`inverted = false`), shrinking is stricter; for a deny-list, growing is.
fn subset_direction(a: &BTreeSet<String>, b: &BTreeSet<String>, inverted: bool) -> Direction {
    let (shrunk, grew) = (b.is_subset(a), a.is_subset(b));
    match (shrunk, grew, inverted) {
        (true, false, false) | (false, true, true) => Direction::Stricter,
        (false, true, false) | (true, false, true) => Direction::Looser,
        _ => Direction::Changed,
    }
}

fn diff_callers(
    ctx: &mut Ctx<'_>,
    t: Option<&str>,
    ac: Option<&str>,
    r: Option<&str>,
    a: Option<&MergedCallers>,
    b: Option<&MergedCallers>,
) {
    let d = MergedCallers::default();
    let (a, b) = (a.unwrap_or(&d), b.unwrap_or(&d));
    if a.allowed_direct != b.allowed_direct {
        let dir = match (&a.allowed_direct, &b.allowed_direct) {
            (None, Some(_)) => Direction::Stricter,
            (Some(_), None) => Direction::Looser,
            (Some(x), Some(y)) => {
                let (x, y): (BTreeSet<String>, BTreeSet<String>) = (
                    x.iter().map(|i| i.to_string()).collect(),
                    y.iter().map(|i| i.to_string()).collect(),
                );
                subset_direction(&x, &y, false)
            }
            (None, None) => Direction::Changed,
        };
        ctx.push(
            dir,
            t,
            ac,
            r,
            format!(
                "allowed direct callers {:?} -> {:?}",
                a.allowed_direct, b.allowed_direct
            ),
        );
    }
    if a.never != b.never {
        let (x, y): (BTreeSet<String>, BTreeSet<String>) = (
            a.never.iter().map(|i| i.to_string()).collect(),
            b.never.iter().map(|i| i.to_string()).collect(),
        );
        ctx.push(
            subset_direction(&x, &y, true),
            t,
            ac,
            r,
            format!("forbidden callers {:?} -> {:?}", a.never, b.never),
        );
    }
    if a.max_depth != b.max_depth {
        let dir = match (a.max_depth, b.max_depth) {
            (Some(x), Some(y)) if y < x => Direction::Stricter,
            (None, Some(_)) => Direction::Stricter,
            _ => Direction::Looser,
        };
        ctx.push(
            dir,
            t,
            ac,
            r,
            format!("max chain depth {:?} -> {:?}", a.max_depth, b.max_depth),
        );
    }
    if a.min_depth != b.min_depth {
        let dir = match (a.min_depth, b.min_depth) {
            (Some(x), Some(y)) if y > x => Direction::Stricter,
            (None, Some(_)) => Direction::Stricter,
            _ => Direction::Looser,
        };
        ctx.push(
            dir,
            t,
            ac,
            r,
            format!("min chain depth {:?} -> {:?}", a.min_depth, b.min_depth),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use crate::policy::PolicySet;
    use crate::policy::set::parse_document;
    use std::path::PathBuf;

    const BASE: &str = r#"
apiVersion: aegis.dev/v1
kind: AgentPolicy
metadata: {tenant: acme, name: fin, owner: o, risk_tier: high}
spec:
  agent_id: fin
  callers: {allowed_direct: [planner, ui]}
  rules:
    - id: pay
      tool_id: payments
      actions: [create_payment, refund]
      conditions:
        - {param: amount, lte: 5000, on_violation: approval_needed}
        - {param: amount, lte: 25000}
        - {param: currency, one_of: [USD, EUR]}
"#;

    fn data(text: &str) -> CompiledData {
        let p = PathBuf::from("x.yaml");
        let d = parse_document(&p, text.to_owned()).unwrap_or_else(|e| panic!("{e}"));
        PolicySet::from_documents(vec![(p, d)])
            .unwrap()
            .compile()
            .data
    }

    #[test]
    fn identical_sets_have_no_changes() {
        assert!(diff(&data(BASE), &data(BASE)).is_empty());
    }

    #[test]
    fn threshold_and_list_changes_have_directions() {
        let new = BASE
            .replace("lte: 25000", "lte: 10000")
            .replace("[USD, EUR]", "[USD, EUR, GBP]")
            .replace("[planner, ui]", "[planner]");
        let changes = diff(&data(BASE), &data(&new));
        let find = |needle: &str| {
            changes
                .iter()
                .find(|c| c.what.contains(needle))
                .unwrap_or_else(|| panic!("{needle} not in {changes:#?}"))
        };
        assert_eq!(find("lte 25000 -> 10000").direction, Direction::Stricter);
        assert_eq!(find("one_of").direction, Direction::Looser);
        assert_eq!(
            find("allowed direct callers").direction,
            Direction::Stricter
        );
        // per action: create_payment and refund each report the change
        assert_eq!(
            changes
                .iter()
                .filter(|c| c.what.contains("lte 25000"))
                .count(),
            2
        );
    }

    #[test]
    fn coverage_changes() {
        let new = BASE.replace("[create_payment, refund]", "[create_payment, get_balance]");
        let changes = diff(&data(BASE), &data(&new));
        assert!(
            changes.iter().any(
                |c| c.action.as_deref() == Some("refund") && c.direction == Direction::Stricter
            ),
            "{changes:#?}"
        );
        assert!(
            changes
                .iter()
                .any(|c| c.action.as_deref() == Some("get_balance")
                    && c.direction == Direction::Looser),
            "{changes:#?}"
        );
        let gone = diff(&data(BASE), &CompiledData::default());
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].direction, Direction::Stricter);
    }
}
