//! The RocksDB read model.
//!
//! Two column families:
//! - `default` holds the **state**: everything the fold derives from `AEGIS_CHANGES`, plus the
//!   last applied stream sequence. It is a pure function of the stream: deleting the directory
//!   and replaying gives the same bytes ([`Store::state_digest`]).
//! - `local` holds what this instance did on the outside (which bundles it has seen announced,
//!   where the last audit checkpoint ended, the outbox of effects still to perform). It is not
//!   part of the state and may differ between two control planes.
//!
//! Every event is applied in one [`Txn`]: its state writes, the new checkpoint sequence and the
//! tenant's chain head go into one `WriteBatch`, so a crash leaves either all or none of it.

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const LOCAL_CF: &str = "local";

/// The key of the last applied `AEGIS_CHANGES` sequence.
pub const APPLIED_KEY: &[u8] = b"applied";

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB at {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("corrupt value under key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cannot encode a value for key {key:?}: {reason}")]
    Encode { key: String, reason: String },
}

/// The control plane's database.
pub struct Store {
    db: DB,
    path: PathBuf,
}

/// Which column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    State,
    Local,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, Options::default()),
            ColumnFamilyDescriptor::new(LOCAL_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Rocks {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Store {
            db,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    fn cf(&self, family: Family) -> Option<&rocksdb::ColumnFamily> {
        match family {
            Family::State => None,
            Family::Local => self.db.cf_handle(LOCAL_CF),
        }
    }

    /// Raw bytes under `key`.
    pub fn get_raw(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let r = match self.cf(family) {
            Some(cf) => self.db.get_cf(cf, key),
            None if family == Family::State => self.db.get(key),
            None => return Ok(None),
        };
        r.map_err(|e| self.rocks(e))
    }

    /// A JSON value under `key`.
    pub fn get<T: DeserializeOwned>(
        &self,
        family: Family,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get_raw(family, key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(key, &bytes).map(Some),
        }
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        family: Family,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        self.scan_raw(family, prefix.as_bytes(), |k, v| {
            let key = String::from_utf8_lossy(k).into_owned();
            let value = decode(&key, v)?;
            out.push((key, value));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Calls `f` for each raw pair under `prefix` until it returns `false`.
    pub fn scan_raw(
        &self,
        family: Family,
        prefix: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_from(family, prefix, prefix, f)
    }

    /// Calls `f` for each raw pair under `prefix`, starting at key `from`, until it returns
    /// `false`.
    pub fn scan_from(
        &self,
        family: Family,
        from: &[u8],
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mode = IteratorMode::From(from, Direction::Forward);
        let iter = match self.cf(family) {
            Some(cf) => self.db.iterator_cf(cf, mode),
            None if family == Family::State => self.db.iterator(mode),
            None => return Ok(()),
        };
        for item in iter {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// The last applied `AEGIS_CHANGES` sequence (0 before the first event).
    pub fn applied_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .get::<u64>(Family::State, "applied")?
            .unwrap_or_default())
    }

    /// Starts a transaction for one event.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            store: self,
            writes: BTreeMap::new(),
            local: BTreeMap::new(),
        }
    }

    /// Writes local (non-state) values directly.
    pub fn put_local<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = encode(key, value)?;
        match self.cf(Family::Local) {
            Some(cf) => self.db.put_cf(cf, key.as_bytes(), bytes),
            None => return Ok(()),
        }
        .map_err(|e| self.rocks(e))
    }

    /// Deletes a local (non-state) value.
    pub fn delete_local(&self, key: &str) -> Result<(), StoreError> {
        match self.cf(Family::Local) {
            Some(cf) => self.db.delete_cf(cf, key.as_bytes()),
            None => return Ok(()),
        }
        .map_err(|e| self.rocks(e))
    }

    /// SHA-256 over every state key and value, in key order: two stores with the same digest
    /// hold the same state. (The `local` family is left out on purpose.)
    pub fn state_digest(&self) -> Result<StateDigest, StoreError> {
        let mut h = Sha256::new();
        let mut keys = 0u64;
        self.scan_raw(Family::State, b"", |k, v| {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
            keys += 1;
            Ok(true)
        })?;
        Ok(StateDigest {
            digest: hex::encode(h.finalize()),
            keys,
            applied_seq: self.applied_seq()?,
        })
    }

    /// Flushes memtables and the WAL to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(|e| self.rocks(e))
    }
}

/// A summary of the whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StateDigest {
    pub digest: String,
    pub keys: u64,
    pub applied_seq: u64,
}

/// The writes of one event, committed atomically. Reads see this transaction's own writes.
#[derive(Debug)]
pub struct Txn<'a> {
    store: &'a Store,
    writes: BTreeMap<String, Option<Vec<u8>>>,
    local: BTreeMap<String, Option<Vec<u8>>>,
}

impl Txn<'_> {
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.writes.get(key) {
            Some(Some(bytes)) => decode(key, bytes).map(Some),
            Some(None) => Ok(None),
            None => self.store.get(Family::State, key),
        }
    }

    /// State values under `prefix`, merged with this transaction's writes.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, StoreError> {
        let mut merged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        self.store
            .scan_raw(Family::State, prefix.as_bytes(), |k, v| {
                merged.insert(String::from_utf8_lossy(k).into_owned(), v.to_vec());
                Ok(true)
            })?;
        for (k, v) in self.writes.range(prefix.to_owned()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(bytes) => merged.insert(k.clone(), bytes.clone()),
                None => merged.remove(k),
            };
        }
        merged
            .into_iter()
            .map(|(k, v)| decode(&k, &v).map(|value| (k, value)))
            .collect()
    }

    pub fn put<T: Serialize>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> Result<(), StoreError> {
        let key = key.into();
        let bytes = encode(&key, value)?;
        self.writes.insert(key, Some(bytes));
        Ok(())
    }

    pub fn put_bytes(&mut self, key: impl Into<String>, bytes: Vec<u8>) {
        self.writes.insert(key.into(), Some(bytes));
    }

    pub fn delete(&mut self, key: impl Into<String>) {
        self.writes.insert(key.into(), None);
    }

    /// A local (non-state) write committed with this event (the outbox).
    pub fn put_local<T: Serialize>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> Result<(), StoreError> {
        let key = key.into();
        let bytes = encode(&key, value)?;
        self.local.insert(key, Some(bytes));
        Ok(())
    }

    pub fn delete_local(&mut self, key: impl Into<String>) {
        self.local.insert(key.into(), None);
    }

    /// Commits the writes and the new applied sequence in one batch.
    pub fn commit(self, applied_seq: u64) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (k, v) in &self.writes {
            match v {
                Some(bytes) => batch.put(k.as_bytes(), bytes),
                None => batch.delete(k.as_bytes()),
            }
        }
        batch.put(APPLIED_KEY, encode("applied", &applied_seq)?);
        if let Some(cf) = self.store.cf(Family::Local) {
            for (k, v) in &self.local {
                match v {
                    Some(bytes) => batch.put_cf(cf, k.as_bytes(), bytes),
                    None => batch.delete_cf(cf, k.as_bytes()),
                }
            }
        }
        self.store.db.write(batch).map_err(|e| self.store.rocks(e))
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Zero-padded decimal, so keys sort numerically.
pub fn pad(n: u64) -> String {
    format!("{n:020}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_txn_reads_its_own_writes_and_commits_atomically_with_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut t = store.txn();
        t.put("t/a/x", &1u32).unwrap();
        t.put("t/a/y", &2u32).unwrap();
        assert_eq!(t.get::<u32>("t/a/x").unwrap(), Some(1));
        t.delete("t/a/y");
        assert_eq!(t.scan::<u32>("t/a/").unwrap().len(), 1);
        t.put_local("outbox/1", &"x").unwrap();
        t.commit(7).unwrap();
        assert_eq!(store.applied_seq().unwrap(), 7);
        assert_eq!(store.get::<u32>(Family::State, "t/a/x").unwrap(), Some(1));
        assert_eq!(store.get::<u32>(Family::State, "t/a/y").unwrap(), None);
        assert_eq!(
            store.get::<String>(Family::Local, "outbox/1").unwrap(),
            Some("x".into())
        );
        let d1 = store.state_digest().unwrap();
        store.put_local("other", &1).unwrap();
        assert_eq!(store.state_digest().unwrap(), d1, "local is not state");
    }
}
