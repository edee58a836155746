//! Signed, deterministic, OPA-compatible policy bundles.
//!
//! A bundle is a gzipped tar holding:
//!
//! - the payload files the compiler produced: at least `data.json` (all data under the
//!   `aegis` root) and `policy.rego`, optionally more `.rego` files in subdirectories;
//! - `.manifest`, OPA's bundle manifest: `{"revision":"<tenant>-v<version>","roots":["aegis"]}`;
//! - `manifest.json`, Aegis' signed manifest ([`Manifest`], `schemas/manifest.schema.json`):
//!   tenant, version, times, author, source change, the sha256 of every other file, the signer's
//!   key id and an ed25519 signature over the canonical JSON of the manifest without its
//!   `signature` field.
//!
//! [`build`] is deterministic: the same spec, files and key give the same bytes (tar entries
//! sorted by path, fixed headers, gzip with mtime 0 and a fixed level; nothing is read from the
//! wall clock or the environment). [`verify`] checks everything a gateway must check before
//! applying a bundle, each failure with its own [`VerifyError`] variant. [`inspect`] reads a
//! bundle without any trust checks.

mod archive;
mod build;
mod manifest;
mod trust;
mod verify;

pub use build::{BuildError, BuiltBundle, BundleSpec, build};
pub use manifest::{Manifest, ManifestError, check_path};
pub use trust::{TRUST_PATH, TokenIssuer, TrustData, TrustDataError};
pub use verify::{
    HighWater, InspectedBundle, InspectedEntry, VerifiedBundle, VerifyError, VerifyPolicy, inspect,
    verify,
};

use sha2::{Digest as _, Sha256};

/// Aegis' signed manifest inside a bundle.
pub const MANIFEST_PATH: &str = "manifest.json";
/// OPA's bundle manifest inside a bundle.
pub const OPA_MANIFEST_PATH: &str = ".manifest";
/// The compiled data.
pub const DATA_PATH: &str = "data.json";
/// The shared Rego.
pub const POLICY_PATH: &str = "policy.rego";
/// The one OPA root an Aegis bundle owns: all data and every Rego package live under `aegis`.
pub const OPA_ROOT: &str = "aegis";
/// The `schema_version` this code writes and accepts.
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;

/// Caps applied while reading a bundle, before anything is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// Largest accepted bundle (gzip bytes).
    pub max_compressed_bytes: u64,
    /// Largest accepted tar stream after decompression (headers and padding included).
    pub max_uncompressed_bytes: u64,
    /// Largest accepted single file.
    pub max_file_bytes: u64,
    /// Most tar entries accepted.
    pub max_entries: usize,
}

impl Default for SizeLimits {
    /// 32 MiB compressed, 256 MiB uncompressed, 64 MiB per file, 10,000 entries.
    fn default() -> Self {
        Self {
            max_compressed_bytes: 32 << 20,
            max_uncompressed_bytes: 256 << 20,
            max_file_bytes: 64 << 20,
            max_entries: 10_000,
        }
    }
}

/// `"sha256:<hex>"` of a bundle's bytes: the name under which it is stored and published.
pub fn bundle_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Lowercase hex sha256, as used for file hashes in the manifest.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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
    use crate::ids::TenantId;
    use crate::keys::{Keypair, TrustStore};
    use std::collections::BTreeMap;

    const SCHEMA: &str = include_str!("../../../schemas/manifest.schema.json");

    fn spec() -> BundleSpec {
        BundleSpec {
            tenant: TenantId::new("acme").unwrap(),
            version: 3,
            created_at: "2025-01-02T03:04:05Z".into(),
            expires_at: Some("2030-01-01T00:00:00Z".into()),
            author: "alice@example.com".into(),
            source_change: Some("cr-42".into()),
        }
    }

    fn files() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("data.json".into(), br#"{"aegis":{"x":1}}"#.to_vec()),
            ("policy.rego".into(), b"package aegis\n".to_vec()),
            ("custom/x.rego".into(), b"package aegis.custom\n".to_vec()),
        ])
    }

    fn key() -> Keypair {
        Keypair::from_seed(&[7; 32])
    }

    #[test]
    fn built_manifest_matches_the_schema() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let built = build(&spec(), &files(), &key()).unwrap();
        let instance = serde_json::to_value(&built.manifest).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");

        // Without the optional fields too.
        let mut s = spec();
        s.expires_at = None;
        s.source_change = None;
        let built = build(&s, &files(), &key()).unwrap();
        let instance = serde_json::to_value(&built.manifest).unwrap();
        assert!(validator.is_valid(&instance));
        assert!(instance.get("expires_at").is_none());

        // The schema is strict: unknown fields, a missing signature, a bad path are invalid.
        let mut extra = instance.clone();
        extra["extra"] = serde_json::json!(1);
        assert!(!validator.is_valid(&extra));
        let mut unsigned = instance.clone();
        unsigned.as_object_mut().unwrap().remove("signature");
        assert!(!validator.is_valid(&unsigned));
        let mut traversal = instance.clone();
        traversal["files"]["../x"] = serde_json::json!("0".repeat(64));
        assert!(!validator.is_valid(&traversal));
    }

    #[test]
    fn every_schema_property_has_a_description() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        assert!(schema["description"].is_string());
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        let props = schema["properties"].as_object().unwrap();
        // The schema lists exactly the fields the type serializes.
        let built = build(&spec(), &files(), &key()).unwrap();
        let instance = serde_json::to_value(&built.manifest).unwrap();
        let mut fields: Vec<&String> = instance.as_object().unwrap().keys().collect();
        let mut listed: Vec<&String> = props.keys().collect();
        fields.sort();
        listed.sort();
        assert_eq!(fields, listed);
        for (name, prop) in props {
            assert!(prop["description"].is_string(), "{name} has no description");
        }
    }

    #[test]
    fn manifest_json_and_opa_manifest_are_canonical() {
        let built = build(&spec(), &files(), &key()).unwrap();
        let report = inspect(&built.bytes, &SizeLimits::default()).unwrap();
        let paths: Vec<&str> = report.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                ".manifest",
                "custom/x.rego",
                "data.json",
                "manifest.json",
                "policy.rego"
            ]
        );
        let mut trust = TrustStore::new();
        trust.trust(key().public_key().clone());
        let now = time::macros::datetime!(2025-06-01 00:00 UTC);
        let ok = verify(&built.bytes, &trust, &VerifyPolicy::new(now)).unwrap();
        assert_eq!(
            ok.files[".manifest"],
            br#"{"revision":"acme-v3","roots":["aegis"]}"#
        );
        assert_eq!(ok.data().unwrap(), br#"{"aegis":{"x":1}}"#);
        assert_eq!(ok.rego_files().count(), 2);
        assert_eq!(report.manifest, built.manifest);
        assert_eq!(report.digest, built.digest);
        for e in &report.entries {
            if e.path != MANIFEST_PATH {
                assert_eq!(e.listed_sha256.as_deref(), Some(e.sha256.as_str()));
            }
        }
    }

    #[test]
    fn build_rejects_bad_input() {
        let k = key();
        let mut f = files();
        f.remove("policy.rego");
        assert!(matches!(
            build(&spec(), &f, &k),
            Err(BuildError::MissingRequiredFile {
                path: "policy.rego"
            })
        ));
        let mut f = files();
        f.insert(".manifest".into(), b"{}".to_vec());
        assert!(matches!(
            build(&spec(), &f, &k),
            Err(BuildError::ReservedPath { .. })
        ));
        let mut f = files();
        f.insert("../evil.rego".into(), b"".to_vec());
        assert!(matches!(
            build(&spec(), &f, &k),
            Err(BuildError::UnsafePath { .. })
        ));
        let mut f = files();
        f.insert("data.json".into(), br#"{"other":{}}"#.to_vec());
        assert!(matches!(
            build(&spec(), &f, &k),
            Err(BuildError::DataOutsideRoot { .. })
        ));
        let mut f = files();
        f.insert("data.json".into(), b"{".to_vec());
        assert!(matches!(
            build(&spec(), &f, &k),
            Err(BuildError::InvalidDataJson(_))
        ));
        let mut s = spec();
        s.version = 0;
        assert!(matches!(
            build(&s, &files(), &k),
            Err(BuildError::Spec(ManifestError::VersionZero))
        ));
        let mut s = spec();
        s.created_at = "yesterday".into();
        assert!(matches!(
            build(&s, &files(), &k),
            Err(BuildError::Spec(ManifestError::InvalidTimestamp { .. }))
        ));
        let mut s = spec();
        s.expires_at = Some("2020-01-01T00:00:00Z".into());
        assert!(matches!(
            build(&s, &files(), &k),
            Err(BuildError::Spec(ManifestError::ExpiresBeforeCreated { .. }))
        ));
        let mut s = spec();
        s.author = " ".into();
        assert!(matches!(
            build(&s, &files(), &k),
            Err(BuildError::Spec(ManifestError::EmptyAuthor))
        ));
    }

    #[test]
    fn long_paths_survive_the_round_trip() {
        let mut f = files();
        let long = format!("{}/policy.rego", "d".repeat(150));
        f.insert(long.clone(), b"package aegis.long\n".to_vec());
        let built = build(&spec(), &f, &key()).unwrap();
        let again = build(&spec(), &f, &key()).unwrap();
        assert_eq!(built.bytes, again.bytes);
        let mut trust = TrustStore::new();
        trust.trust(key().public_key().clone());
        let now = time::macros::datetime!(2025-06-01 00:00 UTC);
        let ok = verify(&built.bytes, &trust, &VerifyPolicy::new(now)).unwrap();
        assert_eq!(ok.files[&long], b"package aegis.long\n");
    }

    #[test]
    fn trailing_data_is_rejected() {
        let built = build(&spec(), &files(), &key()).unwrap();
        let mut bytes = built.bytes.clone();
        bytes.extend_from_slice(b"junk");
        assert!(matches!(
            inspect(&bytes, &SizeLimits::default()),
            Err(VerifyError::TrailingData { bytes: 4 })
        ));
        // A second gzip member is trailing data too.
        let mut bytes = built.bytes.clone();
        bytes.extend_from_slice(&built.bytes);
        assert!(matches!(
            inspect(&bytes, &SizeLimits::default()),
            Err(VerifyError::TrailingData { .. })
        ));
    }
}
