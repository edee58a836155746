//! The signed envelope every event travels in.
//!
//! ```text
//! { "id": "evt-…", "type": "change_proposed", "schema_version": 1, "tenant": "acme",
//!   "actor": "alice", "key_id": "ed25519:…", "time": "2026-11-25T10:00:00Z",
//!   "payload": { … }, "signature": "<base64 ed25519>" }
//! ```
//!
//! The signature covers the canonical JSON (see [`crate::canonical`]) of the envelope without
//! its `signature` member. Receivers check it over the bytes they received, parsed as JSON and
//! canonicalised again, never over a re-serialisation of the typed struct, so a field the typed
//! model does not know can never slip past the signature.

use super::kinds::{Event, EventType};
use crate::canonical::to_canonical_vec;
use crate::ids::{ActorId, EventId, TenantId};
use crate::keys::{KeyId, Keypair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The envelope schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A signed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Also the message's `Nats-Msg-Id`.
    pub id: EventId,
    pub schema_version: u32,
    pub tenant: TenantId,
    pub actor: ActorId,
    pub key_id: KeyId,
    /// RFC 3339, UTC. Set by the signer; bundle versions take their `created_at` from it.
    pub time: String,
    #[serde(flatten)]
    pub event: Event,
    /// base64 ed25519 signature over the canonical envelope without this member.
    pub signature: String,
}

/// Why an envelope could not be made or was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("not an event envelope: {0}")]
    Shape(String),
    #[error("unsupported schema_version {found}; this build reads {SCHEMA_VERSION}")]
    SchemaVersion { found: u64 },
    #[error("time {value:?} is not RFC 3339: {reason}")]
    Time { value: String, reason: String },
    #[error("signature is not 64 bytes of base64")]
    SignatureEncoding,
    #[error(
        "bad signature: the envelope was not signed by key {key_id}, or was altered after signing"
    )]
    BadSignature { key_id: KeyId },
    #[error("cannot serialize the envelope: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("cannot format time: {0}")]
    FormatTime(String),
}

impl Envelope {
    /// Builds and signs an envelope. `time` is truncated to whole milliseconds and written in UTC.
    pub fn sign(
        id: EventId,
        tenant: TenantId,
        actor: ActorId,
        key: &Keypair,
        time: OffsetDateTime,
        event: Event,
    ) -> Result<Envelope, EnvelopeError> {
        let mut envelope = Envelope {
            id,
            schema_version: SCHEMA_VERSION,
            tenant,
            actor,
            key_id: key.key_id().clone(),
            time: format_time(time)?,
            event,
            signature: String::new(),
        };
        let bytes = envelope.signing_bytes()?;
        envelope.signature = BASE64.encode(key.sign(&bytes).to_bytes());
        Ok(envelope)
    }

    /// The bytes the signature covers.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut value = serde_json::to_value(self).map_err(EnvelopeError::Serialize)?;
        if let Value::Object(map) = &mut value {
            map.remove("signature");
        }
        Ok(to_canonical_vec(&value))
    }

    /// The canonical JSON of the whole envelope: what goes on the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        crate::canonical::to_canonical_vec_of(self).map_err(EnvelopeError::Serialize)
    }

    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    /// The envelope time as a timestamp.
    pub fn time(&self) -> Result<OffsetDateTime, EnvelopeError> {
        parse_time(&self.time)
    }
}

/// An envelope as received: parsed, with the exact bytes its signature must cover.
#[derive(Debug, Clone)]
pub struct ReceivedEnvelope {
    pub envelope: Envelope,
    signing_bytes: Vec<u8>,
    signature: Signature,
}

impl ReceivedEnvelope {
    /// Parses received bytes. Fails on anything that is not a well-formed envelope of a known
    /// type and schema version; does not check the signature (the key is looked up by the
    /// caller from `envelope.key_id`).
    pub fn parse(bytes: &[u8]) -> Result<ReceivedEnvelope, EnvelopeError> {
        let mut value: Value = serde_json::from_slice(bytes).map_err(EnvelopeError::NotJson)?;
        let Value::Object(map) = &mut value else {
            return Err(EnvelopeError::Shape(
                "an envelope is a JSON object".to_owned(),
            ));
        };
        match map.get("schema_version").and_then(Value::as_u64) {
            Some(v) if v == u64::from(SCHEMA_VERSION) => {}
            Some(found) => return Err(EnvelopeError::SchemaVersion { found }),
            None => {
                return Err(EnvelopeError::Shape(
                    "missing or non-integer schema_version".to_owned(),
                ));
            }
        }
        let Some(Value::String(sig_b64)) = map.remove("signature") else {
            return Err(EnvelopeError::Shape("missing signature".to_owned()));
        };
        let signing_bytes = to_canonical_vec(&value);
        let sig: [u8; 64] = BASE64
            .decode(sig_b64.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(EnvelopeError::SignatureEncoding)?;
        if let Value::Object(map) = &mut value {
            map.insert("signature".to_owned(), Value::String(sig_b64));
        }
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|e| EnvelopeError::Shape(e.to_string()))?;
        parse_time(&envelope.time)?;
        Ok(ReceivedEnvelope {
            envelope,
            signing_bytes,
            signature: Signature::from_bytes(&sig),
        })
    }

    /// Checks the signature against `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), EnvelopeError> {
        key.verify(&self.signing_bytes, &self.signature)
            .map_err(|_| EnvelopeError::BadSignature {
                key_id: self.envelope.key_id.clone(),
            })
    }
}

/// RFC 3339 in UTC with exactly three fraction digits, e.g. `2026-11-25T10:00:00.120Z`: fixed
/// width, so times sort as strings the way they sort as instants.
pub fn format_time(time: OffsetDateTime) -> Result<String, EnvelopeError> {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let utc = time.to_offset(time::UtcOffset::UTC);
    if !(0..=9999).contains(&utc.year()) {
        return Err(EnvelopeError::FormatTime(format!(
            "year {} is outside 0000..=9999",
            utc.year()
        )));
    }
    utc.format(FORMAT)
        .map_err(|e| EnvelopeError::FormatTime(e.to_string()))
}

/// Parses an RFC 3339 time.
pub fn parse_time(value: &str) -> Result<OffsetDateTime, EnvelopeError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|e| EnvelopeError::Time {
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::events::kinds::{ChangeApproved, Event};
    use crate::ids::ChangeId;

    fn signed() -> (Keypair, Envelope) {
        let key = Keypair::from_seed(&[7; 32]);
        let env = Envelope::sign(
            EventId::new("evt-1").unwrap(),
            TenantId::new("acme").unwrap(),
            ActorId::new("bob").unwrap(),
            &key,
            OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            Event::ChangeApproved(ChangeApproved {
                change_id: ChangeId::new("chg-1").unwrap(),
                comment: Some("lgtm".into()),
            }),
        )
        .unwrap();
        (key, env)
    }

    #[test]
    fn round_trips_and_verifies() {
        let (key, env) = signed();
        let bytes = env.to_bytes().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""type":"change_approved""#), "{text}");
        let got = ReceivedEnvelope::parse(&bytes).unwrap();
        assert_eq!(got.envelope, env);
        got.verify(key.verifying_key()).unwrap();
    }

    #[test]
    fn any_edit_breaks_the_signature() {
        let (key, env) = signed();
        let text = String::from_utf8(env.to_bytes().unwrap()).unwrap();
        for (from, to) in [
            ("lgtm", "LGTM"),
            ("\"bob\"", "\"eve\""),
            ("\"acme\"", "\"acmf\""),
            ("\"evt-1\"", "\"evt-2\""),
        ] {
            let edited = text.replace(from, to);
            let got = ReceivedEnvelope::parse(edited.as_bytes()).unwrap();
            assert!(got.verify(key.verifying_key()).is_err(), "{from} -> {to}");
        }
        // An extra member the typed model ignores is still covered by the signature.
        let extra = text.replacen('{', r#"{"zzz":1,"#, 1);
        if let Ok(got) = ReceivedEnvelope::parse(extra.as_bytes()) {
            assert!(got.verify(key.verifying_key()).is_err());
        }
        let other = Keypair::from_seed(&[8; 32]);
        let got = ReceivedEnvelope::parse(text.as_bytes()).unwrap();
        assert!(got.verify(other.verifying_key()).is_err());
    }

    #[test]
    fn refuses_unknown_types_and_versions() {
        let (_, env) = signed();
        let text = String::from_utf8(env.to_bytes().unwrap()).unwrap();
        let unknown = text.replace("change_approved", "change_teleported");
        assert!(matches!(
            ReceivedEnvelope::parse(unknown.as_bytes()),
            Err(EnvelopeError::Shape(_))
        ));
        let v2 = text.replace("\"schema_version\":1", "\"schema_version\":2");
        assert!(matches!(
            ReceivedEnvelope::parse(v2.as_bytes()),
            Err(EnvelopeError::SchemaVersion { found: 2 })
        ));
    }
}
