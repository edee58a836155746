//! Runtime approvals: what travels on `aegis.approvals.<tenant>.<approval_id>`.
//!
//! One subject per approval, in order:
//! 1. [`ApprovalRequested`] — a gateway answered `approval_needed`; it names the exact call by
//!    its [`call_digest`]. Published by the gateway (not signed: gateways hold no signing key;
//!    the decision event with the same `decision_id` is the gateway's record of it).
//! 2. a signed [`RuntimeApprovalDecided`] envelope — the control plane's relay of an
//!    approver's `runtime_approval_granted` / `runtime_approval_denied`, after checking the
//!    approver's signature and role.
//! 3. [`ApprovalConsumed`] — a gateway let the granted call through. It is published with
//!    `Nats-Expected-Last-Subject-Sequence` = the grant's sequence, so of two gateways racing
//!    for one grant exactly one succeeds: the grant is used once, across all gateways.
//!
//! Readers tell the messages apart by `type` ([`ApprovalMessage::parse`]) and fold a subject's
//! messages into one [`Approval`] with [`fold`]: its [`ApprovalState`] at a given instant
//! (pending, granted, denied, used, expired — a request undecided or a grant unused past its
//! expiry — or unreadable). `aegisctl approvals` and the decision report both use that fold.

mod fold;

pub use fold::{Approval, ApprovalState, Decision, fold};

use crate::canonical::to_canonical_vec_of;
use crate::decision::Reason;
use crate::events::{ReceivedEnvelope, RuntimeApprovalDecided};
use crate::ids::{AgentId, TenantId, ToolId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `type` of an [`ApprovalRequested`].
pub const REQUESTED: &str = "approval_requested";
/// `type` of an [`ApprovalConsumed`].
pub const CONSUMED: &str = "approval_consumed";

/// Reason codes a gateway gives when a call carries an approval id.
pub mod reason {
    /// The call needed approval and the grant was used for it: allowed, once.
    pub const APPROVAL_GRANTED: &str = "approval_granted";
    /// The approval id names no request, or a request for another tenant.
    pub const APPROVAL_UNKNOWN: &str = "approval_unknown";
    /// Nobody has granted it yet (the answer stays `approval_needed`).
    pub const APPROVAL_PENDING: &str = "approval_pending";
    /// An approver denied it.
    pub const APPROVAL_DENIED: &str = "approval_denied";
    /// The grant was used already (by this or another gateway).
    pub const APPROVAL_USED: &str = "approval_used";
    /// The grant, or the request before anyone decided it, has expired.
    pub const APPROVAL_EXPIRED: &str = "approval_expired";
    /// The call is not the one that was approved (other parameters, agent, chain or tool).
    pub const APPROVAL_CALL_MISMATCH: &str = "approval_call_mismatch";
    /// The approval could not be checked or consumed (NATS away): fail closed.
    pub const APPROVAL_UNAVAILABLE: &str = "approval_unavailable";
}

/// The exact call an approval is for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallIdentity<'a> {
    pub tenant: &'a TenantId,
    pub agent_id: &'a AgentId,
    pub call_chain: &'a [AgentId],
    pub tool_id: &'a ToolId,
    pub action: &'a str,
    pub params: &'a Map<String, Value>,
}

/// `sha256:<hex>` of the canonical JSON of `{action, agent_id, call_chain, params, tenant,
/// tool_id}`: the same call always has the same digest, any other call another one.
pub fn call_digest(call: &CallIdentity<'_>) -> String {
    let bytes = to_canonical_vec_of(call).unwrap_or_default();
    format!("sha256:{}", crate::bundle::sha256_hex(&bytes))
}

/// A gateway asks for a runtime approval (schema: `schemas/approval-requested.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequested {
    /// Always [`REQUESTED`].
    #[serde(rename = "type")]
    pub kind: String,
    /// `apr-<32 hex>`; also the `Nats-Msg-Id`.
    pub approval_id: String,
    pub tenant: TenantId,
    pub gateway: String,
    /// The decision that answered `approval_needed`.
    pub decision_id: String,
    pub agent_id: AgentId,
    pub call_chain: Vec<AgentId>,
    pub tool_id: ToolId,
    pub action: String,
    /// Parameters after the policy's log masking (what an approver may see).
    pub params: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_params: Vec<String>,
    /// [`call_digest`] of the unmasked call.
    pub call_digest: String,
    /// Why approval is needed.
    pub reasons: Vec<Reason>,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub policy_version: Option<u64>,
    pub requested_at: String,
    /// Undecided past this instant, the request lapses.
    pub expires_at: String,
}

/// A gateway used a grant (schema: `schemas/approval-consumed.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConsumed {
    /// Always [`CONSUMED`].
    #[serde(rename = "type")]
    pub kind: String,
    pub approval_id: String,
    pub tenant: TenantId,
    pub gateway: String,
    /// The decision that the grant let through.
    pub decision_id: String,
    pub call_digest: String,
    pub at: String,
}

/// One message on an approval subject.
#[derive(Debug, Clone)]
pub enum ApprovalMessage {
    Requested(Box<ApprovalRequested>),
    /// Parsed, not yet verified: check the signature against a trusted control-plane key.
    Decided(Box<ReceivedEnvelope>, RuntimeApprovalDecided),
    Consumed(ApprovalConsumed),
}

/// Why a message on an approval subject could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalMessageError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no `type` member")]
    NoType,
    #[error("unexpected message type `{0}` on an approval subject")]
    UnexpectedType(String),
    #[error("unreadable envelope: {0}")]
    Envelope(String),
}

impl ApprovalMessage {
    /// Reads one message by its `type`.
    pub fn parse(payload: &[u8]) -> Result<ApprovalMessage, ApprovalMessageError> {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        let Kind { kind } = serde_json::from_slice(payload)?;
        match kind.as_deref() {
            Some(REQUESTED) => Ok(ApprovalMessage::Requested(Box::new(
                serde_json::from_slice(payload)?,
            ))),
            Some(CONSUMED) => Ok(ApprovalMessage::Consumed(serde_json::from_slice(payload)?)),
            Some("runtime_approval_decided") => {
                let received = ReceivedEnvelope::parse(payload)
                    .map_err(|e| ApprovalMessageError::Envelope(e.to_string()))?;
                match &received.envelope.event {
                    crate::events::Event::RuntimeApprovalDecided(d) => {
                        let d = d.clone();
                        Ok(ApprovalMessage::Decided(Box::new(received), d))
                    }
                    other => Err(ApprovalMessageError::UnexpectedType(
                        other.event_type().to_string(),
                    )),
                }
            }
            Some(other) => Err(ApprovalMessageError::UnexpectedType(other.to_owned())),
            None => Err(ApprovalMessageError::NoType),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    #[test]
    fn the_digest_names_exactly_one_call() {
        let tenant: TenantId = id("acme");
        let agent: AgentId = id("finance-agent");
        let planner: AgentId = id("planner");
        let tool: ToolId = id("payments");
        let mut params = Map::new();
        params.insert("amount".into(), 6000.into());
        let chain = vec![planner.clone()];
        let call = CallIdentity {
            tenant: &tenant,
            agent_id: &agent,
            call_chain: &chain,
            tool_id: &tool,
            action: "create_payment",
            params: &params,
        };
        let d = call_digest(&call);
        assert!(d.starts_with("sha256:") && d.len() == 71, "{d}");
        assert_eq!(d, call_digest(&call.clone()));
        let mut other = params.clone();
        other.insert("amount".into(), 6001.into());
        assert_ne!(
            d,
            call_digest(&CallIdentity {
                params: &other,
                ..call.clone()
            })
        );
        assert_ne!(
            d,
            call_digest(&CallIdentity {
                agent_id: &planner,
                ..call.clone()
            })
        );
        assert_ne!(
            d,
            call_digest(&CallIdentity {
                call_chain: &[],
                ..call.clone()
            })
        );
        assert_ne!(
            d,
            call_digest(&CallIdentity {
                action: "refund",
                ..call
            })
        );
    }

    #[test]
    fn messages_are_told_apart_by_type() {
        let consumed = ApprovalConsumed {
            kind: CONSUMED.into(),
            approval_id: "apr-1".into(),
            tenant: id("acme"),
            gateway: "gw1".into(),
            decision_id: "dec-1".into(),
            call_digest: "sha256:00".into(),
            at: "2026-11-26T10:00:00Z".into(),
        };
        let bytes = serde_json::to_vec(&consumed).unwrap();
        assert!(
            matches!(ApprovalMessage::parse(&bytes).unwrap(), ApprovalMessage::Consumed(c) if c == consumed)
        );
        assert!(matches!(
            ApprovalMessage::parse(br#"{"type":"nope"}"#),
            Err(ApprovalMessageError::UnexpectedType(_))
        ));
        assert!(matches!(
            ApprovalMessage::parse(b"{}"),
            Err(ApprovalMessageError::NoType)
        ));
    }
}
