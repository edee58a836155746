//! `aegisctl`'s online commands end to end, the way an operator runs them: nats-server with the
//! shipped accounts.conf, the control plane as the `controlplane` user, every operator command
//! as the tenant's `acme-operator` user. Propose a policy tree, approve as two other operators,
//! publish, export the audit trail and verify the chain.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::events::{Role, RolloutStage};
use aegis_core::ids::{ActorId, ChangeId, TenantId};
use aegis_core::keys::Keypair;
use aegis_core::query::ChangeState;
use aegis_nats::conf::{ACCOUNTS_CONF, PASSWORD_ENV_VARS};
use aegis_nats::{ConnectOptions, connect};
use aegis_tests::controlplane::{ControlPlane, Keys};
use aegis_tests::{NatsServer, NatsServerOptions};
use aegisctl::exit::Exit;
use aegisctl::online::{self, Client, Signer};
use std::path::PathBuf;
use std::time::Duration;

fn password(user: &str) -> String {
    format!("test-password-of-{user}")
}

fn signer(dir: &std::path::Path, name: &str) -> (Signer, PathBuf) {
    let key = Keypair::generate().unwrap();
    let paths = key.write_to_dir(dir, name).unwrap();
    (
        Signer::load(ActorId::new(name).unwrap(), &paths.signing_key).unwrap(),
        paths.public_key,
    )
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_proposes_others_approve_a_publisher_publishes_and_the_audit_verifies() {
    let mut options = NatsServerOptions::default().with_config(ACCOUNTS_CONF);
    for (user, var) in PASSWORD_ENV_VARS {
        options = options.with_env(var, password(user));
    }
    let server = NatsServer::start_with(options).unwrap();
    let keys = Keys::generate().unwrap();
    let cp = ControlPlane::start(
        &server.url(),
        &keys,
        &[
            "--user",
            "controlplane",
            "--password",
            &password("controlplane"),
        ],
    )
    .unwrap();

    let tenant = TenantId::new("acme").unwrap();
    let nats = connect(
        &ConnectOptions::new(server.url())
            .user_and_password("acme-operator", password("acme-operator")),
    )
    .await
    .unwrap();
    aegis_tests::controlplane::wait_ready(&nats, &tenant, Duration::from_secs(60))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = Signer {
        actor: ActorId::new("root").unwrap(),
        key: keys.root.clone(),
    };
    let root_client = Client::new(
        nats.clone(),
        server.url(),
        tenant.clone(),
        Some(root),
        Duration::from_secs(60),
    );

    // The root admin registers four operators with their roles.
    let mut signers = Vec::new();
    for (name, role) in [
        ("alice", Role::Editor),
        ("bob", Role::Approver),
        ("carol", Role::Approver),
        ("pat", Role::Publisher),
    ] {
        let (s, public) = signer(dir.path(), name);
        let mut out = Vec::new();
        let exit = online::actors::add(
            &root_client,
            &online::actors::AddArgs {
                actor: s.actor.clone(),
                public_key: public,
                display_name: None,
                roles: vec![role],
                json: false,
            },
            &mut out,
        )
        .await
        .unwrap_or_else(|e| panic!("actor add {name}: {e}\n{}", cp.log()));
        assert_eq!(exit, Exit::Ok, "{}", text(&out));
        signers.push(s);
    }
    let [alice, bob, carol, pat]: [Signer; 4] = signers.try_into().ok().unwrap();
    let as_ = |s: &Signer| {
        root_client.with_signer(Some(Signer {
            actor: s.actor.clone(),
            key: s.key.clone(),
        }))
    };

    // Alice proposes the finance template.
    let tree = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/templates/finance");
    let mut out = Vec::new();
    let exit = online::propose::run(
        &as_(&alice),
        &online::propose::ProposeArgs {
            paths: vec![tree.clone()],
            intent: "finance agent payment thresholds".into(),
            ticket: Some("FIN-1001".into()),
            prune: false,
            json: false,
        },
        &mut out,
    )
    .await
    .unwrap();
    let printed = text(&out);
    assert_eq!(exit, Exit::Ok, "{printed}\n{}", cp.log());
    let changes = as_(&alice).changes(None).await.unwrap();
    assert_eq!(changes.len(), 1, "{printed}");
    let change_id: ChangeId = changes[0].change_id.clone();
    assert!(printed.contains(change_id.as_str()), "{printed}");

    // Alice may not approve her own change: rejected, exit code says so.
    let mut out = Vec::new();
    let exit = online::changes::approve(
        &as_(&alice),
        &online::changes::ApproveArgs {
            change_id: change_id.clone(),
            comment: None,
            json: false,
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_ne!(exit, Exit::Ok, "{}", text(&out));
    assert!(text(&out).contains("rejected"), "{}", text(&out));

    for s in [&bob, &carol] {
        let mut out = Vec::new();
        let exit = online::changes::approve(
            &as_(s),
            &online::changes::ApproveArgs {
                change_id: change_id.clone(),
                comment: Some("looks right".into()),
                json: false,
            },
            &mut out,
        )
        .await
        .unwrap();
        assert_eq!(exit, Exit::Ok, "{}", text(&out));
    }
    assert_eq!(
        as_(&pat).change(&change_id).await.unwrap().state,
        ChangeState::Approved
    );

    // Pat publishes and waits for the bundle to be announced.
    let mut out = Vec::new();
    let exit = online::publish::publish(
        &as_(&pat),
        &online::publish::PublishArgs {
            change_id: change_id.clone(),
            stage: RolloutStage::Global,
            json: false,
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(exit, Exit::Ok, "{}\n{}", text(&out), cp.log());
    let history = as_(&pat).history().await.unwrap();
    assert_eq!(history.len(), 1);
    let digest = history[0].digest.clone();
    assert!(text(&out).contains(&digest), "{}", text(&out));

    // Proposing the published tree again: nothing to propose.
    let mut out = Vec::new();
    let exit = online::propose::run(
        &as_(&alice),
        &online::propose::ProposeArgs {
            paths: vec![tree.clone()],
            intent: "again".into(),
            ticket: None,
            prune: false,
            json: false,
        },
        &mut out,
    )
    .await;
    assert!(
        !matches!(exit, Ok(Exit::Ok)),
        "an unchanged tree is not a change"
    );

    // The audit export names who changed what, who approved and the bundle digest.
    let mut csv = Vec::new();
    let exit = online::audit::export(
        &as_(&pat),
        &online::audit::ExportArgs {
            format: online::audit::ExportFormat::Csv,
            output: None,
            ..Default::default()
        },
        &mut csv,
    )
    .await
    .unwrap();
    assert_eq!(exit, Exit::Ok);
    let csv = text(&csv);
    for needle in [
        "alice",
        "bob",
        "carol",
        "pat",
        digest.as_str(),
        change_id.as_str(),
    ] {
        assert!(csv.contains(needle), "audit export lacks {needle}:\n{csv}");
    }

    // And the chain verifies against the signed checkpoints, read with tenant credentials.
    let verified = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut out = Vec::new();
            let exit = online::audit::verify(
                &as_(&pat),
                &online::audit::VerifyArgs {
                    trust: Some(keys.dir.path().join("control-plane.pub.json")),
                    json: false,
                },
                &mut out,
            )
            .await;
            if let Ok(Exit::Ok) = exit {
                let out = text(&out);
                if !out.contains("not covered yet") {
                    return out;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("audit verify never passed\n{}", cp.log()));
    assert!(verified.contains("intact"), "{verified}");
}
