//! The one fold of an approval subject's messages: request, the control plane's decision, the
//! gateway's use — in stream order — into one [`Approval`] and its [`ApprovalState`] at a given
//! instant. `aegisctl approvals` and the decision report (`aegisctl audit export --decisions`)
//! both read approvals through it.
//!
//! Per subject the first request, the first decision for the same call and the first use after
//! a grant count; anything else (unreadable, another tenant's or approval's, a second one, a
//! decision for another call, a use without a grant) is noted in [`Approval::problems`] and
//! otherwise ignored. Decisions are taken as stored: their control-plane signature is not
//! checked here ([`Decision::envelope`] keeps what a reader needs to check it).

use super::{ApprovalConsumed, ApprovalMessage, ApprovalRequested};
use crate::events::envelope::parse_time;
use crate::events::{ReceivedEnvelope, RuntimeApprovalDecided};
use crate::ids::TenantId;
use crate::keys::KeyId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Where one approval stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Requested, undecided, not expired.
    Pending,
    /// Granted, not used yet, the grant not expired.
    Granted,
    /// An approver turned it down.
    Denied,
    /// A gateway let the granted call through (a grant is good for one call).
    Used,
    /// Undecided past the request's `expires_at`, or granted and unused past the grant's.
    /// An expiry that cannot be read counts as passed.
    Expired,
    /// Nothing readable on the subject says what it is.
    Unreadable,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Granted => "granted",
            ApprovalState::Denied => "denied",
            ApprovalState::Used => "used",
            ApprovalState::Expired => "expired",
            ApprovalState::Unreadable => "unreadable",
        }
    }
}

/// The control plane's relay of a decision, with who signed the envelope.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    #[serde(flatten)]
    pub decided: RuntimeApprovalDecided,
    /// The envelope's id and signing key (the control plane's; not verified by the fold).
    pub envelope_id: String,
    pub signed_by: KeyId,
    /// Stream sequence in `AEGIS_APPROVALS`.
    pub seq: u64,
    /// The envelope as received, for a reader that checks the signature against its trust
    /// store ([`ReceivedEnvelope::verify`]). Not serialized.
    #[serde(skip)]
    pub envelope: Box<ReceivedEnvelope>,
}

/// Everything on one approval subject, folded.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub approval_id: String,
    /// [`Approval::state_at`] the instant [`fold`] was given.
    pub state: ApprovalState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<ApprovalRequested>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumed: Option<ApprovalConsumed>,
    /// Messages on the subject that were unreadable or did not fit (ignored for the state).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Approval {
    /// Nothing read yet: [`ApprovalState::Unreadable`].
    pub fn new(approval_id: &str) -> Approval {
        Approval {
            approval_id: approval_id.to_owned(),
            state: ApprovalState::Unreadable,
            request: None,
            decision: None,
            consumed: None,
            problems: Vec::new(),
        }
    }

    /// Takes one message of the subject, in stream order; what does not fit is noted in
    /// [`Approval::problems`] (as `seq <seq>: …`) and otherwise ignored. Does not update
    /// [`Approval::state`].
    pub fn apply(&mut self, tenant: &TenantId, seq: u64, payload: &[u8]) {
        if let Err(problem) = self.take(tenant, seq, payload) {
            self.problems.push(format!("seq {seq}: {problem}"));
        }
    }

    fn take(&mut self, tenant: &TenantId, seq: u64, payload: &[u8]) -> Result<(), String> {
        let id = self.approval_id.as_str();
        match ApprovalMessage::parse(payload).map_err(|e| format!("unreadable: {e}"))? {
            ApprovalMessage::Requested(r) => {
                if &r.tenant != tenant || r.approval_id != id {
                    return Err(format!(
                        "a request for {} in tenant {} on this subject; ignored",
                        r.approval_id, r.tenant
                    ));
                }
                if self.request.is_some() {
                    return Err("a second request; ignored".to_owned());
                }
                self.request = Some(*r);
            }
            ApprovalMessage::Decided(envelope, d) => {
                let env = &envelope.envelope;
                if &env.tenant != tenant || d.approval_id != id {
                    return Err(format!(
                        "a decision for {} in tenant {} on this subject; ignored",
                        d.approval_id, env.tenant
                    ));
                }
                if self
                    .request
                    .as_ref()
                    .is_some_and(|r| r.call_digest != d.call_digest)
                {
                    return Err(format!(
                        "a decision for another call ({}); ignored",
                        d.call_digest
                    ));
                }
                if self.decision.is_some() {
                    return Err("a second decision; ignored".to_owned());
                }
                self.decision = Some(Decision {
                    envelope_id: env.id.to_string(),
                    signed_by: env.key_id.clone(),
                    decided: d,
                    seq,
                    envelope,
                });
            }
            ApprovalMessage::Consumed(c) => {
                if &c.tenant != tenant || c.approval_id != id {
                    return Err(format!(
                        "a use of {} in tenant {} on this subject; ignored",
                        c.approval_id, c.tenant
                    ));
                }
                if !self.decision.as_ref().is_some_and(|d| d.decided.granted) {
                    return Err("a use without a grant before it; ignored".to_owned());
                }
                if self.consumed.is_some() {
                    return Err("a second use; ignored".to_owned());
                }
                self.consumed = Some(c);
            }
        }
        Ok(())
    }

    /// The state at `now` (see [`ApprovalState`]): a grant past its own expiry is
    /// [`ApprovalState::Expired`], like a request undecided past the request's.
    pub fn state_at(&self, now: OffsetDateTime) -> ApprovalState {
        if self.consumed.is_some() {
            return ApprovalState::Used;
        }
        match (&self.decision, &self.request) {
            (Some(d), _) if !d.decided.granted => ApprovalState::Denied,
            (Some(d), _) => {
                if passed(d.decided.expires_at.as_deref(), now) {
                    ApprovalState::Expired
                } else {
                    ApprovalState::Granted
                }
            }
            (None, Some(r)) => {
                if passed(Some(&r.expires_at), now) {
                    ApprovalState::Expired
                } else {
                    ApprovalState::Pending
                }
            }
            (None, None) => ApprovalState::Unreadable,
        }
    }

    /// The expiry that matters now: the grant's once granted, else the request's.
    pub fn expires_at(&self) -> Option<&str> {
        match &self.decision {
            Some(d) if d.decided.granted => d.decided.expires_at.as_deref(),
            _ => self.request.as_ref().map(|r| r.expires_at.as_str()),
        }
    }
}

/// Whether `expires_at` is at or before `now`; a missing or unreadable time counts as passed
/// (an approval is never shown as usable on a time nobody can read).
fn passed(expires_at: Option<&str>, now: OffsetDateTime) -> bool {
    match expires_at.map(parse_time) {
        Some(Ok(t)) => t <= now,
        _ => true,
    }
}

/// Folds a tenant's approval messages, `(approval id, stream sequence, payload)` in stream
/// order, into one [`Approval`] per approval id (sorted by request time, then id), with its
/// [`Approval::state`] at `now`. The approval id is the last token of the message's subject
/// `aegis.approvals.<tenant>.<approval_id>` (`aegis_nats::topology::approval_id_of` reads it).
pub fn fold<'a>(
    tenant: &TenantId,
    messages: impl IntoIterator<Item = (&'a str, u64, &'a [u8])>,
    now: OffsetDateTime,
) -> Vec<Approval> {
    let mut by_id: BTreeMap<&str, Approval> = BTreeMap::new();
    for (id, seq, payload) in messages {
        by_id
            .entry(id)
            .or_insert_with(|| Approval::new(id))
            .apply(tenant, seq, payload);
    }
    let mut all: Vec<Approval> = by_id
        .into_values()
        .map(|mut a| {
            a.state = a.state_at(now);
            a
        })
        .collect();
    fn requested_at(a: &Approval) -> Option<&str> {
        a.request.as_ref().map(|r| r.requested_at.as_str())
    }
    all.sort_by(|a, b| {
        requested_at(a)
            .cmp(&requested_at(b))
            .then_with(|| a.approval_id.cmp(&b.approval_id))
    });
    all
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::events::{Envelope, Event};
    use crate::ids::EventId;
    use crate::keys::Keypair;
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-26 10:00 UTC);
    const LATER: &str = "2026-11-26T10:30:00.000Z";
    const EARLIER: &str = "2026-11-26T09:30:00.000Z";

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    fn digest() -> String {
        format!("sha256:{}", "d".repeat(64))
    }

    /// A gateway's request for `id` in `tenant`, as published.
    fn asked(tenant: &str, id: &str, requested_at: &str, expires_at: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": super::super::REQUESTED, "approval_id": id, "tenant": tenant,
            "gateway": "gw1", "decision_id": format!("dec-{id}"), "agent_id": "finance-agent",
            "call_chain": ["planner"], "tool_id": "payments", "action": "create_payment",
            "params": {"amount": 6000}, "call_digest": digest(),
            "reasons": [{"code": "approval_threshold", "message": "over 5000",
                         "policy": null, "rule": null}],
            "policy": null, "rule": null, "policy_version": 3,
            "requested_at": requested_at, "expires_at": expires_at,
        }))
        .unwrap()
    }

    /// The control plane's signed relay of bob's decision.
    fn relayed(id: &str, granted: bool, expires_at: Option<&str>, call: &str) -> Vec<u8> {
        let decided = RuntimeApprovalDecided {
            approval_id: id.into(),
            call_digest: call.into(),
            granted,
            expires_at: expires_at.map(str::to_owned),
            by: "bob".parse().unwrap(),
            at: "2026-11-26T09:58:00.000Z".into(),
            note: Some("ok".into()),
            source_event: EventId::random().unwrap(),
        };
        let key = Keypair::from_seed(&[9; 32]);
        let id = EventId::random().unwrap();
        let cp = "control-plane".parse().unwrap();
        let event = Event::RuntimeApprovalDecided(decided);
        let envelope = Envelope::sign(id, acme(), cp, &key, NOW, event).unwrap();
        envelope.to_bytes().unwrap()
    }

    /// A gateway's use of the grant.
    fn used(id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": super::super::CONSUMED, "approval_id": id, "tenant": "acme",
            "gateway": "gw2", "decision_id": "dec-2", "call_digest": digest(),
            "at": "2026-11-26T09:59:00.000Z",
        }))
        .unwrap()
    }

    fn fold_all(messages: &[(&'static str, Vec<u8>)], now: OffsetDateTime) -> Vec<Approval> {
        fold(
            &acme(),
            messages
                .iter()
                .zip(1u64..)
                .map(|((id, p), seq)| (*id, seq, p.as_slice())),
            now,
        )
    }

    #[test]
    fn each_subject_folds_into_one_state() {
        let d = digest();
        let messages = vec![
            (
                "apr-pending",
                asked("acme", "apr-pending", "2026-11-26T09:50:00.000Z", LATER),
            ),
            (
                "apr-old",
                asked("acme", "apr-old", "2026-11-26T09:00:00.000Z", EARLIER),
            ),
            (
                "apr-granted",
                asked("acme", "apr-granted", "2026-11-26T09:51:00.000Z", LATER),
            ),
            ("apr-granted", relayed("apr-granted", true, Some(LATER), &d)),
            (
                "apr-lapsed",
                asked("acme", "apr-lapsed", "2026-11-26T09:52:00.000Z", LATER),
            ),
            ("apr-lapsed", relayed("apr-lapsed", true, Some(EARLIER), &d)),
            (
                "apr-denied",
                asked("acme", "apr-denied", "2026-11-26T09:53:00.000Z", LATER),
            ),
            ("apr-denied", relayed("apr-denied", false, None, &d)),
            (
                "apr-used",
                asked("acme", "apr-used", "2026-11-26T09:54:00.000Z", LATER),
            ),
            ("apr-used", relayed("apr-used", true, Some(LATER), &d)),
            ("apr-used", used("apr-used")),
            // A second use, a decision for another call, garbage, another tenant's request:
            // noted, not counted.
            ("apr-used", used("apr-used")),
            (
                "apr-pending",
                relayed("apr-pending", true, Some(LATER), "sha256:00"),
            ),
            ("apr-pending", b"not json".to_vec()),
            (
                "apr-pending",
                asked("globex", "apr-pending", EARLIER, LATER),
            ),
            // A use with no grant before it; a subject with nothing readable.
            ("apr-old", used("apr-old")),
            ("apr-junk", b"{}".to_vec()),
        ];
        let all = fold_all(&messages, NOW);
        let states: Vec<(&str, ApprovalState)> = all
            .iter()
            .map(|a| (a.approval_id.as_str(), a.state))
            .collect();
        assert_eq!(
            states,
            [
                ("apr-junk", ApprovalState::Unreadable),
                ("apr-old", ApprovalState::Expired),
                ("apr-pending", ApprovalState::Pending),
                ("apr-granted", ApprovalState::Granted),
                ("apr-lapsed", ApprovalState::Expired),
                ("apr-denied", ApprovalState::Denied),
                ("apr-used", ApprovalState::Used),
            ]
        );
        let pending = &all[2];
        assert_eq!(pending.problems.len(), 3, "{:?}", pending.problems);
        assert!(pending.problems[0].starts_with("seq 13: a decision for another call"));
        assert!(pending.problems[1].contains("unreadable"));
        assert!(pending.problems[2].contains("in tenant globex"));
        assert!(
            all[1].problems[0].contains("without a grant"),
            "{:?}",
            all[1]
        );
        assert_eq!(all[6].problems.len(), 1);
        assert!(all[6].problems[0].contains("a second use"));
        // The expiry that matters: the grant's once granted, else the request's.
        assert_eq!(all[3].expires_at(), Some(LATER));
        assert_eq!(all[4].expires_at(), Some(EARLIER));
        assert_eq!(all[5].expires_at(), Some(LATER));
        assert_eq!(all[0].expires_at(), None);

        // The grant lapses with time; a use, a denial do not.
        let after = datetime!(2026-11-26 10:31 UTC);
        let granted = &all[3];
        assert_eq!(granted.state_at(after), ApprovalState::Expired);
        assert_eq!(all[5].state_at(after), ApprovalState::Denied);
        assert_eq!(all[6].state_at(after), ApprovalState::Used);
        assert_eq!(all[2].state_at(after), ApprovalState::Expired);

        // What `aegisctl approvals list --json` prints: everything read, no envelope bytes.
        let json = serde_json::to_value(&all[6]).unwrap();
        assert_eq!(json["state"], "used");
        assert_eq!(json["request"]["call_digest"], d.as_str());
        assert_eq!(json["decision"]["granted"], true);
        assert_eq!(json["decision"]["by"], "bob");
        assert_eq!(json["decision"]["seq"], 10);
        assert!(json["decision"]["signed_by"].is_string());
        assert!(json["decision"].get("envelope").is_none());
        assert_eq!(json["consumed"]["gateway"], "gw2");
        assert!(
            serde_json::to_value(granted)
                .unwrap()
                .get("problems")
                .is_none()
        );
        // The decision keeps its envelope for a reader with a trust store.
        let decision = granted.decision.as_ref().unwrap();
        let key = Keypair::from_seed(&[9; 32]);
        assert!(decision.envelope.verify(key.verifying_key()).is_ok());
    }

    #[test]
    fn an_unreadable_expiry_counts_as_passed() {
        assert!(passed(Some("soon"), NOW));
        assert!(passed(None, NOW));
        assert!(passed(Some("2026-11-26T10:00:00Z"), NOW));
        assert!(!passed(Some("2026-11-26T10:00:01Z"), NOW));
        let messages = vec![
            ("apr-1", asked("acme", "apr-1", EARLIER, LATER)),
            ("apr-1", relayed("apr-1", true, Some("whenever"), &digest())),
        ];
        assert_eq!(fold_all(&messages, NOW)[0].state, ApprovalState::Expired);
    }
}
