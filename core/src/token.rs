//! Agent identity: EdDSA JSON Web Tokens (RFC 7519 with RFC 8037's `EdDSA`/Ed25519), with the
//! chain of callers as nested RFC 8693 `act` claims.
//!
//! ```text
//! header  {"alg":"EdDSA","kid":"ed25519:…","typ":"JWT"}
//! claims  {"iss":"acme-idp","sub":"finance-agent","aud":"aegis-gateway","tenant":"acme",
//!          "iat":1764100000,"exp":1764103600,"jti":"…",
//!          "act":{"sub":"planner","act":{"sub":"user-portal"}}}
//! ```
//!
//! `sub` is the agent making the call. The outermost `act` is the direct caller, each nested
//! `act` the one before it (RFC 8693 §4.1: the current actor first, prior actors nested), so
//! `act: {sub: planner, act: {sub: user-portal}}` is the call chain `[user-portal, planner]`
//! (origin first, direct caller last, as in the decide input).
//!
//! A token is accepted only if its `kid` names an issuer key that the tenant registered through
//! the control plane (shipped in the bundle's `trust.json`, see [`crate::bundle::TrustData`]),
//! the signature verifies, the `tenant` claim is the issuer key's tenant, `aud` names the
//! gateway, and `exp` / `nbf` hold. Each refusal is a [`TokenError`] with its own reason code.

use crate::ids::{AgentId, TenantId};
use crate::keys::{KeyId, Keypair, PublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::{Signature, Verifier as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only JWS algorithm accepted.
pub const ALG: &str = "EdDSA";
/// The audience a gateway accepts unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "aegis-gateway";
/// Longest call chain a token may carry (nested `act` claims).
pub const MAX_CHAIN: usize = 32;
/// Largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The JOSE header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// One actor of an RFC 8693 `act` claim; `act` inside it is the actor before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// The claims Aegis reads. Other claims are allowed and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub tenant: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// `aud`: one string or a list (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(list) => list.iter().any(|a| a == audience),
        }
    }
}

/// A token issuer key a tenant registered: tokens whose `kid` is `key.key_id()` are checked
/// with it, and may only speak for `tenant`.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub tenant: TenantId,
    /// The issuer's name (`iss` must equal it).
    pub issuer: String,
    pub key: PublicKey,
}

/// Every issuer key a verifier accepts, by key id.
#[derive(Debug, Clone, Default)]
pub struct IssuerKeys {
    by_kid: BTreeMap<KeyId, TrustedIssuer>,
}

impl IssuerKeys {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds (or replaces) an issuer key.
    pub fn insert(&mut self, issuer: TrustedIssuer) {
        self.by_kid.insert(issuer.key.key_id().clone(), issuer);
    }
    pub fn get(&self, kid: &KeyId) -> Option<&TrustedIssuer> {
        self.by_kid.get(kid)
    }
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }
}

/// Who is calling, as proven by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: TenantId,
    pub agent: AgentId,
    /// Origin first, direct caller last.
    pub call_chain: Vec<AgentId>,
    pub issuer: String,
    pub key_id: KeyId,
    pub expires_at: i64,
    pub token_id: Option<String>,
}

/// What a token says before it is verified: used only to file a refused call under a tenant
/// and to explain the refusal, never to decide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnverifiedClaims {
    pub tenant: Option<String>,
    pub agent: Option<String>,
    pub kid: Option<String>,
}

/// Why a token was refused. [`TokenError::code`] is the reason code a deny carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token algorithm {0:?} is not accepted; only EdDSA (Ed25519) is")]
    UnsupportedAlgorithm(String),
    #[error("token header has no kid (key id)")]
    MissingKeyId,
    #[error("token is signed by key {0}, which no tenant of this gateway has registered")]
    UnknownKey(String),
    #[error("token signature does not verify with key {0}")]
    BadSignature(String),
    #[error(
        "token issuer {found:?} does not match the registered issuer {expected:?} of key {kid}"
    )]
    WrongIssuer {
        expected: String,
        found: String,
        kid: String,
    },
    #[error("token claims tenant {claimed:?}, but its key {kid} belongs to tenant {key_tenant}")]
    TenantMismatch {
        claimed: String,
        key_tenant: String,
        kid: String,
    },
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("token audience does not include {expected:?}")]
    WrongAudience { expected: String },
    #[error("token claim {claim} is invalid: {reason}")]
    InvalidClaim { claim: &'static str, reason: String },
    #[error("the request body names {field} {claimed:?}, but the token says {token:?}")]
    BodyMismatch {
        field: &'static str,
        claimed: String,
        token: String,
    },
}

impl TokenError {
    /// The machine-readable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::UnsupportedAlgorithm(_) => "token_unsupported_algorithm",
            TokenError::MissingKeyId => "token_malformed",
            TokenError::UnknownKey(_) => "token_unknown_key",
            TokenError::BadSignature(_) => "token_bad_signature",
            TokenError::WrongIssuer { .. } => "token_wrong_issuer",
            TokenError::TenantMismatch { .. } => "token_wrong_tenant",
            TokenError::Expired { .. } => "token_expired",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
            TokenError::WrongAudience { .. } => "token_wrong_audience",
            TokenError::InvalidClaim { .. } => "token_invalid_claim",
            TokenError::BodyMismatch { .. } => "identity_mismatch",
        }
    }
}

/// What to put in a new token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub issuer: String,
    pub tenant: TenantId,
    pub agent: AgentId,
    pub audience: String,
    /// Origin first, direct caller last (becomes nested `act` claims).
    pub call_chain: Vec<AgentId>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Seconds the token is valid.
    pub ttl_seconds: i64,
    pub token_id: Option<String>,
}

/// Mints a signed token. The header's `kid` is `key`'s key id.
pub fn issue(request: &TokenRequest, key: &Keypair) -> Result<String, TokenError> {
    let header = Header {
        alg: ALG.to_owned(),
        kid: Some(key.key_id().to_string()),
        typ: Some("JWT".to_owned()),
    };
    let claims = Claims {
        iss: request.issuer.clone(),
        sub: request.agent.to_string(),
        aud: Audience::One(request.audience.clone()),
        tenant: request.tenant.to_string(),
        exp: request.issued_at.saturating_add(request.ttl_seconds),
        nbf: None,
        iat: Some(request.issued_at),
        jti: request.token_id.clone(),
        act: chain_to_act(&request.call_chain),
    };
    let header = serde_json::to_vec(&header).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let claims = serde_json::to_vec(&claims).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let signing_input = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let signature = key.sign(signing_input.as_bytes());
    Ok(format!(
        "{signing_input}.{}",
        B64URL.encode(signature.to_bytes())
    ))
}

/// Nested `act` claims for a call chain (origin first): the direct caller outermost.
pub fn chain_to_act(chain: &[AgentId]) -> Option<Actor> {
    let mut act: Option<Actor> = None;
    for agent in chain {
        act = Some(Actor {
            sub: agent.to_string(),
            act: act.map(Box::new),
        });
    }
    act
}

/// The call chain (origin first) of nested `act` claims.
pub fn act_to_chain(act: Option<&Actor>) -> Result<Vec<AgentId>, TokenError> {
    let mut chain = Vec::new();
    let mut cursor = act;
    while let Some(actor) = cursor {
        if chain.len() >= MAX_CHAIN {
            return Err(TokenError::InvalidClaim {
                claim: "act",
                reason: format!("more than {MAX_CHAIN} nested actors"),
            });
        }
        let agent = AgentId::new(actor.sub.clone()).map_err(|e| TokenError::InvalidClaim {
            claim: "act.sub",
            reason: e.to_string(),
        })?;
        chain.push(agent);
        cursor = actor.act.as_deref();
    }
    chain.reverse();
    Ok(chain)
}

/// Splits `header.claims.signature` and decodes header and claims, without any trust check.
fn split(token: &str) -> Result<(Header, serde_json::Value, &str, Vec<u8>), TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!(
            "longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "expected three base64url parts separated by dots".to_owned(),
        ));
    };
    let decode = |part: &str, what: &str| {
        B64URL
            .decode(part)
            .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))
    };
    let header: Header = serde_json::from_slice(&decode(h, "header")?)
        .map_err(|e| TokenError::Malformed(format!("header is not a JOSE header: {e}")))?;
    let claims: serde_json::Value = serde_json::from_slice(&decode(c, "claims")?)
        .map_err(|e| TokenError::Malformed(format!("claims are not JSON: {e}")))?;
    let signature = decode(s, "signature")?;
    let signing_len = h.len() + 1 + c.len();
    let signing_input = token.get(..signing_len).unwrap_or_default();
    Ok((header, claims, signing_input, signature))
}

/// Reads what a token claims without verifying anything (for filing and explaining refusals).
pub fn peek(token: &str) -> UnverifiedClaims {
    let Ok((header, claims, _, _)) = split(token) else {
        return UnverifiedClaims::default();
    };
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    UnverifiedClaims {
        tenant: text("tenant"),
        agent: text("sub"),
        kid: header.kid,
    }
}

/// Verifies a token against the registered issuer keys, for `audience`, at unix time `now`
/// with `leeway_seconds` of clock skew allowed on `exp` and `nbf`.
pub fn verify(
    token: &str,
    keys: &IssuerKeys,
    audience: &str,
    now: i64,
    leeway_seconds: i64,
) -> Result<Identity, TokenError> {
    let (header, claims_value, signing_input, signature) = split(token)?;
    if header.alg != ALG {
        return Err(TokenError::UnsupportedAlgorithm(header.alg));
    }
    let kid_text = header.kid.ok_or(TokenError::MissingKeyId)?;
    let kid = KeyId::new(kid_text.clone()).map_err(|_| TokenError::UnknownKey(kid_text.clone()))?;
    let issuer = keys
        .get(&kid)
        .ok_or_else(|| TokenError::UnknownKey(kid_text.clone()))?;
    let signature = Signature::from_slice(&signature)
        .map_err(|_| TokenError::BadSignature(kid_text.clone()))?;
    issuer
        .key
        .verifying_key()
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature(kid_text.clone()))?;

    let claims: Claims = serde_json::from_value(claims_value)
        .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
    if claims.iss != issuer.issuer {
        return Err(TokenError::WrongIssuer {
            expected: issuer.issuer.clone(),
            found: claims.iss,
            kid: kid_text,
        });
    }
    if claims.tenant != issuer.tenant.as_str() {
        return Err(TokenError::TenantMismatch {
            claimed: claims.tenant,
            key_tenant: issuer.tenant.to_string(),
            kid: kid_text,
        });
    }
    if now > claims.exp.saturating_add(leeway_seconds) {
        return Err(TokenError::Expired {
            exp: claims.exp,
            now,
        });
    }
    if let Some(nbf) = claims.nbf
        && now.saturating_add(leeway_seconds) < nbf
    {
        return Err(TokenError::NotYetValid { nbf, now });
    }
    if !claims.aud.contains(audience) {
        return Err(TokenError::WrongAudience {
            expected: audience.to_owned(),
        });
    }
    let agent = AgentId::new(claims.sub.clone()).map_err(|e| TokenError::InvalidClaim {
        claim: "sub",
        reason: e.to_string(),
    })?;
    Ok(Identity {
        tenant: issuer.tenant.clone(),
        agent,
        call_chain: act_to_chain(claims.act.as_ref())?,
        issuer: claims.iss,
        key_id: kid,
        expires_at: claims.exp,
        token_id: claims.jti,
    })
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

    fn agent(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn setup() -> (Keypair, IssuerKeys) {
        let key = Keypair::from_seed(&[9; 32]);
        let mut keys = IssuerKeys::new();
        keys.insert(TrustedIssuer {
            tenant: TenantId::new("acme").unwrap(),
            issuer: "acme-idp".into(),
            key: key.public_key().clone(),
        });
        (key, keys)
    }

    fn request(chain: &[&str]) -> TokenRequest {
        TokenRequest {
            issuer: "acme-idp".into(),
            tenant: TenantId::new("acme").unwrap(),
            agent: agent("finance-agent"),
            audience: DEFAULT_AUDIENCE.into(),
            call_chain: chain.iter().map(|a| agent(a)).collect(),
            issued_at: 1_000,
            ttl_seconds: 600,
            token_id: Some("t1".into()),
        }
    }

    #[test]
    fn round_trip_with_nested_act_claims() {
        let (key, keys) = setup();
        let token = issue(&request(&["user-portal", "planner"]), &key).unwrap();
        let id = verify(&token, &keys, DEFAULT_AUDIENCE, 1_100, 0).unwrap();
        assert_eq!(id.agent.as_str(), "finance-agent");
        assert_eq!(id.tenant.as_str(), "acme");
        let chain: Vec<_> = id.call_chain.iter().map(AgentId::as_str).collect();
        assert_eq!(chain, ["user-portal", "planner"]);
        // The outermost act is the direct caller (RFC 8693).
        let claims = split(&token).unwrap().1;
        assert_eq!(claims["act"]["sub"], "planner");
        assert_eq!(claims["act"]["act"]["sub"], "user-portal");
    }

    #[test]
    fn each_refusal_has_its_code() {
        let (key, keys) = setup();
        let token = issue(&request(&[]), &key).unwrap();
        let code = |r: Result<Identity, TokenError>| r.unwrap_err().code();
        assert_eq!(
            code(verify(&token, &keys, DEFAULT_AUDIENCE, 5_000, 0)),
            "token_expired"
        );
        assert_eq!(
            code(verify(&token, &keys, "other", 1_100, 0)),
            "token_wrong_audience"
        );
        assert_eq!(
            code(verify("a.b", &keys, DEFAULT_AUDIENCE, 1_100, 0)),
            "token_malformed"
        );
        assert_eq!(
            code(verify(
                &token,
                &IssuerKeys::new(),
                DEFAULT_AUDIENCE,
                1_100,
                0
            )),
            "token_unknown_key"
        );
        // Flip one character of the claims: the signature no longer verifies.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims = split(&token).unwrap().1;
        claims["sub"] = "treasury-agent".into();
        parts[1] = B64URL.encode(serde_json::to_vec(&claims).unwrap());
        let forged = parts.join(".");
        assert_eq!(
            code(verify(&forged, &keys, DEFAULT_AUDIENCE, 1_100, 0)),
            "token_bad_signature"
        );
        // Another key (say, another tenant's) signing with acme's kid is a bad signature too.
        let other = Keypair::from_seed(&[1; 32]);
        let signing_input = format!("{}.{}", parts[0], parts[1]);
        parts[2] = B64URL.encode(other.sign(signing_input.as_bytes()).to_bytes());
        assert_eq!(
            code(verify(&parts.join("."), &keys, DEFAULT_AUDIENCE, 1_100, 0)),
            "token_bad_signature"
        );
        // alg none is refused before any key is looked at.
        let none = format!("{}.{}.", B64URL.encode(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(
            code(verify(&none, &keys, DEFAULT_AUDIENCE, 1_100, 0)),
            "token_unsupported_algorithm"
        );
    }

    #[test]
    fn a_tenant_key_cannot_speak_for_another_tenant() {
        let (key, keys) = setup();
        let mut req = request(&[]);
        req.tenant = TenantId::new("globex").unwrap();
        let token = issue(&req, &key).unwrap();
        let err = verify(&token, &keys, DEFAULT_AUDIENCE, 1_100, 0).unwrap_err();
        assert_eq!(err.code(), "token_wrong_tenant");
        assert!(err.to_string().contains("globex"), "{err}");
    }

    #[test]
    fn peek_reads_claims_without_trusting_them() {
        let (key, _) = setup();
        let token = issue(&request(&[]), &key).unwrap();
        let p = peek(&token);
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        assert_eq!(p.agent.as_deref(), Some("finance-agent"));
        assert_eq!(peek("garbage"), UnverifiedClaims::default());
    }
}
