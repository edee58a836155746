//! Text rendering shared by the online commands: aligned tables and one-line summaries.

use aegis_core::events::ChecksCompleted;
use aegis_core::query::ChangeView;
use std::io::{self, Write};

/// A left-aligned text table with a header row; the last column is not padded.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let n = cell.chars().count();
                match widths.get_mut(i) {
                    Some(w) => *w = (*w).max(n),
                    None => widths.push(n),
                }
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 < row.len() {
                    let width = widths.get(i).copied().unwrap_or(0);
                    line.push_str(&format!("{cell:<width$}  "));
                } else {
                    line.push_str(cell);
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// At most `max` characters, with `…` when cut; newlines become spaces.
pub fn truncate(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `passed`, `failed (2)` or `pending`.
pub fn checks_cell(checks: Option<&ChecksCompleted>) -> String {
    match checks {
        None => "pending".to_owned(),
        Some(c) if c.passed => "passed".to_owned(),
        Some(c) => {
            let failed = c.results.iter().filter(|r| !r.passed).count();
            format!("failed ({failed})")
        }
    }
}

/// `1/2`: distinct approvals so far, of those required.
pub fn approvals_cell(change: &ChangeView) -> String {
    format!("{}/{}", change.approvals.len(), change.required_approvals)
}

/// The checks of a change in full: the verdict, risk tier and required approvals, then each
/// check with every failing detail.
pub fn write_checks(
    checks: &ChecksCompleted,
    required_approvals: u32,
    out: &mut dyn Write,
) -> io::Result<()> {
    writeln!(
        out,
        "checks: {} (risk tier {}, {} approval{} required)",
        if checks.passed { "passed" } else { "FAILED" },
        checks.risk_tier.as_str(),
        required_approvals,
        if required_approvals == 1 { "" } else { "s" }
    )?;
    for result in &checks.results {
        let extra = if result.check == "vectors" {
            format!(
                " ({} run, {} failed)",
                checks.vectors_run, checks.vectors_failed
            )
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {}: {}{extra}",
            result.check,
            if result.passed { "passed" } else { "FAILED" }
        )?;
        for detail in &result.details {
            writeln!(out, "    {detail}")?;
        }
    }
    if let Some(digest) = &checks.candidate_digest {
        writeln!(out, "  candidate data.json: {digest}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tables_align_and_truncate() {
        let mut t = Table::new(&["id", "intent"]);
        t.row(vec!["chg-1".into(), "raise the limit".into()]);
        t.row(vec![
            "chg-22222".into(),
            truncate("a\nb and a lot more text", 8),
        ]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "id         intent\nchg-1      raise the limit\nchg-22222  a b and…\n"
        );
    }
}
