//! Building and signing a bundle.

use super::archive::write_tar_gz;
use super::manifest::{Manifest, ManifestError, check_path, parse_time, revision};
use super::{
    DATA_PATH, MANIFEST_PATH, MANIFEST_SCHEMA_VERSION, OPA_MANIFEST_PATH, OPA_ROOT, POLICY_PATH,
    bundle_digest, sha256_hex,
};
use crate::canonical::to_canonical_vec;
use crate::ids::TenantId;
use crate::keys::Keypair;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::collections::BTreeMap;

/// What a bundle is, apart from its files. Every field is supplied by the caller (from the
/// publishing event); nothing is read from the wall clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSpec {
    pub tenant: TenantId,
    /// At least 1, and above every version published before for this tenant.
    pub version: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, after `created_at`.
    pub expires_at: Option<String>,
    pub author: String,
    pub source_change: Option<String>,
}

/// A built, signed bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltBundle {
    /// The gzipped tar.
    pub bytes: Vec<u8>,
    /// `"sha256:<hex of bytes>"`.
    pub digest: String,
    /// The signed manifest, as written to `manifest.json`.
    pub manifest: Manifest,
}

/// Why a bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid bundle spec: {0}")]
    Spec(#[from] ManifestError),
    #[error("required file {path} is missing")]
    MissingRequiredFile { path: &'static str },
    #[error("{path} is written by the bundle builder and cannot be supplied")]
    ReservedPath { path: String },
    #[error("unsafe file path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("data.json is not valid JSON: {0}")]
    InvalidDataJson(#[source] serde_json::Error),
    #[error(
        "data.json must be a JSON object whose only top-level key is \"{OPA_ROOT}\" (the bundle's only OPA root); found key {key:?}"
    )]
    DataOutsideRoot { key: String },
    #[error("cannot serialize the manifest: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("cannot write the archive: {0}")]
    Archive(#[source] std::io::Error),
}

/// Builds and signs a bundle from `spec` and the payload `files` (path → bytes; at least
/// `data.json` and `policy.rego`; `.manifest` and `manifest.json` are written here and may not
/// be supplied). The same inputs always give the same bytes.
pub fn build(
    spec: &BundleSpec,
    files: &BTreeMap<String, Vec<u8>>,
    key: &Keypair,
) -> Result<BuiltBundle, BuildError> {
    // Spec checks that give clearer errors before the manifest exists.
    parse_time("created_at", &spec.created_at)?;
    if let Some(expires_at) = &spec.expires_at {
        parse_time("expires_at", expires_at)?;
    }

    for path in files.keys() {
        check_path(path).map_err(|reason| BuildError::UnsafePath {
            path: path.clone(),
            reason,
        })?;
        if path == MANIFEST_PATH || path == OPA_MANIFEST_PATH {
            return Err(BuildError::ReservedPath { path: path.clone() });
        }
    }
    for path in [DATA_PATH, POLICY_PATH] {
        if !files.contains_key(path) {
            return Err(BuildError::MissingRequiredFile { path });
        }
    }
    check_data_json(files.get(DATA_PATH).map(Vec::as_slice).unwrap_or_default())?;

    let mut all: BTreeMap<String, Vec<u8>> = files.clone();
    let opa_manifest = serde_json::json!({
        "revision": revision(&spec.tenant, spec.version),
        "roots": [OPA_ROOT],
    });
    all.insert(
        OPA_MANIFEST_PATH.to_owned(),
        to_canonical_vec(&opa_manifest),
    );

    let mut manifest = Manifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        tenant: spec.tenant.clone(),
        version: spec.version,
        created_at: spec.created_at.clone(),
        expires_at: spec.expires_at.clone(),
        author: spec.author.clone(),
        source_change: spec.source_change.clone(),
        files: all
            .iter()
            .map(|(path, data)| (path.clone(), sha256_hex(data)))
            .collect(),
        key_id: key.key_id().clone(),
        signature: None,
    };
    manifest.validate()?;
    let signing_bytes = manifest.signing_bytes().map_err(BuildError::Serialize)?;
    manifest.signature = Some(BASE64.encode(key.sign(&signing_bytes).to_bytes()));
    all.insert(
        MANIFEST_PATH.to_owned(),
        manifest
            .to_canonical_bytes()
            .map_err(BuildError::Serialize)?,
    );

    let bytes = write_tar_gz(&all).map_err(BuildError::Archive)?;
    Ok(BuiltBundle {
        digest: bundle_digest(&bytes),
        bytes,
        manifest,
    })
}

/// OPA refuses data outside a bundle's roots, so `data.json` may only hold `aegis`.
fn check_data_json(bytes: &[u8]) -> Result<(), BuildError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(BuildError::InvalidDataJson)?;
    let Some(obj) = value.as_object() else {
        return Err(BuildError::DataOutsideRoot {
            key: "<not an object>".to_owned(),
        });
    };
    match obj.keys().find(|k| k.as_str() != OPA_ROOT) {
        Some(key) => Err(BuildError::DataOutsideRoot { key: key.clone() }),
        None => Ok(()),
    }
}
