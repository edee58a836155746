//! The signed manifest (`manifest.json`) and the path rules shared by build and verify.

use super::{DATA_PATH, MANIFEST_SCHEMA_VERSION, OPA_MANIFEST_PATH, POLICY_PATH};
use crate::canonical::to_canonical_vec;
use crate::ids::TenantId;
use crate::keys::KeyId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A manifest that is well-formed JSON but not a valid Aegis manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json does not parse: {0}")]
    Parse(#[source] serde_json::Error),
    #[error(
        "unsupported manifest schema_version {found} (this build understands {MANIFEST_SCHEMA_VERSION})"
    )]
    UnsupportedSchemaVersion { found: u32 },
    #[error("version must be at least 1")]
    VersionZero,
    #[error("{field} {value:?} is not an RFC 3339 timestamp")]
    InvalidTimestamp { field: &'static str, value: String },
    #[error("expires_at {expires_at} is not after created_at {created_at}")]
    ExpiresBeforeCreated {
        created_at: String,
        expires_at: String,
    },
    #[error("author must not be empty")]
    EmptyAuthor,
    #[error("files lists unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("files lists manifest.json, which cannot hash itself")]
    ListsItself,
    #[error("required file {path} is not listed in files")]
    RequiredFileNotListed { path: &'static str },
    #[error("hash of {path} is not 64 lowercase hex digits")]
    MalformedHash { path: String },
}

/// The signed manifest of a bundle (`manifest.json`). See `schemas/manifest.schema.json`.
///
/// `signature` is optional in the type only so that an unsigned manifest (the thing that is
/// signed) and a manifest whose signature was stripped can be represented; every published
/// manifest has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub tenant: TenantId,
    /// Monotonically increasing per tenant, starting at 1.
    pub version: u64,
    /// RFC 3339, taken from the publishing event.
    pub created_at: String,
    /// RFC 3339; the bundle must not be applied at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub author: String,
    /// The change (request) this bundle was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_change: Option<String>,
    /// Every file in the bundle except `manifest.json`, with its lowercase hex sha256.
    pub files: BTreeMap<String, String>,
    pub key_id: KeyId,
    /// Standard base64 ed25519 signature over [`Manifest::signing_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Manifest {
    /// The bytes the signature covers: canonical JSON of the manifest without `signature`.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut value = serde_json::to_value(self)?;
        if let Some(obj) = value.as_object_mut() {
            obj.remove("signature");
        }
        Ok(to_canonical_vec(&value))
    }

    /// The canonical bytes of the whole manifest, as written to `manifest.json`.
    pub fn to_canonical_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        Ok(to_canonical_vec(&serde_json::to_value(self)?))
    }

    /// `<tenant>-v<version>`: OPA's revision for this bundle.
    pub fn revision(&self) -> String {
        revision(&self.tenant, self.version)
    }

    /// `created_at`, parsed.
    pub fn created_at_time(&self) -> Result<OffsetDateTime, ManifestError> {
        parse_time("created_at", &self.created_at)
    }

    /// `expires_at`, parsed.
    pub fn expires_at_time(&self) -> Result<Option<OffsetDateTime>, ManifestError> {
        self.expires_at
            .as_deref()
            .map(|v| parse_time("expires_at", v))
            .transpose()
    }

    /// Checks everything about the manifest that does not need the archive or a key: schema
    /// version, version, timestamps, author, file paths and hash shapes, required files.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.schema_version != MANIFEST_SCHEMA_VERSION {
            return Err(ManifestError::UnsupportedSchemaVersion {
                found: self.schema_version,
            });
        }
        if self.version == 0 {
            return Err(ManifestError::VersionZero);
        }
        let created = self.created_at_time()?;
        if let Some(expires) = self.expires_at_time()?
            && expires <= created
        {
            return Err(ManifestError::ExpiresBeforeCreated {
                created_at: self.created_at.clone(),
                expires_at: self.expires_at.clone().unwrap_or_default(),
            });
        }
        if self.author.trim().is_empty() {
            return Err(ManifestError::EmptyAuthor);
        }
        for (path, hash) in &self.files {
            check_path(path).map_err(|reason| ManifestError::UnsafePath {
                path: path.clone(),
                reason,
            })?;
            if path == super::MANIFEST_PATH {
                return Err(ManifestError::ListsItself);
            }
            let ok = hash.len() == 64
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(ManifestError::MalformedHash { path: path.clone() });
            }
        }
        for path in [DATA_PATH, POLICY_PATH, OPA_MANIFEST_PATH] {
            if !self.files.contains_key(path) {
                return Err(ManifestError::RequiredFileNotListed { path });
            }
        }
        Ok(())
    }
}

pub(crate) fn revision(tenant: &TenantId, version: u64) -> String {
    format!("{tenant}-v{version}")
}

pub(crate) fn parse_time(
    field: &'static str,
    value: &str,
) -> Result<OffsetDateTime, ManifestError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|_| ManifestError::InvalidTimestamp {
        field,
        value: value.to_owned(),
    })
}

/// Checks that `path` is a safe relative path inside a bundle: non-empty, at most 1024 bytes,
/// `/`-separated, not absolute, no empty, `.` or `..` components, no backslashes, no control
/// characters. Returns why not.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > 1024 {
        return Err("longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return Err("absolute path");
    }
    if path.contains('\\') {
        return Err("contains a backslash");
    }
    if path.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("empty path component (leading, trailing or doubled '/')"),
            "." => return Err("contains a '.' component"),
            ".." => return Err("contains a '..' component"),
            _ => {}
        }
    }
    Ok(())
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

    #[test]
    fn path_rules() {
        for ok in [
            "data.json",
            ".manifest",
            "custom/x.rego",
            "a/b/c.rego",
            "a..b",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "./a",
            "a//b",
            "a/",
            "a\\b",
            "a\u{0}b",
            "..",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }
}
