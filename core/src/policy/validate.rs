//! Validation of one policy document: the canonical JSON Schema first, then the semantic checks
//! a schema cannot express. Every finding is collected; none stops the others.

use super::diagnostic::{Diagnostics, closest};
use super::model::{CallerConstraints, Condition, Effect, PolicyDocument, Rule, SanitizeStep};
use super::source::SourceFile;
use crate::schemas;
use std::collections::{BTreeMap, BTreeSet};

/// Most mask steps one rule may have (the shared Rego unrolls this many).
pub const MAX_MASK_STEPS: usize = 8;

/// Validates `src` as a policy document. On success returns the typed document.
pub fn validate_document(src: &SourceFile) -> Result<PolicyDocument, Diagnostics> {
    let mut diags = schema_diagnostics(src, schemas::policy_validator());
    if !diags.is_empty() {
        diags.sort();
        return Err(diags);
    }
    let doc: PolicyDocument = match serde_json::from_value(src.value.clone()) {
        Ok(doc) => doc,
        Err(e) => {
            diags.push(src.locator().diagnostic(
                &src.path,
                "",
                format!("does not match the policy model: {e}"),
                None,
            ));
            return Err(diags);
        }
    };
    semantic_checks(src, &doc, &mut diags);
    diags.sort();
    diags.into_result().map(|()| doc)
}

/// JSON Schema findings for `src`, each located and phrased for a person.
pub fn schema_diagnostics(
    src: &SourceFile,
    validator: Option<&jsonschema::Validator>,
) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let Some(validator) = validator else {
        diags.push(src.locator().diagnostic(
            &src.path,
            "",
            "internal error: the embedded schema does not compile",
            None,
        ));
        return diags;
    };
    for err in validator.iter_errors(&src.value) {
        let pointer = err.instance_path().as_str().to_owned();
        let schema_path = err.schema_path().as_str().to_owned();
        // A oneOf over sanitize steps reports the whole alternative set; say it plainly.
        let (message, hint, at) = match err.kind() {
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = allowed_properties(&src.value, &pointer);
                let mut hints = Vec::new();
                for u in unexpected {
                    if let Some(c) = closest(u, allowed.iter().map(String::as_str)) {
                        hints.push(format!("did you mean `{c}` instead of `{u}`?"));
                    }
                }
                let hint = if hints.is_empty() && !allowed.is_empty() {
                    Some(format!("allowed fields here: {}", allowed.join(", ")))
                } else if hints.is_empty() {
                    None
                } else {
                    Some(hints.join(" "))
                };
                let at = unexpected.first().map(|u| format!("{pointer}/{u}")).unwrap_or(pointer.clone());
                (format!("unknown field{} {}", if unexpected.len() > 1 { "s" } else { "" }, unexpected.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ")), hint, at)
            }
            jsonschema::error::ValidationErrorKind::Enum { options } => {
                (format!("{} is not allowed here", err.instance()), Some(format!("use one of {options}")), pointer.clone())
            }
            jsonschema::error::ValidationErrorKind::Constant { expected_value } => {
                (format!("{} is not allowed here", err.instance()), Some(format!("must be {expected_value}")), pointer.clone())
            }
            jsonschema::error::ValidationErrorKind::Required { property } => {
                (format!("missing required field {property}"), None, pointer.clone())
            }
            jsonschema::error::ValidationErrorKind::OneOfNotValid { .. } if schema_path.contains("sanitize_step") || pointer.contains("/sanitize/") => (
                "not a valid sanitize step".to_owned(),
                Some("use exactly one of `drop: <param>`, `redact: <param>` or `mask: {pattern, replacement?, params?}`".to_owned()),
                pointer.clone(),
            ),
            jsonschema::error::ValidationErrorKind::Pattern { pattern } => {
                let hint = if schema_path.contains("/code") || pattern.starts_with("^[a-z]") {
                    "reason codes are lower snake_case, e.g. `amount_over_limit`".to_owned()
                } else if pattern.contains("[^.]") {
                    "name a top-level parameter, without dots".to_owned()
                } else {
                    "ids use letters, digits and . _ : @ / - (at most 128, not starting with a separator)".to_owned()
                };
                (format!("{} has an invalid format", err.instance()), Some(hint), pointer.clone())
            }
            _ => (err.to_string(), None, pointer.clone()),
        };
        diags.push(src.locator().diagnostic(&src.path, &at, message, hint));
    }
    diags
}

/// The property names the schema allows for the object at `pointer` (for typo hints).
fn allowed_properties(doc: &serde_json::Value, pointer: &str) -> Vec<String> {
    let segs: Vec<&str> = pointer.split('/').skip(1).collect();
    let names: &[&str] = match segs.as_slice() {
        [] => &["apiVersion", "kind", "metadata", "spec"],
        ["metadata"] => &[
            "tenant",
            "name",
            "owner",
            "risk_tier",
            "labels",
            "ticket",
            "description",
        ],
        ["spec"] => &["agent_id", "callers", "rules", "log_masking", "custom_rego"],
        ["spec", "callers"] | ["spec", "rules", _, "callers"] => {
            &["allowed_direct", "never", "max_depth", "min_depth"]
        }
        ["spec", "log_masking"] => &["params"],
        ["spec", "rules", _] => &[
            "id",
            "tool_id",
            "actions",
            "description",
            "risk_tier",
            "conditions",
            "callers",
            "sanitize",
            "rate_limits",
            "budgets",
        ],
        ["spec", "rules", _, "conditions", _] => &[
            "param",
            "context",
            "lt",
            "lte",
            "gt",
            "gte",
            "eq",
            "one_of",
            "none_of",
            "regex",
            "prefix",
            "on_violation",
            "code",
            "message",
        ],
        ["spec", "rules", _, "rate_limits", _] => &["calls", "window_seconds", "scope"],
        ["spec", "rules", _, "budgets", _] => &["param", "max", "window_seconds", "scope"],
        ["spec", "rules", _, "sanitize", _, "mask"] => &["pattern", "replacement", "params"],
        ["spec", "rules", _, "sanitize", _] => &["drop", "redact", "mask"],
        _ => &[],
    };
    let _ = doc;
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn semantic_checks(src: &SourceFile, doc: &PolicyDocument, diags: &mut Diagnostics) {
    let at = |ptr: String, msg: String, hint: Option<String>| {
        src.locator().diagnostic(&src.path, &ptr, msg, hint)
    };

    if let Some(c) = &doc.spec.callers {
        check_callers(c, "/spec/callers", &mut |p, m, h| diags.push(at(p, m, h)));
    }

    // (tool, action) -> first rule index covering it.
    let mut covered: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for (ri, rule) in doc.spec.rules.iter().enumerate() {
        let rp = format!("/spec/rules/{ri}");
        if let Some(first) = ids.insert(rule.id.to_string(), ri) {
            diags.push(at(
                format!("{rp}/id"),
                format!("duplicate rule id `{}`", rule.id),
                Some(format!(
                    "rule ids must be unique; spec.rules[{first}] already uses it"
                )),
            ));
        }
        if rule.actions.len() > 1 && rule.actions.iter().any(|a| a == "*") {
            diags.push(at(
                format!("{rp}/actions"),
                "`*` is listed together with named actions".into(),
                Some(
                    "`*` already covers every action; list either `*` alone or the named actions"
                        .into(),
                ),
            ));
        }
        for (ai, action) in rule.actions.iter().enumerate() {
            let key = (rule.tool_id.to_string(), action.clone());
            if let Some(prev) = covered.get(&key) {
                let other = doc
                    .spec
                    .rules
                    .get(*prev)
                    .map(|r| r.id.to_string())
                    .unwrap_or_default();
                diags.push(at(
                    format!("{rp}/actions/{ai}"),
                    format!("rule `{}` is shadowed: rule `{other}` (spec.rules[{prev}]) already covers tool `{}` action `{action}`", rule.id, rule.tool_id),
                    Some("merge the two rules, or give them different actions".into()),
                ));
            } else {
                covered.insert(key, ri);
            }
        }
        check_rule(rule, &rp, &mut |p, m, h| diags.push(at(p, m, h)));
    }

    if let Some(lm) = &doc.spec.log_masking {
        let mut seen = BTreeSet::new();
        for (i, p) in lm.params.iter().enumerate() {
            if !seen.insert(p) {
                diags.push(at(
                    format!("/spec/log_masking/params/{i}"),
                    format!("`{p}` is listed twice"),
                    None,
                ));
            }
        }
    }

    if let Some(rego) = &doc.spec.custom_rego {
        if let Err(msg) = custom_package(rego) {
            diags.push(at("/spec/custom_rego".into(), msg, Some("start the module with `package aegis.custom.<name>`, name made of letters, digits and _".into())));
        } else if let Err(e) = crate::eval::check_custom_module(rego) {
            diags.push(at(
                "/spec/custom_rego".into(),
                format!("custom Rego does not compile: {e}"),
                None,
            ));
        }
    }
}

/// The `<name>` of a custom module's `package aegis.custom.<name>` line.
pub fn custom_package(rego: &str) -> Result<String, String> {
    let line = rego
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| "custom Rego is empty".to_owned())?;
    let Some(pkg) = line.strip_prefix("package ") else {
        return Err(format!(
            "custom Rego must begin with a package line, found `{line}`"
        ));
    };
    let Some(name) = pkg.trim().strip_prefix("aegis.custom.") else {
        return Err(format!(
            "custom Rego package must be `aegis.custom.<name>`, found `{}`",
            pkg.trim()
        ));
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "custom Rego package name `{name}` must be a single identifier (letters, digits, _)"
        ));
    }
    Ok(name.to_owned())
}

type Report<'a> = dyn FnMut(String, String, Option<String>) + 'a;

fn check_callers(c: &CallerConstraints, ptr: &str, report: &mut Report<'_>) {
    if let (Some(min), Some(max)) = (c.min_depth, c.max_depth)
        && min > max
    {
        report(
            format!("{ptr}/min_depth"),
            format!("min_depth {min} is above max_depth {max}: no call chain can satisfy both"),
            Some("make min_depth at most max_depth".into()),
        );
    }
    if let Some(allowed) = &c.allowed_direct {
        for (i, a) in allowed.iter().enumerate() {
            if c.never.contains(a) {
                report(
                    format!("{ptr}/allowed_direct/{i}"),
                    format!(
                        "`{a}` is both an allowed direct caller and a caller that may never appear"
                    ),
                    Some("remove it from one of the two lists".into()),
                );
            }
        }
        if allowed.is_empty() {
            report(
                format!("{ptr}/allowed_direct"),
                "allowed_direct is empty: every delegated call would be denied".into(),
                Some("list the allowed callers, or drop the field".into()),
            );
        }
    }
}

fn check_rule(rule: &Rule, rp: &str, report: &mut Report<'_>) {
    if let Some(c) = &rule.callers {
        check_callers(c, &format!("{rp}/callers"), report);
    }
    for (ci, cond) in rule.conditions.iter().enumerate() {
        check_condition(cond, &format!("{rp}/conditions/{ci}"), report);
    }
    check_thresholds(rule, rp, report);

    let mut dropped = BTreeSet::new();
    let mut redacted = BTreeSet::new();
    let mut masks = 0usize;
    for (si, step) in rule.sanitize.iter().enumerate() {
        let sp = format!("{rp}/sanitize/{si}");
        match step {
            SanitizeStep::Drop(p) => {
                if !dropped.insert(p.clone()) {
                    report(
                        format!("{sp}/drop"),
                        format!("`{p}` is dropped twice"),
                        None,
                    );
                }
            }
            SanitizeStep::Redact(p) => {
                if dropped.contains(p) {
                    report(
                        format!("{sp}/redact"),
                        format!("`{p}` is both dropped and redacted"),
                        Some("a dropped parameter is gone; keep one of the two steps".into()),
                    );
                }
                if !redacted.insert(p.clone()) {
                    report(
                        format!("{sp}/redact"),
                        format!("`{p}` is redacted twice"),
                        None,
                    );
                }
            }
            SanitizeStep::Mask(m) => {
                masks += 1;
                if let Err(e) = regex::Regex::new(&m.pattern) {
                    report(
                        format!("{sp}/mask/pattern"),
                        format!("invalid regular expression: {}", first_line(&e.to_string())),
                        None,
                    );
                }
                if masks > MAX_MASK_STEPS {
                    report(
                        format!("{sp}/mask"),
                        format!("more than {MAX_MASK_STEPS} mask steps in one rule"),
                        Some("combine patterns with `|`".into()),
                    );
                }
            }
        }
    }
    for (bi, b) in rule.budgets.iter().enumerate() {
        if !b.max.is_finite() {
            report(
                format!("{rp}/budgets/{bi}/max"),
                "budget max must be a finite number".into(),
                None,
            );
        }
        if !rule
            .conditions
            .iter()
            .any(|c| c.param.as_deref() == Some(b.param.as_str()))
        {
            report(
                format!("{rp}/budgets/{bi}/param"),
                format!(
                    "budget sums `{}` but no condition of this rule requires `{}` to be present",
                    b.param, b.param
                ),
                Some(format!(
                    "add a condition on `{}` (e.g. `gt: 0`) so a call without it cannot bypass the budget",
                    b.param
                )),
            );
        }
    }
    let mut windows = BTreeSet::new();
    for (li, l) in rule.rate_limits.iter().enumerate() {
        if !windows.insert((l.window_seconds, l.scope as u8)) {
            report(
                format!("{rp}/rate_limits/{li}/window_seconds"),
                format!(
                    "two rate limits with the same {}s window and scope",
                    l.window_seconds
                ),
                Some("keep the stricter one".into()),
            );
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

fn check_condition(c: &Condition, cp: &str, report: &mut Report<'_>) {
    match (&c.param, &c.context) {
        (None, None) => report(
            cp.into(),
            "condition names no value".into(),
            Some("add `param: <name>` or `context: <name>`".into()),
        ),
        (Some(_), Some(_)) => report(
            format!("{cp}/context"),
            "condition names both a param and a context value".into(),
            Some("split it into two conditions".into()),
        ),
        (Some(p), None) | (None, Some(p)) => {
            if p.split('.').any(str::is_empty) {
                report(
                    format!(
                        "{cp}/{}",
                        if c.param.is_some() {
                            "param"
                        } else {
                            "context"
                        }
                    ),
                    format!("`{p}` is not a valid dotted path"),
                    Some("use names separated by single dots, e.g. `recipient.iban`".into()),
                );
            }
        }
    }
    let ops = [
        c.lt.is_some(),
        c.lte.is_some(),
        c.gt.is_some(),
        c.gte.is_some(),
        c.eq.is_some(),
        c.one_of.is_some(),
        c.none_of.is_some(),
        c.regex.is_some(),
        c.prefix.is_some(),
    ];
    if !ops.iter().any(|x| *x) {
        report(
            cp.into(),
            "condition has no operator".into(),
            Some("add one of lt, lte, gt, gte, eq, one_of, none_of, regex, prefix".into()),
        );
    }
    for (name, v) in [("lt", c.lt), ("lte", c.lte), ("gt", c.gt), ("gte", c.gte)] {
        if v.is_some_and(|v| !v.is_finite()) {
            report(
                format!("{cp}/{name}"),
                "bound must be a finite number".into(),
                None,
            );
        }
    }
    let upper =
        c.lt.map(|v| (v, false))
            .into_iter()
            .chain(c.lte.map(|v| (v, true)))
            .fold(None::<(f64, bool)>, |acc, x| match acc {
                Some(a) if a.0 <= x.0 => Some(a),
                _ => Some(x),
            });
    let lower =
        c.gt.map(|v| (v, false))
            .into_iter()
            .chain(c.gte.map(|v| (v, true)))
            .fold(None::<(f64, bool)>, |acc, x| match acc {
                Some(a) if a.0 >= x.0 => Some(a),
                _ => Some(x),
            });
    if let (Some((hi, hi_inc)), Some((lo, lo_inc))) = (upper, lower)
        && (lo > hi || (lo == hi && !(hi_inc && lo_inc)))
    {
        report(
            cp.into(),
            format!("the bounds leave no allowed value (lower {lo}, upper {hi})"),
            Some("the lower bound must be below the upper bound".into()),
        );
    }
    if let (Some(one), Some(none)) = (&c.one_of, &c.none_of) {
        for v in one {
            if none.contains(v) {
                report(
                    format!("{cp}/none_of"),
                    format!("{v} is in both one_of and none_of"),
                    Some("remove it from one list".into()),
                );
            }
        }
    }
    for (name, list) in [("one_of", &c.one_of), ("none_of", &c.none_of)] {
        if let Some(list) = list {
            for (i, v) in list.iter().enumerate() {
                if list.iter().take(i).any(|w| w == v) {
                    report(
                        format!("{cp}/{name}/{i}"),
                        format!("{v} is listed twice"),
                        None,
                    );
                }
            }
        }
    }
    if let Some(re) = &c.regex
        && let Err(e) = regex::Regex::new(re)
    {
        report(
            format!("{cp}/regex"),
            format!("invalid regular expression: {}", first_line(&e.to_string())),
            None,
        );
    }
}

/// For conditions on the same value, an `approval_needed` bound must be stricter than the
/// `deny` bound; otherwise the approval tier can never trigger (the deny fires first or the
/// approval band is empty).
fn check_thresholds(rule: &Rule, rp: &str, report: &mut Report<'_>) {
    #[derive(Clone, Copy)]
    struct Bound {
        idx: usize,
        value: f64,
    }
    let mut by_subject: BTreeMap<(String, String), [Vec<Bound>; 4]> = BTreeMap::new();
    for (ci, c) in rule.conditions.iter().enumerate() {
        let Some((src, path)) = c.subject() else {
            continue;
        };
        let slot = by_subject
            .entry((src.to_owned(), path.to_owned()))
            .or_default();
        let upper = c.lte.or(c.lt);
        let lower = c.gte.or(c.gt);
        let base = if c.on_violation == Effect::Deny { 0 } else { 2 };
        if let (Some(v), Some(s)) = (upper, slot.get_mut(base)) {
            s.push(Bound { idx: ci, value: v });
        }
        if let (Some(v), Some(s)) = (lower, slot.get_mut(base + 1)) {
            s.push(Bound { idx: ci, value: v });
        }
    }
    for ((_, path), [deny_hi, deny_lo, appr_hi, appr_lo]) in by_subject {
        for a in &appr_hi {
            for d in &deny_hi {
                if a.value >= d.value {
                    report(
                        format!("{rp}/conditions/{}", a.idx),
                        format!(
                            "approval threshold on `{path}` ({}) is not below the deny threshold ({}) of conditions[{}]: the approval tier can never trigger",
                            a.value, d.value, d.idx
                        ),
                        Some(format!(
                            "order them: allow up to the approval bound, approval_needed up to the deny bound, deny above; e.g. approval at {} and deny at {}",
                            d.value.min(a.value),
                            d.value.max(a.value)
                        )),
                    );
                }
            }
        }
        for a in &appr_lo {
            for d in &deny_lo {
                if a.value <= d.value {
                    report(
                        format!("{rp}/conditions/{}", a.idx),
                        format!(
                            "approval lower bound on `{path}` ({}) is not above the deny lower bound ({}) of conditions[{}]: the approval tier can never trigger",
                            a.value, d.value, d.idx
                        ),
                        Some("the approval bound must be the stricter one".into()),
                    );
                }
            }
        }
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
    use crate::policy::source::parse;
    use std::path::Path;

    const GOOD: &str = r#"apiVersion: aegis.dev/v1
kind: AgentPolicy
metadata:
  tenant: acme
  name: finance
  owner: payments@acme.example
  risk_tier: high
spec:
  agent_id: finance-agent
  rules:
    - id: pay
      tool_id: payments
      actions: [create_payment]
      conditions:
        - param: amount
          lte: 5000
          on_violation: approval_needed
        - param: amount
          lte: 25000
"#;

    fn errors(text: &str) -> Diagnostics {
        let src = parse(Path::new("p.yaml"), text.to_owned()).unwrap();
        validate_document(&src).err().unwrap_or_default()
    }

    #[test]
    fn good_document_validates() {
        let d = errors(GOOD);
        assert!(d.is_empty(), "{d}");
    }

    #[test]
    fn typo_names_line_field_and_suggestion() {
        let d = errors(&GOOD.replace("          lte: 25000", "          lte_: 25000"));
        assert_eq!(d.len(), 1, "{d}");
        let e = &d.0[0];
        assert_eq!(e.line, Some(19), "{e}");
        assert_eq!(e.field, "spec.rules[0].conditions[1].lte_");
        assert!(e.message.contains("unknown field `lte_`"), "{e}");
        assert!(
            e.hint
                .as_deref()
                .unwrap_or("")
                .contains("did you mean `lte`"),
            "{e}"
        );
        assert!(e.to_string().starts_with("p.yaml:19:"), "{e}");
    }

    #[test]
    fn all_errors_are_collected() {
        let bad = GOOD
            .replace("risk_tier: high", "risk_tier: extreme")
            .replace(
                "          lte: 25000",
                "          lte: 25000\n          colour: red",
            );
        let d = errors(&bad);
        assert_eq!(d.len(), 2, "{d}");
        assert!(d.to_string().contains("use one of"), "{d}");
    }

    #[test]
    fn unordered_thresholds_are_reported() {
        let d = errors(&GOOD.replace("lte: 5000", "lte: 30000"));
        assert_eq!(d.len(), 1, "{d}");
        assert!(
            d.0[0].message.contains("approval tier can never trigger"),
            "{d}"
        );
        assert_eq!(d.0[0].field, "spec.rules[0].conditions[0]");
    }

    #[test]
    fn shadowed_and_duplicate_rules_are_reported() {
        let extra = "    - id: pay\n      tool_id: payments\n      actions: [create_payment]\n";
        let d = errors(&format!("{GOOD}{extra}"));
        assert_eq!(d.len(), 2, "{d}");
        assert!(d.to_string().contains("duplicate rule id"), "{d}");
        assert!(d.to_string().contains("shadowed"), "{d}");
    }

    #[test]
    fn bad_regex_and_empty_range_are_reported() {
        let extra = "        - param: memo\n          regex: \"([a-z\"\n        - param: qty\n          gt: 10\n          lt: 5\n";
        let d = errors(&format!("{GOOD}{extra}"));
        assert_eq!(d.len(), 2, "{d}");
        assert!(d.to_string().contains("invalid regular expression"), "{d}");
        assert!(d.to_string().contains("no allowed value"), "{d}");
    }

    #[test]
    fn custom_package_rules() {
        assert_eq!(
            custom_package("# c\npackage aegis.custom.fin_1\n").unwrap(),
            "fin_1"
        );
        assert!(custom_package("package other\n").is_err());
        assert!(custom_package("package aegis.custom.a.b\n").is_err());
    }
}
