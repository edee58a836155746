//! Ed25519 signing keys, their key ids and on-disk files, and the trust store gateways verify
//! bundles against.
//!
//! - A [`KeyId`] is derived from the public key: `"ed25519:"` followed by the first 16 hex
//!   characters of the SHA-256 of the 32 public key bytes. Anyone holding the public key can
//!   recompute it; a key file whose stated id does not match its key is rejected.
//! - A signing key lives in `<name>.key.json` (mode 0600 on unix) and its public half in
//!   `<name>.pub.json`; see [`SigningKeyFile`] and [`PublicKeyFile`].
//! - A [`TrustStore`] holds several trusted public keys at once plus a set of revoked key ids,
//!   so that keys rotate without downtime: trust the new key everywhere, start signing with it,
//!   then revoke the old one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The only signature algorithm Aegis uses.
pub const ALGORITHM: &str = "ed25519";
/// `kind` of a signing key file.
pub const SIGNING_KEY_KIND: &str = "aegis-signing-key";
/// `kind` of a public key file.
pub const PUBLIC_KEY_KIND: &str = "aegis-public-key";
/// File name suffix of a signing key file.
pub const SIGNING_KEY_SUFFIX: &str = ".key.json";
/// File name suffix of a public key file.
pub const PUBLIC_KEY_SUFFIX: &str = ".pub.json";
/// In a trust directory, the file listing revoked key ids.
pub const REVOKED_FILE: &str = "revoked.json";

const KEY_ID_PREFIX: &str = "ed25519:";
const KEY_ID_HEX_LEN: usize = 16;

/// Everything that can go wrong with a key or a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key id {value:?}: expected \"ed25519:\" followed by 16 lowercase hex digits")]
    InvalidKeyId { value: String },
    #[error("wrong kind {found:?}, expected {expected:?}")]
    WrongKind {
        expected: &'static str,
        found: String,
    },
    #[error("unsupported algorithm {found:?}, only \"ed25519\" is supported")]
    UnsupportedAlgorithm { found: String },
    #[error("field {field} is not valid standard base64: {source}")]
    BadBase64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("field {field} must decode to {expected} bytes, got {found}")]
    BadLength {
        field: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("public_key is not a valid ed25519 public key: {reason}")]
    InvalidPublicKey { reason: String },
    #[error("public_key is a weak (small-order) ed25519 key and cannot be trusted")]
    WeakPublicKey,
    #[error("public_key does not match the secret key")]
    PublicKeyMismatch,
    #[error("key_id {stated} does not match the public key, whose key id is {computed}")]
    KeyIdMismatch { stated: KeyId, computed: KeyId },
    #[error("cannot get randomness from the operating system: {0}")]
    Random(getrandom::Error),
    #[error(
        "invalid key name {name:?}: use 1-64 characters from [A-Za-z0-9._-], not starting with '.'"
    )]
    InvalidName { name: String },
    #[error("{path}: already exists; refusing to overwrite a key file")]
    AlreadyExists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid key file: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<KeyError>,
    },
}

impl KeyError {
    fn in_file(self, path: &Path) -> Self {
        match self {
            e @ (KeyError::Io { .. }
            | KeyError::Json { .. }
            | KeyError::InFile { .. }
            | KeyError::AlreadyExists { .. }) => e,
            e => KeyError::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        }
    }
}

/// The id of an ed25519 public key: `ed25519:` + the first 16 hex digits of sha256(public key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// The key id of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        let short = digest.get(..KEY_ID_HEX_LEN).unwrap_or(&digest);
        KeyId(format!("{KEY_ID_PREFIX}{short}"))
    }

    /// Parses a key id, checking its shape (not that any key has it).
    pub fn new(value: impl Into<String>) -> Result<Self, KeyError> {
        let value = value.into();
        let ok = value.strip_prefix(KEY_ID_PREFIX).is_some_and(|hex| {
            hex.len() == KEY_ID_HEX_LEN
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(KeyId(value))
        } else {
            Err(KeyError::InvalidKeyId { value })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyId {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, KeyError> {
        Self::new(value)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for KeyId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::new(s)
    }
}

fn decode_fixed<const N: usize>(field: &'static str, b64: &str) -> Result<[u8; N], KeyError> {
    let bytes = BASE64
        .decode(b64)
        .map_err(|source| KeyError::BadBase64 { field, source })?;
    let found = bytes.len();
    <[u8; N]>::try_from(bytes).map_err(|_| KeyError::BadLength {
        field,
        expected: N,
        found,
    })
}

fn check_algorithm(algorithm: &str) -> Result<(), KeyError> {
    if algorithm == ALGORITHM {
        Ok(())
    } else {
        Err(KeyError::UnsupportedAlgorithm {
            found: algorithm.to_owned(),
        })
    }
}

fn check_kind(expected: &'static str, found: &str) -> Result<(), KeyError> {
    if found == expected {
        Ok(())
    } else {
        Err(KeyError::WrongKind {
            expected,
            found: found.to_owned(),
        })
    }
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidName {
            name: name.to_owned(),
        })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| KeyError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as pretty JSON to a new file; fails if the file exists.
fn write_new_json<T: Serialize>(path: &Path, value: &T, secret: bool) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(value).map_err(|source| KeyError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push(b'\n');
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            io(e)
        }
    })?;
    file.write_all(&text).map_err(io)?;
    file.sync_all().map_err(io)
}

/// A public key together with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_id: KeyId,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("key_id", &self.key_id)
            .field("public_key", &self.to_base64())
            .finish()
    }
}

impl PublicKey {
    /// Wraps a verifying key, rejecting weak (small-order) keys.
    pub fn new(key: VerifyingKey) -> Result<Self, KeyError> {
        if key.is_weak() {
            return Err(KeyError::WeakPublicKey);
        }
        Ok(Self {
            key_id: KeyId::of(&key),
            key,
        })
    }

    /// Parses 32 public key bytes in standard base64.
    pub fn from_base64(b64: &str) -> Result<Self, KeyError> {
        let bytes = decode_fixed::<32>("public_key", b64)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| KeyError::InvalidPublicKey {
            reason: e.to_string(),
        })?;
        Self::new(key)
    }

    /// Parses a public key and checks that `key_id` is its id.
    pub fn from_parts(key_id: &KeyId, public_key_b64: &str) -> Result<Self, KeyError> {
        let key = Self::from_base64(public_key_b64)?;
        if &key.key_id != key_id {
            return Err(KeyError::KeyIdMismatch {
                stated: key_id.clone(),
                computed: key.key_id,
            });
        }
        Ok(key)
    }

    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The 32 public key bytes in standard base64.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.key.as_bytes())
    }

    pub fn to_file(&self) -> PublicKeyFile {
        PublicKeyFile {
            kind: PUBLIC_KEY_KIND.to_owned(),
            algorithm: ALGORITHM.to_owned(),
            key_id: self.key_id.clone(),
            public_key: self.to_base64(),
        }
    }

    /// Checks kind, algorithm, the key and that the key id matches it.
    pub fn from_file(file: &PublicKeyFile) -> Result<Self, KeyError> {
        check_kind(PUBLIC_KEY_KIND, &file.kind)?;
        check_algorithm(&file.algorithm)?;
        Self::from_parts(&file.key_id, &file.public_key)
    }

    /// Loads a `*.pub.json` file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let file: PublicKeyFile = read_json(path)?;
        Self::from_file(&file).map_err(|e| e.in_file(path))
    }

    /// Writes a new public key file (fails if it exists).
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        write_new_json(path, &self.to_file(), false)
    }
}

/// `<name>.pub.json`: `{"kind":"aegis-public-key","algorithm":"ed25519","key_id":..,"public_key":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    pub kind: String,
    pub algorithm: String,
    pub key_id: KeyId,
    /// The 32 public key bytes, standard base64.
    pub public_key: String,
}

/// `<name>.key.json`: a [`PublicKeyFile`]'s fields plus `secret_key`, the 32-byte ed25519 seed
/// in standard base64. `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyFile {
    pub kind: String,
    pub algorithm: String,
    pub key_id: KeyId,
    pub public_key: String,
    pub secret_key: String,
}

impl fmt::Debug for SigningKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyFile")
            .field("kind", &self.kind)
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("public_key", &self.public_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Where [`Keypair::write_to_dir`] put the two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPaths {
    pub signing_key: PathBuf,
    pub public_key: PathBuf,
}

/// An ed25519 signing key and its public half. `Debug` prints only the key id.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("key_id", &self.public.key_id)
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// A new key from 32 bytes of operating-system randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(KeyError::Random)?;
        let key = Self::from_seed(&seed);
        seed.fill(0);
        Ok(key)
    }

    /// The key with this 32-byte seed (the ed25519 "secret key").
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        // A public key derived from a (clamped) secret scalar is never of small order, so the
        // weak-key check of `PublicKey::new` is not needed here.
        let key = signing.verifying_key();
        let public = PublicKey {
            key_id: KeyId::of(&key),
            key,
        };
        Self { signing, public }
    }

    pub fn key_id(&self) -> &KeyId {
        self.public.key_id()
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        self.public.verifying_key()
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(message)
    }

    pub fn to_file(&self) -> SigningKeyFile {
        SigningKeyFile {
            kind: SIGNING_KEY_KIND.to_owned(),
            algorithm: ALGORITHM.to_owned(),
            key_id: self.public.key_id.clone(),
            public_key: self.public.to_base64(),
            secret_key: BASE64.encode(self.signing.as_bytes()),
        }
    }

    /// Checks kind, algorithm, that the public key is the secret key's and that the key id is
    /// the public key's.
    pub fn from_file(file: &SigningKeyFile) -> Result<Self, KeyError> {
        check_kind(SIGNING_KEY_KIND, &file.kind)?;
        check_algorithm(&file.algorithm)?;
        let mut seed = decode_fixed::<32>("secret_key", &file.secret_key)?;
        let key = Self::from_seed(&seed);
        seed.fill(0);
        let stated = PublicKey::from_base64(&file.public_key)?;
        if stated.key != key.public.key {
            return Err(KeyError::PublicKeyMismatch);
        }
        if file.key_id != key.public.key_id {
            return Err(KeyError::KeyIdMismatch {
                stated: file.key_id.clone(),
                computed: key.public.key_id,
            });
        }
        Ok(key)
    }

    /// Loads a `*.key.json` file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let file: SigningKeyFile = read_json(path)?;
        Self::from_file(&file).map_err(|e| e.in_file(path))
    }

    /// Writes `<dir>/<name>.key.json` (mode 0600 on unix) and `<dir>/<name>.pub.json`.
    /// Refuses to overwrite either file.
    pub fn write_to_dir(&self, dir: &Path, name: &str) -> Result<KeyPaths, KeyError> {
        check_name(name)?;
        let paths = KeyPaths {
            signing_key: dir.join(format!("{name}{SIGNING_KEY_SUFFIX}")),
            public_key: dir.join(format!("{name}{PUBLIC_KEY_SUFFIX}")),
        };
        for path in [&paths.signing_key, &paths.public_key] {
            if path.exists() {
                return Err(KeyError::AlreadyExists { path: path.clone() });
            }
        }
        write_new_json(&paths.signing_key, &self.to_file(), true)?;
        self.public.write(&paths.public_key)?;
        Ok(paths)
    }
}

/// Why a key id cannot be used to verify, or why a trust store could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("key {key_id} is not trusted")]
    UnknownKey { key_id: KeyId },
    #[error("key {key_id} has been revoked")]
    RevokedKey { key_id: KeyId },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid trust file: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
}

/// One entry of a trust file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyEntry {
    pub key_id: KeyId,
    /// The 32 public key bytes, standard base64.
    pub public_key: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// A trust file: `{"keys":[{"key_id","public_key","revoked"?}], "revoked"?: ["ed25519:.."]}`.
/// The top-level `revoked` list revokes key ids whose public key is not listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    pub keys: Vec<TrustedKeyEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<KeyId>,
}

/// `revoked.json` in a trust directory: `{"revoked":["ed25519:.."]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedFile {
    pub revoked: Vec<KeyId>,
}

/// The public keys a verifier trusts, and the key ids it no longer trusts. Revocation wins over
/// trust, and a revoked id stays revoked even if its key is trusted again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustStore {
    keys: BTreeMap<KeyId, VerifyingKey>,
    revoked: BTreeSet<KeyId>,
}

impl TrustStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` (idempotent).
    pub fn trust(&mut self, key: PublicKey) {
        self.keys.insert(key.key_id, key.key);
    }

    /// Revokes `key_id`, whether or not its key is trusted.
    pub fn revoke(&mut self, key_id: KeyId) {
        self.revoked.insert(key_id);
    }

    pub fn is_revoked(&self, key_id: &KeyId) -> bool {
        self.revoked.contains(key_id)
    }

    /// The key to verify with, if `key_id` is trusted and not revoked.
    pub fn lookup(&self, key_id: &KeyId) -> Result<&VerifyingKey, TrustError> {
        if self.revoked.contains(key_id) {
            return Err(TrustError::RevokedKey {
                key_id: key_id.clone(),
            });
        }
        self.keys.get(key_id).ok_or_else(|| TrustError::UnknownKey {
            key_id: key_id.clone(),
        })
    }

    /// Trusted key ids, including revoked ones, in order.
    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// Revoked key ids, in order.
    pub fn revoked_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.revoked.iter()
    }

    /// Keys that [`lookup`](Self::lookup) would return.
    pub fn active_key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys().filter(|id| !self.revoked.contains(*id))
    }

    /// Builds a store from a parsed trust file, checking every key against its id.
    pub fn from_trust_file(file: &TrustFile) -> Result<Self, KeyError> {
        let mut store = Self::new();
        for entry in &file.keys {
            let key = PublicKey::from_parts(&entry.key_id, &entry.public_key)?;
            if entry.revoked {
                store.revoke(key.key_id.clone());
            }
            store.trust(key);
        }
        for id in &file.revoked {
            store.revoke(id.clone());
        }
        Ok(store)
    }

    /// The store as a trust file (keys and revocations in key id order).
    pub fn to_trust_file(&self) -> TrustFile {
        TrustFile {
            keys: self
                .keys
                .iter()
                .map(|(id, key)| TrustedKeyEntry {
                    key_id: id.clone(),
                    public_key: BASE64.encode(key.as_bytes()),
                    revoked: self.revoked.contains(id),
                })
                .collect(),
            revoked: self
                .revoked
                .iter()
                .filter(|id| !self.keys.contains_key(*id))
                .cloned()
                .collect(),
        }
    }

    /// Loads a trust directory if `path` is a directory, a single public key if it is a
    /// `*.pub.json` file, else a trust file.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let meta = std::fs::metadata(path).map_err(|source| TrustError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let is_public_key = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".pub.json"));
        if meta.is_dir() {
            Self::load_dir(path)
        } else if is_public_key {
            let key = PublicKey::load(path).map_err(|source| TrustError::Key {
                path: path.to_path_buf(),
                source,
            })?;
            let mut store = Self::new();
            store.trust(key);
            Ok(store)
        } else {
            Self::load_file(path)
        }
    }

    /// Loads a JSON trust file ([`TrustFile`]).
    pub fn load_file(path: &Path) -> Result<Self, TrustError> {
        let bytes = std::fs::read(path).map_err(|source| TrustError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: TrustFile =
            serde_json::from_slice(&bytes).map_err(|source| TrustError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_trust_file(&file).map_err(|source| TrustError::Key {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Loads every `*.pub.json` in `dir` (not recursively) and, if present, `revoked.json`.
    /// Other files (including `*.key.json`) are ignored.
    pub fn load_dir(dir: &Path) -> Result<Self, TrustError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TrustError::Io { path, source }
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            names.push(entry.path());
        }
        names.sort();
        let mut store = Self::new();
        for path in names {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(PUBLIC_KEY_SUFFIX) {
                let key = PublicKey::load(&path).map_err(|source| TrustError::Key {
                    path: path.clone(),
                    source,
                })?;
                store.trust(key);
            } else if name == REVOKED_FILE {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let file: RevokedFile =
                    serde_json::from_slice(&bytes).map_err(|source| TrustError::Json {
                        path: path.clone(),
                        source,
                    })?;
                for id in file.revoked {
                    store.revoke(id);
                }
            }
        }
        Ok(store)
    }
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
    use ed25519_dalek::Verifier as _;

    fn key(n: u8) -> Keypair {
        Keypair::from_seed(&[n; 32])
    }

    #[test]
    fn key_id_shape_and_derivation() {
        let k = key(1);
        let id = k.key_id().as_str();
        assert!(id.starts_with("ed25519:"));
        assert_eq!(id.len(), "ed25519:".len() + 16);
        let full = hex::encode(Sha256::digest(k.verifying_key().as_bytes()));
        assert_eq!(&id[8..], &full[..16]);
        assert_eq!(KeyId::new(id).unwrap(), *k.key_id());
        assert!(KeyId::new("ed25519:ABCDEF0123456789").is_err());
        assert!(KeyId::new("ed25519:abc").is_err());
        assert!(KeyId::new("rsa:0123456789abcdef").is_err());
        let parsed: Result<KeyId, _> = serde_json::from_str("\"nope\"");
        assert!(parsed.is_err());
    }

    #[test]
    fn generate_gives_distinct_working_keys() {
        let a = Keypair::generate().unwrap();
        let b = Keypair::generate().unwrap();
        assert_ne!(a.key_id(), b.key_id());
        let sig = a.sign(b"hello");
        assert!(a.verifying_key().verify(b"hello", &sig).is_ok());
        assert!(b.verifying_key().verify(b"hello", &sig).is_err());
        assert!(!format!("{a:?}").contains(&a.to_file().secret_key));
        assert!(!format!("{:?}", a.to_file()).contains(&a.to_file().secret_key));
    }

    #[test]
    fn files_round_trip_and_are_checked() {
        let k = key(2);
        let f = k.to_file();
        assert_eq!(f.kind, "aegis-signing-key");
        let back = Keypair::from_file(&f).unwrap();
        assert_eq!(back.key_id(), k.key_id());

        let mut wrong_pub = f.clone();
        wrong_pub.public_key = key(3).public_key().to_base64();
        assert!(matches!(
            Keypair::from_file(&wrong_pub),
            Err(KeyError::PublicKeyMismatch)
        ));
        let mut wrong_id = f.clone();
        wrong_id.key_id = key(3).key_id().clone();
        assert!(matches!(
            Keypair::from_file(&wrong_id),
            Err(KeyError::KeyIdMismatch { .. })
        ));
        let mut wrong_kind = f.clone();
        wrong_kind.kind = PUBLIC_KEY_KIND.into();
        assert!(matches!(
            Keypair::from_file(&wrong_kind),
            Err(KeyError::WrongKind { .. })
        ));
        let mut short = f.clone();
        short.secret_key = BASE64.encode([0u8; 31]);
        assert!(matches!(
            Keypair::from_file(&short),
            Err(KeyError::BadLength { .. })
        ));

        let p = k.public_key().to_file();
        assert_eq!(PublicKey::from_file(&p).unwrap(), *k.public_key());
        let mut alg = p.clone();
        alg.algorithm = "rsa".into();
        assert!(matches!(
            PublicKey::from_file(&alg),
            Err(KeyError::UnsupportedAlgorithm { .. })
        ));
    }

    #[test]
    fn write_and_load_from_dir() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(4);
        let paths = k.write_to_dir(dir.path(), "signer").unwrap();
        assert!(paths.signing_key.ends_with("signer.key.json"));
        assert!(paths.public_key.ends_with("signer.pub.json"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&paths.signing_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            Keypair::load(&paths.signing_key).unwrap().key_id(),
            k.key_id()
        );
        assert_eq!(PublicKey::load(&paths.public_key).unwrap(), *k.public_key());
        assert!(matches!(
            k.write_to_dir(dir.path(), "signer"),
            Err(KeyError::AlreadyExists { .. })
        ));
        assert!(matches!(
            k.write_to_dir(dir.path(), "../x"),
            Err(KeyError::InvalidName { .. })
        ));

        // A tampered file is rejected with an error naming it.
        let mut f = k.to_file();
        f.key_id = key(5).key_id().clone();
        let bad = dir.path().join("bad.key.json");
        std::fs::write(&bad, serde_json::to_vec(&f).unwrap()).unwrap();
        let err = Keypair::load(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.key.json") && err.contains("does not match"),
            "{err}"
        );
    }

    #[test]
    fn trust_store_lookup_and_revocation() {
        let (a, b) = (key(6), key(7));
        let mut store = TrustStore::new();
        store.trust(a.public_key().clone());
        store.trust(b.public_key().clone());
        assert_eq!(store.lookup(a.key_id()).unwrap(), a.verifying_key());
        store.revoke(a.key_id().clone());
        assert!(matches!(
            store.lookup(a.key_id()),
            Err(TrustError::RevokedKey { .. })
        ));
        assert!(store.lookup(b.key_id()).is_ok());
        assert!(matches!(
            store.lookup(key(8).key_id()),
            Err(TrustError::UnknownKey { .. })
        ));
        assert_eq!(store.active_key_ids().collect::<Vec<_>>(), vec![b.key_id()]);
        let back = TrustStore::from_trust_file(&store.to_trust_file()).unwrap();
        assert_eq!(back, store);
    }

    #[test]
    fn trust_store_from_file_and_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (key(9), key(10));
        let file = dir.path().join("trust.json");
        std::fs::write(
            &file,
            serde_json::to_vec(&serde_json::json!({"keys": [
                {"key_id": a.key_id(), "public_key": a.public_key().to_base64()},
                {"key_id": b.key_id(), "public_key": b.public_key().to_base64(), "revoked": true},
            ]}))
            .unwrap(),
        )
        .unwrap();
        let store = TrustStore::load(&file).unwrap();
        assert!(store.lookup(a.key_id()).is_ok());
        assert!(matches!(
            store.lookup(b.key_id()),
            Err(TrustError::RevokedKey { .. })
        ));

        let tdir = dir.path().join("trust.d");
        std::fs::create_dir(&tdir).unwrap();
        a.write_to_dir(&tdir, "a").unwrap();
        b.public_key().write(&tdir.join("b.pub.json")).unwrap();
        let store = TrustStore::load(&tdir).unwrap();
        assert!(store.lookup(a.key_id()).is_ok());
        assert!(store.lookup(b.key_id()).is_ok());
        std::fs::write(
            tdir.join("revoked.json"),
            format!("{{\"revoked\":[\"{}\"]}}", a.key_id()),
        )
        .unwrap();
        let store = TrustStore::load(&tdir).unwrap();
        assert!(matches!(
            store.lookup(a.key_id()),
            Err(TrustError::RevokedKey { .. })
        ));
        assert!(store.lookup(b.key_id()).is_ok());

        // A mismatched id in a trust file is an error naming the file.
        std::fs::write(
            &file,
            serde_json::to_vec(&serde_json::json!({"keys": [
                {"key_id": b.key_id(), "public_key": a.public_key().to_base64()},
            ]}))
            .unwrap(),
        )
        .unwrap();
        let err = TrustStore::load(&file).unwrap_err().to_string();
        assert!(err.contains("trust.json"), "{err}");
    }
}
