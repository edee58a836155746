//! The last known-good bundle and the high-water mark, per tenant, on local disk.
//!
//! Layout, under the gateway's data directory:
//!
//! ```text
//! <data_dir>/bundles/<tenant>/bundle.tar.gz     the bytes of the bundle in force (as fetched)
//! <data_dir>/bundles/<tenant>/high_water.json   {"version":7,"digest":"sha256:…","stage":"global"}
//! <data_dir>/bundles/<tenant>/controls.json      the last applied tenant_controls, as signed
//! <data_dir>/bundles/<tenant>/candidate.tar.gz   the bytes of the rollout candidate in force
//! ```
//!
//! `<tenant>` is the tenant id with `:`, `@` and `/` written as `%3A`, `%40`, `%2F` (ids cannot
//! contain `%`, so distinct tenants never share a directory).
//!
//! Every write is atomic: a temporary file in the same directory, written and fsynced, renamed
//! over the target, then the directory fsynced, so a crash leaves either the old file or the new
//! one, never a torn one. [`LocalStore::save`] writes the bundle before the high-water mark: a
//! crash between the two leaves a newer bundle with an older mark, which the next start
//! verifies (it is above the mark) and then records — never a mark that names a bundle the disk
//! does not hold.
//!
//! Nothing read back from here is trusted: the stored bundle is verified again at start exactly
//! like one from NATS (signature, hashes, tenant, expiry, the stored mark), see
//! [`super::restore`]. The mark itself is not signed; it only ever makes the gateway refuse
//! more (older versions), so a lost mark is rebuilt from the signed bundle's version.

use aegis_core::bundle::HighWater;
use aegis_core::events::RolloutStage;
use aegis_core::ids::TenantId;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Directory under the data directory that holds every tenant's state.
pub const BUNDLES_DIR: &str = "bundles";
/// The last known-good bundle.
pub const BUNDLE_FILE: &str = "bundle.tar.gz";
/// The high-water mark.
pub const HIGH_WATER_FILE: &str = "high_water.json";
/// The last applied `tenant_controls` envelope, byte for byte as the control plane signed it
/// (verified again when read back).
pub const CONTROLS_FILE: &str = "controls.json";
/// The rollout candidate in force.
pub const CANDIDATE_FILE: &str = "candidate.tar.gz";

/// Why local state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LocalStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a valid high-water file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot serialize the high-water mark: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// The high-water mark as stored, with the rollout stage of the bundle it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMark {
    pub high_water: HighWater,
    /// Stage of the bundle at `high_water` when it was last in force (informational; not
    /// signed).
    pub stage: RolloutStage,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkFile {
    version: u64,
    digest: String,
    #[serde(default)]
    stage: RolloutStage,
}

/// What [`LocalStore::load`] found for a tenant. Each part is `Ok(None)` when absent and `Err`
/// when present but unreadable.
#[derive(Debug)]
pub struct StoredState {
    pub bundle: Result<Option<Vec<u8>>, LocalStoreError>,
    pub mark: Result<Option<StoredMark>, LocalStoreError>,
}

/// Per-tenant bundle state under `<data_dir>/bundles/`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    /// Opens (creating it if needed) `<data_dir>/bundles`.
    pub fn open(data_dir: &Path) -> Result<LocalStore, LocalStoreError> {
        let root = data_dir.join(BUNDLES_DIR);
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(LocalStore { root })
    }

    /// `<data_dir>/bundles`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one tenant.
    pub fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.root.join(dir_name(tenant))
    }

    /// Path of the tenant's stored bundle.
    pub fn bundle_path(&self, tenant: &TenantId) -> PathBuf {
        self.tenant_dir(tenant).join(BUNDLE_FILE)
    }

    /// Path of the tenant's high-water file.
    pub fn mark_path(&self, tenant: &TenantId) -> PathBuf {
        self.tenant_dir(tenant).join(HIGH_WATER_FILE)
    }

    /// Reads what is stored for `tenant`.
    pub fn load(&self, tenant: &TenantId) -> StoredState {
        let bundle_path = self.bundle_path(tenant);
        let bundle = match fs::read(&bundle_path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&bundle_path)(e)),
        };
        StoredState {
            bundle,
            mark: self.load_mark(tenant),
        }
    }

    /// Reads the stored `tenant_controls` envelope (unverified), if any.
    pub fn load_controls(&self, tenant: &TenantId) -> Result<Option<Vec<u8>>, LocalStoreError> {
        read_optional(&self.tenant_dir(tenant).join(CONTROLS_FILE))
    }

    /// Stores the signed `tenant_controls` envelope just applied.
    pub fn save_controls(&self, tenant: &TenantId, envelope: &[u8]) -> Result<(), LocalStoreError> {
        let dir = self.ensure_tenant_dir(tenant)?;
        write_atomic(&dir, CONTROLS_FILE, envelope)
    }

    /// Reads the stored candidate bundle, if any.
    pub fn load_candidate(&self, tenant: &TenantId) -> Result<Option<Vec<u8>>, LocalStoreError> {
        read_optional(&self.tenant_dir(tenant).join(CANDIDATE_FILE))
    }

    /// Stores the candidate's bytes, or removes the stored candidate (None).
    pub fn save_candidate(
        &self,
        tenant: &TenantId,
        bytes: Option<&[u8]>,
    ) -> Result<(), LocalStoreError> {
        let dir = self.ensure_tenant_dir(tenant)?;
        match bytes {
            Some(bytes) => write_atomic(&dir, CANDIDATE_FILE, bytes),
            None => {
                let path = dir.join(CANDIDATE_FILE);
                match fs::remove_file(&path) {
                    Ok(()) => File::open(&dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io_err(&dir)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
        }
    }

    /// Stores only the stable bundle's bytes, leaving the mark (a stable below the mark, which
    /// a signed controls state named).
    pub fn save_bundle(&self, tenant: &TenantId, bytes: &[u8]) -> Result<(), LocalStoreError> {
        let dir = self.ensure_tenant_dir(tenant)?;
        write_atomic(&dir, BUNDLE_FILE, bytes)
    }

    /// Reads only the high-water mark.
    pub fn load_mark(&self, tenant: &TenantId) -> Result<Option<StoredMark>, LocalStoreError> {
        let path = self.mark_path(tenant);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let corrupt = |reason: String| LocalStoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let file: MarkFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version == 0 {
            return Err(corrupt("version 0".to_owned()));
        }
        if !is_digest(&file.digest) {
            return Err(corrupt(format!(
                "digest {:?} is not sha256:<64 hex>",
                file.digest
            )));
        }
        Ok(Some(StoredMark {
            high_water: HighWater {
                version: file.version,
                digest: file.digest,
            },
            stage: file.stage,
        }))
    }

    /// The tenant's directory, created (and its entry fsynced) on first use.
    fn ensure_tenant_dir(&self, tenant: &TenantId) -> Result<PathBuf, LocalStoreError> {
        let dir = self.tenant_dir(tenant);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            File::open(&self.root)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.root))?;
        }
        Ok(dir)
    }

    /// Stores a newly applied bundle: first its bytes, then the mark.
    pub fn save(
        &self,
        tenant: &TenantId,
        bytes: &[u8],
        mark: &StoredMark,
    ) -> Result<(), LocalStoreError> {
        let dir = self.ensure_tenant_dir(tenant)?;
        write_atomic(&dir, BUNDLE_FILE, bytes)?;
        self.save_mark(tenant, mark)
    }

    /// Stores only the mark (after a stage change, or to repair a lost mark).
    pub fn save_mark(&self, tenant: &TenantId, mark: &StoredMark) -> Result<(), LocalStoreError> {
        let dir = self.ensure_tenant_dir(tenant)?;
        let file = MarkFile {
            version: mark.high_water.version,
            digest: mark.high_water.digest.clone(),
            stage: mark.stage,
        };
        let mut bytes = serde_json::to_vec(&file).map_err(LocalStoreError::Serialize)?;
        bytes.push(b'\n');
        write_atomic(&dir, HIGH_WATER_FILE, &bytes)
    }
}

/// The directory name of a tenant: the id with `:`, `@`, `/` percent-encoded.
pub fn dir_name(tenant: &TenantId) -> String {
    let mut out = String::with_capacity(tenant.as_str().len());
    for c in tenant.as_str().chars() {
        match c {
            ':' => out.push_str("%3A"),
            '@' => out.push_str("%40"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, LocalStoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LocalStoreError + '_ {
    move |source| LocalStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `dir/name` atomically: temp file, fsync, rename, fsync of the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LocalStoreError> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let target = dir.join(name);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    if let Err(e) = fs::rename(&tmp, &target) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&target)(e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
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

    fn mark(version: u64) -> StoredMark {
        StoredMark {
            high_water: HighWater {
                version,
                digest: format!("sha256:{}", "ab".repeat(32)),
            },
            stage: RolloutStage::Shadow,
        }
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let t = TenantId::new("org:acme@eu/1").unwrap();
        let empty = store.load(&t);
        assert!(matches!(empty.bundle, Ok(None)));
        assert!(matches!(empty.mark, Ok(None)));

        store.save(&t, b"bundle-bytes", &mark(4)).unwrap();
        let got = store.load(&t);
        assert_eq!(got.bundle.unwrap().unwrap(), b"bundle-bytes");
        assert_eq!(got.mark.unwrap().unwrap(), mark(4));
        assert!(
            store
                .tenant_dir(&t)
                .ends_with("bundles/org%3Aacme%40eu%2F1")
        );
        // No temporary files are left behind.
        let names: Vec<String> = fs::read_dir(store.tenant_dir(&t))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        fs::write(store.mark_path(&t), b"{\"version\":").unwrap();
        assert!(matches!(
            store.load(&t).mark,
            Err(LocalStoreError::Corrupt { .. })
        ));
        fs::write(store.mark_path(&t), b"{\"version\":3,\"digest\":\"md5:x\"}").unwrap();
        assert!(matches!(
            store.load(&t).mark,
            Err(LocalStoreError::Corrupt { .. })
        ));
    }
}
