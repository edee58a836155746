//! The canonical JSON Schemas (`schemas/` at the workspace root), embedded so every binary
//! validates against exactly the files users and SIEMs read.

use std::sync::OnceLock;

/// `schemas/policy.schema.json`.
pub const POLICY: &str = include_str!("../../schemas/policy.schema.json");
/// `schemas/test-vectors.schema.json`.
pub const TEST_VECTORS: &str = include_str!("../../schemas/test-vectors.schema.json");
/// `schemas/decision.schema.json`.
pub const DECISION: &str = include_str!("../../schemas/decision.schema.json");
/// `schemas/decide-input.schema.json`.
pub const DECIDE_INPUT: &str = include_str!("../../schemas/decide-input.schema.json");

/// `schemas/decide-request.schema.json`.
pub const DECIDE_REQUEST: &str = include_str!("../../schemas/decide-request.schema.json");
/// `schemas/decide-response.schema.json`.
pub const DECIDE_RESPONSE: &str = include_str!("../../schemas/decide-response.schema.json");
/// `schemas/decision-event.schema.json`.
pub const DECISION_EVENT: &str = include_str!("../../schemas/decision-event.schema.json");
/// `schemas/bundle-rejected-event.schema.json`.
pub const BUNDLE_REJECTED_EVENT: &str =
    include_str!("../../schemas/bundle-rejected-event.schema.json");

/// `schemas/approval-requested.schema.json`.
pub const APPROVAL_REQUESTED: &str = include_str!("../../schemas/approval-requested.schema.json");
/// `schemas/approval-consumed.schema.json`.
pub const APPROVAL_CONSUMED: &str = include_str!("../../schemas/approval-consumed.schema.json");

fn compile(text: &str) -> Option<jsonschema::Validator> {
    let schema: serde_json::Value = serde_json::from_str(text).ok()?;
    jsonschema::validator_for(&schema).ok()
}

/// The compiled policy schema (`None` only if the embedded file is broken, which a test rules out).
pub fn policy_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(POLICY)).as_ref()
}

/// The compiled test-vector schema.
pub fn test_vectors_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(TEST_VECTORS)).as_ref()
}

/// The compiled decision schema.
pub fn decision_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(DECISION)).as_ref()
}

/// The compiled decide-input schema.
pub fn decide_input_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(DECIDE_INPUT)).as_ref()
}

/// The compiled decide-request schema (the body of a gateway's `POST /v1/decide`).
pub fn decide_request_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(DECIDE_REQUEST)).as_ref()
}

/// The compiled decide-response schema (a gateway's answer).
pub fn decide_response_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(DECIDE_RESPONSE)).as_ref()
}

/// The compiled decision-event schema.
pub fn decision_event_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(DECISION_EVENT)).as_ref()
}

/// The compiled bundle-rejected-event schema.
pub fn bundle_rejected_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(BUNDLE_REJECTED_EVENT)).as_ref()
}

/// The compiled approval-requested schema (a gateway's request on an approval subject).
pub fn approval_requested_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(APPROVAL_REQUESTED)).as_ref()
}

/// The compiled approval-consumed schema (a gateway used a grant).
pub fn approval_consumed_validator() -> Option<&'static jsonschema::Validator> {
    static V: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| compile(APPROVAL_CONSUMED)).as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schemas_compile() {
        assert!(policy_validator().is_some());
        assert!(test_vectors_validator().is_some());
        assert!(decision_validator().is_some());
        assert!(decide_input_validator().is_some());
        assert!(decision_event_validator().is_some());
        assert!(decide_request_validator().is_some());
        assert!(decide_response_validator().is_some());
        assert!(bundle_rejected_validator().is_some());
        assert!(approval_requested_validator().is_some());
        assert!(approval_consumed_validator().is_some());
    }
}
