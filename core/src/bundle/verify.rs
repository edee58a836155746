//! Verifying (and inspecting) a bundle.

use super::archive::read_tar_gz;
use super::manifest::{Manifest, ManifestError};
use super::{MANIFEST_PATH, SizeLimits, bundle_digest, sha256_hex};
use crate::canonical::to_canonical_vec;
use crate::ids::TenantId;
use crate::keys::{KeyId, TrustError, TrustStore};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signature;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The highest bundle a verifier has ever applied for a tenant (kept on disk by gateways).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HighWater {
    pub version: u64,
    /// `"sha256:<hex>"` of the bundle applied at `version`.
    pub digest: String,
}

/// What, besides the trust store, a bundle is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// If set, the bundle's tenant must be this one.
    pub expected_tenant: Option<TenantId>,
    /// If set, the bundle's version must be above it (or equal, with the same digest).
    pub high_water: Option<HighWater>,
    /// The instant expiry is checked at.
    pub now: OffsetDateTime,
    pub limits: SizeLimits,
}

impl VerifyPolicy {
    /// No expected tenant, no high-water mark, default limits.
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            expected_tenant: None,
            high_water: None,
            now,
            limits: SizeLimits::default(),
        }
    }
}

/// A bundle that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    pub manifest: Manifest,
    /// Every signed file (the payload files and `.manifest`; not `manifest.json`).
    pub files: BTreeMap<String, Vec<u8>>,
    /// `"sha256:<hex>"` of the bundle bytes.
    pub digest: String,
}

impl VerifiedBundle {
    /// `data.json`.
    pub fn data(&self) -> Option<&[u8]> {
        self.files.get(super::DATA_PATH).map(Vec::as_slice)
    }

    /// Every `.rego` file, in path order.
    pub fn rego_files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files
            .iter()
            .filter(|(path, _)| path.ends_with(".rego"))
            .map(|(path, data)| (path.as_str(), data.as_slice()))
    }
}

/// One file of an inspected bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedEntry {
    pub path: String,
    pub size: u64,
    /// Lowercase hex sha256 of the contents.
    pub sha256: String,
    /// What the manifest says the hash is (`None` if not listed, and for `manifest.json`).
    pub listed_sha256: Option<String>,
}

/// A bundle read without trust checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedBundle {
    pub digest: String,
    pub compressed_size: u64,
    pub manifest: Manifest,
    /// Every entry, `manifest.json` included, in path order.
    pub entries: Vec<InspectedEntry>,
}

/// Why a bundle was rejected. Each check has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("bundle is {size} bytes, over the {limit}-byte limit for compressed bundles")]
    CompressedTooLarge { size: u64, limit: u64 },
    #[error("bundle decompresses to more than {limit} bytes (possible gzip bomb)")]
    UncompressedTooLarge { limit: u64 },
    #[error("bundle is not valid gzip: {reason}")]
    Decompress { reason: String },
    #[error("{bytes} bytes of trailing data after the gzip stream")]
    TrailingData { bytes: u64 },
    #[error("bundle is not a valid tar archive: {reason}")]
    Archive { reason: String },
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("file {path} is {size} bytes, over the {limit}-byte per-file limit")]
    FileTooLarge { path: String, size: u64, limit: u64 },
    #[error("unsafe entry path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("entry {path} is a {kind}, only regular files are allowed")]
    NotARegularFile { path: String, kind: String },
    #[error("entry {path} appears more than once")]
    DuplicateEntry { path: String },
    #[error("bundle has no manifest.json")]
    ManifestMissing,
    #[error("invalid manifest.json: {0}")]
    ManifestInvalid(#[from] ManifestError),
    #[error("manifest.json has no signature")]
    SignatureMissing,
    #[error("manifest signature is malformed: {reason}")]
    SignatureMalformed { reason: String },
    #[error("bundle is signed by key {key_id}, which is not trusted")]
    UnknownKey { key_id: KeyId },
    #[error("bundle is signed by key {key_id}, which has been revoked")]
    RevokedKey { key_id: KeyId },
    #[error("manifest signature does not verify with key {key_id}")]
    BadSignature { key_id: KeyId },
    #[error("file {path} is in the bundle but not in the signed manifest")]
    UnexpectedFile { path: String },
    #[error("file {path} is listed in the signed manifest but missing from the bundle")]
    MissingFile { path: String },
    #[error("file {path} does not match its signed sha256")]
    HashMismatch { path: String },
    #[error("bundle is for tenant {found}, expected {expected}")]
    WrongTenant { expected: TenantId, found: TenantId },
    #[error(
        "bundle version {version} is not above the high-water mark {high_water} (an equal version is accepted only for the identical bundle)"
    )]
    VersionNotAbove { version: u64, high_water: u64 },
    #[error("bundle expired at {expires_at} (now {now})")]
    Expired { expires_at: String, now: String },
}

/// A read archive: the files other than `manifest.json`, and `manifest.json` both as received
/// (a JSON value, what the signature is checked over) and typed.
struct Opened {
    files: BTreeMap<String, Vec<u8>>,
    raw_manifest: serde_json::Value,
    manifest: Manifest,
}

/// Reads the archive and parses `manifest.json`.
fn open(bytes: &[u8], limits: &SizeLimits) -> Result<Opened, VerifyError> {
    let mut files = read_tar_gz(bytes, limits)?;
    let raw = files
        .remove(MANIFEST_PATH)
        .ok_or(VerifyError::ManifestMissing)?;
    let value: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| VerifyError::ManifestInvalid(ManifestError::Parse(e)))?;
    let manifest: Manifest = serde_json::from_value(value.clone())
        .map_err(|e| VerifyError::ManifestInvalid(ManifestError::Parse(e)))?;
    Ok(Opened {
        files,
        raw_manifest: value,
        manifest,
    })
}

/// Verifies a bundle for application: size limits and archive rules, the manifest, the
/// signature against `trust`, the exact file set and every hash, the tenant, the high-water
/// mark and expiry, in that order.
pub fn verify(
    bytes: &[u8],
    trust: &TrustStore,
    policy: &VerifyPolicy,
) -> Result<VerifiedBundle, VerifyError> {
    let Opened {
        files,
        raw_manifest: mut value,
        manifest,
    } = open(bytes, &policy.limits)?;
    manifest.validate()?;

    // Signature: over the canonical JSON of exactly what was received, minus `signature`.
    let signature = match manifest.signature.as_deref() {
        None | Some("") => return Err(VerifyError::SignatureMissing),
        Some(s) => s,
    };
    let key = trust.lookup(&manifest.key_id).map_err(|e| match e {
        TrustError::RevokedKey { key_id } => VerifyError::RevokedKey { key_id },
        _ => VerifyError::UnknownKey {
            key_id: manifest.key_id.clone(),
        },
    })?;
    let sig_bytes = BASE64
        .decode(signature)
        .map_err(|e| VerifyError::SignatureMalformed {
            reason: e.to_string(),
        })?;
    let signature =
        Signature::from_slice(&sig_bytes).map_err(|_| VerifyError::SignatureMalformed {
            reason: format!("expected 64 bytes, got {}", sig_bytes.len()),
        })?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("signature");
    }
    key.verify_strict(&to_canonical_vec(&value), &signature)
        .map_err(|_| VerifyError::BadSignature {
            key_id: manifest.key_id.clone(),
        })?;

    // Exactly the signed set of files, each with its signed hash.
    if let Some(path) = files.keys().find(|p| !manifest.files.contains_key(*p)) {
        return Err(VerifyError::UnexpectedFile { path: path.clone() });
    }
    if let Some(path) = manifest.files.keys().find(|p| !files.contains_key(*p)) {
        return Err(VerifyError::MissingFile { path: path.clone() });
    }
    for (path, data) in &files {
        if manifest.files.get(path).map(String::as_str) != Some(sha256_hex(data).as_str()) {
            return Err(VerifyError::HashMismatch { path: path.clone() });
        }
    }

    if let Some(expected) = &policy.expected_tenant
        && &manifest.tenant != expected
    {
        return Err(VerifyError::WrongTenant {
            expected: expected.clone(),
            found: manifest.tenant.clone(),
        });
    }

    let digest = bundle_digest(bytes);
    if let Some(hw) = &policy.high_water {
        let above = manifest.version > hw.version
            || (manifest.version == hw.version && digest == hw.digest);
        if !above {
            return Err(VerifyError::VersionNotAbove {
                version: manifest.version,
                high_water: hw.version,
            });
        }
    }

    if let Some(expires) = manifest.expires_at_time()?
        && policy.now >= expires
    {
        return Err(VerifyError::Expired {
            expires_at: manifest.expires_at.clone().unwrap_or_default(),
            now: policy
                .now
                .format(&Rfc3339)
                .unwrap_or_else(|_| policy.now.to_string()),
        });
    }

    Ok(VerifiedBundle {
        manifest,
        files,
        digest,
    })
}

/// Reads a bundle's manifest and file list without any trust checks (size limits and archive
/// rules still apply). For display only: nothing read here is authenticated.
pub fn inspect(bytes: &[u8], limits: &SizeLimits) -> Result<InspectedBundle, VerifyError> {
    let files = read_tar_gz(bytes, limits)?;
    let raw = files
        .get(MANIFEST_PATH)
        .ok_or(VerifyError::ManifestMissing)?;
    let manifest: Manifest = serde_json::from_slice(raw)
        .map_err(|e| VerifyError::ManifestInvalid(ManifestError::Parse(e)))?;
    let entries = files
        .iter()
        .map(|(path, data)| InspectedEntry {
            path: path.clone(),
            size: data.len() as u64,
            sha256: sha256_hex(data),
            listed_sha256: manifest.files.get(path).cloned(),
        })
        .collect();
    Ok(InspectedBundle {
        digest: bundle_digest(bytes),
        compressed_size: bytes.len() as u64,
        manifest,
        entries,
    })
}
