//! What to replay: one tenant's part of `AEGIS_DECISIONS`, bounded by stream sequence or by
//! time, optionally narrowed to some agents, tools and recorded decisions.

use aegis_core::decision::DecisionKind;
use aegis_core::decision_log::DecisionEvent;
use aegis_core::ids::{AgentId, TenantId, ToolId};
use serde::Serialize;
use time::OffsetDateTime;

/// Where a slice starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounds {
    /// Stream sequences `from..=to`. `to: None` ends at the stream's last sequence when reading
    /// starts (records written while replaying are not read).
    Sequence { from: u64, to: Option<u64> },
    /// Records stored at or after `since` and, if given, at or before `until` (the stream's
    /// timestamp, i.e. when NATS stored the record). `until: None` ends like `to: None`.
    Time {
        since: OffsetDateTime,
        until: Option<OffsetDateTime>,
    },
}

impl Bounds {
    /// The whole stream (as far as it goes when reading starts).
    pub fn all() -> Bounds {
        Bounds::Sequence { from: 1, to: None }
    }
}

/// Which recorded decisions to keep; each list is "any of", an empty list keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub agents: Vec<AgentId>,
    pub tools: Vec<ToolId>,
    /// Recorded decisions.
    pub decisions: Vec<DecisionKind>,
}

impl Filter {
    /// Whether `event` passes. An event without an agent (or tool) fails an agent (or tool)
    /// filter.
    pub fn matches(&self, event: &DecisionEvent) -> bool {
        let agent_ok = self.agents.is_empty()
            || event
                .agent_id
                .as_ref()
                .is_some_and(|a| self.agents.contains(a));
        let tool_ok = self.tools.is_empty()
            || event
                .tool_id
                .as_ref()
                .is_some_and(|t| self.tools.contains(t));
        let decision_ok = self.decisions.is_empty() || self.decisions.contains(&event.decision);
        agent_ok && tool_ok && decision_ok
    }

    /// Whether any filter is set.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.tools.is_empty() && self.decisions.is_empty()
    }
}

/// A slice of one tenant's decision log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceSpec {
    pub tenant: TenantId,
    pub bounds: Bounds,
    pub filter: Filter,
}

impl SliceSpec {
    /// The whole of `tenant`'s log, unfiltered.
    pub fn all(tenant: TenantId) -> SliceSpec {
        SliceSpec {
            tenant,
            bounds: Bounds::all(),
            filter: Filter::default(),
        }
    }
}
