//! The decision span: one per decision, named and attributed per the OpenTelemetry GenAI
//! semantic conventions for tool execution (`execute_tool {gen_ai.tool.name}`), plus Aegis'
//! own `aegis.*` attributes.

use super::trace::{SpanId, TraceContext, traceparent_header};

/// Attribute keys the gateway sets on a decision span.
pub mod attr {
    /// Always [`super::OPERATION_EXECUTE_TOOL`].
    pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
    pub const GEN_AI_AGENT_ID: &str = "gen_ai.agent.id";
    pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
    pub const AEGIS_TENANT: &str = "aegis.tenant";
    /// `allow`, `deny`, `sanitize` or `approval_needed`.
    pub const AEGIS_DECISION: &str = "aegis.decision";
    pub const AEGIS_DECISION_REASON: &str = "aegis.decision_reason";
    pub const AEGIS_POLICY_VERSION: &str = "aegis.policy_version";
    pub const AEGIS_APPROVAL_ID: &str = "aegis.approval_id";
    /// The gateway instance that decided.
    pub const AEGIS_GATEWAY: &str = "aegis.gateway";
}

/// The GenAI operation name of a tool execution.
pub const OPERATION_EXECUTE_TOOL: &str = "execute_tool";

/// An attribute value: the three kinds the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    String(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        Self::Int(i64::from(v))
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// One decision, as a finished span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span (from its `traceparent`, so always a remote parent); `None` when the
    /// gateway started the trace.
    pub parent_span_id: Option<[u8; 8]>,
    /// The W3C trace flags of the trace (exported in the OTLP span's `flags`).
    pub trace_flags: u8,
    /// `execute_tool <tool>`.
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// The decision failed (an internal error, not a deny): exported as status code ERROR.
    pub error: bool,
}

impl DecisionSpan {
    /// A span for executing `tool` in the trace `ctx`, started at `start_unix_nanos`, with
    /// `gen_ai.operation.name` and `gen_ai.tool.name` set. Its end is its start until
    /// [`DecisionSpan::finish`].
    pub fn execute_tool(
        ctx: &TraceContext,
        span_id: SpanId,
        tool: &str,
        start_unix_nanos: u64,
    ) -> Self {
        Self {
            trace_id: ctx.trace_id,
            span_id: span_id.0,
            parent_span_id: ctx.parent_span_id,
            trace_flags: ctx.flags,
            name: span_name(tool),
            start_unix_nanos,
            end_unix_nanos: start_unix_nanos,
            attributes: vec![
                (attr::GEN_AI_OPERATION_NAME, OPERATION_EXECUTE_TOOL.into()),
                (attr::GEN_AI_TOOL_NAME, tool.into()),
            ],
            error: false,
        }
    }

    /// Sets an attribute, replacing an earlier value of the same key.
    pub fn set(&mut self, key: &'static str, value: impl Into<AttrValue>) -> &mut Self {
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.attributes.push((key, value)),
        }
        self
    }

    /// The value of an attribute.
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Ends the span now.
    pub fn finish(&mut self) -> &mut Self {
        self.end_unix_nanos = now_unix_nanos().max(self.start_unix_nanos);
        self
    }

    /// The `traceparent` to answer with: this span as the parent of what the caller does next.
    pub fn traceparent(&self) -> String {
        traceparent_header(self.trace_id, self.span_id, self.trace_flags)
    }
}

/// The span name of a tool execution per the GenAI conventions: `execute_tool {tool}`.
pub fn span_name(tool: &str) -> String {
    format!("{OPERATION_EXECUTE_TOOL} {tool}")
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::telemetry::trace::parse_traceparent;

    #[test]
    fn execute_tool_span_has_genai_name_and_attributes() {
        let ctx =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let id = SpanId::random();
        let start = now_unix_nanos();
        let mut span = DecisionSpan::execute_tool(&ctx, id, "github.create_issue", start);
        span.set(attr::AEGIS_DECISION, "deny")
            .set(attr::AEGIS_DECISION, "allow")
            .set(attr::AEGIS_POLICY_VERSION, 7_i64)
            .finish();
        assert_eq!(span.name, "execute_tool github.create_issue");
        assert_eq!(
            span.get(attr::GEN_AI_OPERATION_NAME),
            Some(&AttrValue::String("execute_tool".into()))
        );
        assert_eq!(
            span.get(attr::GEN_AI_TOOL_NAME),
            Some(&AttrValue::String("github.create_issue".into()))
        );
        assert_eq!(
            span.get(attr::AEGIS_DECISION),
            Some(&AttrValue::String("allow".into()))
        );
        assert_eq!(span.attributes.len(), 4);
        assert_eq!(span.parent_span_id, ctx.parent_span_id);
        assert!(span.end_unix_nanos >= span.start_unix_nanos);
        let tp = parse_traceparent(&span.traceparent()).unwrap();
        assert_eq!(tp.trace_id, ctx.trace_id);
        assert_eq!(tp.parent_span_id, Some(id.0));
    }
}
