//! The report as Markdown, for a pull request: summary, transition table, agents and tools
//! with changes, examples, and the histograms of the parameters the changed calls carry.

use crate::report::{ParamHistogram, Report};
use std::fmt::Write as _;

/// A rate as a percentage with two decimals, `n/a` without one.
pub(crate) fn pct(rate: Option<f64>) -> String {
    rate.map_or_else(|| "n/a".to_owned(), |r| format!("{:.2}%", r * 100.0))
}

/// A number without a fraction when it has none.
pub(crate) fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Renders `report`.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let c = &report.counts;
    let _ = writeln!(
        s,
        "## Replay of {} against {}\n",
        report.tenant, report.candidate.source
    );
    let read = &report.slice.read;
    let _ = writeln!(
        s,
        "Slice: stream sequences {}–{} ({} to {}), {} records.\n",
        read.first_sequence
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        read.last_sequence
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        read.first_time.as_deref().unwrap_or("-"),
        read.last_time.as_deref().unwrap_or("-"),
        c.records
    );
    let _ = writeln!(s, "| | count |\n|---|---:|");
    let _ = writeln!(s, "| decisions | {} |", c.decisions);
    let _ = writeln!(s, "| replayed | {} |", c.replayed);
    let _ = writeln!(s, "| changed | **{}** |", c.changed);
    let _ = writeln!(s, "| unchanged | {} |", c.unchanged);
    let _ = writeln!(
        s,
        "| same decision, other reasons | {} |",
        c.reasons_changed
    );
    for (cause, n) in &c.not_replayable_by_cause {
        let _ = writeln!(s, "| not replayable: {} | {n} |", cause.as_str());
    }
    for (cause, n) in &c.skipped {
        let _ = writeln!(s, "| skipped: {} | {n} |", cause.as_str());
    }
    let _ = writeln!(
        s,
        "\nWould-deny rate: **{}** (recorded: {}).\n",
        pct(report.would_deny_rate),
        pct(report.recorded_deny_rate)
    );

    let _ = writeln!(s, "### Transitions\n");
    let _ = writeln!(s, "| recorded | candidate | count |\n|---|---|---:|");
    for t in &report.transitions {
        let mark = if t.changed { "**" } else { "" };
        let _ = writeln!(s, "| {} | {} | {mark}{}{mark} |", t.from, t.to, t.count);
    }

    let groups = [("Agents", &report.by_agent), ("Tools", &report.by_tool)];
    for (title, map) in groups {
        let _ = writeln!(s, "\n### {title}\n");
        let _ = writeln!(
            s,
            "| name | decisions | replayed | not replayable | changed | candidate denies |\n|---|---:|---:|---:|---:|---:|"
        );
        for (name, g) in map {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} | {} |",
                g.decisions, g.replayed, g.not_replayable, g.changed, g.candidate_denies
            );
        }
    }

    if !report.examples.is_empty() {
        let _ = writeln!(s, "\n### Examples\n");
        for t in &report.examples {
            let _ = writeln!(
                s,
                "#### {} → {} ({} call(s))\n\n| decision | agent | tool | action | recorded reasons | candidate reasons |\n|---|---|---|---|---|---|",
                t.from, t.to, t.count
            );
            for e in &t.examples {
                let _ = writeln!(
                    s,
                    "| `{}` | {} | {} | {} | {} | {} |",
                    e.decision_id,
                    e.agent,
                    e.tool,
                    e.action,
                    e.recorded_reasons.join(", "),
                    e.candidate_reasons.join(", ")
                );
            }
            let _ = writeln!(s);
        }
    }

    if !report.histograms.is_empty() {
        let _ = writeln!(s, "\n### Parameters of the changed calls\n");
        for h in &report.histograms {
            histogram(&mut s, h);
        }
    }
    let _ = writeln!(
        s,
        "\nThresholds: {} ({}).",
        match report.thresholds.status {
            crate::report::ThresholdStatus::Compared => "compared",
            crate::report::ThresholdStatus::Unavailable => "not compared",
        },
        report.thresholds.note
    );
    s
}

fn histogram(s: &mut String, h: &ParamHistogram) {
    let _ = writeln!(s, "#### `{}` of {}:{}\n", h.param, h.tool, h.action);
    for t in &h.thresholds {
        let _ = writeln!(
            s,
            "Threshold moved: `{} {}` {} → {} ({}, rule {}).\n",
            t.param,
            t.op,
            t.recorded.map_or_else(|| "none".to_owned(), num),
            t.candidate.map_or_else(|| "none".to_owned(), num),
            t.effect,
            t.rule
        );
    }
    let _ = writeln!(
        s,
        "| range | calls | changed | recorded | candidate | |\n|---|---:|---:|---|---|---|"
    );
    let max = h
        .buckets
        .iter()
        .map(|b| b.counts.calls)
        .max()
        .unwrap_or(1)
        .max(1);
    for b in &h.buckets {
        let range = match b.from {
            Some(from) => format!("[{}, {})", num(from), num(b.to)),
            None => "≤ 0".to_owned(),
        };
        let kinds = |m: &std::collections::BTreeMap<aegis_core::decision::DecisionKind, u64>| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let marks: Vec<String> = h
            .thresholds
            .iter()
            .filter_map(|t| t.candidate)
            .filter(|v| b.from.is_none_or(|f| *v >= f) && *v < b.to)
            .map(|v| format!("◀ new bound {}", num(v)))
            .collect();
        let width = usize::try_from(b.counts.calls.saturating_mul(20) / max).unwrap_or(20);
        let _ = writeln!(
            s,
            "| {range} | {} | {} | {} | {} | `{}` {} |",
            b.counts.calls,
            b.counts.changed,
            kinds(&b.counts.recorded),
            kinds(&b.counts.candidate),
            "█".repeat(width.max(1)),
            marks.join(" ")
        );
    }
    let _ = writeln!(s);
}
