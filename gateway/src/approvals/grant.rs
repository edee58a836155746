//! Checking and consuming a grant when a call is retried with its approval id.

use super::{ApprovalStats, Approvals};
use aegis_core::approvals::{self, ApprovalConsumed, ApprovalMessage, reason};
use aegis_core::events::envelope::{format_time, parse_time};
use aegis_core::ids::{ActorId, TenantId};
use aegis_core::keys::TrustError;
use time::OffsetDateTime;

/// A verified, unexpired grant for exactly the call, not yet consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The grant's stream sequence: consuming expects it to still be the subject's last.
    pub sequence: u64,
    /// The approver.
    pub by: ActorId,
    pub note: Option<String>,
    pub expires_at: String,
}

/// What the approval subject says about a retried call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// A grant this call may use (consume it with [`Approvals::consume`]).
    Grant(Grant),
    /// Nobody has decided yet: the answer stays `approval_needed`.
    Pending { expires_at: String },
    /// The call is refused: `code` is one of [`reason`], `status` the approval's status for the
    /// answer (`schemas/decide-response.schema.json`).
    Refused {
        code: &'static str,
        status: &'static str,
        message: String,
        expires_at: Option<String>,
    },
}

impl Checked {
    fn refused(code: &'static str, status: &'static str, message: impl Into<String>) -> Checked {
        Checked::Refused {
            code,
            status,
            message: message.into(),
            expires_at: None,
        }
    }

    fn unavailable(message: impl Into<String>) -> Checked {
        Checked::refused(reason::APPROVAL_UNAVAILABLE, "unavailable", message)
    }

    fn with_expiry(self, at: Option<String>) -> Checked {
        match self {
            Checked::Refused {
                code,
                status,
                message,
                ..
            } => Checked::Refused {
                code,
                status,
                message,
                expires_at: at,
            },
            other => other,
        }
    }
}

/// Whether `at` (RFC 3339) lies before `now`; an unreadable time counts as past (fail closed).
fn lapsed(at: &str, now: OffsetDateTime) -> bool {
    parse_time(at).map_or(true, |t| t <= now)
}

impl Approvals {
    /// Reads the last message on the approval's subject and says what it means for a call of
    /// `tenant` whose [`approvals::call_digest`] is `digest`. Never fails: any error is a
    /// [`Checked::Refused`] (`approval_unavailable`).
    pub async fn check(&self, tenant: &TenantId, approval_id: &str, digest: &str) -> Checked {
        let checked = self.check_inner(tenant, approval_id, digest).await;
        match &checked {
            Checked::Refused {
                code: reason::APPROVAL_UNAVAILABLE,
                ..
            } => ApprovalStats::inc(&self.stats.checks_unavailable),
            Checked::Refused { .. } | Checked::Pending { .. } => {
                ApprovalStats::inc(&self.stats.retries_refused)
            }
            Checked::Grant(_) => {}
        }
        checked
    }

    async fn check_inner(&self, tenant: &TenantId, approval_id: &str, digest: &str) -> Checked {
        let subject = match aegis_nats::topology::approvals_subject(tenant, approval_id) {
            Ok(s) => s,
            Err(e) => {
                return Checked::refused(
                    reason::APPROVAL_UNKNOWN,
                    "unknown",
                    format!("{approval_id} is not an approval id: {e}"),
                );
            }
        };
        let read = tokio::time::timeout(
            self.check_timeout,
            aegis_nats::last_message(&self.js, aegis_nats::topology::APPROVALS_STREAM, &subject),
        )
        .await;
        let last = match read {
            Ok(Ok(Some(last))) => last,
            Ok(Ok(None)) => {
                return Checked::refused(
                    reason::APPROVAL_UNKNOWN,
                    "unknown",
                    format!(
                        "no approval {approval_id} of tenant {tenant} is known (never requested, or not yet recorded): call again without approval_id to request one"
                    ),
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(approval_id, error = %e, "cannot read the approval subject: denying");
                return Checked::unavailable(format!(
                    "approval {approval_id} cannot be checked right now ({e}); denied"
                ));
            }
            Err(_) => {
                tracing::warn!(
                    approval_id,
                    "reading the approval subject timed out: denying"
                );
                return Checked::unavailable(format!(
                    "approval {approval_id} cannot be checked right now (no answer from NATS within {} ms); denied",
                    self.check_timeout.as_millis()
                ));
            }
        };
        let message = match ApprovalMessage::parse(&last.payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(approval_id, seq = last.sequence, error = %e, "unreadable message on an approval subject: denying");
                return Checked::unavailable(format!(
                    "the last message on approval {approval_id} cannot be read ({e}); denied"
                ));
            }
        };
        let now = OffsetDateTime::now_utc();
        match message {
            ApprovalMessage::Requested(r) => {
                if &r.tenant != tenant || r.approval_id != approval_id {
                    return Checked::refused(
                        reason::APPROVAL_UNKNOWN,
                        "unknown",
                        format!("no approval {approval_id} of tenant {tenant} is known"),
                    );
                }
                if lapsed(&r.expires_at, now) {
                    return Checked::refused(
                        reason::APPROVAL_EXPIRED,
                        "expired",
                        format!(
                            "approval {approval_id} lapsed undecided at {}: call again without approval_id to request a new one",
                            r.expires_at
                        ),
                    )
                    .with_expiry(Some(r.expires_at));
                }
                if r.call_digest != digest {
                    return Checked::refused(
                        reason::APPROVAL_CALL_MISMATCH,
                        "pending",
                        format!(
                            "approval {approval_id} was requested for another call (other parameters, agent, chain, tool or action)"
                        ),
                    )
                    .with_expiry(Some(r.expires_at));
                }
                Checked::Pending {
                    expires_at: r.expires_at,
                }
            }
            ApprovalMessage::Consumed(c) => {
                if &c.tenant != tenant {
                    return Checked::refused(
                        reason::APPROVAL_UNKNOWN,
                        "unknown",
                        format!("no approval {approval_id} of tenant {tenant} is known"),
                    );
                }
                Checked::refused(
                    reason::APPROVAL_USED,
                    "consumed",
                    format!(
                        "approval {approval_id} was used already (by gateway {} at {}); a grant lets one call through",
                        c.gateway, c.at
                    ),
                )
            }
            ApprovalMessage::Decided(received, decided) => {
                let env = &received.envelope;
                let verified = match self.trust.lookup(&env.key_id) {
                    Ok(key) => received
                        .verify(key)
                        .map_err(|e| format!("its signature does not verify: {e}")),
                    Err(TrustError::RevokedKey { key_id }) => Err(format!(
                        "it is signed by key {key_id}, which has been revoked"
                    )),
                    Err(_) => Err(format!(
                        "it is signed by key {}, which this gateway does not trust",
                        env.key_id
                    )),
                };
                if let Err(why) = verified {
                    tracing::warn!(approval_id, key_id = %env.key_id, why, "unverifiable approval decision: denying");
                    return Checked::unavailable(format!(
                        "the decision on approval {approval_id} cannot be trusted: {why}; denied"
                    ));
                }
                if &env.tenant != tenant || decided.approval_id != approval_id {
                    return Checked::refused(
                        reason::APPROVAL_UNKNOWN,
                        "unknown",
                        format!(
                            "the decision on this subject is for another approval or tenant ({} of {})",
                            decided.approval_id, env.tenant
                        ),
                    );
                }
                if !decided.granted {
                    let why = decided
                        .note
                        .as_deref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default();
                    return Checked::refused(
                        reason::APPROVAL_DENIED,
                        "denied",
                        format!("approval {approval_id} was denied by {}{why}", decided.by),
                    );
                }
                let Some(expires_at) = decided.expires_at.clone() else {
                    return Checked::unavailable(format!(
                        "the grant of approval {approval_id} names no expiry; denied"
                    ));
                };
                if decided.call_digest != digest {
                    return Checked::refused(
                        reason::APPROVAL_CALL_MISMATCH,
                        "granted",
                        format!(
                            "approval {approval_id} was granted for another call (other parameters, agent, chain, tool or action): this call is not approved"
                        ),
                    )
                    .with_expiry(Some(expires_at));
                }
                if lapsed(&expires_at, now) {
                    return Checked::refused(
                        reason::APPROVAL_EXPIRED,
                        "expired",
                        format!(
                            "the grant of approval {approval_id} by {} lapsed unused at {expires_at}",
                            decided.by
                        ),
                    )
                    .with_expiry(Some(expires_at));
                }
                Checked::Grant(Grant {
                    sequence: last.sequence,
                    by: decided.by,
                    note: decided.note,
                    expires_at,
                })
            }
        }
    }

    /// Uses `grant` for the decision `decision_id`: publishes an [`ApprovalConsumed`] that only
    /// lands while the grant is still the subject's last message, and waits for the ack.
    /// `Ok` exactly when this gateway won the grant; otherwise the refusal to answer with
    /// (`approval_used` when another call got it first, `approval_unavailable` on any error).
    pub async fn consume(
        &self,
        tenant: &TenantId,
        approval_id: &str,
        digest: &str,
        grant: &Grant,
        decision_id: &str,
    ) -> Result<(), Checked> {
        let result = self
            .consume_inner(tenant, approval_id, digest, grant, decision_id)
            .await;
        match &result {
            Ok(()) => ApprovalStats::inc(&self.stats.grants_consumed),
            Err(Checked::Refused {
                code: reason::APPROVAL_UNAVAILABLE,
                ..
            }) => ApprovalStats::inc(&self.stats.checks_unavailable),
            Err(_) => ApprovalStats::inc(&self.stats.retries_refused),
        }
        result
    }

    async fn consume_inner(
        &self,
        tenant: &TenantId,
        approval_id: &str,
        digest: &str,
        grant: &Grant,
        decision_id: &str,
    ) -> Result<(), Checked> {
        let unavailable = |why: String| {
            Checked::unavailable(format!(
                "the grant of approval {approval_id} could not be used ({why}); denied"
            ))
            .with_expiry(Some(grant.expires_at.clone()))
        };
        let subject = aegis_nats::topology::approvals_subject(tenant, approval_id)
            .map_err(|e| unavailable(e.to_string()))?;
        let record = ApprovalConsumed {
            kind: approvals::CONSUMED.to_owned(),
            approval_id: approval_id.to_owned(),
            tenant: tenant.clone(),
            gateway: self.gateway_id.clone(),
            decision_id: decision_id.to_owned(),
            call_digest: digest.to_owned(),
            at: format_time(OffsetDateTime::now_utc()).map_err(|e| unavailable(e.to_string()))?,
        };
        let payload = aegis_core::canonical::to_canonical_vec_of(&record)
            .map_err(|e| unavailable(e.to_string()))?;
        // The decision id as message id: unique per attempt, so deduplication can never make a
        // second gateway's publish look like a success.
        let message = aegis_nats::Publish::new(subject, payload)
            .msg_id(decision_id.to_owned())
            .expect_last_subject_sequence(grant.sequence);
        match tokio::time::timeout(self.check_timeout, aegis_nats::publish(&self.js, message)).await
        {
            Ok(Ok(ack)) => {
                tracing::info!(approval_id, %tenant, decision_id, seq = ack.sequence, by = %grant.by, "approval grant consumed");
                Ok(())
            }
            Ok(Err(aegis_nats::PublishError::Conflict { .. })) => Err(Checked::refused(
                reason::APPROVAL_USED,
                "consumed",
                format!(
                    "approval {approval_id} was used already (another call got it first); a grant lets one call through"
                ),
            )
            .with_expiry(Some(grant.expires_at.clone()))),
            Ok(Err(e)) => {
                tracing::warn!(approval_id, error = %e, "consuming a grant failed: denying");
                Err(unavailable(e.to_string()))
            }
            Err(_) => {
                tracing::warn!(
                    approval_id,
                    "consuming a grant timed out: denying (the grant may be used up)"
                );
                Err(unavailable(format!(
                    "no ack within {} ms",
                    self.check_timeout.as_millis()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unreadable_or_past_times_have_lapsed() {
        let now = OffsetDateTime::now_utc();
        assert!(lapsed("garbage", now));
        assert!(lapsed("2020-01-01T00:00:00Z", now));
        assert!(!lapsed("2999-01-01T00:00:00Z", now));
    }
}
