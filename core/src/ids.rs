//! Typed identifiers. Every id that crosses a crate boundary is one of these, never a bare string.
//!
//! Ids are validated on construction: 1..=128 characters from `[A-Za-z0-9._:@/-]`, not starting
//! with a separator. This keeps them safe as NATS subject tokens (after `subject_token`), file
//! names and map keys.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What is wrong with a would-be id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {why}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn check(kind: &'static str, value: &str) -> Result<(), IdError> {
    let err = |why| IdError {
        kind,
        value: value.to_owned(),
        why,
    };
    if value.is_empty() {
        return Err(err("must not be empty"));
    }
    if value.len() > 128 {
        return Err(err("must be at most 128 characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '/' | '-'))
    {
        return Err(err("may only contain letters, digits and . _ : @ / -"));
    }
    if value.starts_with(['.', '/', '-', ':']) {
        return Err(err("must start with a letter, digit, _ or @"));
    }
    Ok(())
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, &value)?;
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

typed_id!(
    /// A tenant: the unit of isolation. Every policy, bundle and decision belongs to one.
    TenantId,
    "tenant id"
);
typed_id!(
    /// An agent, as named in its token's `sub` and in `spec.agent_id`.
    AgentId,
    "agent id"
);
typed_id!(
    /// A tool an agent calls (`tool_id` in a rule and in a decide request).
    ToolId,
    "tool id"
);
typed_id!(
    /// A rule inside one policy document (`spec.rules[].id`).
    RuleId,
    "rule id"
);
typed_id!(
    /// A policy document's name (`metadata.name`), unique within its tenant.
    PolicyName,
    "policy name"
);

typed_id!(
    /// A person or service that signs change events (`actor` in an event envelope).
    ActorId,
    "actor id"
);
typed_id!(
    /// A proposed change to a tenant's policies (`change_id` in change events).
    ChangeId,
    "change id"
);
typed_id!(
    /// An event's id: its envelope `id` and its `Nats-Msg-Id`, so JetStream drops a resend.
    EventId,
    "event id"
);

impl ChangeId {
    /// A fresh random change id, `chg-` and 16 hex digits.
    pub fn random() -> Result<Self, getrandom::Error> {
        Ok(Self(format!("chg-{}", random_hex::<8>()?)))
    }
}

impl EventId {
    /// A fresh random event id, `evt-` and 32 hex digits.
    pub fn random() -> Result<Self, getrandom::Error> {
        Ok(Self(format!("evt-{}", random_hex::<16>()?)))
    }
}

fn random_hex<const N: usize>() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids_and_rejects_the_rest() {
        assert!(TenantId::new("acme").is_ok());
        assert!(AgentId::new("finance-agent.v2").is_ok());
        assert!(ToolId::new("payments:create").is_ok());
        assert!(TenantId::new("").is_err());
        assert!(TenantId::new("a b").is_err());
        assert!(TenantId::new("-x").is_err());
        assert!(TenantId::new("x".repeat(129)).is_err());
        let e = AgentId::new("has space")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("agent id"), "{e}");
    }

    #[test]
    fn serde_validates() {
        let ok: Result<TenantId, _> = serde_json::from_str("\"acme\"");
        assert!(ok.is_ok());
        let bad: Result<TenantId, _> = serde_json::from_str("\"a*b\"");
        assert!(bad.is_err());
    }
}
