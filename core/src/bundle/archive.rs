//! The deterministic tar.gz writer and the bounded reader.

use super::SizeLimits;
use super::manifest::check_path;
use super::verify::VerifyError;
use flate2::{Compression, GzBuilder};
use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};

/// The gzip level every bundle is written with. Changing it changes every bundle's bytes.
const GZIP_LEVEL: u32 = 9;
/// Mode of every entry.
const FILE_MODE: u32 = 0o644;

/// Writes `files` (already in path order, as a `BTreeMap` iterates) as a gzipped tar with
/// fixed metadata: GNU headers, regular files only, mode 0644, uid/gid 0, no user or group
/// names, mtime 0; gzip with mtime 0, no file name, OS byte 255 and a fixed level.
pub(crate) fn write_tar_gz(files: &BTreeMap<String, Vec<u8>>) -> io::Result<Vec<u8>> {
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    let mut builder = tar::Builder::new(gz);
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(FILE_MODE);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_username("")?;
        header.set_groupname("")?;
        // Sets the path (GNU long-name entry when over 100 bytes) and the checksum.
        builder.append_data(&mut header, path, data.as_slice())?;
    }
    let mut gz = builder.into_inner()?;
    gz.flush()?;
    gz.finish()
}

/// Decompresses and unpacks a bundle, enforcing `limits` and the entry rules. Returns every
/// file (including `manifest.json`) by path.
pub(crate) fn read_tar_gz(
    bytes: &[u8],
    limits: &SizeLimits,
) -> Result<BTreeMap<String, Vec<u8>>, VerifyError> {
    let size = bytes.len() as u64;
    if size > limits.max_compressed_bytes {
        return Err(VerifyError::CompressedTooLarge {
            size,
            limit: limits.max_compressed_bytes,
        });
    }

    // Decompress into memory with a hard cap: read at most one byte more than allowed.
    let mut decoder = flate2::bufread::GzDecoder::new(bytes);
    let mut tar_bytes = Vec::new();
    (&mut decoder)
        .take(limits.max_uncompressed_bytes.saturating_add(1))
        .read_to_end(&mut tar_bytes)
        .map_err(|e| VerifyError::Decompress {
            reason: e.to_string(),
        })?;
    if tar_bytes.len() as u64 > limits.max_uncompressed_bytes {
        return Err(VerifyError::UncompressedTooLarge {
            limit: limits.max_uncompressed_bytes,
        });
    }
    // One gzip member, nothing after it.
    let rest = decoder.into_inner();
    if !rest.is_empty() {
        return Err(VerifyError::TrailingData {
            bytes: rest.len() as u64,
        });
    }

    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let archive_err = |e: io::Error| VerifyError::Archive {
        reason: e.to_string(),
    };
    let mut files = BTreeMap::new();
    let mut count = 0usize;
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        count += 1;
        if count > limits.max_entries {
            return Err(VerifyError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw_path = entry.path_bytes().into_owned();
        let path = String::from_utf8(raw_path).map_err(|e| VerifyError::UnsafePath {
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            reason: "not valid UTF-8",
        })?;
        check_path(&path).map_err(|reason| VerifyError::UnsafePath {
            path: path.clone(),
            reason,
        })?;
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            return Err(VerifyError::NotARegularFile {
                path,
                kind: format!("{kind:?}"),
            });
        }
        if files.contains_key(&path) {
            return Err(VerifyError::DuplicateEntry { path });
        }
        let size = entry.size();
        if size > limits.max_file_bytes {
            return Err(VerifyError::FileTooLarge {
                path,
                size,
                limit: limits.max_file_bytes,
            });
        }
        let mut data = Vec::new();
        (&mut entry)
            .take(limits.max_file_bytes.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(archive_err)?;
        if data.len() as u64 != size {
            return Err(VerifyError::Archive {
                reason: format!("entry {path} is truncated"),
            });
        }
        files.insert(path, data);
    }
    Ok(files)
}
