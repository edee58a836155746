//! The tamper matrix: every way a bundle can be wrong, each rejected with its own error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::bundle::{
    BuiltBundle, BundleSpec, HighWater, SizeLimits, VerifyError, VerifyPolicy, build, inspect,
    verify,
};
use aegis_core::canonical::to_canonical_vec;
use aegis_core::ids::TenantId;
use aegis_core::keys::{Keypair, TrustStore};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2025-06-01 12:00 UTC);

fn signer() -> Keypair {
    Keypair::from_seed(&[1; 32])
}

fn spec(version: u64) -> BundleSpec {
    BundleSpec {
        tenant: TenantId::new("acme").unwrap(),
        version,
        created_at: "2025-06-01T00:00:00Z".into(),
        expires_at: Some("2025-07-01T00:00:00Z".into()),
        author: "alice@example.com".into(),
        source_change: Some("cr-7".into()),
    }
}

fn files(marker: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        (
            "data.json".to_owned(),
            format!(r#"{{"aegis":{{"marker":"{marker}","tenants":{{}}}}}}"#).into_bytes(),
        ),
        (
            "policy.rego".to_owned(),
            b"package aegis\n\ndefault allow := false\n".to_vec(),
        ),
        (
            "custom/extra.rego".to_owned(),
            b"package aegis.custom\n\nx := 1\n".to_vec(),
        ),
    ])
}

fn good(version: u64) -> BuiltBundle {
    build(&spec(version), &files("a"), &signer()).unwrap()
}

fn trust() -> TrustStore {
    let mut t = TrustStore::new();
    t.trust(signer().public_key().clone());
    t
}

fn policy() -> VerifyPolicy {
    VerifyPolicy::new(NOW)
}

fn check(bytes: &[u8]) -> Result<aegis_core::bundle::VerifiedBundle, VerifyError> {
    verify(bytes, &trust(), &policy())
}

// ---- archive helpers -------------------------------------------------------------------------

/// One tar entry, written with a raw name so that tests can produce what the builder refuses.
struct Entry {
    name: Vec<u8>,
    data: Vec<u8>,
    kind: tar::EntryType,
    link: Option<&'static str>,
}

fn file(name: &str, data: &[u8]) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        data: data.to_vec(),
        kind: tar::EntryType::Regular,
        link: None,
    }
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..e.name.len()].copy_from_slice(&e.name);
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        if let Some(link) = e.link {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        builder.append(&h, e.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(level));
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn pack(entries: &[Entry]) -> Vec<u8> {
    gzip(&tar_of(entries), 6)
}

fn unpack(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(path, data);
    }
    out
}

fn repack(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let entries: Vec<Entry> = files.iter().map(|(p, d)| file(p, d)).collect();
    pack(&entries)
}

/// Unpacks `bundle`, lets `edit` change the files, packs again.
fn tamper(bundle: &[u8], edit: impl FnOnce(&mut BTreeMap<String, Vec<u8>>)) -> Vec<u8> {
    let mut files = unpack(bundle);
    edit(&mut files);
    repack(&files)
}

/// Unpacks `bundle`, lets `edit` change manifest.json as JSON, packs again (not re-signed).
fn tamper_manifest(bundle: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    tamper(bundle, |files| {
        let mut m: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        edit(&mut m);
        files.insert("manifest.json".into(), to_canonical_vec(&m));
    })
}

fn flip_one_byte(data: &mut [u8]) {
    let i = data.len() / 2;
    data[i] ^= 0x01;
}

// ---- the good case ---------------------------------------------------------------------------

#[test]
fn good_bundle_verifies_and_files_round_trip() {
    let built = good(5);
    let ok = check(&built.bytes).unwrap();
    assert_eq!(ok.digest, built.digest);
    assert!(ok.digest.starts_with("sha256:") && ok.digest.len() == 7 + 64);
    assert_eq!(ok.manifest, built.manifest);
    assert_eq!(ok.manifest.version, 5);
    assert_eq!(ok.manifest.key_id, *signer().key_id());
    let input = files("a");
    for (path, data) in &input {
        assert_eq!(&ok.files[path], data, "{path}");
    }
    let mut expected: Vec<&str> = input.keys().map(String::as_str).collect();
    expected.push(".manifest");
    expected.sort();
    assert_eq!(
        ok.files.keys().map(String::as_str).collect::<Vec<_>>(),
        expected
    );

    // The same content repacked by another tar/gzip still verifies (the signature covers the
    // files, not the archive bytes), but it is a different bundle: a different digest.
    let repacked = tamper(&built.bytes, |_| {});
    let again = check(&repacked).unwrap();
    assert_eq!(again.files, ok.files);
    assert_ne!(again.digest, ok.digest);
}

// ---- one byte changed in each file -----------------------------------------------------------

fn assert_hash_mismatch(path: &str) {
    let bytes = tamper(&good(1).bytes, |f| flip_one_byte(f.get_mut(path).unwrap()));
    match check(&bytes) {
        Err(VerifyError::HashMismatch { path: p }) => assert_eq!(p, path),
        other => panic!("{path}: expected HashMismatch, got {other:?}"),
    }
}

#[test]
fn byte_changed_in_data_json() {
    assert_hash_mismatch("data.json");
}

#[test]
fn byte_changed_in_policy_rego() {
    assert_hash_mismatch("policy.rego");
}

#[test]
fn byte_changed_in_custom_rego() {
    assert_hash_mismatch("custom/extra.rego");
}

#[test]
fn byte_changed_in_opa_manifest() {
    assert_hash_mismatch(".manifest");
}

#[test]
fn byte_changed_in_manifest_json_breaks_the_signature() {
    let bytes = tamper_manifest(&good(1).bytes, |m| m["version"] = serde_json::json!(999));
    assert!(matches!(
        check(&bytes),
        Err(VerifyError::BadSignature { .. })
    ));
    let bytes = tamper_manifest(&good(1).bytes, |m| {
        m["expires_at"] = serde_json::json!("2099-01-01T00:00:00Z")
    });
    assert!(matches!(
        check(&bytes),
        Err(VerifyError::BadSignature { .. })
    ));
}

// ---- the file set ----------------------------------------------------------------------------

#[test]
fn file_added() {
    let bytes = tamper(&good(1).bytes, |f| {
        f.insert(
            "evil.rego".into(),
            b"package aegis\nallow := true\n".to_vec(),
        );
    });
    match check(&bytes) {
        Err(VerifyError::UnexpectedFile { path }) => assert_eq!(path, "evil.rego"),
        other => panic!("expected UnexpectedFile, got {other:?}"),
    }
}

#[test]
fn file_removed() {
    let bytes = tamper(&good(1).bytes, |f| {
        f.remove("custom/extra.rego");
    });
    match check(&bytes) {
        Err(VerifyError::MissingFile { path }) => assert_eq!(path, "custom/extra.rego"),
        other => panic!("expected MissingFile, got {other:?}"),
    }
}

#[test]
fn manifest_removed() {
    let bytes = tamper(&good(1).bytes, |f| {
        f.remove("manifest.json");
    });
    assert!(matches!(check(&bytes), Err(VerifyError::ManifestMissing)));
}

#[test]
fn manifest_garbage() {
    let bytes = tamper(&good(1).bytes, |f| {
        f.insert("manifest.json".into(), b"not json".to_vec());
    });
    assert!(matches!(
        check(&bytes),
        Err(VerifyError::ManifestInvalid(_))
    ));
    let bytes = tamper_manifest(&good(1).bytes, |m| {
        m["unknown_field"] = serde_json::json!(1)
    });
    assert!(matches!(
        check(&bytes),
        Err(VerifyError::ManifestInvalid(_))
    ));
}

// ---- signatures and keys ---------------------------------------------------------------------

#[test]
fn signature_stripped() {
    let bytes = tamper_manifest(&good(1).bytes, |m| {
        m.as_object_mut().unwrap().remove("signature");
    });
    assert!(matches!(check(&bytes), Err(VerifyError::SignatureMissing)));
}

#[test]
fn signature_malformed() {
    let bytes = tamper_manifest(&good(1).bytes, |m| {
        m["signature"] = serde_json::json!("!!not base64!!")
    });
    assert!(matches!(
        check(&bytes),
        Err(VerifyError::SignatureMalformed { .. })
    ));
    let bytes = tamper_manifest(&good(1).bytes, |m| {
        m["signature"] = serde_json::json!("AAAA")
    });
    assert!(matches!(
        check(&bytes),
        Err(VerifyError::SignatureMalformed { .. })
    ));
}

#[test]
fn signature_taken_from_another_bundle() {
    let other = build(&spec(1), &files("b"), &signer()).unwrap();
    let other_sig = other.manifest.signature.clone().unwrap();
    let bytes = tamper_manifest(&good(1).bytes, |m| {
        m["signature"] = serde_json::json!(other_sig)
    });
    assert!(matches!(
        check(&bytes),
        Err(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn unknown_key() {
    let stranger = Keypair::from_seed(&[9; 32]);
    let built = build(&spec(1), &files("a"), &stranger).unwrap();
    match check(&built.bytes) {
        Err(VerifyError::UnknownKey { key_id }) => assert_eq!(key_id, *stranger.key_id()),
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    // Claiming a trusted key id with a stranger's signature is a bad signature.
    let trusted_id = signer().key_id().to_string();
    let bytes = tamper_manifest(&built.bytes, |m| {
        m["key_id"] = serde_json::json!(trusted_id)
    });
    assert!(matches!(
        check(&bytes),
        Err(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn revoked_key() {
    let mut t = trust();
    t.revoke(signer().key_id().clone());
    match verify(&good(1).bytes, &t, &policy()) {
        Err(VerifyError::RevokedKey { key_id }) => assert_eq!(key_id, *signer().key_id()),
        other => panic!("expected RevokedKey, got {other:?}"),
    }
}

// ---- versions, tenant, expiry ----------------------------------------------------------------

fn with_high_water(version: u64, digest: &str) -> VerifyPolicy {
    VerifyPolicy {
        high_water: Some(HighWater {
            version,
            digest: digest.to_owned(),
        }),
        ..policy()
    }
}

#[test]
fn lower_version() {
    let v4 = good(4);
    let v5 = good(5);
    let p = with_high_water(5, &v5.digest);
    match verify(&v4.bytes, &trust(), &p) {
        Err(VerifyError::VersionNotAbove {
            version,
            high_water,
        }) => assert_eq!((version, high_water), (4, 5)),
        other => panic!("expected VersionNotAbove, got {other:?}"),
    }
    let v6 = good(6);
    assert!(verify(&v6.bytes, &trust(), &p).is_ok());
}

#[test]
fn equal_version() {
    let v5 = good(5);
    let p = with_high_water(5, &v5.digest);
    // The same bundle again (a restart re-verifying what it applied) is accepted.
    assert!(verify(&v5.bytes, &trust(), &p).is_ok());
    // Same version, different content: rejected.
    let other = build(&spec(5), &files("b"), &signer()).unwrap();
    assert!(matches!(
        verify(&other.bytes, &trust(), &p),
        Err(VerifyError::VersionNotAbove {
            version: 5,
            high_water: 5
        })
    ));
    // Same version, same files, different archive bytes: a different bundle, rejected.
    let repacked = tamper(&v5.bytes, |_| {});
    assert!(matches!(
        verify(&repacked, &trust(), &p),
        Err(VerifyError::VersionNotAbove { .. })
    ));
}

#[test]
fn wrong_tenant() {
    let p = VerifyPolicy {
        expected_tenant: Some(TenantId::new("globex").unwrap()),
        ..policy()
    };
    match verify(&good(1).bytes, &trust(), &p) {
        Err(VerifyError::WrongTenant { expected, found }) => {
            assert_eq!(expected.as_str(), "globex");
            assert_eq!(found.as_str(), "acme");
        }
        other => panic!("expected WrongTenant, got {other:?}"),
    }
    let p = VerifyPolicy {
        expected_tenant: Some(TenantId::new("acme").unwrap()),
        ..policy()
    };
    assert!(verify(&good(1).bytes, &trust(), &p).is_ok());
}

#[test]
fn expired() {
    let built = good(1);
    let at = |now| VerifyPolicy::new(now);
    assert!(matches!(
        verify(&built.bytes, &trust(), &at(datetime!(2025-08-01 00:00 UTC))),
        Err(VerifyError::Expired { .. })
    ));
    // Expiry is exclusive of the instant itself.
    assert!(matches!(
        verify(&built.bytes, &trust(), &at(datetime!(2025-07-01 00:00 UTC))),
        Err(VerifyError::Expired { .. })
    ));
    assert!(
        verify(
            &built.bytes,
            &trust(),
            &at(datetime!(2025-06-30 23:59:59 UTC))
        )
        .is_ok()
    );
    // No expiry: never expires.
    let mut s = spec(1);
    s.expires_at = None;
    let forever = build(&s, &files("a"), &signer()).unwrap();
    assert!(
        verify(
            &forever.bytes,
            &trust(),
            &at(datetime!(2999-01-01 00:00 UTC))
        )
        .is_ok()
    );
}

// ---- sizes -----------------------------------------------------------------------------------

fn limits() -> SizeLimits {
    SizeLimits {
        max_compressed_bytes: 64 << 10,
        max_uncompressed_bytes: 1 << 20,
        max_file_bytes: 512 << 10,
        max_entries: 16,
    }
}

#[test]
fn oversized_compressed_input() {
    let built = good(1);
    let p = VerifyPolicy {
        limits: SizeLimits {
            max_compressed_bytes: built.bytes.len() as u64 - 1,
            ..SizeLimits::default()
        },
        ..policy()
    };
    match verify(&built.bytes, &trust(), &p) {
        Err(VerifyError::CompressedTooLarge { size, limit }) => {
            assert_eq!(size, built.bytes.len() as u64);
            assert_eq!(limit, size - 1);
        }
        other => panic!("expected CompressedTooLarge, got {other:?}"),
    }
}

#[test]
fn gzip_bomb() {
    // 8 MiB of zeros compresses to a few KiB: far under the compressed cap, far over the
    // uncompressed one.
    let mut files = unpack(&good(1).bytes);
    files.insert("bomb.rego".into(), vec![0u8; 8 << 20]);
    let bomb = gzip(
        &tar_of(&files.iter().map(|(p, d)| file(p, d)).collect::<Vec<_>>()),
        9,
    );
    assert!(
        (bomb.len() as u64) < limits().max_compressed_bytes / 4,
        "{}",
        bomb.len()
    );
    let p = VerifyPolicy {
        limits: limits(),
        ..policy()
    };
    assert!(matches!(
        verify(&bomb, &trust(), &p),
        Err(VerifyError::UncompressedTooLarge { limit }) if limit == 1 << 20
    ));
    assert!(matches!(
        inspect(&bomb, &limits()),
        Err(VerifyError::UncompressedTooLarge { .. })
    ));
}

#[test]
fn file_over_the_per_file_cap() {
    let bytes = tamper(&good(1).bytes, |f| {
        f.insert("big.rego".into(), vec![b'x'; 600 << 10]);
    });
    let p = VerifyPolicy {
        limits: limits(),
        ..policy()
    };
    match verify(&bytes, &trust(), &p) {
        Err(VerifyError::FileTooLarge { path, size, .. }) => {
            assert_eq!(path, "big.rego");
            assert_eq!(size, 600 << 10);
        }
        other => panic!("expected FileTooLarge, got {other:?}"),
    }
}

#[test]
fn too_many_entries() {
    let bytes = tamper(&good(1).bytes, |f| {
        for i in 0..20 {
            f.insert(format!("many/{i}.rego"), Vec::new());
        }
    });
    let p = VerifyPolicy {
        limits: limits(),
        ..policy()
    };
    assert!(matches!(
        verify(&bytes, &trust(), &p),
        Err(VerifyError::TooManyEntries { limit: 16 })
    ));
}

// ---- archive structure -----------------------------------------------------------------------

fn good_entries() -> Vec<Entry> {
    unpack(&good(1).bytes)
        .iter()
        .map(|(p, d)| file(p, d))
        .collect()
}

#[test]
fn path_traversal_entry() {
    for evil in [
        "../evil.rego",
        "custom/../../evil.rego",
        "/etc/evil.rego",
        "./data.json",
    ] {
        let mut entries = good_entries();
        entries.push(file(evil, b"package aegis\n"));
        match check(&pack(&entries)) {
            Err(VerifyError::UnsafePath { path, .. }) => assert_eq!(path, evil),
            other => panic!("{evil}: expected UnsafePath, got {other:?}"),
        }
    }
}

#[test]
fn links_and_directories_are_rejected() {
    for (kind, link) in [
        (tar::EntryType::Symlink, Some("/etc/passwd")),
        (tar::EntryType::Link, Some("data.json")),
        (tar::EntryType::Directory, None),
    ] {
        let mut entries = good_entries();
        entries.push(Entry {
            name: b"odd".to_vec(),
            data: Vec::new(),
            kind,
            link,
        });
        match check(&pack(&entries)) {
            Err(VerifyError::NotARegularFile { path, .. }) => assert_eq!(path, "odd"),
            other => panic!("{kind:?}: expected NotARegularFile, got {other:?}"),
        }
    }
}

#[test]
fn duplicate_entry() {
    let mut entries = good_entries();
    entries.push(file("policy.rego", b"package aegis\nallow := true\n"));
    match check(&pack(&entries)) {
        Err(VerifyError::DuplicateEntry { path }) => assert_eq!(path, "policy.rego"),
        other => panic!("expected DuplicateEntry, got {other:?}"),
    }
}

#[test]
fn not_gzip() {
    assert!(matches!(
        check(b"definitely not a gzip stream"),
        Err(VerifyError::Decompress { .. })
    ));
    let mut truncated = good(1).bytes;
    truncated.truncate(truncated.len() - 10);
    assert!(matches!(
        check(&truncated),
        Err(VerifyError::Decompress { .. })
    ));
}

#[test]
fn errors_read_clearly() {
    let msg = VerifyError::VersionNotAbove {
        version: 3,
        high_water: 5,
    }
    .to_string();
    assert!(
        msg.contains('3') && msg.contains('5') && msg.contains("high-water"),
        "{msg}"
    );
    let msg = VerifyError::HashMismatch {
        path: "data.json".into(),
    }
    .to_string();
    assert!(msg.contains("data.json"), "{msg}");
}
