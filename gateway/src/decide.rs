//! The decision path: token → request → bundle → evaluation → answer → decision event.
//!
//! [`Decider::decide`] never fails and never panics: every problem is a deny with a reason
//! code, and every answer — auth failures included — is recorded as a decision event handed
//! to the [`EventSink`] (the shipper), which never blocks. The order of checks:
//!
//! 1. the decision log can accept the event (else 503 `decision_log_full`, when the spool
//!    policy is to deny);
//! 2. the bearer token verifies against the issuer keys in the tenant's bundle (else 401 with
//!    the token's reason code; a tenant served without a bundle is 503 `no_bundle`);
//! 3. the body is a decide request (else 400 `bad_request`), and any tenant / agent / chain it
//!    names equals the token's (else 401 `identity_mismatch`);
//! 4. the kill switch: a blocked agent (the caller or any agent of its call chain) is denied
//!    `agent_blocked`, a blocked tool `tool_blocked`; a tenant whose stored controls state could
//!    not be verified is denied `controls_unavailable` (see [`Decider::kill_switch`]);
//! 5. the tenant's bundle in force decides (its evaluator denies on any evaluation error,
//!    instruction or time limit) — during a staged rollout the enforced version is the
//!    candidate for a partial cohort and the stable one otherwise, and the other version is
//!    evaluated too and recorded as the event's `shadow` (see [`Decider::decide_rollout`]);
//! 6. a call it lets through must fit the deciding rule's rate limits and budgets
//!    ([`crate::limits`]; a step that may wait, on KV, for a `global` limit);
//! 7. a retry with an `approval_id` that the policy still answers `approval_needed` is checked
//!    against `AEGIS_APPROVALS` and may consume the grant (the other step that waits on NATS).
//!
//! The bundle is loaded once per request, so a swap during a request never mixes versions:
//! the token is checked against, and the call decided by, the same bundle.

use crate::config::OnSpoolFull;
use crate::metrics::Metrics;
use crate::telemetry::{SpanId, TraceContext, traceparent_header};
use crate::tenants::{ActiveBundle, Registry};
use aegis_core::decision::{DecideInput, Decision, DecisionKind, Reason};
use aegis_core::decision_log::{self, DecisionEvent, mask_params, params_digest};
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegis_core::keys::KeyId;
use aegis_core::token::{self, Identity, TokenError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Where decision events go. Implemented by the shipper; must never block.
pub trait EventSink: Send + Sync {
    /// False while events cannot be recorded and the policy is to refuse calls.
    fn accepting(&self) -> bool;
    /// Hands an event over; false when it could not be accepted.
    fn submit(&self, subject: String, id: String, payload: Bytes) -> bool;
    /// Counts a decision answered without being recorded.
    fn count_unrecorded(&self);
    /// Counters for `/metrics` and `/v1/status`.
    fn stats(&self) -> crate::metrics::SinkStats;
}

/// Tenant under which refused calls that name no served tenant are filed.
pub const UNAUTHENTICATED_TENANT: &str = "_unauthenticated";

/// Gateway-level reason codes (the policy's own codes come from the bundle).
pub mod codes {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const NO_BUNDLE: &str = "no_bundle";
    pub const BUNDLE_EXPIRED: &str = "bundle_expired";
    pub const DECISION_LOG_FULL: &str = "decision_log_full";
    pub const INTERNAL: &str = "internal_error";
    /// Kill switch: the agent (or an agent of its call chain) is blocked.
    pub const AGENT_BLOCKED: &str = "agent_blocked";
    /// Kill switch: the tool is blocked.
    pub const TOOL_BLOCKED: &str = "tool_blocked";
    /// The stored controls state (kill switch, freeze) could not be verified at start and none
    /// arrived from NATS yet: every call of the tenant is denied.
    pub const CONTROLS_UNAVAILABLE: &str = "controls_unavailable";
}

/// The body of `POST /v1/decide` (`schemas/decide-request.schema.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    pub tool_id: ToolId,
    pub action: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    #[serde(default)]
    pub context: Map<String, Value>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub call_chain: Option<Vec<String>>,
    /// A retry of a call that needed approval: the `approval.id` of that answer.
    #[serde(default)]
    pub approval_id: Option<String>,
}

/// The approval an `approval_needed` answer waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRef {
    pub id: String,
    pub status: String,
    pub expires_at: Option<String>,
}

/// The answer (`schemas/decide-response.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecideResponse {
    pub decision_id: String,
    pub decision: DecisionKind,
    pub reasons: Vec<Reason>,
    pub policy_version: Option<u64>,
    pub bundle_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
}

/// Trace context of one decision: the caller's trace (or a new one) and this decision's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub context: TraceContext,
    pub span: SpanId,
}

impl TraceIds {
    /// A child of the caller's `traceparent` when it sent a valid one, else a new root.
    pub fn from_traceparent(traceparent: Option<&str>) -> TraceIds {
        TraceIds {
            context: TraceContext::from_header_or_root(traceparent),
            span: SpanId::random(),
        }
    }

    /// The `traceparent` naming this decision's span.
    pub fn traceparent(&self) -> String {
        traceparent_header(self.context.trace_id, self.span.0, self.context.flags)
    }
}

/// Everything about one answered call.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: u16,
    pub response: DecideResponse,
    /// The recorded event (None only when it could not be recorded).
    pub event: Option<DecisionEvent>,
    pub trace: TraceIds,
    pub started_at: SystemTime,
    pub elapsed: Duration,
}

/// What the request carried besides its body.
#[derive(Debug, Clone, Copy)]
pub struct CallMeta<'a> {
    /// The `Authorization` header value.
    pub authorization: Option<&'a str>,
    pub trace: &'a TraceIds,
    /// When the request arrived.
    pub received: Instant,
    pub received_at: SystemTime,
}

/// The decision path, shared by every request.
pub struct Decider {
    pub gateway_id: String,
    pub site: Option<String>,
    pub audience: String,
    pub token_leeway_seconds: i64,
    pub approval_ttl: Duration,
    pub on_spool_full: OnSpoolFull,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub sink: Arc<dyn EventSink>,
    /// Rate-limit and budget counters of this gateway.
    pub limits: crate::limits::Limiter,
    /// Runtime approvals (requests, webhook, grants); `None`: approval requests are answered
    /// but not published, and retries with an approval id are denied `approval_unavailable`.
    pub approvals: Option<Arc<crate::approvals::Approvals>>,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decider")
            .field("gateway_id", &self.gateway_id)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// A refusal before evaluation.
struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

/// What is known about the call when it is recorded.
#[derive(Default)]
struct Facts {
    tenant: Option<TenantId>,
    identity: Option<Identity>,
    claimed_agent: Option<AgentId>,
    request: Option<DecideRequest>,
    bundle: Option<Arc<ActiveBundle>>,
    /// During a rollout: the candidate's stage.
    rollout_stage: Option<aegis_core::events::RolloutStage>,
    /// During a rollout: what the version not enforced answered.
    shadow: Option<decision_log::ShadowResult>,
    /// The decision id, when it had to be known before recording (consuming a grant).
    decision_id: Option<String>,
    /// The approval a retry named, with what became of it.
    approval: Option<ApprovalRef>,
}

/// A call decided up to its answer, or a retry whose approval is still to be checked.
/// (Returned once per call and moved straight on: not worth a heap allocation.)
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Answered(Outcome),
    ApprovalRetry(Decision, Facts),
}

impl Decider {
    /// Decides one call. Never fails.
    /// `body` is the request body, or why it could not be read (e.g. over the size limit).
    /// Waits on nothing but a rule's global limits (KV, bounded: see [`crate::limits`]) and,
    /// for a retry with an `approval_id` that the policy (still) answers `approval_needed`,
    /// the grant on `AEGIS_APPROVALS` (bounded), which it may consume.
    pub async fn decide(&self, meta: CallMeta<'_>, body: Result<&[u8], String>) -> Outcome {
        match self.prepare(meta, body).await {
            Prepared::Answered(outcome) => outcome,
            Prepared::ApprovalRetry(decision, mut facts) => {
                let decision = self.approval_retry(decision, &mut facts).await;
                self.record(meta, 200, decision, facts)
            }
        }
    }

    /// Everything up to the answer; stops early only for an approval retry.
    async fn prepare(&self, meta: CallMeta<'_>, body: Result<&[u8], String>) -> Prepared {
        if !self.sink.accepting() {
            self.metrics.refused_unrecordable();
            return Prepared::Answered(self.unrecorded_refusal(meta));
        }
        let mut facts = Facts::default();
        let result = self.evaluate(meta, body, &mut facts).await;
        if let Ok(decision) = &result
            && is_approval_retry(decision, &facts)
        {
            return Prepared::ApprovalRetry(decision.clone(), facts);
        }
        let (status, decision) = match result {
            Ok(decision) => (200, decision),
            Err(refusal) => (
                refusal.status,
                Decision::deny(refusal.code, refusal.message),
            ),
        };
        Prepared::Answered(self.record(meta, status, decision, facts))
    }

    async fn evaluate(
        &self,
        meta: CallMeta<'_>,
        body: Result<&[u8], String>,
        facts: &mut Facts,
    ) -> Result<Decision, Refusal> {
        let (identity, bundle) = self.authenticate(meta.authorization, facts)?;
        facts.tenant = Some(identity.tenant.clone());
        facts.identity = Some(identity.clone());
        facts.bundle = Some(bundle.clone());

        let body =
            body.map_err(|e| Refusal::new(400, codes::BAD_REQUEST, format!("request body: {e}")))?;
        let request: DecideRequest = serde_json::from_slice(body)
            .map_err(|e| Refusal::new(400, codes::BAD_REQUEST, format!("request body: {e}")))?;
        check_request(&request)?;
        facts.request = Some(request.clone());
        check_claims(&request, &identity)?;

        self.kill_switch(&identity, &request)?;

        let input = DecideInput {
            tenant: identity.tenant.clone(),
            agent_id: identity.agent.clone(),
            call_chain: identity.call_chain.clone(),
            tool_id: request.tool_id.clone(),
            action: request.action.clone(),
            params: request.params.clone(),
            context: request.context.clone(),
        };
        let decision = self.decide_rollout(&bundle, &input, facts)?;
        Ok(self.enforce_limits(decision, &input).await)
    }

    /// A call the policy lets through must also fit the deciding rule's rate limits and
    /// budgets; otherwise it is denied (`rate_limited`, `budget_exceeded`, or
    /// `limit_unavailable` when global counters cannot be reached), naming that rule.
    async fn enforce_limits(&self, decision: Decision, input: &DecideInput) -> Decision {
        if !decision.decision.permits() {
            return decision;
        }
        let who = crate::limits::Subject {
            tenant: input.tenant.as_str(),
            agent: input.agent_id.as_str(),
            tool: input.tool_id.as_str(),
        };
        match self
            .limits
            .admit(who, &decision.obligations, &input.params, unix_now())
            .await
        {
            Ok(()) => decision,
            Err(exceeded) => Decision {
                decision: DecisionKind::Deny,
                reasons: vec![Reason {
                    code: exceeded.code.to_owned(),
                    message: exceeded.message,
                    policy: decision.policy.clone(),
                    rule: decision.rule.clone(),
                }],
                params: None,
                ..decision
            },
        }
    }

    /// Verifies the bearer token against the issuer keys of the bundle in force for the tenant
    /// the token's key belongs to; returns that bundle too.
    fn authenticate(
        &self,
        authorization: Option<&str>,
        facts: &mut Facts,
    ) -> Result<(Identity, Arc<ActiveBundle>), Refusal> {
        let refuse = |e: TokenError| {
            self.metrics.auth_failure(e.code());
            Refusal::new(401, e.code(), e.to_string())
        };
        let token = bearer(authorization).ok_or_else(|| refuse(TokenError::Missing))?;
        let claimed = token::peek(token);
        facts.claimed_agent = claimed.agent.as_deref().and_then(|a| AgentId::new(a).ok());
        facts.tenant = claimed
            .tenant
            .as_deref()
            .filter(|t| self.registry.serves(t))
            .and_then(|t| TenantId::new(t).ok());

        let kid = claimed
            .kid
            .as_deref()
            .and_then(|k| KeyId::new(k).ok())
            .ok_or_else(|| refuse(TokenError::MissingKeyId))?;
        // The claimed tenant's own bundle first (a key two tenants registered verifies for
        // the one the token names); else whichever served tenant registered the key, which
        // then refuses the token as speaking for another tenant.
        let claimed_bundle = facts
            .tenant
            .as_ref()
            .and_then(|t| self.registry.slot(t))
            .and_then(|slot| slot.active())
            .filter(|b| b.issuers.get(&kid).is_some());
        let bundle = match claimed_bundle.or_else(|| self.registry.issuer(&kid).map(|(b, _)| b)) {
            Some(bundle) => bundle,
            None => {
                // A served tenant without a bundle cannot check its tokens at all: say so.
                if let Some(tenant) = &facts.tenant
                    && let Some(slot) = self.registry.slot(tenant)
                    && slot.active().is_none()
                {
                    return Err(Refusal::new(
                        503,
                        codes::NO_BUNDLE,
                        format!(
                            "no verified policy bundle for tenant {tenant} yet: every call is denied until one arrives"
                        ),
                    ));
                }
                return Err(refuse(TokenError::UnknownKey(kid.to_string())));
            }
        };
        let now = unix_now();
        if bundle.expired(now) {
            return Err(Refusal::new(
                503,
                codes::BUNDLE_EXPIRED,
                format!(
                    "the policy bundle in force for tenant {} (version {}) expired at {}: calls are denied until a newer one arrives",
                    bundle.tenant,
                    bundle.version,
                    bundle.manifest.expires_at.as_deref().unwrap_or("?")
                ),
            ));
        }
        if let Some(identity) = bundle.tokens.get(token, now, self.token_leeway_seconds) {
            return Ok((identity, bundle));
        }
        let identity = token::verify(
            token,
            &bundle.issuers,
            &self.audience,
            now,
            self.token_leeway_seconds,
        )
        .map_err(refuse)?;
        bundle.tokens.insert(token, identity.clone());
        Ok((identity, bundle))
    }

    /// Builds the answer and the event, hands the event to the sink, counts.
    fn record(
        &self,
        meta: CallMeta<'_>,
        mut status: u16,
        mut decision: Decision,
        facts: Facts,
    ) -> Outcome {
        let id = facts.decision_id.clone().unwrap_or_else(|| new_id("dec"));
        let retried = facts.approval.is_some();
        let mut approval = facts.approval.clone().or_else(|| {
            (decision.decision == DecisionKind::ApprovalNeeded).then(|| self.new_approval())
        });
        if !retried && decision.decision == DecisionKind::ApprovalNeeded {
            self.request_approval(&id, &mut decision, &mut approval, &facts);
        }
        let tenant = facts
            .tenant
            .clone()
            .or_else(|| TenantId::new(UNAUTHENTICATED_TENANT).ok());
        let elapsed = meta.received.elapsed();
        let event = tenant.map(|tenant| {
            self.event(
                &id,
                tenant,
                meta,
                &decision,
                approval.as_ref(),
                &facts,
                elapsed,
            )
        });

        let mut recorded = None;
        if let Some(event) = event {
            let submitted = match (
                event.to_bytes(),
                aegis_nats::topology::decisions_subject(&event.tenant, &self.gateway_id),
            ) {
                (Ok(bytes), Ok(subject)) => {
                    self.sink.submit(subject, id.clone(), Bytes::from(bytes))
                }
                _ => false,
            };
            if submitted {
                recorded = Some(event);
            } else {
                match self.on_spool_full {
                    OnSpoolFull::Serve => self.sink.count_unrecorded(),
                    OnSpoolFull::Deny => {
                        self.metrics.refused_unrecordable();
                        status = 503;
                        decision = Decision::deny(
                            codes::DECISION_LOG_FULL,
                            "the gateway cannot record decisions right now (its decision log queue and disk spool are full); calls are refused until it can",
                        );
                    }
                }
            }
        }

        let counted_tenant = facts
            .tenant
            .as_ref()
            .map_or(UNAUTHENTICATED_TENANT, TenantId::as_str);
        self.metrics
            .decisions_for(counted_tenant)
            .inc(decision.decision);
        let elapsed = meta.received.elapsed();
        self.metrics
            .latency
            .observe_ns(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));

        let response = DecideResponse {
            decision_id: id,
            decision: decision.decision,
            reasons: decision.reasons,
            policy_version: decision.policy_version,
            bundle_digest: decision.bundle_digest,
            params: if decision.decision == DecisionKind::Sanitize {
                decision.params
            } else {
                None
            },
            approval: if retried || decision.decision == DecisionKind::ApprovalNeeded {
                approval
            } else {
                None
            },
        };
        Outcome {
            status,
            response,
            event: recorded,
            trace: *meta.trace,
            started_at: meta.received_at,
            elapsed,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        id: &str,
        tenant: TenantId,
        meta: CallMeta<'_>,
        decision: &Decision,
        approval: Option<&ApprovalRef>,
        facts: &Facts,
        elapsed: Duration,
    ) -> DecisionEvent {
        let request = facts.request.as_ref();
        let empty = Map::new();
        let params = request.map_or(&empty, |r| &r.params);
        let (logged, masked) = mask_params(params, &decision.obligations.log_mask);
        DecisionEvent {
            id: id.to_owned(),
            kind: decision_log::DECISION_TYPE.to_owned(),
            schema_version: decision_log::SCHEMA_VERSION,
            time: aegis_core::events::envelope::format_time(time::OffsetDateTime::from(
                meta.received_at,
            ))
            .unwrap_or_default(),
            tenant,
            gateway: self.gateway_id.clone(),
            site: self.site.clone(),
            request_id: request.and_then(|r| r.request_id.clone()),
            identity_verified: facts.identity.is_some(),
            agent_id: facts
                .identity
                .as_ref()
                .map(|i| i.agent.clone())
                .or_else(|| facts.claimed_agent.clone()),
            call_chain: facts
                .identity
                .as_ref()
                .map(|i| i.call_chain.clone())
                .unwrap_or_default(),
            tool_id: request.map(|r| r.tool_id.clone()),
            action: request.map(|r| r.action.clone()),
            params_digest: params_digest(params),
            params: logged,
            masked_params: masked,
            context: request.map(|r| r.context.clone()).unwrap_or_default(),
            decision: decision.decision,
            reasons: decision.reasons.clone(),
            policy: decision.policy.clone(),
            rule: decision.rule.clone(),
            policy_version: decision.policy_version,
            bundle_digest: decision.bundle_digest.clone(),
            approval_id: approval.map(|a| a.id.clone()),
            latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            rollout_stage: facts
                .rollout_stage
                .filter(|_| decision.policy_version.is_some())
                .or_else(|| {
                    facts
                        .bundle
                        .as_ref()
                        .filter(|_| decision.policy_version.is_some())
                        .map(|b| b.stage)
                }),
            shadow: facts.shadow.clone(),
            trace_id: Some(meta.trace.context.trace_id_hex()),
            span_id: Some(meta.trace.span.to_hex()),
        }
    }

    /// The answer when events cannot be recorded and the policy is to refuse.
    fn unrecorded_refusal(&self, meta: CallMeta<'_>) -> Outcome {
        let decision = Decision::deny(
            codes::DECISION_LOG_FULL,
            "the gateway cannot record decisions right now (its decision log queue and disk spool are full); calls are refused until it can",
        );
        self.metrics
            .decisions_for(UNAUTHENTICATED_TENANT)
            .inc(DecisionKind::Deny);
        Outcome {
            status: 503,
            response: DecideResponse {
                decision_id: new_id("dec"),
                decision: decision.decision,
                reasons: decision.reasons,
                policy_version: None,
                bundle_digest: None,
                params: None,
                approval: None,
            },
            event: None,
            trace: *meta.trace,
            started_at: meta.received_at,
            elapsed: meta.received.elapsed(),
        }
    }
}

/// Kill switch and staged rollout (issue 5). Kept apart from the rest of the decision path:
/// [`Decider::evaluate`] calls [`Decider::kill_switch`] after authentication and
/// [`Decider::decide_rollout`] in place of evaluating the stable bundle alone.
impl Decider {
    /// Denies calls of a blocked agent (the caller, or any agent of its call chain) or to a
    /// blocked tool, naming the reason and who blocked it. A tenant whose controls are unknown
    /// (stored state unverifiable) is denied altogether: a lost kill switch never means allow.
    fn kill_switch(&self, identity: &Identity, request: &DecideRequest) -> Result<(), Refusal> {
        let Some(slot) = self.registry.slot(&identity.tenant) else {
            return Ok(());
        };
        let controls = slot.controls();
        if let Some(why) = &controls.unavailable {
            return Err(Refusal::new(
                503,
                codes::CONTROLS_UNAVAILABLE,
                format!(
                    "the kill switch of tenant {} is unknown ({why}): every call is denied until the control plane's controls state arrives",
                    identity.tenant
                ),
            ));
        }
        let agents = std::iter::once(&identity.agent).chain(identity.call_chain.iter());
        for agent in agents {
            if let Some(block) = controls.blocked_agents.get(agent.as_str()) {
                let whose = if agent == &identity.agent {
                    format!("agent {agent} is blocked")
                } else {
                    format!(
                        "agent {agent} in the call chain of {} is blocked",
                        identity.agent
                    )
                };
                return Err(Refusal::new(
                    200,
                    codes::AGENT_BLOCKED,
                    format!(
                        "{whose} by {} since {}: {}",
                        block.by, block.at, block.reason
                    ),
                ));
            }
        }
        if let Some(block) = controls.blocked_tools.get(request.tool_id.as_str()) {
            return Err(Refusal::new(
                200,
                codes::TOOL_BLOCKED,
                format!(
                    "tool {} is blocked by {} since {}: {}",
                    request.tool_id, block.by, block.at, block.reason
                ),
            ));
        }
        Ok(())
    }

    /// Evaluates the call with the version that decides it, and during a rollout the other
    /// version too. `stable` is the bundle the token was verified against.
    ///
    /// - no candidate: `stable` decides;
    /// - a `partial` candidate and the agent in its cohort
    ///   ([`aegis_core::rollout::in_cohort`]): the candidate decides, `stable` is evaluated too;
    /// - otherwise (`shadow`, or outside the cohort): `stable` decides, the candidate is
    ///   evaluated too.
    ///
    /// The other version's answer goes to the event's `shadow`, the candidate's stage to its
    /// `rollout_stage`, and a disagreement to `aegis_shadow_disagreements_total`. An error (or
    /// expiry) of the other version is recorded as an `evaluation_error` there and never
    /// changes the enforced answer. An expired candidate that would decide denies
    /// (`bundle_expired`). If the slot was swapped since `stable` was loaded (a race of
    /// microseconds), `stable` decides alone.
    fn decide_rollout(
        &self,
        stable: &Arc<ActiveBundle>,
        input: &DecideInput,
        facts: &mut Facts,
    ) -> Result<Decision, Refusal> {
        let candidate = self
            .registry
            .slot(&input.tenant)
            .map(|slot| slot.deployment())
            .filter(|d| d.stable.as_ref().is_some_and(|s| Arc::ptr_eq(s, stable)))
            .and_then(|d| d.candidate.clone());
        let Some(candidate) = candidate else {
            return Ok(stable.evaluator.decide(input));
        };
        facts.rollout_stage = Some(candidate.stage);
        let now = unix_now();
        let (enforced, other) = if candidate.enforced_for(&input.agent_id) {
            (&candidate.bundle, stable)
        } else {
            (stable, &candidate.bundle)
        };
        let other_answer = evaluate_other(other, input, now);
        if enforced.expired(now) {
            facts.shadow = Some(decision_log::ShadowResult::of(&other_answer));
            return Err(Refusal::new(
                503,
                codes::BUNDLE_EXPIRED,
                format!(
                    "the candidate bundle for tenant {} (version {}) expired at {}: calls of its cohort are denied until a newer one arrives",
                    enforced.tenant,
                    enforced.version,
                    enforced.manifest.expires_at.as_deref().unwrap_or("?")
                ),
            ));
        }
        let answer = enforced.evaluator.decide(input);
        if answer.decision != other_answer.decision {
            self.metrics.shadow_disagreement(input.tenant.as_str());
        }
        facts.shadow = Some(decision_log::ShadowResult::of(&other_answer));
        Ok(answer)
    }
}

/// The answer of the version not enforced: its evaluation, or an `evaluation_error` deny (it
/// expired, or evaluating it failed in any way), always naming that version.
fn evaluate_other(bundle: &ActiveBundle, input: &DecideInput, now: i64) -> Decision {
    let mut answer = if bundle.expired(now) {
        Decision::deny(
            aegis_core::decision::EVALUATION_ERROR,
            format!(
                "version {} expired at {}",
                bundle.version,
                bundle.manifest.expires_at.as_deref().unwrap_or("?")
            ),
        )
    } else {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bundle.evaluator.decide(input)
        }))
        .unwrap_or_else(|_| {
            Decision::deny(
                aegis_core::decision::EVALUATION_ERROR,
                format!("evaluating version {} failed", bundle.version),
            )
        })
    };
    answer.policy_version = Some(bundle.version);
    answer.bundle_digest = Some(bundle.digest.clone());
    answer
}

#[cfg(test)]
mod rollout_tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use crate::bundles::{BundleLimits, prepare};
    use aegis_core::bundle::{BundleSpec, build};
    use aegis_core::keys::{Keypair, TrustStore};
    use std::collections::BTreeMap;

    fn bundle(version: u64, rego: &str) -> ActiveBundle {
        let key = Keypair::from_seed(&[3; 32]);
        let tenant = TenantId::new("acme").unwrap();
        let files = BTreeMap::from([
            ("data.json".to_owned(), br#"{"aegis":{}}"#.to_vec()),
            ("policy.rego".to_owned(), rego.as_bytes().to_vec()),
        ]);
        let spec = BundleSpec {
            tenant: tenant.clone(),
            version,
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: Some("2099-01-01T00:00:00Z".into()),
            author: "test".into(),
            source_change: None,
        };
        let built = build(&spec, &files, &key).unwrap();
        let mut trust = TrustStore::new();
        trust.trust(key.public_key().clone());
        let now = time::OffsetDateTime::now_utc();
        prepare(
            &tenant,
            &built.bytes,
            &built.digest,
            &trust,
            None,
            now,
            &BundleLimits::default(),
        )
        .unwrap()
    }

    fn input() -> DecideInput {
        DecideInput {
            tenant: TenantId::new("acme").unwrap(),
            agent_id: AgentId::new("finance-agent").unwrap(),
            call_chain: vec![],
            tool_id: ToolId::new("payments").unwrap(),
            action: "get_balance".into(),
            params: Map::new(),
            context: Map::new(),
        }
    }

    #[test]
    fn the_other_versions_failure_is_an_evaluation_error_naming_that_version() {
        let deny = "package aegis\n\ndecide := {\"decision\": \"deny\", \"reasons\": [{\"code\": \"nope\", \"message\": \"no\"}]}\n";
        let ok = bundle(4, deny);
        let answer = evaluate_other(&ok, &input(), unix_now());
        assert_eq!(answer.policy_version, Some(4));
        assert_eq!(answer.bundle_digest.as_deref(), Some(ok.digest.as_str()));

        let mut expired = bundle(5, deny);
        expired.expires_unix = Some(0);
        let answer = evaluate_other(&expired, &input(), unix_now());
        assert_eq!(answer.decision, DecisionKind::Deny);
        assert_eq!(
            answer.reasons[0].code,
            aegis_core::decision::EVALUATION_ERROR
        );
        assert_eq!(
            answer.policy_version,
            Some(5),
            "it names the version that failed"
        );

        // A result the gateway cannot read is an evaluation error too, still naming it.
        let broken = bundle(6, "package aegis\n\ndecide := 7\n");
        let answer = evaluate_other(&broken, &input(), unix_now());
        assert_eq!(
            answer.reasons[0].code,
            aegis_core::decision::EVALUATION_ERROR
        );
        assert_eq!(answer.policy_version, Some(6));
    }
}

/// Runtime approvals on the decision path (see [`crate::approvals`]): publishing a request
/// when a call needs approval, and checking a retry that carries an approval id.
impl Decider {
    /// A new approval for an `approval_needed` answer: pending until the configured TTL.
    fn new_approval(&self) -> ApprovalRef {
        ApprovalRef {
            id: new_id("apr"),
            status: "pending".to_owned(),
            expires_at: time::OffsetDateTime::now_utc()
                .checked_add(
                    time::Duration::try_from(self.approval_ttl).unwrap_or(time::Duration::ZERO),
                )
                .and_then(|t| aegis_core::events::envelope::format_time(t).ok()),
        }
    }

    /// Hands the approval request of a fresh `approval_needed` answer to the publisher (and
    /// webhook). When it cannot be queued the call is denied `approval_unavailable`: nobody
    /// would ever see the request, so it could never be granted.
    fn request_approval(
        &self,
        decision_id: &str,
        decision: &mut Decision,
        approval: &mut Option<ApprovalRef>,
        facts: &Facts,
    ) {
        let Some(approvals) = &self.approvals else {
            return;
        };
        let (Some(a), Some(identity), Some(request)) = (
            approval.as_ref(),
            facts.identity.as_ref(),
            facts.request.as_ref(),
        ) else {
            return;
        };
        let (params, masked_params) = mask_params(&request.params, &decision.obligations.log_mask);
        let requested = aegis_core::approvals::ApprovalRequested {
            kind: aegis_core::approvals::REQUESTED.to_owned(),
            approval_id: a.id.clone(),
            tenant: identity.tenant.clone(),
            gateway: self.gateway_id.clone(),
            decision_id: decision_id.to_owned(),
            agent_id: identity.agent.clone(),
            call_chain: identity.call_chain.clone(),
            tool_id: request.tool_id.clone(),
            action: request.action.clone(),
            params,
            masked_params,
            call_digest: request_digest(identity, request),
            reasons: decision.reasons.clone(),
            policy: decision.policy.clone(),
            rule: decision.rule.clone(),
            policy_version: decision.policy_version,
            requested_at:
                aegis_core::events::envelope::format_time(time::OffsetDateTime::now_utc())
                    .unwrap_or_default(),
            expires_at: a.expires_at.clone().unwrap_or_default(),
        };
        if approvals.submit(requested).is_err() {
            *decision = approval_answer(
                decision,
                DecisionKind::Deny,
                aegis_core::approvals::reason::APPROVAL_UNAVAILABLE,
                "the call needs approval, but the gateway cannot file the approval request right now (its queue is full); denied — try again later".to_owned(),
            );
            *approval = None;
        }
    }

    /// A retry seen by the synchronous path, which cannot reach NATS: fail closed.
    fn approval_unchecked(&self, decision: Decision, facts: &mut Facts) -> Decision {
        let id = facts
            .request
            .as_ref()
            .and_then(|r| r.approval_id.clone())
            .unwrap_or_default();
        let refused = crate::approvals::Checked::Refused {
            code: aegis_core::approvals::reason::APPROVAL_UNAVAILABLE,
            status: "unavailable",
            message: format!("approval {id} cannot be checked on this path; denied"),
            expires_at: None,
        };
        refuse_approval(decision, facts, id, refused)
    }

    /// Checks the approval a retry names and, for a valid grant, consumes it (once, across
    /// all gateways). Never fails: every error is a deny.
    async fn approval_retry(&self, decision: Decision, facts: &mut Facts) -> Decision {
        use crate::approvals::Checked;
        use aegis_core::approvals::reason;
        let (Some(identity), Some(request)) = (facts.identity.clone(), facts.request.clone())
        else {
            return decision;
        };
        let Some(id) = request.approval_id.clone() else {
            return decision;
        };
        let Some(approvals) = self.approvals.clone() else {
            return self.approval_unchecked(decision, facts);
        };
        let digest = request_digest(&identity, &request);
        let grant = match approvals.check(&identity.tenant, &id, &digest).await {
            Checked::Grant(grant) => grant,
            Checked::Pending { expires_at } => {
                facts.approval = Some(ApprovalRef {
                    id: id.clone(),
                    status: "pending".to_owned(),
                    expires_at: Some(expires_at.clone()),
                });
                let mut reasons = vec![Reason {
                    code: reason::APPROVAL_PENDING.to_owned(),
                    message: format!(
                        "approval {id} has not been decided yet (it lapses at {expires_at}); retry once it is granted"
                    ),
                    policy: decision.policy.clone(),
                    rule: decision.rule.clone(),
                }];
                reasons.extend(decision.reasons.iter().cloned());
                return Decision {
                    reasons,
                    ..decision
                };
            }
            refused => return refuse_approval(decision, facts, id, refused),
        };
        let note = grant
            .note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let allowed = approval_answer(
            &decision,
            DecisionKind::Allow,
            reason::APPROVAL_GRANTED,
            format!(
                "approved by {}{note}: approval {id}, used by this call",
                grant.by
            ),
        );
        // The approved call counts against the rule's rate limits and budgets like any allowed
        // call; over a limit it is denied and the grant stays unused.
        let input = DecideInput {
            tenant: identity.tenant.clone(),
            agent_id: identity.agent.clone(),
            call_chain: identity.call_chain.clone(),
            tool_id: request.tool_id.clone(),
            action: request.action.clone(),
            params: request.params.clone(),
            context: request.context.clone(),
        };
        let limited = self.enforce_limits(allowed, &input).await;
        let granted = ApprovalRef {
            id: id.clone(),
            status: "granted".to_owned(),
            expires_at: Some(grant.expires_at.clone()),
        };
        if !limited.decision.permits() {
            facts.approval = Some(granted);
            return limited;
        }
        let decision_id = new_id("dec");
        facts.decision_id = Some(decision_id.clone());
        match approvals
            .consume(&identity.tenant, &id, &digest, &grant, &decision_id)
            .await
        {
            Ok(()) => {
                facts.approval = Some(ApprovalRef {
                    status: "consumed".to_owned(),
                    ..granted
                });
                limited
            }
            Err(refused) => refuse_approval(decision, facts, id, refused),
        }
    }
}

/// Whether the call is a retry the approval check applies to: it carries an approval id and
/// the policy's answer is `approval_needed` (an allow, sanitize or deny ignores the id).
fn is_approval_retry(decision: &Decision, facts: &Facts) -> bool {
    decision.decision == DecisionKind::ApprovalNeeded
        && facts
            .request
            .as_ref()
            .is_some_and(|r| r.approval_id.is_some())
}

/// [`aegis_core::approvals::call_digest`] of the verified identity and the requested call.
fn request_digest(identity: &Identity, request: &DecideRequest) -> String {
    aegis_core::approvals::call_digest(&aegis_core::approvals::CallIdentity {
        tenant: &identity.tenant,
        agent_id: &identity.agent,
        call_chain: &identity.call_chain,
        tool_id: &request.tool_id,
        action: &request.action,
        params: &request.params,
    })
}

/// The policy's `approval_needed` decision turned into `kind` with one approval reason first
/// (the policy's reasons follow, except on an allow).
fn approval_answer(
    decision: &Decision,
    kind: DecisionKind,
    code: &str,
    message: String,
) -> Decision {
    let mut reasons = vec![Reason {
        code: code.to_owned(),
        message,
        policy: decision.policy.clone(),
        rule: decision.rule.clone(),
    }];
    if kind != DecisionKind::Allow {
        reasons.extend(decision.reasons.iter().cloned());
    }
    Decision {
        decision: kind,
        reasons,
        params: None,
        ..decision.clone()
    }
}

/// A retry refused: a deny with the approval's reason code, recording which approval it named.
fn refuse_approval(
    decision: Decision,
    facts: &mut Facts,
    id: String,
    refused: crate::approvals::Checked,
) -> Decision {
    let (code, status, message, expires_at) = match refused {
        crate::approvals::Checked::Refused {
            code,
            status,
            message,
            expires_at,
        } => (code, status, message, expires_at),
        other => (
            aegis_core::approvals::reason::APPROVAL_UNAVAILABLE,
            "unavailable",
            format!("unexpected approval state {other:?}; denied"),
            None,
        ),
    };
    facts.approval = Some(ApprovalRef {
        id,
        status: status.to_owned(),
        expires_at,
    });
    approval_answer(&decision, DecisionKind::Deny, code, message)
}

/// `apr-` and 32 lowercase hex digits.
pub fn is_approval_id(id: &str) -> bool {
    id.strip_prefix("apr-").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// What serde's types do not check: the `action` id pattern and the `request_id` length
/// (`schemas/decide-request.schema.json`).
fn check_request(request: &DecideRequest) -> Result<(), Refusal> {
    if let Err(e) = ToolId::new(request.action.clone()) {
        return Err(Refusal::new(
            400,
            codes::BAD_REQUEST,
            format!("request body: action: {}", e.why),
        ));
    }
    if let Some(id) = &request.request_id
        && (id.is_empty() || id.chars().count() > 256)
    {
        return Err(Refusal::new(
            400,
            codes::BAD_REQUEST,
            "request body: request_id must be 1 to 256 characters",
        ));
    }
    if let Some(id) = &request.approval_id
        && !is_approval_id(id)
    {
        return Err(Refusal::new(
            400,
            codes::BAD_REQUEST,
            "request body: approval_id must be `apr-` and 32 lowercase hex digits",
        ));
    }
    Ok(())
}

/// Whatever the body says about identity must be what the token proved.
fn check_claims(request: &DecideRequest, identity: &Identity) -> Result<(), Refusal> {
    let mismatch = |field: &'static str, claimed: String, token: String| {
        let e = TokenError::BodyMismatch {
            field,
            claimed,
            token,
        };
        Refusal::new(401, e.code(), e.to_string())
    };
    if let Some(t) = &request.tenant
        && t != identity.tenant.as_str()
    {
        return Err(mismatch("tenant", t.clone(), identity.tenant.to_string()));
    }
    if let Some(a) = &request.agent_id
        && a != identity.agent.as_str()
    {
        return Err(mismatch("agent_id", a.clone(), identity.agent.to_string()));
    }
    if let Some(chain) = &request.call_chain {
        let token_chain: Vec<&str> = identity.call_chain.iter().map(AgentId::as_str).collect();
        if chain
            .iter()
            .map(String::as_str)
            .ne(token_chain.iter().copied())
        {
            return Err(mismatch(
                "call_chain",
                chain.join(","),
                token_chain.join(","),
            ));
        }
    }
    Ok(())
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(header: Option<&str>) -> Option<&str> {
    let header = header?.trim();
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `<prefix>-<32 hex>` from the OS RNG; falls back to time and a counter if the RNG fails
/// (ids must be unique, not secret).
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = (t ^ u128::from(n)).to_le_bytes();
    }
    format!("{prefix}-{}", hex::encode(bytes))
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
    use crate::metrics::SinkStats;
    use aegis_core::eval::{EvalLimits, Evaluator, Provenance};
    use aegis_core::keys::Keypair;
    use aegis_core::policy::PolicySet;
    use aegis_core::token::{TokenRequest, TrustedIssuer};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Memory {
        events: Mutex<Vec<(String, String, Bytes)>>,
        full: AtomicBool,
    }

    impl EventSink for Memory {
        fn accepting(&self) -> bool {
            true
        }
        fn submit(&self, subject: String, id: String, payload: Bytes) -> bool {
            if self.full.load(Ordering::Relaxed) {
                return false;
            }
            self.events.lock().unwrap().push((subject, id, payload));
            true
        }
        fn count_unrecorded(&self) {}
        fn stats(&self) -> SinkStats {
            SinkStats::default()
        }
    }

    fn finance_bundle(issuer: &Keypair) -> ActiveBundle {
        // The template's budget is global; these tests have no NATS, so it is counted here.
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../policies/templates/finance/policy.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("scope: global", "scope: gateway");
        let doc = aegis_core::policy::set::parse_document(&path, text).unwrap();
        let set = PolicySet::from_documents(vec![(path, doc)]).unwrap();
        let digest = format!("sha256:{}", "c".repeat(64));
        let evaluator = Evaluator::new(
            &set.compile(),
            Provenance {
                policy_version: Some(7),
                bundle_digest: Some(digest.clone()),
            },
            EvalLimits::default(),
        )
        .unwrap();
        let mut issuers = aegis_core::token::IssuerKeys::new();
        issuers.insert(TrustedIssuer {
            tenant: TenantId::new("acme").unwrap(),
            issuer: "acme-idp".into(),
            key: issuer.public_key().clone(),
        });
        let manifest: aegis_core::bundle::Manifest = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "tenant": "acme", "version": 7,
            "created_at": "2026-11-26T00:00:00Z", "author": "pat",
            "files": {}, "key_id": issuer.key_id().to_string(),
        }))
        .unwrap();
        ActiveBundle {
            tenant: TenantId::new("acme").unwrap(),
            version: 7,
            digest,
            manifest,
            evaluator,
            issuers,
            stage: aegis_core::events::RolloutStage::Global,
            applied_at: "2026-11-26T00:00:00Z".into(),
            source: "nats",
            expires_unix: None,
            tokens: crate::tenants::TokenCache::default(),
        }
    }

    struct Fixture {
        decider: Decider,
        sink: Arc<Memory>,
        issuer: Keypair,
    }

    fn fixture(with_bundle: bool) -> Fixture {
        let issuer = Keypair::from_seed(&[5; 32]);
        let registry = Arc::new(Registry::new([
            TenantId::new("acme").unwrap(),
            TenantId::new("globex").unwrap(),
        ]));
        if with_bundle {
            registry
                .slot(&TenantId::new("acme").unwrap())
                .unwrap()
                .install(finance_bundle(&issuer));
        }
        let sink = Arc::new(Memory::default());
        let decider = Decider {
            gateway_id: "gw1".into(),
            site: Some("edge-1".into()),
            audience: aegis_core::token::DEFAULT_AUDIENCE.into(),
            token_leeway_seconds: 0,
            approval_ttl: Duration::from_secs(60),
            on_spool_full: OnSpoolFull::Deny,
            registry,
            metrics: Arc::new(Metrics::new()),
            sink: sink.clone(),
            limits: crate::limits::Limiter::new(),
            approvals: None,
        };
        Fixture {
            decider,
            sink,
            issuer,
        }
    }

    fn token(f: &Fixture, tenant: &str, agent: &str, chain: &[&str], ttl: i64) -> String {
        aegis_core::token::issue(
            &TokenRequest {
                issuer: "acme-idp".into(),
                tenant: TenantId::new(tenant).unwrap(),
                agent: AgentId::new(agent).unwrap(),
                audience: aegis_core::token::DEFAULT_AUDIENCE.into(),
                call_chain: chain.iter().map(|c| AgentId::new(*c).unwrap()).collect(),
                issued_at: unix_now(),
                ttl_seconds: ttl,
                token_id: None,
            },
            &f.issuer,
        )
        .unwrap()
    }

    fn call(f: &Fixture, auth: Option<&str>, body: &str) -> Outcome {
        let trace = TraceIds::from_traceparent(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        let header = auth.map(|t| format!("Bearer {t}"));
        // What the gateway accepts is what the request schema describes.
        if let Ok(value) = serde_json::from_str::<Value>(body) {
            let schema_ok = aegis_core::schemas::decide_request_validator()
                .unwrap()
                .is_valid(&value);
            let parses = serde_json::from_value::<DecideRequest>(value)
                .is_ok_and(|r| check_request(&r).is_ok());
            assert_eq!(schema_ok, parses, "schema and parser disagree on {body}");
        }
        let out = futures::executor::block_on(f.decider.decide(
            CallMeta {
                authorization: header.as_deref(),
                trace: &trace,
                received: Instant::now(),
                received_at: SystemTime::now(),
            },
            Ok(body.as_bytes()),
        ));
        let answer = serde_json::to_value(&out.response).unwrap();
        let v = aegis_core::schemas::decide_response_validator().unwrap();
        let errors: Vec<String> = v.iter_errors(&answer).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{answer}: {errors:?}");
        out
    }

    fn pay(amount: u64) -> String {
        format!(
            r#"{{"tool_id":"payments","action":"create_payment","params":{{"amount":{amount},"currency":"USD","account_number":"DE89370400440532013000"}},"request_id":"r1"}}"#
        )
    }

    fn last_event(f: &Fixture) -> DecisionEvent {
        let events = f.sink.events.lock().unwrap();
        let (subject, id, payload) = events.last().unwrap();
        let event: DecisionEvent = serde_json::from_slice(payload).unwrap();
        assert_eq!(&event.id, id);
        assert_eq!(subject, &format!("aegis.decisions.{}.gw1", event.tenant));
        let value = serde_json::to_value(&event).unwrap();
        assert!(
            aegis_core::schemas::decision_event_validator()
                .unwrap()
                .is_valid(&value)
        );
        event
    }

    #[test]
    fn the_finance_story_and_its_events() {
        let f = fixture(true);
        let t = token(&f, "acme", "finance-agent", &["planner"], 300);
        let cases = [
            (50_000, DecisionKind::Deny),
            (3_000, DecisionKind::Allow),
            (6_000, DecisionKind::ApprovalNeeded),
        ];
        for (amount, expected) in cases {
            let out = call(&f, Some(&t), &pay(amount));
            assert_eq!(out.status, 200);
            assert_eq!(
                out.response.decision, expected,
                "{amount}: {:?}",
                out.response
            );
            assert_eq!(out.response.policy_version, Some(7));
            assert_eq!(
                out.response.approval.is_some(),
                expected == DecisionKind::ApprovalNeeded
            );
            let event = last_event(&f);
            assert_eq!(event.id, out.response.decision_id);
            assert_eq!(event.decision, expected);
            assert!(event.identity_verified);
            assert_eq!(event.call_chain, [AgentId::new("planner").unwrap()]);
            assert_eq!(event.params["account_number"], "[MASKED]");
            assert_eq!(event.params["amount"], amount);
            assert_eq!(event.request_id.as_deref(), Some("r1"));
            assert_eq!(event.approval_id, out.response.approval.map(|a| a.id));
        }
    }

    #[test]
    fn an_approval_id_is_checked_only_when_the_call_needs_approval() {
        let f = fixture(true);
        let t = token(&f, "acme", "finance-agent", &["planner"], 300);
        let id = format!("apr-{}", "0a".repeat(16));
        let retry = |amount: u64| {
            pay(amount).replace(
                r#""request_id":"r1""#,
                &format!(r#""request_id":"r1","approval_id":"{id}""#),
            )
        };
        // Allowed and denied calls ignore the id (a deny is never overridden).
        let out = call(&f, Some(&t), &retry(3000));
        assert_eq!(out.response.decision, DecisionKind::Allow);
        assert!(out.response.approval.is_none());
        let out = call(&f, Some(&t), &retry(50_000));
        assert_eq!(out.response.decision, DecisionKind::Deny);
        assert_ne!(out.response.reasons[0].code, "approval_unavailable");
        // A call that needs approval, with nothing to check grants against: denied.
        let out = call(&f, Some(&t), &retry(6000));
        assert_eq!(
            (out.status, out.response.decision),
            (200, DecisionKind::Deny)
        );
        assert_eq!(out.response.reasons[0].code, "approval_unavailable");
        assert_eq!(
            out.response.reasons.len(),
            2,
            "the policy's reason follows: {:?}",
            out.response.reasons
        );
        let approval = out.response.approval.clone().unwrap();
        assert_eq!(
            (approval.id.as_str(), approval.status.as_str()),
            (id.as_str(), "unavailable")
        );
        let event = last_event(&f);
        assert_eq!(event.approval_id.as_deref(), Some(id.as_str()));
        assert_eq!(event.reasons[0].code, "approval_unavailable");
        // Malformed ids are bad requests.
        for bad in [
            "apr-123",
            "APR-0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
            "apr-0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A",
        ] {
            let body = pay(6000).replace(
                r#""request_id":"r1""#,
                &format!(r#""request_id":"r1","approval_id":"{bad}""#),
            );
            let out = call(&f, Some(&t), &body);
            assert_eq!(
                (out.status, out.response.reasons[0].code.as_str()),
                (400, "bad_request"),
                "{bad}"
            );
        }
    }

    #[test]
    fn approval_ids_are_apr_and_32_lowercase_hex() {
        assert!(is_approval_id(&new_id("apr")));
        assert!(!is_approval_id(&new_id("dec")));
        assert!(!is_approval_id("apr-"));
        assert!(!is_approval_id(&format!("apr-{}g", "0".repeat(31))));
    }

    #[test]
    fn token_failures_are_401_denies_and_recorded() {
        let f = fixture(true);
        let out = call(&f, None, &pay(1));
        assert_eq!(
            (out.status, out.response.reasons[0].code.as_str()),
            (401, "token_missing")
        );
        let e = last_event(&f);
        assert!(!e.identity_verified);
        assert_eq!(e.tenant.as_str(), UNAUTHENTICATED_TENANT);

        let expired = token(&f, "acme", "finance-agent", &["planner"], -120);
        let out = call(&f, Some(&expired), &pay(1));
        assert_eq!(
            (out.status, out.response.reasons[0].code.as_str()),
            (401, "token_expired")
        );
        let e = last_event(&f);
        assert_eq!(e.tenant.as_str(), "acme");
        assert_eq!(
            e.agent_id.as_ref().map(AgentId::as_str),
            Some("finance-agent")
        );

        // A key of acme's claiming globex: refused as another tenant's key.
        let cross = token(&f, "globex", "finance-agent", &[], 300);
        let out = call(&f, Some(&cross), &pay(1));
        assert_eq!(out.status, 401);
        assert_eq!(out.response.reasons[0].code, "token_wrong_tenant");

        let stranger = Keypair::from_seed(&[8; 32]);
        let bad = aegis_core::token::issue(
            &TokenRequest {
                issuer: "acme-idp".into(),
                tenant: TenantId::new("acme").unwrap(),
                agent: AgentId::new("finance-agent").unwrap(),
                audience: "aegis-gateway".into(),
                call_chain: vec![],
                issued_at: unix_now(),
                ttl_seconds: 60,
                token_id: None,
            },
            &stranger,
        )
        .unwrap();
        let out = call(&f, Some(&bad), &pay(1));
        assert_eq!(out.response.reasons[0].code, "token_unknown_key");
        assert_eq!(out.response.decision, DecisionKind::Deny);
    }

    #[test]
    fn the_body_cannot_claim_another_identity() {
        let f = fixture(true);
        let t = token(&f, "acme", "finance-agent", &["planner"], 300);
        for body in [
            r#"{"tool_id":"payments","action":"get_balance","tenant":"globex"}"#,
            r#"{"tool_id":"payments","action":"get_balance","agent_id":"treasury-agent"}"#,
            r#"{"tool_id":"payments","action":"get_balance","call_chain":["treasury-ui"]}"#,
        ] {
            let out = call(&f, Some(&t), body);
            assert_eq!(out.status, 401, "{body}");
            assert_eq!(out.response.reasons[0].code, "identity_mismatch");
        }
        let ok = call(
            &f,
            Some(&t),
            r#"{"tool_id":"payments","action":"get_balance","tenant":"acme","agent_id":"finance-agent","call_chain":["planner"]}"#,
        );
        assert_eq!(ok.response.decision, DecisionKind::Allow);
    }

    #[test]
    fn verified_tokens_are_cached_per_bundle_and_still_expire() {
        let f = fixture(true);
        let acme = TenantId::new("acme").unwrap();
        let t = token(&f, "acme", "finance-agent", &["planner"], 300);
        assert_eq!(
            call(&f, Some(&t), &pay(3000)).response.decision,
            DecisionKind::Allow
        );
        let slot = f.decider.registry.slot(&acme).unwrap();
        let bundle = slot.active().unwrap();
        let now = unix_now();
        assert!(
            bundle.tokens.get(&t, now, 0).is_some(),
            "cached after one verification"
        );
        assert!(
            bundle.tokens.get(&t, now + 301, 0).is_none(),
            "a cached token still expires"
        );
        assert_eq!(
            call(&f, Some(&t), &pay(3000)).response.decision,
            DecisionKind::Allow
        );

        // A new bundle without the issuer key (say, the key was revoked): the same token, cached
        // by the old bundle, is refused at once.
        let mut revoked = finance_bundle(&f.issuer);
        revoked.issuers = aegis_core::token::IssuerKeys::new();
        slot.install(revoked);
        let out = call(&f, Some(&t), &pay(3000));
        assert_eq!(
            (out.status, out.response.reasons[0].code.as_str()),
            (401, "token_unknown_key")
        );
    }

    #[test]
    fn the_rules_rate_limit_turns_an_allow_into_a_deny() {
        let f = fixture(true);
        let t = token(&f, "acme", "finance-agent", &["planner"], 300);
        // The finance template allows 120 balance look-ups a minute (a window can start
        // mid-test: then the first window's calls are simply fewer).
        let balance = r#"{"tool_id":"payments","action":"get_balance"}"#;
        let mut denied = None;
        for i in 0..242 {
            let out = call(&f, Some(&t), balance);
            if out.response.decision == DecisionKind::Deny {
                denied = Some((i, out));
                break;
            }
        }
        let (i, out) = denied.expect("the rate limit never refused a call");
        assert!(i >= 120, "refused after {i} calls");
        assert_eq!(out.status, 200);
        assert_eq!(out.response.reasons[0].code, "rate_limited");
        assert_eq!(out.response.reasons[0].rule.as_deref(), Some("balance"));
        assert_eq!(last_event(&f).reasons[0].code, "rate_limited");
    }

    #[test]
    fn an_expired_bundle_stops_deciding() {
        let f = fixture(true);
        let acme = TenantId::new("acme").unwrap();
        let slot = f.decider.registry.slot(&acme).unwrap();
        let mut expired = finance_bundle(&f.issuer);
        expired.expires_unix = Some(unix_now() - 1);
        slot.install(expired);
        let t = token(&f, "acme", "finance-agent", &["planner"], 300);
        let out = call(&f, Some(&t), &pay(3000));
        assert_eq!(
            (out.status, out.response.decision),
            (503, DecisionKind::Deny)
        );
        assert_eq!(out.response.reasons[0].code, "bundle_expired");
        assert!(!f.decider.registry.ready());
    }

    #[test]
    fn malformed_bodies_no_bundle_and_a_full_log_deny() {
        let f = fixture(true);
        let t = token(&f, "acme", "finance-agent", &["planner"], 300);
        for body in [
            "",
            "{",
            r#"{"tool_id":"payments","action":"create payment"}"#,
            r#"{"tool_id":"payments"}"#,
            r#"{"tool_id":"payments","action":"x","extra":1}"#,
        ] {
            let out = call(&f, Some(&t), body);
            assert_eq!(
                (out.status, out.response.decision),
                (400, DecisionKind::Deny),
                "{body}"
            );
            assert_eq!(out.response.reasons[0].code, "bad_request");
        }

        let empty = fixture(false);
        let t = token(&empty, "acme", "finance-agent", &["planner"], 300);
        let out = call(&empty, Some(&t), &pay(1));
        assert_eq!(
            (out.status, out.response.reasons[0].code.as_str()),
            (503, "no_bundle")
        );
        assert_eq!(last_event(&empty).tenant.as_str(), "acme");

        f.sink.full.store(true, Ordering::Relaxed);
        let out = call(&f, Some(&t), &pay(3000));
        assert_eq!(
            (out.status, out.response.decision),
            (503, DecisionKind::Deny)
        );
        assert_eq!(out.response.reasons[0].code, "decision_log_full");
        assert!(out.event.is_none());
    }
}
