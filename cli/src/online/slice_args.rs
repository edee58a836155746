//! The slice of the decision log a command reads (`replay`, `audit replay`, `coverage`): a
//! stream-sequence range or a time range, and the filters on recorded decisions.

use crate::exit::CliError;
use aegis_core::decision::DecisionKind;
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegis_replayer::{Bounds, Filter, SliceSpec};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `--from-seq/--to-seq` or `--since/--until`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SliceArgs {
    /// First stream sequence of the slice
    #[arg(long, value_name = "N", conflicts_with_all = ["since", "until"])]
    pub from_seq: Option<u64>,
    /// Last stream sequence of the slice [default: the last one when reading starts]
    #[arg(long, value_name = "M", conflicts_with_all = ["since", "until"])]
    pub to_seq: Option<u64>,
    /// Start of the slice (RFC 3339, when NATS stored the record)
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub since: Option<OffsetDateTime>,
    /// End of the slice (RFC 3339) [default: the last record when reading starts]
    #[arg(long, value_name = "RFC3339", value_parser = parse_time, requires = "since")]
    pub until: Option<OffsetDateTime>,
}

impl SliceArgs {
    /// The bounds the arguments describe: every record when none is given.
    pub fn bounds(&self) -> Result<Bounds, CliError> {
        match (self.since, self.from_seq.or(self.to_seq)) {
            (Some(since), None) => {
                if self.until.is_some_and(|u| u < since) {
                    return Err(CliError::invalid("--until is before --since"));
                }
                Ok(Bounds::Time {
                    since,
                    until: self.until,
                })
            }
            (None, _) => {
                let from = self.from_seq.unwrap_or(1);
                if self.to_seq.is_some_and(|to| to < from) {
                    return Err(CliError::invalid("--to-seq is below --from-seq"));
                }
                Ok(Bounds::Sequence {
                    from,
                    to: self.to_seq,
                })
            }
            (Some(_), Some(_)) => Err(CliError::invalid(
                "give a sequence range (--from-seq/--to-seq) or a time range (--since/--until), not both",
            )),
        }
    }
}

/// `--agent`, `--tool`, `--decision`: which recorded decisions of the slice count
/// (`replay`, `audit replay`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct FilterArgs {
    /// Only decisions of this agent (repeatable: any of them)
    #[arg(long = "agent", value_name = "A")]
    pub agents: Vec<AgentId>,
    /// Only decisions on this tool (repeatable: any of them)
    #[arg(long = "tool", value_name = "T")]
    pub tools: Vec<ToolId>,
    /// Only these recorded decisions: allow, deny, sanitize, approval_needed (repeatable)
    #[arg(long = "decision", value_name = "D", value_parser = parse_decision)]
    pub decisions: Vec<DecisionKind>,
}

impl SliceArgs {
    /// The slice of `tenant`'s decisions these bounds and `filter` describe.
    pub fn spec(&self, tenant: TenantId, filter: &FilterArgs) -> Result<SliceSpec, CliError> {
        Ok(SliceSpec {
            tenant,
            bounds: self.bounds()?,
            filter: Filter {
                agents: filter.agents.clone(),
                tools: filter.tools.clone(),
                decisions: filter.decisions.clone(),
            },
        })
    }
}

/// An RFC 3339 time argument.
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (e.g. 2026-11-26T08:00:00Z): {e}"))
}

/// A `--decision` argument.
pub fn parse_decision(text: &str) -> Result<DecisionKind, String> {
    DecisionKind::parse(text).ok_or_else(|| {
        format!("unknown decision {text:?}: use allow, deny, sanitize or approval_needed")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::exit::Exit;

    #[test]
    fn bounds_come_from_sequences_or_times() {
        let seq = |from_seq, to_seq| SliceArgs {
            from_seq,
            to_seq,
            ..SliceArgs::default()
        };
        assert_eq!(
            seq(Some(3), Some(9)).bounds().unwrap(),
            Bounds::Sequence {
                from: 3,
                to: Some(9)
            }
        );
        assert_eq!(SliceArgs::default().bounds().unwrap(), Bounds::all());
        assert_eq!(
            seq(Some(9), Some(3)).bounds().unwrap_err().exit,
            Exit::Invalid
        );
        let since = parse_time("2026-11-26T08:00:00Z").unwrap();
        let timed = SliceArgs {
            since: Some(since),
            ..SliceArgs::default()
        };
        assert_eq!(timed.bounds().unwrap(), Bounds::Time { since, until: None });
        assert!(parse_time("yesterday").is_err());
        assert!(parse_decision("maybe").is_err());
    }
}
