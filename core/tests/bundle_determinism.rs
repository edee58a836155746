//! Building is deterministic (property test), and keys rotate without downtime.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::bundle::{BundleSpec, VerifyError, VerifyPolicy, build, verify};
use aegis_core::ids::TenantId;
use aegis_core::keys::{Keypair, TrustStore};
use proptest::prelude::*;
use std::collections::BTreeMap;
use time::macros::datetime;

fn spec_strategy() -> impl Strategy<Value = BundleSpec> {
    (
        "[a-z][a-z0-9-]{0,15}",
        1u64..=u64::MAX / 2,
        "20[0-9]{2}-0[1-9]-[12][0-8]T[01][0-9]:[0-5][0-9]:[0-5][0-9]Z",
        proptest::option::of("21[0-9]{2}-0[1-9]-[12][0-8]T[01][0-9]:[0-5][0-9]:[0-5][0-9]Z"),
        "[a-z]{1,10}@example\\.com",
        proptest::option::of("[a-z0-9-]{1,12}"),
    )
        .prop_map(
            |(tenant, version, created_at, expires_at, author, source_change)| BundleSpec {
                tenant: TenantId::new(tenant).unwrap(),
                version,
                created_at,
                expires_at,
                author,
                source_change,
            },
        )
}

fn files_strategy() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    (
        proptest::collection::btree_map("[a-z]{1,6}", "\\PC{0,20}", 0..5),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::btree_map(
            "[a-z]{1,6}(/[a-z]{1,6}){0,2}\\.rego",
            proptest::collection::vec(any::<u8>(), 0..300),
            0..4,
        ),
    )
        .prop_map(|(data, policy, extra)| {
            let mut files = extra;
            files.insert(
                "data.json".into(),
                serde_json::to_vec(&serde_json::json!({ "aegis": data })).unwrap(),
            );
            files.insert("policy.rego".into(), policy);
            files
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn same_inputs_same_bytes(
        spec in spec_strategy(),
        files in files_strategy(),
        seed in any::<[u8; 32]>(),
    ) {
        let key = Keypair::from_seed(&seed);
        let a = build(&spec, &files, &key).unwrap();
        // A separately constructed key and cloned inputs: nothing shared but the values.
        let b = build(&spec.clone(), &files.clone(), &Keypair::from_seed(&seed)).unwrap();
        prop_assert_eq!(&a.bytes, &b.bytes);
        prop_assert_eq!(&a.digest, &b.digest);
        prop_assert_eq!(&a.manifest, &b.manifest);

        // And what was built verifies and round-trips.
        let mut trust = TrustStore::new();
        trust.trust(key.public_key().clone());
        let ok = verify(&a.bytes, &trust, &VerifyPolicy::new(datetime!(2000-01-01 00:00 UTC)))
            .unwrap();
        for (path, data) in &files {
            prop_assert_eq!(&ok.files[path], data);
        }
        prop_assert_eq!(ok.digest, a.digest);
    }

    #[test]
    fn different_content_different_digest(
        spec in spec_strategy(),
        files in files_strategy(),
        pick in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let key = Keypair::from_seed(&[3; 32]);
        let a = build(&spec, &files, &key).unwrap();

        // Change one payload file other than data.json (which must stay valid JSON).
        let mut changed = files.clone();
        let candidates: Vec<String> =
            changed.keys().filter(|p| p.as_str() != "data.json").cloned().collect();
        let path = pick.get(&candidates).clone();
        changed.get_mut(&path).unwrap().push(byte);
        let b = build(&spec, &changed, &key).unwrap();
        prop_assert_ne!(&a.digest, &b.digest);
        prop_assert_ne!(&a.manifest.files[&path], &b.manifest.files[&path]);

        // A different version is a different bundle too.
        let mut next = spec.clone();
        next.version += 1;
        let c = build(&next, &files, &key).unwrap();
        prop_assert_ne!(&a.digest, &c.digest);
    }
}

fn spec(version: u64) -> BundleSpec {
    BundleSpec {
        tenant: TenantId::new("acme").unwrap(),
        version,
        created_at: "2025-06-01T00:00:00Z".into(),
        expires_at: None,
        author: "ops".into(),
        source_change: None,
    }
}

fn files() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("data.json".to_owned(), br#"{"aegis":{}}"#.to_vec()),
        ("policy.rego".to_owned(), b"package aegis\n".to_vec()),
    ])
}

#[test]
fn key_rotation() {
    let now = datetime!(2025-06-02 00:00 UTC);
    let policy = VerifyPolicy::new(now);
    let old = Keypair::from_seed(&[10; 32]);
    let new = Keypair::from_seed(&[11; 32]);
    let by_old = build(&spec(1), &files(), &old).unwrap();
    let by_new = build(&spec(2), &files(), &new).unwrap();

    // Step 1: trust both keys; bundles signed by either verify.
    let mut trust = TrustStore::new();
    trust.trust(old.public_key().clone());
    trust.trust(new.public_key().clone());
    assert!(verify(&by_old.bytes, &trust, &policy).is_ok());
    assert!(verify(&by_new.bytes, &trust, &policy).is_ok());

    // Step 2: revoke the old key; its bundles fail, the new key's still verify.
    trust.revoke(old.key_id().clone());
    match verify(&by_old.bytes, &trust, &policy) {
        Err(VerifyError::RevokedKey { key_id }) => assert_eq!(key_id, *old.key_id()),
        other => panic!("expected RevokedKey, got {other:?}"),
    }
    assert!(verify(&by_new.bytes, &trust, &policy).is_ok());
}

#[test]
fn key_rotation_through_a_trust_directory() {
    let now = datetime!(2025-06-02 00:00 UTC);
    let policy = VerifyPolicy::new(now);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let trust_dir = dir.path().join("trust");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all(&trust_dir).unwrap();

    let old = Keypair::generate().unwrap();
    let old_paths = old.write_to_dir(&keys, "old").unwrap();
    std::fs::copy(&old_paths.public_key, trust_dir.join("old.pub.json")).unwrap();
    let by_old = build(
        &spec(1),
        &files(),
        &Keypair::load(&old_paths.signing_key).unwrap(),
    )
    .unwrap();
    assert!(
        verify(
            &by_old.bytes,
            &TrustStore::load(&trust_dir).unwrap(),
            &policy
        )
        .is_ok()
    );

    // Roll out the new public key first, then sign with it.
    let new = Keypair::generate().unwrap();
    let new_paths = new.write_to_dir(&keys, "new").unwrap();
    std::fs::copy(&new_paths.public_key, trust_dir.join("new.pub.json")).unwrap();
    let by_new = build(
        &spec(2),
        &files(),
        &Keypair::load(&new_paths.signing_key).unwrap(),
    )
    .unwrap();
    let trust = TrustStore::load(&trust_dir).unwrap();
    assert!(verify(&by_old.bytes, &trust, &policy).is_ok());
    assert!(verify(&by_new.bytes, &trust, &policy).is_ok());

    // Then revoke the old one.
    std::fs::write(
        trust_dir.join("revoked.json"),
        serde_json::to_vec(&serde_json::json!({ "revoked": [old.key_id()] })).unwrap(),
    )
    .unwrap();
    let trust = TrustStore::load(&trust_dir).unwrap();
    assert!(matches!(
        verify(&by_old.bytes, &trust, &policy),
        Err(VerifyError::RevokedKey { .. })
    ));
    assert!(verify(&by_new.bytes, &trust, &policy).is_ok());
}
