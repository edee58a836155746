//! Bundle surgery for the tests that make gateways refuse bundles: unpack a built bundle,
//! change its files, pack it again.
//!
//! Test support: a bundle that does not unpack panics, like an assertion.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

/// Unpacks a bundle, lets `edit` change its files, and packs it again (gzipped tar).
pub fn retar(bytes: &[u8], edit: impl FnOnce(&mut BTreeMap<String, Vec<u8>>)) -> Vec<u8> {
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut files = BTreeMap::new();
    for entry in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    edit(&mut files);
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (path, data) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, path, data.as_slice())
            .unwrap();
    }
    let mut gz = builder.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}
