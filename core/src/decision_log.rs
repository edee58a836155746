//! What a gateway writes to `AEGIS_DECISIONS` (`aegis.decisions.<tenant>.<gateway>`): one
//! [`DecisionEvent`] per answered call (auth failures included), and a [`BundleRejected`] each
//! time a gateway refuses a bundle. Both are JSON objects with a `type` member, so a SIEM can
//! tail the stream and switch on it. Schemas: `schemas/decision-event.schema.json` and
//! `schemas/bundle-rejected-event.schema.json`.
//!
//! Decision events are not signed: they are written by the gateway that decided, under its own
//! NATS credentials, which may publish only `aegis.decisions.*.<its id>`. The recorded input
//! (tenant, agent, call chain, tool, action, params, context) is what the replayer evaluates
//! again; parameters the policy masks for the log are listed in `masked_params`, and such
//! events are reported as not replayable instead of being guessed at.

use crate::canonical::to_canonical_vec_of;
use crate::decision::{DecideInput, Decision, DecisionKind, Reason};
use crate::events::RolloutStage;
use crate::ids::{AgentId, TenantId, ToolId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `type` of a [`DecisionEvent`].
pub const DECISION_TYPE: &str = "decision";
/// `type` of a [`BundleRejected`].
pub const BUNDLE_REJECTED_TYPE: &str = "bundle_rejected";
/// The `schema_version` this code writes.
pub const SCHEMA_VERSION: u32 = 1;
/// What a masked parameter's value becomes in the log.
pub const MASKED: &str = "[MASKED]";

/// One decision, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionEvent {
    /// `dec-<32 hex>`: the `decision_id` the caller got, and the `Nats-Msg-Id`.
    pub id: String,
    /// Always `decision`.
    #[serde(rename = "type")]
    pub kind: String,
    pub schema_version: u32,
    /// RFC 3339 UTC with milliseconds: when the gateway answered.
    pub time: String,
    pub tenant: TenantId,
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The caller's `request_id`, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// False when the call was refused because its token did not verify: then `agent_id` and
    /// `tenant` are what the token claimed, not proven.
    pub identity_verified: bool,
    pub agent_id: Option<AgentId>,
    #[serde(default)]
    pub call_chain: Vec<AgentId>,
    pub tool_id: Option<ToolId>,
    pub action: Option<String>,
    /// The requested parameters after the policy's log masking.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Parameters replaced by `[MASKED]` in `params`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_params: Vec<String>,
    /// `sha256:<hex>` of the canonical JSON of the requested (unmasked) parameters.
    pub params_digest: String,
    #[serde(default)]
    pub context: Map<String, Value>,
    pub decision: DecisionKind,
    pub reasons: Vec<Reason>,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub policy_version: Option<u64>,
    pub bundle_digest: Option<String>,
    pub approval_id: Option<String>,
    /// Microseconds from receiving the request to answering it.
    pub latency_us: u64,
    /// Stage of the enforced version (`global` unless a rollout is under way).
    pub rollout_stage: Option<RolloutStage>,
    /// The candidate version's answer, when one was evaluated beside the enforced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowResult>,
    /// W3C trace context of the decision's span (32 and 16 lowercase hex digits).
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

/// The other version's answer during a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowResult {
    pub decision: DecisionKind,
    pub reasons: Vec<Reason>,
    pub policy_version: Option<u64>,
    pub bundle_digest: Option<String>,
}

impl DecisionEvent {
    /// The recorded decide input, if the event can be evaluated again: identity verified, tool
    /// and action present, and no parameter masked.
    pub fn replay_input(&self) -> Option<DecideInput> {
        if !self.identity_verified || !self.masked_params.is_empty() {
            return None;
        }
        Some(DecideInput {
            tenant: self.tenant.clone(),
            agent_id: self.agent_id.clone()?,
            call_chain: self.call_chain.clone(),
            tool_id: self.tool_id.clone()?,
            action: self.action.clone()?,
            params: self.params.clone(),
            context: self.context.clone(),
        })
    }

    /// The JSON bytes, as published (members in declaration order; nothing hashes these
    /// bytes, so the canonical form's extra pass is not paid on every decision).
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// `sha256:<hex>` of the canonical JSON of `params`.
pub fn params_digest(params: &Map<String, Value>) -> String {
    let bytes = to_canonical_vec_of(params).unwrap_or_default();
    format!("sha256:{}", crate::bundle::sha256_hex(&bytes))
}

/// `params` with every name in `mask` that is present replaced by `[MASKED]`; also returns the
/// names that were masked (sorted).
pub fn mask_params(
    params: &Map<String, Value>,
    mask: &[String],
) -> (Map<String, Value>, Vec<String>) {
    let mut out = params.clone();
    let mut masked = Vec::new();
    for name in mask {
        if let Some(v) = out.get_mut(name) {
            *v = Value::String(MASKED.to_owned());
            masked.push(name.clone());
        }
    }
    masked.sort();
    masked.dedup();
    (out, masked)
}

impl ShadowResult {
    pub fn of(decision: &Decision) -> ShadowResult {
        ShadowResult {
            decision: decision.decision,
            reasons: decision.reasons.clone(),
            policy_version: decision.policy_version,
            bundle_digest: decision.bundle_digest.clone(),
        }
    }
}

/// A gateway refused a bundle and kept the one it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRejected {
    /// `rej-<32 hex>`; also the `Nats-Msg-Id`.
    pub id: String,
    /// Always `bundle_rejected`.
    #[serde(rename = "type")]
    pub kind: String,
    pub schema_version: u32,
    pub time: String,
    pub tenant: TenantId,
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The version the announcement or manifest claimed, if it could be read.
    pub version: Option<u64>,
    /// The digest the bundle was announced under.
    pub digest: String,
    /// Machine-readable reason: `bad_signature`, `unknown_key`, `revoked_key`, `hash_mismatch`,
    /// `version_not_above`, `expired`, `wrong_tenant`, `digest_mismatch`, `fetch_failed`,
    /// `compile_failed`, `malformed`, ...
    pub reason_code: String,
    pub reason: String,
    /// The version the gateway kept enforcing (None: it has none).
    pub kept_version: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::schemas;

    pub(crate) fn sample() -> DecisionEvent {
        let mut params = Map::new();
        params.insert("amount".into(), 3000.into());
        params.insert("account_number".into(), "DE89370400440532013000".into());
        let (logged, masked) = mask_params(&params, &["account_number".to_owned()]);
        DecisionEvent {
            id: "dec-0123456789abcdef0123456789abcdef".into(),
            kind: DECISION_TYPE.into(),
            schema_version: SCHEMA_VERSION,
            time: "2026-11-26T10:00:00.123Z".into(),
            tenant: TenantId::new("acme").unwrap(),
            gateway: "gw1".into(),
            site: Some("edge-1".into()),
            request_id: Some("req-1".into()),
            identity_verified: true,
            agent_id: Some(AgentId::new("finance-agent").unwrap()),
            call_chain: vec![AgentId::new("planner").unwrap()],
            tool_id: Some(ToolId::new("payments").unwrap()),
            action: Some("create_payment".into()),
            params_digest: params_digest(&params),
            params: logged,
            masked_params: masked,
            context: Map::new(),
            decision: DecisionKind::Allow,
            reasons: vec![Reason {
                code: "allowed".into(),
                message: "allowed by rule pay".into(),
                policy: Some("acme/finance-agent".into()),
                rule: Some("pay".into()),
            }],
            policy: Some("acme/finance-agent".into()),
            rule: Some("pay".into()),
            policy_version: Some(3),
            bundle_digest: Some(format!("sha256:{}", "a".repeat(64))),
            approval_id: None,
            latency_us: 180,
            rollout_stage: Some(RolloutStage::Global),
            shadow: None,
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            span_id: Some("b7ad6b7169203331".into()),
        }
    }

    #[test]
    fn a_decision_event_matches_its_schema_and_masks() {
        let event = sample();
        assert_eq!(event.params["account_number"], MASKED);
        assert_eq!(event.masked_params, ["account_number"]);
        assert!(
            event.replay_input().is_none(),
            "masked input is not replayable"
        );
        let value = serde_json::to_value(&event).unwrap();
        let v = schemas::decision_event_validator().unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        let back: DecisionEvent = serde_json::from_slice(&event.to_bytes().unwrap()).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn an_auth_failure_matches_the_schema() {
        let mut event = sample();
        event.identity_verified = false;
        event.agent_id = None;
        event.tool_id = None;
        event.action = None;
        event.decision = DecisionKind::Deny;
        event.policy = None;
        event.rule = None;
        event.policy_version = None;
        event.bundle_digest = None;
        event.rollout_stage = None;
        event.reasons = vec![Reason {
            code: "token_expired".into(),
            message: "token expired".into(),
            policy: None,
            rule: None,
        }];
        let value = serde_json::to_value(&event).unwrap();
        assert!(
            schemas::decision_event_validator()
                .unwrap()
                .is_valid(&value)
        );
    }

    #[test]
    fn a_bundle_rejection_matches_its_schema() {
        let event = BundleRejected {
            id: "rej-0123456789abcdef0123456789abcdef".into(),
            kind: BUNDLE_REJECTED_TYPE.into(),
            schema_version: SCHEMA_VERSION,
            time: "2026-11-26T10:00:00.123Z".into(),
            tenant: TenantId::new("acme").unwrap(),
            gateway: "gw1".into(),
            site: None,
            version: Some(4),
            digest: format!("sha256:{}", "b".repeat(64)),
            reason_code: "bad_signature".into(),
            reason: "manifest signature does not verify".into(),
            kept_version: Some(3),
        };
        let value = serde_json::to_value(&event).unwrap();
        let v = schemas::bundle_rejected_validator().unwrap();
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
}
