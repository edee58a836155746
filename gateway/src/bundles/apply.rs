//! Turning bundle bytes into an [`ActiveBundle`], or saying precisely why not.
//!
//! [`prepare`] is the one gate every bundle passes, whether it arrived over NATS or was read
//! back from the local store at start:
//!
//! 1. the sha256 of the bytes must equal the digest the bundle was announced (or stored) under
//!    (`digest_mismatch`) — so the bytes are the ones the signed announcement names;
//! 2. [`aegis_core::bundle::verify`] with the expected tenant and the high-water mark: size
//!    limits and archive rules, the manifest, the ed25519 signature by a trusted, unrevoked
//!    control-plane key, exactly the signed set of files each with its signed sha256, the
//!    tenant, a version above the mark (an equal version only with the identical digest), and
//!    not expired at `now`;
//! 3. `trust.json` (the tenant's token issuer keys; absent means no issuers) is parsed, and a
//!    single bad key refuses the whole bundle (`trust_invalid`);
//! 4. the payload is compiled with [`Evaluator::from_files`] (`compile_failed`).
//!
//! Every failure is a [`BundleRefusal`] with a stable, machine-readable `reason_code` (one per
//! [`VerifyError`] family, listed in [`reason`]) and a sentence for humans. Nothing here touches
//! a slot, the disk or NATS: the caller decides what a refusal means (keep the bundle in force,
//! record the rejection).

use crate::tenants::ActiveBundle;
use aegis_core::bundle::{
    self, HighWater, SizeLimits, TRUST_PATH, TrustData, VerifyError, VerifyPolicy,
};
use aegis_core::eval::{EvalLimits, Evaluator, Provenance};
use aegis_core::events::RolloutStage;
use aegis_core::events::envelope::format_time;
use aegis_core::ids::TenantId;
use aegis_core::keys::TrustStore;
use aegis_core::token::IssuerKeys;
use time::OffsetDateTime;

/// The reason codes of [`BundleRefusal`], as they appear in `/v1/status`, the heartbeat,
/// `aegis_bundles_rejected_total{reason}` and `bundle_rejected` records.
pub mod reason {
    /// The manifest signature does not verify, is missing or is not 64 bytes of base64; or an
    /// announcement's envelope signature does not verify.
    pub const BAD_SIGNATURE: &str = "bad_signature";
    /// Signed by a key the gateway's trust store does not hold.
    pub const UNKNOWN_KEY: &str = "unknown_key";
    /// Signed by a key the trust store revokes.
    pub const REVOKED_KEY: &str = "revoked_key";
    /// A file's sha256 differs from the one in the signed manifest.
    pub const HASH_MISMATCH: &str = "hash_mismatch";
    /// A file in the archive is not in the signed manifest.
    pub const UNEXPECTED_FILE: &str = "unexpected_file";
    /// A file in the signed manifest is not in the archive.
    pub const MISSING_FILE: &str = "missing_file";
    /// Not above the tenant's high-water mark (a downgrade or a replayed announcement).
    pub const VERSION_NOT_ABOVE: &str = "version_not_above";
    /// Past its `expires_at`.
    pub const EXPIRED: &str = "expired";
    /// Signed for another tenant.
    pub const WRONG_TENANT: &str = "wrong_tenant";
    /// Not a well-formed bundle (gzip, tar, entry paths and types, manifest), or the manifest
    /// version differs from the announced one.
    pub const MALFORMED: &str = "malformed";
    /// Over a size limit (compressed, decompressed, per file, entry count).
    pub const TOO_LARGE: &str = "too_large";
    /// The bytes do not hash to the digest they were announced (or stored) under.
    pub const DIGEST_MISMATCH: &str = "digest_mismatch";
    /// The verified payload does not compile.
    pub const COMPILE_FAILED: &str = "compile_failed";
    /// `trust.json` does not parse or holds a key that does not match its id.
    pub const TRUST_INVALID: &str = "trust_invalid";
    /// The bytes could not be fetched from the object store (after retries), or read from the
    /// local store.
    pub const FETCH_FAILED: &str = "fetch_failed";

    /// Every code, for documentation and tests.
    pub const ALL: [&str; 15] = [
        BAD_SIGNATURE,
        UNKNOWN_KEY,
        REVOKED_KEY,
        HASH_MISMATCH,
        UNEXPECTED_FILE,
        MISSING_FILE,
        VERSION_NOT_ABOVE,
        EXPIRED,
        WRONG_TENANT,
        MALFORMED,
        TOO_LARGE,
        DIGEST_MISMATCH,
        COMPILE_FAILED,
        TRUST_INVALID,
        FETCH_FAILED,
    ];
}

/// Where an [`ActiveBundle`] came from (`ActiveBundle::source`).
pub const SOURCE_NATS: &str = "nats";
/// The last known-good bundle read back from the local store at start.
pub const SOURCE_LOCAL: &str = "local";

/// Limits applied to every bundle: reading it, and evaluating it afterwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BundleLimits {
    pub size: SizeLimits,
    pub eval: EvalLimits,
}

/// Why a bundle was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason_code}: {reason}")]
pub struct BundleRefusal {
    /// The version the manifest (or, failing that, the announcement) claims, if known. Not
    /// authenticated when the refusal is about the signature.
    pub version: Option<u64>,
    /// One of [`reason`].
    pub reason_code: &'static str,
    pub reason: String,
}

impl BundleRefusal {
    pub fn new(reason_code: &'static str, version: Option<u64>, reason: impl Into<String>) -> Self {
        Self {
            version,
            reason_code,
            reason: reason.into(),
        }
    }

    /// The refusal for a failed verification.
    pub fn from_verify(err: &VerifyError, version: Option<u64>) -> Self {
        Self::new(reason_code(err), version, err.to_string())
    }
}

/// The stable reason code of a verification failure.
pub fn reason_code(err: &VerifyError) -> &'static str {
    match err {
        VerifyError::CompressedTooLarge { .. }
        | VerifyError::UncompressedTooLarge { .. }
        | VerifyError::TooManyEntries { .. }
        | VerifyError::FileTooLarge { .. } => reason::TOO_LARGE,
        VerifyError::Decompress { .. }
        | VerifyError::TrailingData { .. }
        | VerifyError::Archive { .. }
        | VerifyError::UnsafePath { .. }
        | VerifyError::NotARegularFile { .. }
        | VerifyError::DuplicateEntry { .. }
        | VerifyError::ManifestMissing
        | VerifyError::ManifestInvalid(_) => reason::MALFORMED,
        VerifyError::SignatureMissing
        | VerifyError::SignatureMalformed { .. }
        | VerifyError::BadSignature { .. } => reason::BAD_SIGNATURE,
        VerifyError::UnknownKey { .. } => reason::UNKNOWN_KEY,
        VerifyError::RevokedKey { .. } => reason::REVOKED_KEY,
        VerifyError::UnexpectedFile { .. } => reason::UNEXPECTED_FILE,
        VerifyError::MissingFile { .. } => reason::MISSING_FILE,
        VerifyError::HashMismatch { .. } => reason::HASH_MISMATCH,
        VerifyError::WrongTenant { .. } => reason::WRONG_TENANT,
        VerifyError::VersionNotAbove { .. } => reason::VERSION_NOT_ABOVE,
        VerifyError::Expired { .. } => reason::EXPIRED,
    }
}

/// Verifies and compiles a bundle for `tenant` (see the module docs for every check, in order).
///
/// `announced_digest` is the `sha256:<hex>` the bundle was announced or stored under;
/// `high_water` the highest bundle ever applied for the tenant (an equal version is accepted
/// only with the identical digest). The result has `stage` [`RolloutStage::Global`], `source`
/// [`SOURCE_NATS`] and `applied_at` = `now`; callers set `stage` and `source` as they know them.
pub fn prepare(
    tenant: &TenantId,
    bytes: &[u8],
    announced_digest: &str,
    trust: &TrustStore,
    high_water: Option<&HighWater>,
    now: OffsetDateTime,
    limits: &BundleLimits,
) -> Result<ActiveBundle, BundleRefusal> {
    let digest = bundle::bundle_digest(bytes);
    if digest != announced_digest {
        return Err(BundleRefusal::new(
            reason::DIGEST_MISMATCH,
            claimed_version(bytes, &limits.size),
            format!("the bytes hash to {digest}, not to the announced {announced_digest}"),
        ));
    }
    let policy = VerifyPolicy {
        expected_tenant: Some(tenant.clone()),
        high_water: high_water.cloned(),
        now,
        limits: limits.size,
    };
    let verified = bundle::verify(bytes, trust, &policy)
        .map_err(|e| BundleRefusal::from_verify(&e, claimed_version(bytes, &limits.size)))?;
    let version = verified.manifest.version;

    let issuers = match verified.files.get(TRUST_PATH) {
        None => IssuerKeys::new(),
        Some(raw) => TrustData::from_bytes(raw)
            .and_then(|t| t.issuer_keys(tenant))
            .map_err(|e| BundleRefusal::new(reason::TRUST_INVALID, Some(version), e.to_string()))?,
    };

    let provenance = Provenance {
        policy_version: Some(version),
        bundle_digest: Some(verified.digest.clone()),
    };
    let evaluator = Evaluator::from_files(&verified.files, provenance, limits.eval)
        .map_err(|e| BundleRefusal::new(reason::COMPILE_FAILED, Some(version), e.to_string()))?;

    Ok(ActiveBundle {
        tenant: tenant.clone(),
        version,
        digest: verified.digest,
        evaluator,
        issuers,
        stage: RolloutStage::Global,
        applied_at: format_time(now).unwrap_or_else(|_| now.to_string()),
        source: SOURCE_NATS,
        tokens: crate::tenants::TokenCache::default(),
        expires_unix: crate::tenants::expiry_unix(verified.manifest.expires_at.as_deref()),
        manifest: verified.manifest,
    })
}

/// The version an unverified bundle's manifest claims, if it can be read at all.
fn claimed_version(bytes: &[u8], limits: &SizeLimits) -> Option<u64> {
    bundle::inspect(bytes, limits)
        .ok()
        .map(|b| b.manifest.version)
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
    use aegis_core::bundle::{BuiltBundle, BundleSpec, build};
    use aegis_core::keys::Keypair;
    use std::collections::BTreeMap;

    fn tenant() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    fn files() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("data.json".into(), br#"{"aegis":{}}"#.to_vec()),
            (
                "policy.rego".into(),
                b"package aegis\n\ndecide := {\"decision\": \"deny\"}\n".to_vec(),
            ),
        ])
    }

    fn spec(version: u64) -> BundleSpec {
        BundleSpec {
            tenant: tenant(),
            version,
            created_at: "2025-01-01T00:00:00Z".into(),
            expires_at: Some("2030-01-01T00:00:00Z".into()),
            author: "test".into(),
            source_change: None,
        }
    }

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC)
    }

    fn trust(key: &Keypair) -> TrustStore {
        let mut t = TrustStore::new();
        t.trust(key.public_key().clone());
        t
    }

    /// [`prepare`] for `acme` at [`now`] with the default limits.
    fn prepare_now(
        bytes: &[u8],
        digest: &str,
        trust: &TrustStore,
        hw: Option<&HighWater>,
    ) -> Result<ActiveBundle, BundleRefusal> {
        prepare(
            &tenant(),
            bytes,
            digest,
            trust,
            hw,
            now(),
            &BundleLimits::default(),
        )
    }

    /// `built`, as announced, trusted and with no mark yet: what [`prepare`] refuses.
    fn refusal_of(built: &BuiltBundle, key: &Keypair) -> BundleRefusal {
        prepare_now(&built.bytes, &built.digest, &trust(key), None).unwrap_err()
    }

    #[test]
    fn every_verify_error_has_a_listed_code() {
        let key = Keypair::from_seed(&[1; 32]);
        let built = build(&spec(3), &files(), &key).unwrap();
        let ok = prepare_now(&built.bytes, &built.digest, &trust(&key), None).unwrap();
        assert_eq!(ok.version, 3);
        assert_eq!(ok.digest, built.digest);
        assert!(ok.issuers.is_empty());

        let refuse = |bytes: &[u8], digest: &str, trust: &TrustStore, hw: Option<&HighWater>| {
            prepare_now(bytes, digest, trust, hw).unwrap_err()
        };
        let r = refuse(&built.bytes, "sha256:00", &trust(&key), None);
        assert_eq!(r.reason_code, reason::DIGEST_MISMATCH);
        assert_eq!(r.version, Some(3));
        let other = Keypair::from_seed(&[2; 32]);
        let r = refuse(&built.bytes, &built.digest, &trust(&other), None);
        assert_eq!(r.reason_code, reason::UNKNOWN_KEY);
        let mut revoked = trust(&key);
        revoked.revoke(key.key_id().clone());
        let r = refuse(&built.bytes, &built.digest, &revoked, None);
        assert_eq!(r.reason_code, reason::REVOKED_KEY);
        let hw = HighWater {
            version: 3,
            digest: "sha256:other".into(),
        };
        let r = refuse(&built.bytes, &built.digest, &trust(&key), Some(&hw));
        assert_eq!(r.reason_code, reason::VERSION_NOT_ABOVE);
        let garbage = b"not a bundle";
        let r = refuse(garbage, &bundle::bundle_digest(garbage), &trust(&key), None);
        assert_eq!(r.reason_code, reason::MALFORMED);
        assert_eq!(r.version, None);
        for code in reason::ALL {
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
    }

    #[test]
    fn a_bad_trust_file_or_uncompilable_rego_is_refused() {
        let key = Keypair::from_seed(&[1; 32]);
        let mut f = files();
        f.insert(TRUST_PATH.into(), b"{\"token_issuers\":7}".to_vec());
        let built = build(&spec(1), &f, &key).unwrap();
        let r = refusal_of(&built, &key);
        assert_eq!(r.reason_code, reason::TRUST_INVALID);

        let mut f = files();
        f.insert(
            "policy.rego".into(),
            b"package aegis\n\ndecide := {".to_vec(),
        );
        let built = build(&spec(1), &f, &key).unwrap();
        let r = refusal_of(&built, &key);
        assert_eq!(r.reason_code, reason::COMPILE_FAILED);
        assert_eq!(r.version, Some(1));
    }
}
