//! Token issuer keys end to end, against a real nats-server, the real control-plane binary and
//! the real `aegisctl` binary: a key registered before the first publish rides in version 1's
//! `trust.json`; registering a second key and revoking the first each put a new version live at
//! once (same `data.json`, new trust data) without any policy change; tokens verify against the
//! shipped keys exactly while they are trusted; `aegisctl issuer add|list|revoke` drive the same
//! events and report rejections with exit 5.
//!
//! Needs the binaries: `cargo build -p aegis-controlplane -p aegisctl` (scripts/test.sh builds
//! every binary).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::bundle::{TRUST_PATH, TrustData, VerifiedBundle};
use aegis_core::events::*;
use aegis_core::ids::{AgentId, ChangeId, TenantId};
use aegis_core::keys::{Keypair, TrustStore};
use aegis_core::query::{IssuerView, QueryAnswer, QueryRequest, VersionView};
use aegis_core::token::{self, TokenRequest};
use aegis_tests::controlplane::{Keys, binary, query};
use aegis_tests::flow::{
    FINANCE_POLICY, accept, announced, fetch_verified, finance_proposal, refuse, setup_actors,
    start_control_plane,
};
use async_nats::jetstream;
use std::path::Path;

fn trust_data(bundle: &VerifiedBundle) -> TrustData {
    let bytes = bundle
        .files
        .get(TRUST_PATH)
        .unwrap_or_else(|| panic!("no {TRUST_PATH} in version {}", bundle.manifest.version));
    TrustData::from_bytes(bytes).unwrap()
}

fn key_ids(trust: &TrustData) -> Vec<String> {
    let mut ids: Vec<String> = trust
        .token_issuers
        .iter()
        .map(|i| i.key_id.to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn register(issuer: &str, key: &Keypair) -> TokenIssuerRegistered {
    TokenIssuerRegistered {
        issuer: issuer.into(),
        key_id: key.key_id().clone(),
        public_key: key.public_key().to_base64(),
    }
}

/// The last `bundle_published` on `aegis.bundles.acme`.
async fn last_announcement(js: &jetstream::Context) -> BundlePublished {
    let last = aegis_nats::last_message(js, "AEGIS_BUNDLES", "aegis.bundles.acme")
        .await
        .unwrap()
        .unwrap();
    match serde_json::from_slice::<Envelope>(&last.payload)
        .unwrap()
        .event
    {
        Event::BundlePublished(b) => b,
        other => panic!("{other:?}"),
    }
}

/// A token for the finance agent, signed by `key` as `issuer`.
fn token_of(issuer: &str, key: &Keypair) -> String {
    token::issue(
        &TokenRequest {
            issuer: issuer.into(),
            tenant: TenantId::new("acme").unwrap(),
            agent: AgentId::new("finance-agent").unwrap(),
            audience: token::DEFAULT_AUDIENCE.into(),
            call_chain: vec![],
            issued_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            ttl_seconds: 600,
            token_id: None,
        },
        key,
    )
    .unwrap()
}

/// Whether `token` verifies against the issuer keys shipped in `bundle`.
fn accepted_by(bundle: &VerifiedBundle, token: &str) -> bool {
    let keys = trust_data(bundle)
        .issuer_keys(&TenantId::new("acme").unwrap())
        .unwrap();
    token::verify(
        token,
        &keys,
        token::DEFAULT_AUDIENCE,
        time::OffsetDateTime::now_utc().unix_timestamp(),
        30,
    )
    .is_ok()
}

/// Runs the `aegisctl` binary as the root admin of `acme`; its exit code and stdout+stderr.
async fn aegisctl(nats_url: &str, keys: &Keys, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(binary("aegisctl").unwrap())
        .args(args)
        .args(["--nats", nats_url, "--tenant", "acme", "--actor", "root"])
        .arg("--key")
        .arg(keys.dir.path().join("root.key.json"))
        .args(["--timeout", "60"])
        .env_remove("AEGIS_NATS_CREDS")
        .env_remove("AEGIS_NATS_USER")
        .env_remove("AEGIS_NATS_PASSWORD")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `aegisctl issuer add --issuer <issuer> --public-key <public_key>` as the root admin.
async fn aegisctl_issuer_add(
    nats_url: &str,
    keys: &Keys,
    issuer: &str,
    public_key: &str,
) -> (i32, String) {
    let args = [
        "issuer",
        "add",
        "--issuer",
        issuer,
        "--public-key",
        public_key,
    ];
    aegisctl(nats_url, keys, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_keys_ride_in_every_bundle_and_trust_changes_publish_at_once() {
    let (server, js, keys, cp) = start_control_plane(&[]).await;
    let tenant = TenantId::new("acme").unwrap();
    let [alice, bob, carol, pat] = setup_actors(&js, &keys, "acme").await;
    let root = keys.root_operator(&tenant);
    let mut trust = TrustStore::new();
    trust.trust(keys.control_plane.public_key().clone());
    let (idp_a, idp_b) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());

    // Only admins register issuer keys, and the key must be the key id's.
    refuse(
        &js,
        &alice.sign(register("acme-idp", &idp_a)),
        "needs role admin",
    )
    .await;
    let mut mismatched = register("acme-idp", &idp_a);
    mismatched.public_key = idp_b.public_key().to_base64();
    refuse(&js, &root.sign(mismatched), "does not match key id").await;

    // Before the first publish: accepted, and nothing is published yet.
    accept(&js, &root.sign(register("acme-idp", &idp_a))).await;
    refuse(
        &js,
        &root.sign(register("acme-idp", &idp_a)),
        "already registered",
    )
    .await;

    // The first publish carries the key.
    let c1 = ChangeId::random().unwrap();
    accept(&js, &alice.sign(finance_proposal(&c1, FINANCE_POLICY, 0))).await;
    for op in [&bob, &carol] {
        accept(
            &js,
            &op.sign(ChangeApproved {
                change_id: c1.clone(),
                comment: None,
            }),
        )
        .await;
    }
    accept(
        &js,
        &pat.sign(ChangePublished {
            change_id: c1.clone(),
            stage: RolloutStage::Global,
        }),
    )
    .await;
    let v1 = announced(&js, &tenant, 1).await;
    let b1 = fetch_verified(&js, &trust, &v1.digest).await;
    assert_eq!(
        key_ids(&trust_data(&b1)),
        [idp_a.key_id().to_string()],
        "{}",
        cp.log()
    );
    assert_eq!(trust_data(&b1).token_issuers[0].issuer, "acme-idp");
    assert!(accepted_by(&b1, &token_of("acme-idp", &idp_a)));
    assert!(!accepted_by(&b1, &token_of("acme-idp", &idp_b)));

    // A second key: a new version is announced at once, same policies, both keys.
    let reg_b = root.sign(register("acme-idp", &idp_b));
    accept(&js, &reg_b).await;
    let v2 = announced(&js, &tenant, 2).await;
    assert_eq!((v2.change_id.as_ref(), v2.rollback_of), (None, None));
    assert_eq!(v2.created_at, reg_b.time, "created_at is the event's time");
    assert_eq!(v2.stage, v1.stage);
    let bp2 = last_announcement(&js).await;
    assert_eq!((bp2.version, bp2.digest.as_str()), (2, v2.digest.as_str()));
    assert_eq!((bp2.change_id, bp2.rollback_of), (None, None));
    let b2 = fetch_verified(&js, &trust, &v2.digest).await;
    assert_eq!(b2.manifest.version, 2);
    assert_eq!(b2.data(), b1.data(), "same data.json");
    assert_eq!(
        key_ids(&trust_data(&b2)),
        sorted(vec![idp_a.key_id().to_string(), idp_b.key_id().to_string()])
    );
    assert!(accepted_by(&b2, &token_of("acme-idp", &idp_b)));

    // Revoking the first: the next version goes without it.
    refuse(
        &js,
        &root.sign(TokenIssuerRevoked {
            key_id: Keypair::generate().unwrap().key_id().clone(),
            reason: "typo".into(),
        }),
        "no token issuer key",
    )
    .await;
    accept(
        &js,
        &root.sign(TokenIssuerRevoked {
            key_id: idp_a.key_id().clone(),
            reason: "IdP key rotated".into(),
        }),
    )
    .await;
    let v3 = announced(&js, &tenant, 3).await;
    let b3 = fetch_verified(&js, &trust, &v3.digest).await;
    assert_eq!(b3.data(), b1.data());
    assert_eq!(key_ids(&trust_data(&b3)), [idp_b.key_id().to_string()]);
    assert!(!accepted_by(&b3, &token_of("acme-idp", &idp_a)));
    assert!(accepted_by(&b3, &token_of("acme-idp", &idp_b)));
    assert_eq!(last_announcement(&js).await.version, 3);

    // The same through the aegisctl binary.
    let cli_key = Keypair::generate().unwrap();
    let cli_dir = tempfile::tempdir().unwrap();
    let cli_paths = cli_key.write_to_dir(cli_dir.path(), "cli-idp").unwrap();
    let public = path_str(&cli_paths.public_key);
    let (code, out) = aegisctl_issuer_add(&server.url(), &keys, "cli-idp", &public).await;
    assert_eq!(code, 0, "{out}\n{}", cp.log());
    assert!(out.contains("accepted"), "{out}");
    assert!(out.contains("version: 4"), "{out}");
    let v4 = announced(&js, &tenant, 4).await;
    let b4 = fetch_verified(&js, &trust, &v4.digest).await;
    assert_eq!(
        key_ids(&trust_data(&b4)),
        sorted(vec![
            idp_b.key_id().to_string(),
            cli_key.key_id().to_string()
        ])
    );

    let (code, out) = aegisctl(&server.url(), &keys, &["issuer", "list", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let listed: Vec<IssuerView> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 3, "{out}");
    let revoked: Vec<&IssuerView> = listed.iter().filter(|i| i.revoked.is_some()).collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(&revoked[0].key_id, idp_a.key_id());
    let (code, out) = aegisctl(&server.url(), &keys, &["issuer", "list"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cli-idp") && out.contains("revoked by root"),
        "{out}"
    );

    let cli_kid = cli_key.key_id().to_string();
    let revoke = ["issuer", "revoke", "--key-id", &cli_kid, "--reason", "test"];
    let (code, out) = aegisctl(&server.url(), &keys, &revoke).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("version: 5"), "{out}");
    let (code, out) = aegisctl(&server.url(), &keys, &revoke).await;
    assert_eq!(code, 5, "a rejection exits 5: {out}");
    assert!(out.contains("already revoked"), "{out}");

    // Frozen: registering waits for the unfreeze.
    accept(
        &js,
        &pat.sign(TenantFrozen {
            reason: "incident".into(),
        }),
    )
    .await;
    let (code, out) = aegisctl_issuer_add(
        &server.url(),
        &keys,
        "cli-idp",
        &path_str(&keys.root_public_file),
    )
    .await;
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("frozen"), "{out}");

    // The query view agrees with the last bundle.
    let history = match query(&js.client(), &tenant, QueryRequest::History)
        .await
        .unwrap()
    {
        QueryAnswer::History(h) => h,
        other => panic!("{other:?}"),
    };
    let last: &VersionView = history.last().unwrap();
    assert_eq!(last.version, 5);
    let b5 = fetch_verified(&js, &trust, &last.digest).await;
    assert_eq!(key_ids(&trust_data(&b5)), [idp_b.key_id().to_string()]);
    drop(cp);
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}
