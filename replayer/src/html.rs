//! The report as one self-contained HTML file: inline CSS, charts as inline SVG drawn here,
//! no script, no font, image or style sheet from anywhere (a Content-Security-Policy says so
//! to the browser too), so it opens offline and can be attached to a review as is.
//!
//! Every string that comes from the data (agent and tool ids, reason codes, parameter names,
//! file names, notes) is untrusted input and goes through [`escape`].

use crate::candidate::CandidateKind;
use crate::engine::GroupCounts;
use crate::markdown::{num, pct};
use crate::report::{BoundsView, ParamHistogram, Report, ThresholdStatus};
use aegis_core::decision::DecisionKind;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Bar colour of a transition whose decision changed.
pub const CHANGED_COLOUR: &str = "#d81b60";
/// Bar colour of a transition whose decision did not change.
pub const UNCHANGED_COLOUR: &str = "#78909c";
/// The candidate's bound, marked on a histogram.
pub const NEW_BOUND_COLOUR: &str = "#6a1b9a";
/// The recorded bound, marked on a histogram (dashed).
pub const OLD_BOUND_COLOUR: &str = "#37474f";

/// Colour of a decision in the histograms.
pub fn decision_colour(kind: DecisionKind) -> &'static str {
    match kind {
        DecisionKind::Allow => "#2e7d32",
        DecisionKind::Sanitize => "#1565c0",
        DecisionKind::ApprovalNeeded => "#ef6c00",
        DecisionKind::Deny => "#c62828",
    }
}

/// Stacking order of decisions in a histogram bar (bottom first).
const KINDS: [DecisionKind; 4] = [
    DecisionKind::Allow,
    DecisionKind::Sanitize,
    DecisionKind::ApprovalNeeded,
    DecisionKind::Deny,
];

/// Escapes text for HTML element content and quoted attribute values (also inside SVG).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[allow(clippy::cast_precision_loss)]
fn f(n: u64) -> f64 {
    n as f64
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#212121;background:#fff;max-width:1150px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.changed td{background:#fce4ec}
code{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.muted{color:#616161;font-size:13px}
.big{font-size:20px;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:10px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:150px}
.legend span.sw{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
svg{display:block;margin:6px 0 10px}
svg text{font-family:system-ui,sans-serif;font-size:12px;fill:#212121}
";

/// Renders `report` as one HTML document.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let title = format!(
        "Replay of {} against {}",
        report.tenant, report.candidate.source
    );
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    );
    let _ = writeln!(
        s,
        "<h1>{}</h1><p class=\"muted\">Generated {} · schema version {}</p>",
        escape(&title),
        escape(&report.generated_at),
        report.schema_version
    );
    summary(&mut s, report);
    let _ = writeln!(s, "<h2>Transitions</h2>");
    transitions_chart(&mut s, report);
    transitions_table(&mut s, report);
    if !report.histograms.is_empty() {
        let _ = writeln!(s, "<h2>Parameters of the changed calls</h2>");
        legend(&mut s);
        for h in &report.histograms {
            histogram(&mut s, h);
        }
    }
    thresholds(&mut s, report);
    groups(&mut s, "Agents", &report.by_agent);
    groups(&mut s, "Tools", &report.by_tool);
    examples(&mut s, report);
    slice_and_candidate(&mut s, report);
    let _ = writeln!(s, "</body></html>");
    s
}

fn card(s: &mut String, label: &str, value: &str) {
    let _ = write!(
        s,
        "<div class=\"card\"><div class=\"muted\">{}</div><div class=\"big\">{}</div></div>",
        escape(label),
        escape(value)
    );
}

fn summary(s: &mut String, report: &Report) {
    let c = &report.counts;
    let _ = writeln!(s, "<h2>Summary</h2><div class=\"cards\">");
    card(s, "would-deny rate", &pct(report.would_deny_rate));
    card(s, "recorded deny rate", &pct(report.recorded_deny_rate));
    card(s, "changed decisions", &c.changed.to_string());
    card(s, "replayed", &c.replayed.to_string());
    card(s, "not replayable", &c.not_replayable.to_string());
    let _ = writeln!(s, "</div>");
    rates_chart(s, report);
    let _ = writeln!(
        s,
        "<table><tr><th></th><th class=\"n\">count</th></tr>\
         <tr><td>records read</td><td class=\"n\">{}</td></tr>\
         <tr><td>decisions</td><td class=\"n\">{}</td></tr>\
         <tr><td>replayed</td><td class=\"n\">{}</td></tr>\
         <tr class=\"changed\"><td>changed</td><td class=\"n\"><b>{}</b></td></tr>\
         <tr><td>unchanged</td><td class=\"n\">{}</td></tr>\
         <tr><td>same decision, other reasons</td><td class=\"n\">{}</td></tr>",
        c.records, c.decisions, c.replayed, c.changed, c.unchanged, c.reasons_changed
    );
    for (cause, n) in &c.not_replayable_by_cause {
        let _ = writeln!(
            s,
            "<tr><td>not replayable: {}</td><td class=\"n\">{n}</td></tr>",
            escape(cause.as_str())
        );
    }
    for (cause, n) in &c.skipped {
        let _ = writeln!(
            s,
            "<tr><td>skipped: {}</td><td class=\"n\">{n}</td></tr>",
            escape(cause.as_str())
        );
    }
    let _ = writeln!(s, "</table>");
}

/// Two horizontal bars: recorded deny rate and would-deny rate, on a 0–100% scale.
fn rates_chart(s: &mut String, report: &Report) {
    let (w, label, bar) = (900.0, 170.0, 620.0);
    let _ = writeln!(
        s,
        "<svg class=\"chart rates\" width=\"{w}\" height=\"70\" viewBox=\"0 0 {w} 70\" role=\"img\" aria-label=\"deny rates\">"
    );
    let rows = [
        (
            "recorded deny rate",
            report.recorded_deny_rate,
            UNCHANGED_COLOUR,
        ),
        (
            "would-deny rate",
            report.would_deny_rate,
            decision_colour(DecisionKind::Deny),
        ),
    ];
    for (i, (name, rate, colour)) in rows.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let y = 6.0 + 30.0 * i as f64;
        let width = rate.unwrap_or(0.0).clamp(0.0, 1.0) * bar;
        let _ = writeln!(
            s,
            "<text x=\"0\" y=\"{:.1}\">{name}</text><rect x=\"{label}\" y=\"{y:.1}\" width=\"{bar}\" height=\"22\" fill=\"#eceff1\"/>\
             <rect x=\"{label}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"22\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            y + 15.0,
            label + bar + 8.0,
            y + 15.0,
            escape(&pct(*rate))
        );
    }
    let _ = writeln!(s, "</svg>");
}

/// One horizontal bar per recorded → candidate pair; changed ones in [`CHANGED_COLOUR`].
fn transitions_chart(s: &mut String, report: &Report) {
    if report.transitions.is_empty() {
        let _ = writeln!(s, "<p class=\"muted\">No decision was replayed.</p>");
        return;
    }
    let (w, label, bar, row) = (900.0, 250.0, 560.0, 28.0);
    #[allow(clippy::cast_precision_loss)]
    let h = row * report.transitions.len() as f64 + 8.0;
    let max = report
        .transitions
        .iter()
        .map(|t| t.count)
        .max()
        .unwrap_or(1)
        .max(1);
    let _ = writeln!(
        s,
        "<svg class=\"chart transitions\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"transitions\">"
    );
    for (i, t) in report.transitions.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let y = 4.0 + row * i as f64;
        let width = (f(t.count) / f(max) * bar).max(2.0);
        let colour = if t.changed {
            CHANGED_COLOUR
        } else {
            UNCHANGED_COLOUR
        };
        let weight = if t.changed {
            " font-weight=\"bold\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<text x=\"0\" y=\"{:.1}\"{weight}>{} → {}</text>\
             <rect x=\"{label}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"20\" fill=\"{colour}\"><title>{} → {}: {}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\"{weight}>{}</text>",
            y + 14.0,
            escape(t.from.as_str()),
            escape(t.to.as_str()),
            escape(t.from.as_str()),
            escape(t.to.as_str()),
            t.count,
            label + width + 6.0,
            y + 14.0,
            t.count
        );
    }
    let _ = writeln!(s, "</svg>");
}

fn transitions_table(s: &mut String, report: &Report) {
    let _ = writeln!(
        s,
        "<table><tr><th>recorded</th><th>candidate</th><th class=\"n\">count</th></tr>"
    );
    for t in &report.transitions {
        let class = if t.changed { " class=\"changed\"" } else { "" };
        let _ = writeln!(
            s,
            "<tr{class}><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            escape(t.from.as_str()),
            escape(t.to.as_str()),
            t.count
        );
    }
    let _ = writeln!(s, "</table>");
}

fn legend(s: &mut String) {
    let _ = write!(
        s,
        "<p class=\"legend muted\">Each bucket: left bar recorded, right bar candidate, by decision:"
    );
    for k in KINDS {
        let _ = write!(
            s,
            "<span class=\"sw\" style=\"background:{}\"></span>{}",
            decision_colour(k),
            k.as_str()
        );
    }
    let _ = writeln!(
        s,
        "<span class=\"sw\" style=\"background:{NEW_BOUND_COLOUR}\"></span>new bound\
         <span class=\"sw\" style=\"background:{OLD_BOUND_COLOUR}\"></span>old bound (dashed)</p>"
    );
}

fn bucket_label(from: Option<f64>, to: f64) -> String {
    match from {
        Some(from) => format!("[{}, {})", num(from), num(to)),
        None => "≤ 0".to_owned(),
    }
}

/// Where value `v` falls on the x axis: bucket index plus the fraction inside it; a value past
/// the last bucket at the right edge, one below the first at the left edge.
fn position(h: &ParamHistogram, v: f64) -> Option<f64> {
    let last = h.buckets.last()?;
    if v >= last.to {
        #[allow(clippy::cast_precision_loss)]
        return Some(h.buckets.len() as f64);
    }
    if h.buckets.first()?.from.is_some_and(|from| v < from) {
        return Some(0.0);
    }
    h.buckets.iter().enumerate().find_map(|(i, b)| {
        #[allow(clippy::cast_precision_loss)]
        let i = i as f64;
        match b.from {
            None if v <= b.to => Some(i + 0.5),
            Some(from) if v >= from && v < b.to => {
                let width = b.to - from;
                Some(i + if width > 0.0 { (v - from) / width } else { 0.0 })
            }
            _ => None,
        }
    })
}

/// Recorded and candidate decisions per bucket, stacked by decision, with moved bounds marked.
fn histogram(s: &mut String, h: &ParamHistogram) {
    let _ = writeln!(
        s,
        "<h3><code>{}</code> of {}:{}</h3><p class=\"muted\">min {} · max {}</p>",
        escape(&h.param),
        escape(&h.tool),
        escape(&h.action),
        h.min.map_or_else(|| "-".to_owned(), num),
        h.max.map_or_else(|| "-".to_owned(), num)
    );
    if h.buckets.is_empty() {
        let _ = writeln!(s, "<p class=\"muted\">No values.</p>");
        return;
    }
    let (w, left, top, plot_h, bottom) = (1000.0, 40.0, 52.0, 220.0, 44.0);
    let plot_w = w - left - 10.0;
    #[allow(clippy::cast_precision_loss)]
    let group = plot_w / h.buckets.len() as f64;
    let bar_w = (group * 0.38).min(60.0);
    let total_h = top + plot_h + bottom;
    let max = h
        .buckets
        .iter()
        .map(|b| b.counts.calls)
        .max()
        .unwrap_or(1)
        .max(1);
    let _ = writeln!(
        s,
        "<svg class=\"chart histogram\" width=\"{w}\" height=\"{total_h}\" viewBox=\"0 0 {w} {total_h}\" role=\"img\" aria-label=\"histogram of {}\">",
        escape(&h.param)
    );
    let base = top + plot_h;
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{:.1}\" y2=\"{base}\" stroke=\"#9e9e9e\"/>\
         <text x=\"0\" y=\"{:.1}\">{max}</text><text x=\"0\" y=\"{base}\">0</text>",
        left + plot_w,
        top + 4.0
    );
    for (i, b) in h.buckets.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let gx = left + group * i as f64;
        let centre = gx + group / 2.0;
        for (side, counts) in [(0.0, &b.counts.recorded), (1.0, &b.counts.candidate)] {
            let x = centre - bar_w - 1.0 + side * (bar_w + 2.0);
            let mut y = base;
            for k in KINDS {
                let n = counts.get(&k).copied().unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let bh = f(n) / f(max) * plot_h;
                y -= bh;
                let which = if side == 0.0 { "recorded" } else { "candidate" };
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{} {which} {}: {n}</title></rect>",
                    decision_colour(k),
                    escape(&bucket_label(b.from, b.to)),
                    k.as_str()
                );
            }
        }
        if b.counts.changed > 0 {
            let y = base - f(b.counts.calls) / f(max) * plot_h - 6.0;
            let _ = writeln!(
                s,
                "<text x=\"{centre:.1}\" y=\"{y:.1}\" text-anchor=\"middle\" fill=\"{CHANGED_COLOUR}\" font-weight=\"bold\">{} changed</text>",
                b.counts.changed
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{centre:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text x=\"{centre:.1}\" y=\"{:.1}\" text-anchor=\"middle\" class=\"muted\">{} calls</text>",
            base + 16.0,
            escape(&bucket_label(b.from, b.to)),
            base + 32.0,
            b.counts.calls
        );
    }
    for t in &h.thresholds {
        let marks = [
            (
                t.recorded,
                OLD_BOUND_COLOUR,
                "old bound",
                " stroke-dasharray=\"6 4\"",
            ),
            (t.candidate, NEW_BOUND_COLOUR, "new bound", ""),
        ];
        for (value, colour, what, dash) in marks {
            let Some(v) = value else { continue };
            let Some(p) = position(h, v) else { continue };
            let x = left + group * p;
            let (tx, anchor) = if x > w - 160.0 {
                (x - 5.0, "end")
            } else {
                (x + 5.0, "start")
            };
            let _ = writeln!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{base:.1}\" stroke=\"{colour}\" stroke-width=\"4\"{dash}/>\
                 <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"{colour}\" font-weight=\"bold\">{what} {} {}</text>",
                4.0,
                if dash.is_empty() { 14.0 } else { 30.0 },
                escape(&t.op),
                escape(&num(v))
            );
        }
    }
    let _ = writeln!(s, "</svg>");
    let _ = writeln!(
        s,
        "<table><tr><th>range</th><th class=\"n\">calls</th><th class=\"n\">changed</th><th>recorded</th><th>candidate</th></tr>"
    );
    let kinds = |m: &BTreeMap<DecisionKind, u64>| {
        m.iter()
            .map(|(k, n)| format!("{} {n}", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for b in &h.buckets {
        let class = if b.counts.changed > 0 {
            " class=\"changed\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<tr{class}><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&bucket_label(b.from, b.to)),
            b.counts.calls,
            b.counts.changed,
            escape(&kinds(&b.counts.recorded)),
            escape(&kinds(&b.counts.candidate))
        );
    }
    let _ = writeln!(s, "</table>");
}

fn thresholds(s: &mut String, report: &Report) {
    let t = &report.thresholds;
    let status = match t.status {
        ThresholdStatus::Compared => "compared",
        ThresholdStatus::Unavailable => "not compared",
    };
    let _ = writeln!(s, "<h2>Thresholds</h2><p>{status}: {}</p>", escape(&t.note));
    if t.changes.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "<table><tr><th>agent</th><th>rule</th><th>tool</th><th>actions</th><th>parameter</th><th>op</th><th class=\"n\">recorded</th><th class=\"n\">candidate</th><th>effect</th><th>code</th></tr>"
    );
    for c in &t.changes {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.agent),
            escape(&c.rule),
            escape(&c.tool),
            escape(&c.actions.join(", ")),
            escape(&c.param),
            escape(&c.op),
            c.recorded.map_or_else(|| "none".to_owned(), num),
            c.candidate.map_or_else(|| "none".to_owned(), num),
            escape(&c.effect),
            escape(&c.code)
        );
    }
    let _ = writeln!(s, "</table>");
}

fn groups(s: &mut String, title: &str, map: &BTreeMap<String, GroupCounts>) {
    let _ = writeln!(
        s,
        "<h2>{title}</h2><table><tr><th>name</th><th class=\"n\">decisions</th><th class=\"n\">replayed</th><th class=\"n\">not replayable</th><th class=\"n\">changed</th><th class=\"n\">candidate denies</th></tr>"
    );
    for (name, g) in map {
        let class = if g.changed > 0 {
            " class=\"changed\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<tr{class}><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(name),
            g.decisions,
            g.replayed,
            g.not_replayable,
            g.changed,
            g.candidate_denies
        );
    }
    let _ = writeln!(s, "</table>");
}

fn examples(s: &mut String, report: &Report) {
    if report.examples.is_empty() {
        return;
    }
    let _ = writeln!(s, "<h2>Examples</h2>");
    for t in &report.examples {
        let _ = writeln!(
            s,
            "<h3>{} → {} ({} call(s))</h3><table><tr><th>decision</th><th class=\"n\">sequence</th><th>time</th><th>agent</th><th>tool</th><th>action</th><th>recorded reasons</th><th>candidate reasons</th></tr>",
            escape(t.from.as_str()),
            escape(t.to.as_str()),
            t.count
        );
        for e in &t.examples {
            let _ = writeln!(
                s,
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&e.decision_id),
                e.sequence,
                escape(&e.time),
                escape(&e.agent),
                escape(&e.tool),
                escape(&e.action),
                escape(&e.recorded_reasons.join(", ")),
                escape(&e.candidate_reasons.join(", "))
            );
        }
        let _ = writeln!(s, "</table>");
    }
}

fn slice_and_candidate(s: &mut String, report: &Report) {
    let _ = writeln!(s, "<h2>Slice and candidate</h2><table>");
    let row = |s: &mut String, k: &str, v: &str| {
        let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    };
    row(s, "tenant", &report.tenant);
    match &report.slice.bounds {
        BoundsView::Sequence { from, to } => row(
            s,
            "asked for",
            &format!(
                "stream sequences {from} to {}",
                to.map_or_else(|| "the last one".to_owned(), |t| t.to_string())
            ),
        ),
        BoundsView::Time { since, until } => row(
            s,
            "asked for",
            &format!(
                "{since} to {}",
                until.as_deref().unwrap_or("the last record")
            ),
        ),
    }
    let filter = &report.slice.filter;
    let any = |v: &[String]| {
        if v.is_empty() {
            "any".to_owned()
        } else {
            v.join(", ")
        }
    };
    row(s, "agents", &any(&filter.agents));
    row(s, "tools", &any(&filter.tools));
    let decisions: Vec<String> = filter
        .decisions
        .iter()
        .map(|d| d.as_str().to_owned())
        .collect();
    row(s, "recorded decisions", &any(&decisions));
    let read = &report.slice.read;
    row(
        s,
        "read",
        &format!(
            "{} records, sequences {} to {}, stored {} to {}",
            read.records,
            opt(read.first_sequence),
            opt(read.last_sequence),
            read.first_time.as_deref().unwrap_or("-"),
            read.last_time.as_deref().unwrap_or("-")
        ),
    );
    let c = &report.candidate;
    let kind = match c.kind {
        CandidateKind::BundleFile => "bundle file",
        CandidateKind::PolicyTree => "policy tree",
        CandidateKind::PublishedVersion => "published version",
        CandidateKind::ProposedChange => "proposed change",
    };
    row(s, "candidate", &format!("{kind}: {}", c.source));
    row(s, "candidate version", &opt(c.version));
    row(s, "candidate digest", c.digest.as_deref().unwrap_or("-"));
    let _ = writeln!(s, "</table>");
    let _ = writeln!(
        s,
        "<h3>Recorded versions</h3><table><tr><th class=\"n\">policy version</th><th>bundle digest</th><th class=\"n\">decisions</th></tr>"
    );
    for v in &report.recorded_versions {
        let _ = writeln!(
            s,
            "<tr><td class=\"n\">{}</td><td><code>{}</code></td><td class=\"n\">{}</td></tr>",
            opt(v.policy_version),
            escape(v.bundle_digest.as_deref().unwrap_or("-")),
            v.decisions
        );
    }
    let _ = writeln!(s, "</table>");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::candidate::CandidateInfo;
    use crate::engine::{Example, Tally};
    use crate::histogram::BucketCounts;
    use crate::report::{Bucket, TransitionCount, TransitionExamples};
    use crate::slice::SliceSpec;
    use crate::source::SliceStats;
    use crate::thresholds::ThresholdChange;
    use aegis_core::ids::TenantId;

    const EVIL: &str = "<script>alert('x')</script>";

    /// A report whose agent id, reason code, tool, parameter and candidate file are hostile.
    fn report() -> Report {
        let info = CandidateInfo {
            kind: CandidateKind::PolicyTree,
            source: format!("policies/\"><img src=x onerror=alert(1)>{EVIL}"),
            version: None,
            digest: None,
        };
        let spec = SliceSpec::all(TenantId::new("acme").unwrap());
        let mut r = Report::build(&spec, info, SliceStats::default(), Tally::default());
        r.transitions = vec![
            TransitionCount {
                from: DecisionKind::Allow,
                to: DecisionKind::Allow,
                changed: false,
                count: 40,
            },
            TransitionCount {
                from: DecisionKind::Allow,
                to: DecisionKind::ApprovalNeeded,
                changed: true,
                count: 12,
            },
        ];
        r.would_deny_rate = Some(0.1);
        r.recorded_deny_rate = Some(0.05);
        r.by_agent.insert(
            EVIL.to_owned(),
            GroupCounts {
                decisions: 52,
                replayed: 52,
                changed: 12,
                ..GroupCounts::default()
            },
        );
        r.examples = vec![TransitionExamples {
            from: DecisionKind::Allow,
            to: DecisionKind::ApprovalNeeded,
            count: 12,
            examples: vec![Example {
                decision_id: "dec-1".into(),
                sequence: 7,
                time: "2026-11-26T10:00:00Z".into(),
                agent: EVIL.into(),
                tool: "pay&<ments>".into(),
                action: "create_payment".into(),
                recorded_reasons: vec!["allowed".into()],
                candidate_reasons: vec![format!("{EVIL}\"'")],
            }],
        }];
        let counts = |calls, changed, to| {
            let mut c = BucketCounts {
                calls,
                changed,
                ..BucketCounts::default()
            };
            c.recorded.insert(DecisionKind::Allow, calls);
            c.candidate.insert(DecisionKind::Allow, calls - changed);
            if changed > 0 {
                c.candidate.insert(to, changed);
            }
            c
        };
        r.histograms = vec![ParamHistogram {
            tool: "payments".into(),
            action: "create_payment".into(),
            param: "<b>amount</b>".into(),
            min: Some(100.0),
            max: Some(4000.0),
            buckets: vec![
                Bucket {
                    from: Some(100.0),
                    to: 1000.0,
                    counts: counts(30, 0, DecisionKind::ApprovalNeeded),
                },
                Bucket {
                    from: Some(1000.0),
                    to: 5000.0,
                    counts: counts(22, 12, DecisionKind::ApprovalNeeded),
                },
            ],
            thresholds: vec![],
        }];
        let change = ThresholdChange {
            agent: EVIL.into(),
            rule: "limits".into(),
            tool: "payments".into(),
            actions: vec!["create_payment".into()],
            param: "<b>amount</b>".into(),
            op: "lte".into(),
            effect: "approval_needed".into(),
            code: "amount_requires_approval".into(),
            recorded: Some(5000.0),
            candidate: Some(1000.0),
        };
        r.with_thresholds(vec![change], "compared with version 1".into())
    }

    #[test]
    fn data_is_escaped() {
        let html = render(&report());
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>amount"), "{html}");
        assert!(!html.contains("pay&<"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(html.contains("pay&amp;&lt;ments&gt;"));
        assert!(html.contains("&quot;&gt;&lt;img src=x"));
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }

    /// Every reference to another resource in the markup: `src=`, `href=`, `action=`,
    /// `srcset=` and `data=` attributes inside tags, `url(` and `@import` anywhere. (Text
    /// from the data is escaped, so a raw `<` only starts a tag the renderer wrote.)
    fn references(html: &str) -> Vec<String> {
        let lower = html.to_ascii_lowercase();
        let mut out = Vec::new();
        for tag in lower.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap_or("");
            for attr in ["src=", "href=", "action=", "srcset=", " data="] {
                if let Some(i) = tag.find(attr) {
                    out.push(tag[i..].to_owned());
                }
            }
        }
        for needle in ["url(", "@import"] {
            out.extend(
                lower
                    .match_indices(needle)
                    .map(|(i, _)| lower[i..].chars().take(40).collect()),
            );
        }
        out
    }

    #[test]
    fn nothing_is_loaded_from_anywhere() {
        let html = render(&report());
        assert_eq!(references(&html), Vec::<String>::new(), "{html}");
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(
            !html.contains("//"),
            "no protocol-relative reference either"
        );
        assert!(html.contains("default-src 'none'"), "a CSP forbids loading");
        // The scan finds a reference when there is one; the escaped `src=` in the data is text.
        assert_eq!(references("<img src=\"https://x/y.png\">").len(), 1);
        assert_eq!(references("<style>a{background:url(x)}</style>").len(), 1);
        assert!(html.contains("src=x"));
    }

    #[test]
    fn the_charts_are_inline_svg() {
        let r = report();
        let html = render(&r);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<svg class=\"chart transitions\""));
        assert!(html.contains("<svg class=\"chart histogram\""));
        assert!(html.contains("<svg class=\"chart rates\""));
        assert!(
            html.contains(&format!("fill=\"{CHANGED_COLOUR}\"")),
            "changed bar"
        );
        assert!(html.contains(&format!("fill=\"{UNCHANGED_COLOUR}\"")));
        assert!(
            html.contains(&format!("stroke=\"{NEW_BOUND_COLOUR}\"")),
            "bound"
        );
        assert!(html.contains(&format!("stroke=\"{OLD_BOUND_COLOUR}\"")));
        assert!(html.contains("new bound lte 1000"));
        assert!(html.contains("10.00%") && html.contains("5.00%"));
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
        // An empty report still renders.
        let empty = Report::build(
            &SliceSpec::all(TenantId::new("acme").unwrap()),
            r.candidate.clone(),
            SliceStats::default(),
            Tally::default(),
        );
        let html = render(&empty);
        assert!(html.contains("No decision was replayed"));
        assert!(html.ends_with("</body></html>\n"));
    }
}
