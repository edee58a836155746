//! `trust.json`: the identity trust a tenant ships inside its bundle — the token issuer keys
//! its agents' tokens are signed with, registered through the control plane
//! (`token_issuer_registered` / `token_issuer_revoked`).
//!
//! ```json
//! {"token_issuers":[{"issuer":"acme-idp","key_id":"ed25519:…","public_key":"<base64>"}]}
//! ```
//!
//! The file is signed with the rest of the bundle (it is in the manifest's file list), so a
//! gateway trusts an issuer key exactly as far as it trusts the bundle. OPA ignores files that
//! are neither data nor Rego, so the bundle stays loadable by a stock OPA.

use crate::ids::TenantId;
use crate::keys::{KeyError, KeyId, PublicKey};
use crate::token::{IssuerKeys, TrustedIssuer};
use serde::{Deserialize, Serialize};

/// Path of the trust data inside a bundle.
pub const TRUST_PATH: &str = "trust.json";

/// One registered token issuer key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    pub key_id: KeyId,
    /// base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
}

/// The contents of `trust.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustData {
    /// Sorted by key id, so the file is deterministic.
    #[serde(default)]
    pub token_issuers: Vec<TokenIssuer>,
}

/// Why `trust.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustDataError {
    #[error("trust.json is not valid: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("trust.json issuer key {key_id}: {source}")]
    Key {
        key_id: KeyId,
        #[source]
        source: KeyError,
    },
}

impl TrustData {
    /// Parses `trust.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<TrustData, TrustDataError> {
        serde_json::from_slice(bytes).map_err(TrustDataError::Parse)
    }

    /// The canonical bytes of the file (issuers sorted by key id).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut sorted = self.clone();
        sorted.token_issuers.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        crate::canonical::to_canonical_vec_of(&sorted).unwrap_or_default()
    }

    /// The issuer keys for `tenant`, ready for [`crate::token::verify`]. A key whose id does
    /// not match its public key is an error: the whole file is refused, never partly trusted.
    pub fn issuer_keys(&self, tenant: &TenantId) -> Result<IssuerKeys, TrustDataError> {
        let mut keys = IssuerKeys::new();
        for entry in &self.token_issuers {
            let key =
                PublicKey::from_parts(&entry.key_id, &entry.public_key).map_err(|source| {
                    TrustDataError::Key {
                        key_id: entry.key_id.clone(),
                        source,
                    }
                })?;
            keys.insert(TrustedIssuer {
                tenant: tenant.clone(),
                issuer: entry.issuer.clone(),
                key,
            });
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::keys::Keypair;

    #[test]
    fn round_trips_and_refuses_a_mismatched_key() {
        let key = Keypair::from_seed(&[3; 32]);
        let data = TrustData {
            token_issuers: vec![TokenIssuer {
                issuer: "acme-idp".into(),
                key_id: key.key_id().clone(),
                public_key: key.public_key().to_base64(),
            }],
        };
        let back = TrustData::from_bytes(&data.to_bytes()).unwrap();
        assert_eq!(back, data);
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(back.issuer_keys(&acme).unwrap().len(), 1);

        let other = Keypair::from_seed(&[4; 32]);
        let mut bad = data;
        bad.token_issuers[0].public_key = other.public_key().to_base64();
        assert!(bad.issuer_keys(&acme).is_err());
    }
}
