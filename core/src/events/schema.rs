//! The JSON Schemas of the control-plane events (`schemas/events/` at the workspace root),
//! embedded, and validation of received envelopes against them.
//!
//! `envelope.schema.json` describes the envelope every event travels in; each event type has
//! `<type>.schema.json`, which checks the whole envelope of that type (it `$ref`s the envelope
//! schema by its relative file name, resolved here from the embedded copy, never the network)
//! and the exact fields of its payload. [`validate`] picks the schema by the envelope's `type`
//! and reports every violation with its JSON pointer. Each schema is compiled once, on first
//! use, so validating every folded event is cheap.
//!
//! The tests below build a signed envelope of every [`EventType`] with every field filled in
//! and check it against its schema field by field, so a struct that gains, loses or relaxes a
//! field without its schema changing fails the build's tests.

use super::kinds::{EventType, for_each_event};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::LazyLock;

/// Where the event schemas are published; `$id` of each is this plus its file name.
pub const BASE_URI: &str = "https://aegis.dev/schemas/events/";
/// File name of the envelope schema.
pub const ENVELOPE_FILE: &str = "envelope.schema.json";
/// `schemas/events/envelope.schema.json`.
pub const ENVELOPE: &str = include_str!("../../../schemas/events/envelope.schema.json");

/// Longest stretch kept of an offending value in a message (documents can be large).
const MAX_VALUE_CHARS: usize = 120;
/// Most violations spelled out in a [`SchemaError`]'s message (all are in `violations`).
const MAX_SHOWN: usize = 20;
/// Longest message kept from the validator's own wording (it quotes the offending value).
const MAX_MESSAGE_CHARS: usize = 400;

/// What each `pattern` in the event schemas stands for, to say `"x" is not a valid key id (…)`
/// rather than quoting the regular expression. A test checks every pattern is listed.
const PATTERNS: &[(&str, &str)] = &[
    (
        "^[A-Za-z0-9_@][A-Za-z0-9._:@/-]*$",
        "id (1 to 128 letters, digits or . _ : @ / -, not starting with . / - or :)",
    ),
    (
        "^ed25519:[0-9a-f]{16}$",
        "key id (`ed25519:` and 16 lowercase hex digits)",
    ),
    (
        "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,3})?Z$",
        "time (RFC 3339 in UTC, at most milliseconds, e.g. 2026-11-25T10:00:00.123Z)",
    ),
    ("^[0-9a-f]{64}$", "SHA-256 (64 lowercase hex digits)"),
    (
        "^sha256:[0-9a-f]{64}$",
        "digest (`sha256:` and 64 lowercase hex digits)",
    ),
    (
        "^[A-Za-z0-9+/]{86}==$",
        "signature (standard base64 of 64 bytes)",
    ),
    (
        "^[A-Za-z0-9+/]{43}=$",
        "public key (standard base64 of 32 bytes)",
    ),
];

macro_rules! event_schemas {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// The text of `schemas/events/<type>.schema.json`.
        pub fn schema_text(ty: EventType) -> &'static str {
            match ty {
                $(EventType::$variant => {
                    include_str!(concat!("../../../schemas/events/", $name, ".schema.json"))
                })*
            }
        }

        /// The file name of the schema of `ty`: `<type>.schema.json`.
        pub fn schema_file(ty: EventType) -> &'static str {
            match ty {
                $(EventType::$variant => concat!($name, ".schema.json"),)*
            }
        }
    };
}

for_each_event!(event_schemas);

/// One thing wrong with an envelope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// JSON pointer (RFC 6901) to the offending member, e.g. `/payload/intent`; empty for the
    /// envelope itself. For an unknown or missing member it points at that member.
    pub pointer: String,
    /// What is wrong, e.g. `"" is shorter than 1 character` or `missing required field`.
    pub message: String,
}

impl fmt::Display for Violation {
    /// `payload/intent: "" is shorter than 1 character`; `(envelope): …` for the whole envelope.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pointer.strip_prefix('/') {
            Some(path) => write!(f, "{path}: {}", self.message),
            None => write!(f, "(envelope): {}", self.message),
        }
    }
}

/// Why an envelope does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The envelope breaks its schema; every violation found, ordered by pointer.
    #[error("event does not match {schema}: {}", join(.violations))]
    Invalid {
        /// The schema file checked against: `<type>.schema.json`, or `envelope.schema.json`
        /// when `type` is missing or unknown.
        schema: &'static str,
        violations: Vec<Violation>,
    },
    /// An embedded schema does not compile (a broken build; the tests rule it out).
    #[error("internal error: embedded event schema {schema} does not compile: {reason}")]
    Broken {
        /// The schema file that does not compile.
        schema: &'static str,
        reason: String,
    },
}

impl SchemaError {
    /// The violations (empty for [`SchemaError::Broken`]).
    pub fn violations(&self) -> &[Violation] {
        match self {
            SchemaError::Invalid { violations, .. } => violations,
            SchemaError::Broken { .. } => &[],
        }
    }
}

/// The violations for a message: all of them, up to [`MAX_SHOWN`].
fn join(violations: &[Violation]) -> String {
    let mut text = violations
        .iter()
        .take(MAX_SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > MAX_SHOWN {
        text.push_str(&format!("; … and {} more", violations.len() - MAX_SHOWN));
    }
    text
}

/// Validates a received envelope (parsed as JSON, before or instead of typed parsing) against
/// the schema of its `type`, or against the envelope schema alone when `type` is missing or
/// unknown. Does not check the signature.
pub fn validate(raw: &Value) -> Result<(), SchemaError> {
    let compiled = COMPILED.as_ref().map_err(Clone::clone)?;
    let (schema, validator) = raw
        .get("type")
        .and_then(Value::as_str)
        .and_then(|name| compiled.by_name.get(name))
        .map_or((ENVELOPE_FILE, &compiled.envelope), |(file, v)| (*file, v));
    if validator.is_valid(raw) {
        return Ok(());
    }
    // A set: the envelope schema and the type's schema can report the same thing twice.
    let violations: BTreeSet<Violation> = validator
        .iter_errors(raw)
        .flat_map(|err| violations_of(&err))
        .collect();
    Err(SchemaError::Invalid {
        schema,
        violations: violations.into_iter().collect(),
    })
}

/// One validation error phrased for a person; an error about several members (unknown
/// fields) becomes one violation per member, pointing at it.
fn violations_of(err: &jsonschema::ValidationError<'_>) -> Vec<Violation> {
    use jsonschema::error::ValidationErrorKind as K;
    let at = err.instance_path().as_str().to_owned();
    let one = |pointer: String, message: String| {
        vec![Violation {
            pointer,
            message: truncate(message),
        }]
    };
    match err.kind() {
        K::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| Violation {
                pointer: child(&at, name),
                message: "unknown field".to_owned(),
            })
            .collect(),
        K::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            one(child(&at, &name), "missing required field".to_owned())
        }
        K::Constant { expected_value } => one(
            at,
            format!(
                "{} is not allowed, must be {expected_value}",
                short(err.instance())
            ),
        ),
        K::Enum { .. } if at == "/type" => vec![Violation {
            pointer: at,
            message: format!(
                "unknown event type {}; known types: {}",
                short(err.instance()),
                EventType::ALL.map(EventType::as_str).join(", ")
            ),
        }],
        K::Pattern { pattern } => match PATTERNS.iter().find(|(p, _)| p == pattern) {
            Some((_, what)) => one(
                at,
                format!("{} is not a valid {what}", short(err.instance())),
            ),
            None => one(at, err.to_string()),
        },
        _ => one(at, err.to_string()),
    }
}

/// `value` as JSON, cut short.
fn short(value: &Value) -> String {
    let mut text = value.to_string();
    if let Some((cut, _)) = text.char_indices().nth(MAX_VALUE_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// `parent` + `/` + `name` as a JSON pointer (escaping `~` and `/`).
fn child(parent: &str, name: &str) -> String {
    format!("{parent}/{}", name.replace('~', "~0").replace('/', "~1"))
}

fn truncate(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

struct Compiled {
    envelope: jsonschema::Validator,
    /// By wire name: the schema's file name and its compiled validator.
    by_name: HashMap<&'static str, (&'static str, jsonschema::Validator)>,
}

static COMPILED: LazyLock<Result<Compiled, SchemaError>> = LazyLock::new(compile_all);

fn compile_all() -> Result<Compiled, SchemaError> {
    let envelope = compile(ENVELOPE_FILE, ENVELOPE)?;
    let mut by_name = HashMap::new();
    for ty in EventType::ALL {
        let file = schema_file(ty);
        by_name.insert(ty.as_str(), (file, compile(file, schema_text(ty))?));
    }
    Ok(Compiled { envelope, by_name })
}

fn compile(file: &'static str, text: &str) -> Result<jsonschema::Validator, SchemaError> {
    let broken = |reason: String| SchemaError::Broken {
        schema: file,
        reason,
    };
    let schema: Value = serde_json::from_str(text).map_err(|e| broken(e.to_string()))?;
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_retriever(Embedded)
        .build(&schema)
        .map_err(|e| broken(e.to_string()))
}

/// Serves the envelope schema to the per-type schemas' `$ref`s; refuses everything else, so
/// compiling never touches the network or the file system.
#[derive(Debug)]
struct Embedded;

impl jsonschema::Retrieve for Embedded {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let uri = uri.as_str();
        if uri.strip_prefix(BASE_URI) == Some(ENVELOPE_FILE) {
            Ok(serde_json::from_str(ENVELOPE)?)
        } else {
            Err(format!("{uri} is not an embedded Aegis event schema").into())
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
    use crate::decision::DecisionKind;
    use crate::events::chain::{self, ChainEntry};
    use crate::events::envelope::{Envelope, format_time};
    use crate::events::kinds::*;
    use crate::events::roles::Role;
    use crate::ids::{ActorId, AgentId, ChangeId, EventId, PolicyName, TenantId};
    use crate::keys::{KeyId, Keypair};
    use crate::policy::model::RiskTier;
    use std::collections::BTreeSet;
    use time::OffsetDateTime;

    const POLICY_YAML: &str = "apiVersion: aegis.dev/v1\nkind: AgentPolicy\nmetadata:\n  tenant: acme\n  name: finance-payments\n  owner: finance-platform@acme.example\n  risk_tier: high\nspec:\n  agent_id: finance-agent\n  rules:\n    - id: small-refunds\n      tool_id: payments\n      actions: [refund]\n";
    const VECTORS_YAML: &str = "apiVersion: aegis.dev/v1\nkind: TestVectors\nvectors:\n  - name: refund over limit\n    expect: deny\n";

    fn sha(data: &str) -> String {
        chain::event_hash(data.as_bytes())
    }

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    /// Every event with every field filled in, so that its serialization shows every member its
    /// schema must know. When a struct gains a field, set it here: an `Option` to `Some`, a
    /// list to a non-empty one (a `None` or an empty skipped list would hide the field from
    /// `schemas_and_structs_agree_member_by_member`).
    fn full_event(ty: EventType) -> Event {
        let alice = Keypair::from_seed(&[1; 32]);
        let change: ChangeId = id("chg-5f0c2a9e41b7d3c8");
        let policy: PolicyName = id("finance-payments");
        match ty {
            EventType::ActorRegistered => ActorRegistered {
                actor: id("alice@acme.example"),
                public_key: alice.public_key().to_base64(),
                key_id: alice.key_id().clone(),
                display_name: Some("Alice Example (finance platform)".into()),
            }
            .into(),
            EventType::KeyRevoked => KeyRevoked {
                actor: id("alice@acme.example"),
                key_id: alice.key_id().clone(),
                reason: Some("laptop lost, SEC-4411".into()),
            }
            .into(),
            EventType::RoleGranted => RoleGranted {
                actor: id("alice@acme.example"),
                role: Role::Editor,
            }
            .into(),
            EventType::RoleRevoked => RoleRevoked {
                actor: id("alice@acme.example"),
                role: Role::Approver,
            }
            .into(),
            EventType::TenantConfigured => TenantConfigured {
                required_approvals: RequiredApprovals {
                    low: 0,
                    medium: 1,
                    high: 2,
                },
                bundle_expiry_days: Some(30),
                shadow_report_required: Some(RiskTier::High),
                rollout_readiness: ReadinessThresholds {
                    min_shadow_days: 3,
                    max_disagreement_basis_points: 50,
                    min_decisions: 1000,
                },
            }
            .into(),
            EventType::PolicyUpserted => PolicyUpserted {
                name: policy,
                format: DocumentFormat::Yaml,
                document: POLICY_YAML.into(),
                base_revision: 3,
                change_id: Some(change),
            }
            .into(),
            EventType::PolicyDeleted => PolicyDeleted {
                name: id("legacy-export"),
                base_revision: 4,
                change_id: Some(change),
            }
            .into(),
            EventType::ChangeProposed => ChangeProposed {
                change_id: change,
                intent: "Allow the finance agent to refund up to 500 EUR without approval.".into(),
                ticket: Some("FIN-1234".into()),
                documents: vec![ProposedDocument {
                    name: policy,
                    format: DocumentFormat::Yaml,
                    document: POLICY_YAML.into(),
                    base_revision: 2,
                }],
                deleted: vec![DeletedDocument {
                    name: id("legacy-export"),
                    base_revision: 1,
                }],
                vectors: vec![VectorDocument {
                    name: "finance-vectors.yaml".into(),
                    format: DocumentFormat::Json,
                    document: VECTORS_YAML.into(),
                }],
            }
            .into(),
            EventType::ChecksCompleted => ChecksCompleted {
                change_id: change,
                passed: false,
                results: vec![
                    CheckResult {
                        check: "validate".into(),
                        passed: true,
                        details: vec![],
                    },
                    CheckResult {
                        check: "vectors".into(),
                        passed: false,
                        details: vec![
                            "finance-vectors.yaml: refund over limit: expected deny, got allow"
                                .into(),
                        ],
                    },
                ],
                risk_tier: RiskTier::High,
                vectors_run: 12,
                vectors_failed: 1,
                candidate_digest: Some(format!("sha256:{}", sha("data.json"))),
            }
            .into(),
            EventType::ChangeApproved => ChangeApproved {
                change_id: change,
                comment: Some("Limit matches the finance runbook.".into()),
            }
            .into(),
            EventType::ShadowReportAttached => ShadowReportAttached {
                change_id: change,
                candidate_digest: format!("sha256:{}", sha("data.json")),
                slice: ShadowSlice {
                    first_seq: Some(1),
                    last_seq: Some(5000),
                    first_time: Some("2026-11-18T00:00:00.123456789Z".into()),
                    last_time: Some("2026-11-25T00:00:00Z".into()),
                },
                decisions: 5000,
                replayed: 4990,
                not_replayable: 10,
                changed: 12,
                would_deny: 40,
                transitions: vec![
                    ShadowTransition {
                        from: DecisionKind::Allow,
                        to: DecisionKind::Allow,
                        count: 4950,
                    },
                    ShadowTransition {
                        from: DecisionKind::Allow,
                        to: DecisionKind::ApprovalNeeded,
                        count: 12,
                    },
                ],
                report_digest: format!("sha256:{}", sha("report.json")),
            }
            .into(),
            EventType::ChangeRejected => ChangeRejected {
                change_id: change,
                reason: "Needs a vector for refunds in other currencies.".into(),
            }
            .into(),
            EventType::ChangePublished => ChangePublished {
                change_id: change,
                stage: RolloutStage::Shadow,
            }
            .into(),
            EventType::RollbackRequested => RollbackRequested {
                to_version: 6,
                reason: "INC-771: refunds denied for all agents".into(),
                emergency: true,
            }
            .into(),
            EventType::TenantFrozen => TenantFrozen {
                reason: "Quarter-end change freeze".into(),
            }
            .into(),
            EventType::TenantUnfrozen => TenantUnfrozen {
                reason: Some("Quarter closed".into()),
            }
            .into(),
            EventType::RolloutStageChanged => RolloutStageChanged {
                version: 7,
                stage: RolloutStage::Partial,
                agents: vec![id::<AgentId>("finance-agent"), id("support-agent.v2")],
                percent: Some(10),
            }
            .into(),
            EventType::TokenIssuerRegistered => {
                let idp = Keypair::from_seed(&[2; 32]);
                TokenIssuerRegistered {
                    issuer: "acme-idp".into(),
                    key_id: idp.key_id().clone(),
                    public_key: idp.public_key().to_base64(),
                }
                .into()
            }
            EventType::TokenIssuerRevoked => TokenIssuerRevoked {
                key_id: Keypair::from_seed(&[2; 32]).key_id().clone(),
                reason: "IdP signing key rotated, SEC-4412".into(),
            }
            .into(),
            EventType::RolloutAborted => RolloutAborted {
                version: 8,
                reason: "Shadow run shows 4% of refunds would be denied".into(),
            }
            .into(),
            EventType::AgentBlocked => AgentBlocked {
                agent: id("planner"),
                reason: "INC-802: planner loops on payments".into(),
            }
            .into(),
            EventType::AgentUnblocked => AgentUnblocked {
                agent: id("planner"),
                reason: Some("INC-802 resolved".into()),
            }
            .into(),
            EventType::ToolBlocked => ToolBlocked {
                tool: id("payments"),
                reason: "Payments provider outage".into(),
            }
            .into(),
            EventType::ToolUnblocked => ToolUnblocked {
                tool: id("payments"),
                reason: Some("Provider back".into()),
            }
            .into(),
            EventType::DataPlaneFrozen => DataPlaneFrozen {
                reason: "INC-803: hold every gateway on the running bundle".into(),
            }
            .into(),
            EventType::DataPlaneUnfrozen => DataPlaneUnfrozen {
                reason: Some("INC-803 closed".into()),
            }
            .into(),
            EventType::RuntimeApprovalGranted => RuntimeApprovalGranted {
                approval_id: "apr-0123456789abcdef0123456789abcdef".into(),
                call_digest: format!("sha256:{}", sha("call")),
                expires_at: "2025-11-25T10:15:00.000Z".into(),
                comment: Some("Invoice INV-2291 checked".into()),
            }
            .into(),
            EventType::RuntimeApprovalDenied => RuntimeApprovalDenied {
                approval_id: "apr-0123456789abcdef0123456789abcdef".into(),
                call_digest: format!("sha256:{}", sha("call")),
                reason: "No invoice for this payee".into(),
            }
            .into(),
            EventType::RolloutReadinessMeasured => {
                let entry = |id: &str| ReadinessEntry {
                    id: id.into(),
                    decisions: 120,
                    disagreements: 4,
                    would_deny: 3,
                };
                RolloutReadinessMeasured {
                    version: 7,
                    from_sequence: 1041,
                    to_sequence: 98_112,
                    decisions: 40_210,
                    disagreements: 37,
                    would_deny: 12,
                    measured_at: "2026-11-26T10:00:00.000Z".into(),
                    top_agents: vec![entry("finance-agent")],
                    top_tools: vec![entry("payments")],
                }
                .into()
            }
            EventType::RolloutPromotionApproved => RolloutPromotionApproved {
                version: 7,
                comment: Some("Disagreements are the intended refund limit".into()),
            }
            .into(),
            EventType::TenantControls => {
                let bundle = |version: u64| BundleRef {
                    version,
                    digest: format!("sha256:{}", sha(&version.to_string())),
                    size: 18_234,
                };
                let entry = |who: &str| BlockEntry {
                    id: who.into(),
                    reason: "INC-802".into(),
                    by: id("alice"),
                    at: "2025-11-25T10:00:00.000Z".into(),
                };
                TenantControls {
                    epoch: 42,
                    stable: Some(bundle(6)),
                    candidate: Some(RolloutCandidate {
                        bundle: bundle(7),
                        stage: RolloutStage::Partial,
                        agents: vec![id("finance-agent")],
                        percent: Some(10),
                    }),
                    blocked_agents: vec![entry("planner")],
                    blocked_tools: vec![entry("payments")],
                    data_plane_frozen: Some(DataPlaneFreeze {
                        reason: "INC-803".into(),
                        by: id("alice"),
                        at: "2025-11-25T10:01:00.000Z".into(),
                    }),
                }
                .into()
            }
            EventType::RuntimeApprovalDecided => RuntimeApprovalDecided {
                approval_id: "apr-0123456789abcdef0123456789abcdef".into(),
                call_digest: format!("sha256:{}", sha("call")),
                granted: true,
                expires_at: Some("2025-11-25T10:15:00.000Z".into()),
                by: id("carol"),
                at: "2025-11-25T10:00:00.000Z".into(),
                note: Some("Invoice INV-2291 checked".into()),
                source_event: id("evt-0123456789abcdef0123456789abcdef"),
            }
            .into(),
            // `change_id` and `rollback_of` do not normally come together; both are set so that
            // every member is checked.
            EventType::BundlePublished => BundlePublished {
                version: 7,
                digest: format!("sha256:{}", sha("bundle bytes")),
                size: 18_234,
                created_at: "2025-11-25T10:00:00.123Z".into(),
                change_id: Some(change),
                rollback_of: Some(5),
                stage: RolloutStage::Global,
                signer: control_plane_key().key_id().clone(),
            }
            .into(),
            EventType::AuditCheckpoint => {
                let tenant: TenantId = id("acme");
                let previous_head = chain::genesis(&tenant);
                let first = sha("first message");
                let second = sha("second message");
                let head = chain::link(&chain::link(&previous_head, &first), &second);
                AuditCheckpoint {
                    from_position: 1,
                    to_position: 2,
                    previous_head,
                    head,
                    entries: vec![
                        ChainEntry {
                            position: 1,
                            seq: 41,
                            id: "evt-0123456789abcdef0123456789abcdef".into(),
                            hash: first,
                        },
                        ChainEntry {
                            position: 2,
                            seq: 42,
                            id: "-".into(),
                            hash: second,
                        },
                    ],
                }
                .into()
            }
        }
    }

    fn control_plane_key() -> Keypair {
        Keypair::from_seed(&[9; 32])
    }

    fn signed_at(ty: EventType, time: OffsetDateTime) -> Value {
        let event = full_event(ty);
        assert_eq!(event.event_type(), ty);
        let (actor, key) = if Role::allowed_for(ty).is_empty() {
            ("aegis-controlplane", control_plane_key())
        } else {
            ("alice@acme.example", Keypair::generate().unwrap())
        };
        let envelope = Envelope::sign(
            EventId::random().unwrap(),
            id("acme"),
            id::<ActorId>(actor),
            &key,
            time,
            event,
        )
        .unwrap();
        serde_json::from_slice(&envelope.to_bytes().unwrap()).unwrap()
    }

    /// A signed envelope of `ty`, as received: its canonical bytes parsed as JSON.
    fn signed(ty: EventType) -> Value {
        // 2025-11-25T10:00:00.123456789Z, written with milliseconds.
        let time = OffsetDateTime::from_unix_timestamp_nanos(1_764_064_800_123_456_789).unwrap();
        signed_at(ty, time)
    }

    fn errors(raw: &Value) -> String {
        match validate(raw) {
            Ok(()) => panic!("expected a schema error for {raw}"),
            Err(e) => e.to_string(),
        }
    }

    fn pointers(raw: &Value) -> BTreeSet<String> {
        validate(raw)
            .err()
            .map(|e| e.violations().iter().map(|v| v.pointer.clone()).collect())
            .unwrap_or_default()
    }

    fn schema_json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// Whether the typed model accepts `raw` (what the fold does after the schema).
    fn serde_accepts(raw: &Value) -> bool {
        serde_json::from_value::<Envelope>(raw.clone()).is_ok()
    }

    /// Every object in `v` with its JSON pointer.
    fn objects(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                out.push(at.to_owned());
                for (k, child) in map {
                    objects(child, &format!("{at}/{k}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    objects(child, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    /// Every member (object key or array item) in `v` with its JSON pointer.
    fn members(v: &Value, at: &str, out: &mut Vec<String>) {
        let children: Vec<(String, &Value)> = match v {
            Value::Object(map) => map.iter().map(|(k, c)| (format!("{at}/{k}"), c)).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{at}/{i}"), c))
                .collect(),
            _ => return,
        };
        for (p, c) in children {
            out.push(p.clone());
            members(c, &p, out);
        }
    }

    /// A value of another JSON type than `v` that serde cannot take in its place either.
    fn wrong_type(v: &Value) -> Value {
        match v {
            Value::String(_) => Value::from(7),
            Value::Number(_) => Value::from("7"),
            Value::Bool(_) => Value::from("yes"),
            Value::Null => Value::from(true),
            // A struct also deserializes from a JSON array, so use a string for both.
            Value::Array(_) | Value::Object(_) => Value::from("not-a-list-or-object"),
        }
    }

    #[test]
    fn every_event_type_validates_as_signed() {
        for ty in EventType::ALL {
            let raw = signed(ty);
            assert_eq!(raw["type"], ty.as_str());
            if let Err(e) = validate(&raw) {
                panic!("{ty}: {e}\n{raw:#}");
            }
            // Whole seconds are written with a fraction too: times are fixed width.
            let whole = signed_at(
                ty,
                OffsetDateTime::from_unix_timestamp(1_764_064_800).unwrap(),
            );
            assert_eq!(whole["time"], "2025-11-25T10:00:00.000Z");
            validate(&whole).unwrap();
        }
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_764_064_800_120_000_000).unwrap();
        assert_eq!(format_time(t).unwrap(), "2025-11-25T10:00:00.120Z");
    }

    /// The drift check: each payload member the schema lists is one the struct writes, each
    /// member the struct writes is one the schema lists, and each member is required by the
    /// schema exactly when serde requires it.
    #[test]
    fn schemas_and_structs_agree_member_by_member() {
        for ty in EventType::ALL {
            let raw = signed(ty);
            if let Err(e) = validate(&raw) {
                panic!("{ty}: the full sample does not validate: {e}");
            }
            let schema = schema_json(schema_text(ty));
            let mut at = Vec::new();
            objects(&raw["payload"], "/payload", &mut at);
            for pointer in at {
                let object = raw.pointer(&pointer).unwrap().as_object().unwrap();
                let written: BTreeSet<&str> = object.keys().map(String::as_str).collect();
                let sub = subschema(&schema, &pointer);
                let listed: BTreeSet<&str> = sub["properties"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{ty}: no properties at {pointer}"))
                    .keys()
                    .map(String::as_str)
                    .collect();
                assert_eq!(written, listed, "{ty}: members at {pointer}");
                assert_eq!(sub["additionalProperties"], false, "{ty}: {pointer}");
                for key in written {
                    let mut without = raw.clone();
                    without
                        .pointer_mut(&pointer)
                        .unwrap()
                        .as_object_mut()
                        .unwrap()
                        .remove(key);
                    let member = format!("{pointer}/{key}");
                    let serde_ok = serde_accepts(&without);
                    assert_eq!(
                        validate(&without).is_ok(),
                        serde_ok,
                        "{ty}: schema and serde disagree on whether {member} is required"
                    );
                    if !serde_ok {
                        let msg = errors(&without);
                        let shown = member.trim_start_matches('/');
                        assert!(
                            msg.contains(&format!("{shown}: missing required field")),
                            "{ty}: {msg}"
                        );
                    }
                }
            }
        }
    }

    /// Follows `pointer` (inside the payload) through `properties`, `items` and `$ref`s.
    fn subschema<'a>(schema: &'a Value, pointer: &str) -> &'a Value {
        static ENVELOPE_JSON: LazyLock<Value> = LazyLock::new(|| schema_json(ENVELOPE));
        fn deref<'a>(doc: &'a Value, mut s: &'a Value) -> &'a Value {
            while let Some(r) = s.get("$ref").and_then(Value::as_str) {
                s = match r.split_once('#') {
                    Some(("", frag)) => doc.pointer(frag).unwrap(),
                    Some((ENVELOPE_FILE, frag)) => ENVELOPE_JSON.pointer(frag).unwrap(),
                    _ => panic!("unexpected $ref {r}"),
                };
            }
            s
        }
        let mut s = schema;
        for seg in pointer.trim_start_matches('/').split('/') {
            s = deref(schema, s);
            s = if seg.parse::<usize>().is_ok() {
                &s["items"]
            } else {
                &s["properties"][seg]
            };
        }
        deref(schema, s)
    }

    #[test]
    fn unknown_members_are_refused_everywhere() {
        for ty in EventType::ALL {
            let raw = signed(ty);
            let mut at = Vec::new();
            objects(&raw, "", &mut at);
            for pointer in at {
                let mut extra = raw.clone();
                extra
                    .pointer_mut(&pointer)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .insert("zzz_unknown".into(), Value::from(1));
                let shown = format!("{pointer}/zzz_unknown");
                let msg = errors(&extra);
                assert!(
                    msg.contains(&format!("{}: unknown field", &shown[1..])),
                    "{ty}: {msg}"
                );
                // The typed model ignores unknown envelope members (the signature covers them)
                // but refuses unknown payload members.
                if !pointer.is_empty() {
                    assert!(!serde_accepts(&extra), "{ty}: serde took {shown}");
                }
            }
        }
    }

    #[test]
    fn wrong_types_are_refused_at_the_member() {
        for ty in EventType::ALL {
            let raw = signed(ty);
            let mut at = Vec::new();
            members(&raw, "", &mut at);
            for pointer in at {
                let mut bad = raw.clone();
                let slot = bad.pointer_mut(&pointer).unwrap();
                *slot = wrong_type(slot);
                assert!(!serde_accepts(&bad), "{ty}: serde took a wrong {pointer}");
                let got = pointers(&bad);
                assert!(
                    got.contains(&pointer),
                    "{ty}: {pointer} not named in {got:?}"
                );
            }
        }
    }

    #[test]
    fn the_briefs_mutations_say_what_and_where() {
        for ty in EventType::ALL {
            let raw = signed(ty);

            let mut unknown = raw.clone();
            unknown["payload"]["colour"] = Value::from("blue");
            let msg = errors(&unknown);
            assert!(msg.contains("payload/colour: unknown field"), "{msg}");
            assert!(msg.contains(schema_file(ty)), "{msg}");

            let schema = schema_json(schema_text(ty));
            let required = schema["properties"]["payload"]["required"].as_array();
            for field in required.into_iter().flatten() {
                let field = field.as_str().unwrap();
                let mut missing = raw.clone();
                missing["payload"].as_object_mut().unwrap().remove(field);
                let msg = errors(&missing);
                assert!(
                    msg.contains(&format!("payload/{field}: missing required field")),
                    "{msg}"
                );
            }

            let mut teleported = raw.clone();
            teleported["type"] = Value::from("change_teleported");
            let msg = errors(&teleported);
            assert!(
                msg.starts_with("event does not match envelope.schema.json: type: unknown event type \"change_teleported\""),
                "{msg}"
            );

            let mut v2 = raw.clone();
            v2["schema_version"] = Value::from(2);
            let msg = errors(&v2);
            assert!(
                msg.contains("schema_version: 2 is not allowed, must be 1"),
                "{msg}"
            );
        }

        let mut no_type = signed(EventType::ChangeApproved);
        no_type.as_object_mut().unwrap().remove("type");
        assert!(errors(&no_type).contains("type: missing required field"));
        assert!(errors(&Value::from("hello")).contains("(envelope): \"hello\" is not of type"));
    }

    #[test]
    fn values_are_checked_not_only_shapes() {
        let set = |ty: EventType, pointer: &str, value: Value| {
            let mut raw = signed(ty);
            *raw.pointer_mut(pointer).unwrap() = value;
            errors(&raw)
        };
        let msg = set(
            EventType::ChangeProposed,
            "/payload/intent",
            Value::from(""),
        );
        assert!(
            msg.contains(r#"payload/intent: "" is shorter than 1 character"#),
            "{msg}"
        );
        let msg = set(
            EventType::ChangeApproved,
            "/payload/change_id",
            "-chg".into(),
        );
        assert!(
            msg.contains("payload/change_id: \"-chg\" is not a valid id"),
            "{msg}"
        );
        let msg = set(EventType::ChangeApproved, "/tenant", "x".repeat(129).into());
        assert!(msg.contains("tenant: "), "{msg}");
        assert!(msg.contains("is longer than 128 characters"), "{msg}");
        let msg = set(
            EventType::TenantFrozen,
            "/time",
            "2025-11-25T11:00:00+01:00".into(),
        );
        assert!(msg.contains("time: "), "{msg}");
        let msg = set(
            EventType::TenantFrozen,
            "/time",
            "2025-13-25T10:00:00Z".into(),
        );
        assert!(
            msg.contains("time: \"2025-13-25T10:00:00Z\" is not a \"date-time\""),
            "{msg}"
        );
        let msg = set(
            EventType::RolloutStageChanged,
            "/payload/percent",
            101.into(),
        );
        assert!(
            msg.contains("payload/percent: 101 is greater than"),
            "{msg}"
        );
        let msg = set(
            EventType::RolloutStageChanged,
            "/payload/stage",
            "canary".into(),
        );
        assert!(
            msg.contains("payload/stage: \"canary\" is not one of"),
            "{msg}"
        );
        let msg = set(EventType::RoleGranted, "/payload/role", "root".into());
        assert!(msg.contains("payload/role: "), "{msg}");
        let msg = set(
            EventType::BundlePublished,
            "/payload/digest",
            "md5:abc".into(),
        );
        assert!(msg.contains("payload/digest: "), "{msg}");
        let msg = set(
            EventType::AuditCheckpoint,
            "/payload/entries/1/hash",
            "ab".into(),
        );
        assert!(msg.contains("payload/entries/1/hash: "), "{msg}");
        let msg = set(EventType::ActorRegistered, "/key_id", "ed25519:XYZ".into());
        assert!(msg.contains("key_id: "), "{msg}");
        let msg = set(EventType::ActorRegistered, "/signature", "c2ln".into());
        assert!(msg.contains("signature: "), "{msg}");
        let msg = set(
            EventType::TenantConfigured,
            "/payload/required_approvals/high",
            (-1).into(),
        );
        assert!(
            msg.contains("payload/required_approvals/high: -1 is less than"),
            "{msg}"
        );

        // Several problems are all reported, ordered by pointer.
        let mut raw = signed(EventType::ChangeProposed);
        raw["payload"]["intent"] = "".into();
        raw["payload"]["documents"][0]["format"] = "toml".into();
        raw["actor"] = "".into();
        raw["payload"]["zzz"] = 1.into();
        raw["payload"].as_object_mut().unwrap().remove("change_id");
        raw["schema_version"] = 2.into();
        let err = validate(&raw).unwrap_err();
        let at: Vec<&str> = err
            .violations()
            .iter()
            .map(|v| v.pointer.as_str())
            .collect();
        assert_eq!(
            at,
            [
                "/actor",
                "/actor",
                "/payload/change_id",
                "/payload/documents/0/format",
                "/payload/intent",
                "/payload/zzz",
                "/schema_version"
            ]
        );
        assert_eq!(
            err.to_string(),
            "event does not match change_proposed.schema.json: \
             actor: \"\" is not a valid id (1 to 128 letters, digits or . _ : @ / -, not starting with . / - or :); \
             actor: \"\" is shorter than 1 character; \
             payload/change_id: missing required field; \
             payload/documents/0/format: \"toml\" is not one of \"yaml\" or \"json\"; \
             payload/intent: \"\" is shorter than 1 character; \
             payload/zzz: unknown field; \
             schema_version: 2 is not allowed, must be 1"
        );

        // Many unknown members: all are listed in `violations`, the message names the first 20.
        let mut raw = signed(EventType::TenantFrozen);
        for i in 0..1_000 {
            raw["payload"][format!("extra{i:04}")] = i.into();
        }
        let err = validate(&raw).unwrap_err();
        assert_eq!(err.violations().len(), 1_000);
        let msg = err.to_string();
        assert!(
            msg.ends_with("payload/extra0019: unknown field; … and 980 more"),
            "{msg}"
        );

        // A huge offending value is cut short in the message.
        let msg = set(
            EventType::ChangeApproved,
            "/actor",
            "x y".repeat(10_000).into(),
        );
        assert!(msg.len() < 2_000, "{}", msg.len());
    }

    #[test]
    fn every_schema_file_parses_and_is_documented() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/events");
        let mut on_disk = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            assert!(name.ends_with(".schema.json"), "stray file {name}");
            let text = std::fs::read_to_string(&path).unwrap();
            let schema: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            assert_eq!(
                schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{name}"
            );
            assert_eq!(schema["$id"], format!("{BASE_URI}{name}"), "{name}");
            for key in ["title", "description"] {
                let s = schema[key].as_str().unwrap_or_default();
                assert!(!s.trim().is_empty(), "{name} has no {key}");
            }
            on_disk.insert(name);
        }
        let mut expected: BTreeSet<String> = [ENVELOPE_FILE.to_owned()].into();
        for ty in EventType::ALL {
            let file = schema_file(ty);
            assert_eq!(file, format!("{}.schema.json", ty.as_str()));
            assert_eq!(
                schema_text(ty),
                std::fs::read_to_string(dir.join(file)).unwrap()
            );
            let schema = schema_json(schema_text(ty));
            assert_eq!(schema["title"], format!("Aegis event: {ty}"));
            assert_eq!(schema["properties"]["type"]["const"], ty.as_str());
            assert_eq!(schema["allOf"][0]["$ref"], ENVELOPE_FILE);
            expected.insert(file.to_owned());
        }
        assert_eq!(on_disk, expected);

        let envelope = schema_json(ENVELOPE);
        let listed: Vec<&str> = envelope["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(listed, EventType::ALL.map(EventType::as_str));
        assert!(COMPILED.is_ok());
    }

    #[test]
    fn every_pattern_has_a_plain_description() {
        fn patterns(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(p)) = map.get("pattern") {
                        out.push(p.clone());
                    }
                    map.values().for_each(|c| patterns(c, out));
                }
                Value::Array(items) => items.iter().for_each(|c| patterns(c, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        patterns(&schema_json(ENVELOPE), &mut found);
        for ty in EventType::ALL {
            patterns(&schema_json(schema_text(ty)), &mut found);
        }
        for p in found {
            assert!(
                PATTERNS.iter().any(|(q, _)| *q == p),
                "no description for {p}"
            );
        }
        let msg = errors(&{
            let mut raw = signed(EventType::TenantFrozen);
            raw["time"] = "2025-11-25T11:00:00+01:00".into();
            raw
        });
        assert!(
            msg.contains(
                "time: \"2025-11-25T11:00:00+01:00\" is not a valid time (RFC 3339 in UTC"
            ),
            "{msg}"
        );
    }

    #[test]
    fn key_ids_in_schemas_match_the_key_module() {
        let key = Keypair::from_seed(&[3; 32]);
        let envelope = schema_json(ENVELOPE);
        let pattern = envelope["$defs"]["key_id"]["pattern"].as_str().unwrap();
        let re = regex::Regex::new(pattern).unwrap();
        assert!(re.is_match(key.key_id().as_str()));
        assert!(KeyId::new("ed25519:0123456789ABCDEF").is_err());
        assert!(!re.is_match("ed25519:0123456789ABCDEF"));
    }
}
