//! A whole Aegis deployment for gateway end-to-end tests: one nats-server, the real control
//! plane with its keys, the usual operators, a registered token issuer per tenant, and the
//! finance template published as version 1 for `acme`; gateways (the real binary) started on
//! demand, trusting the control plane's public key.
//!
//! Everything here is blocking: the stack owns a tokio runtime that runs its NATS client and the
//! async steps of [`crate::flow`] ([`Stack::block_on`]), so a test can drive gateways from plain
//! threads.
//!
//! Test support: a failed step panics with what went wrong, like an assertion.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use crate::NatsServer;
use crate::controlplane::{ControlPlane, Keys, Operator, publish, query, wait_outcome};
use crate::flow::{self, FINANCE_POLICY, FINANCE_VECTORS, Stored, accept, accepted, announced};
use crate::gateway::{Gateway, GatewayOptions};
use aegis_core::events::{
    BundlePublished, BundleRef, ChangeApproved, ChangeProposed, ChangePublished, Envelope, Event,
    RolloutStage, TenantControls, TokenIssuerRegistered,
};
use aegis_core::ids::{ActorId, AgentId, ChangeId, EventId, TenantId};
use aegis_core::keys::Keypair;
use aegis_core::query::{QueryAnswer, QueryRequest, VersionView};
use aegis_core::token::{self, TokenRequest};
use aegis_nats::topology::{
    BUNDLE_OBJECT_STORE, DECISIONS_STREAM, GATEWAYS_KV, bundles_subject, controls_subject,
};
use async_nats::jetstream;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The tenant every stack starts with.
pub const ACME: &str = "acme";
/// The issuer name of each tenant's token issuer key (`<tenant>-idp`).
pub const ISSUER_SUFFIX: &str = "-idp";
/// The finance template's approval bound (`lte: 5000` with `on_violation: approval_needed`).
pub const APPROVAL_LIMIT: u64 = 5000;
/// A generous bound for anything the stack waits for.
pub const WAIT: Duration = Duration::from_secs(60);
/// An IBAN the finance policy accepts (and masks in the log).
pub const ACCOUNT: &str = "DE89370400440532013000";

/// One tenant's cast: operators, its token issuer key, the version last published.
#[derive(Debug)]
pub struct TenantSetup {
    pub tenant: TenantId,
    /// alice (editor, approver), bob and carol (approvers), pat (publisher).
    pub actors: [Operator; 4],
    /// The registered token issuer key (issuer name `<tenant>-idp`).
    pub issuer: Keypair,
    /// The newest version published and announced.
    pub version: u64,
}

impl TenantSetup {
    /// The issuer name tokens of this tenant carry.
    pub fn issuer_name(&self) -> String {
        format!("{}{ISSUER_SUFFIX}", self.tenant)
    }
}

/// NATS, the control plane, operators, token issuers, and version 1 of the finance template.
#[derive(Debug)]
pub struct Stack {
    pub cp: ControlPlane,
    pub js: jetstream::Context,
    pub server: NatsServer,
    pub keys: Keys,
    /// The control plane's public key file: what gateways trust (`--trust`).
    pub trust_file: PathBuf,
    pub tenants: BTreeMap<String, TenantSetup>,
    /// Whether the server runs `accounts.conf` (gateways then log in as `gateway-<id>`).
    pub accounts: bool,
    _dir: TempDir,
    /// Last: the NATS client's tasks run here until everything above is gone.
    pub rt: tokio::runtime::Runtime,
}

/// The finance template for `tenant` (its documents name the tenant), with its rate limits
/// (20 payments and 120 balance look-ups a minute) and daily budget (100,000) raised out of
/// reach: gateways enforce them, and these tests drive thousands of payments by one agent.
/// The budget is counted per gateway (`scope: gateway`, the template's is `global`), so that
/// payments do not depend on KV: some tests decide with NATS down. Limits have their own
/// tests (`aegis_gateway::limits`, `tests/tests/gateway_limits.rs`).
pub fn finance_policy_for(tenant: &str) -> String {
    let policy = FINANCE_POLICY.replace("tenant: acme", &format!("tenant: {tenant}"));
    let raised = [
        ("- calls: 20\n", "- calls: 100000000\n"),
        ("- calls: 120\n", "- calls: 100000000\n"),
        ("max: 100000\n", "max: 1000000000000\n"),
        ("scope: global\n", "scope: gateway\n"),
    ];
    raised.iter().fold(policy, |p, (from, to)| {
        assert_eq!(p.matches(from).count(), 1, "the template changed: {from:?}");
        p.replace(from, to)
    })
}

/// The finance policy with another approval bound (the template's is 5,000). Bounds from 5,000
/// to 5,999 keep every vector of the template passing, so such a change passes its checks.
pub fn finance_with_approval_limit(tenant: &str, limit: u64) -> String {
    let policy = finance_policy_for(tenant);
    let from = format!("lte: {APPROVAL_LIMIT}\n");
    assert_eq!(policy.matches(&from).count(), 1, "the template changed");
    policy.replace(&from, &format!("lte: {limit}\n"))
}

/// A finance proposal for any tenant: the template's vectors, rewritten for the tenant.
pub fn proposal_for(
    tenant: &str,
    id: &ChangeId,
    document: &str,
    base_revision: u64,
) -> ChangeProposed {
    let vectors = FINANCE_VECTORS.replace("tenant: acme", &format!("tenant: {tenant}"));
    flow::finance_proposal_with_vectors(id, document, base_revision, &vectors)
}

/// The body of a `create_payment` call.
pub fn pay(amount: u64) -> Value {
    json!({
        "tool_id": "payments",
        "action": "create_payment",
        "params": {"amount": amount, "currency": "USD", "account_number": ACCOUNT},
        "context": {},
    })
}

/// The body of a `get_balance` call.
pub fn balance() -> Value {
    json!({"tool_id": "payments", "action": "get_balance", "params": {}, "context": {}})
}

/// The reason code of the first reason of an answer.
pub fn code(answer: &Value) -> &str {
    answer["reasons"][0]["code"].as_str().unwrap_or_default()
}

fn aegis_tests_options_with_accounts() -> crate::NatsServerOptions {
    crate::NatsServerOptions::default().with_config(aegis_nats::conf::ACCOUNTS_CONF)
}

impl Stack {
    /// Starts nats-server and the control plane, registers the operators and a token issuer
    /// for `acme`, and publishes the finance template as version 1 (announced).
    pub fn start() -> Stack {
        Self::start_inner(false)
    }

    /// [`Stack::start`] on a nats-server running the shipped `nats/conf/accounts.conf`: the
    /// control plane connects as user `controlplane`, gateways as `gateway-<id>` (only
    /// `gw1` exists in the file), each limited by the permissions written there.
    pub fn start_with_accounts() -> Stack {
        Self::start_inner(true)
    }

    /// The test password of a user of `accounts.conf`.
    pub fn password(user: &str) -> String {
        format!("test-password-of-{user}")
    }

    fn start_inner(accounts: bool) -> Stack {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = if accounts {
            let mut options = aegis_tests_options_with_accounts();
            for (user, var) in aegis_nats::conf::PASSWORD_ENV_VARS {
                options = options.with_env(var, Self::password(user));
            }
            NatsServer::start_with(options).unwrap()
        } else {
            NatsServer::start().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::generate().unwrap();
        let trust_file = dir.path().join("control-plane.pub.json");
        keys.control_plane.public_key().write(&trust_file).unwrap();
        let js = rt.block_on(async {
            let mut options = async_nats::ConnectOptions::new().retry_on_initial_connect();
            if accounts {
                options = options
                    .user_and_password("controlplane".into(), Self::password("controlplane"))
                    .custom_inbox_prefix("_INBOX.controlplane");
            }
            let client = options.connect(server.url()).await.unwrap();
            let js = jetstream::new(client);
            aegis_nats::provision(&js, &aegis_nats::Topology::single())
                .await
                .unwrap();
            js
        });
        let cp_password = Self::password("controlplane");
        let cp_args: Vec<&str> = if accounts {
            vec!["--user", "controlplane", "--password", &cp_password]
        } else {
            Vec::new()
        };
        let cp = ControlPlane::start(&server.url(), &keys, &cp_args).unwrap();
        let mut stack = Stack {
            cp,
            js,
            server,
            keys,
            trust_file,
            tenants: BTreeMap::new(),
            accounts,
            _dir: dir,
            rt,
        };
        stack.add_tenant(ACME);
        stack
    }

    /// Registers the operators and a token issuer of `tenant`, and publishes the finance
    /// template for it as version 1.
    pub fn add_tenant(&mut self, tenant: &str) -> &TenantSetup {
        let id = TenantId::new(tenant).unwrap();
        let issuer = Keypair::generate().unwrap();
        let actors = self.rt.block_on(async {
            let actors = flow::setup_actors(&self.js, &self.keys, tenant).await;
            let root = self.keys.root_operator(&id);
            accept(
                &self.js,
                &root.sign(TokenIssuerRegistered {
                    issuer: format!("{tenant}{ISSUER_SUFFIX}"),
                    key_id: issuer.key_id().clone(),
                    public_key: issuer.public_key().to_base64(),
                }),
            )
            .await;
            actors
        });
        self.tenants.insert(
            tenant.to_owned(),
            TenantSetup {
                tenant: id,
                actors,
                issuer,
                version: 0,
            },
        );
        let v = self.publish_change_for(tenant, &finance_policy_for(tenant));
        assert_eq!(v, 1, "{}", self.cp.log());
        &self.tenants[tenant]
    }

    /// Writes acme's operators' and the root admin's signing keys into `dir`
    /// (`<actor>.key.json`, `root.key.json`), for [`Stack::aegisctl`]; returns `dir`.
    pub fn write_keys(&self, dir: &Path) -> PathBuf {
        for op in &self.acme().actors {
            op.key.write_to_dir(dir, op.actor.as_str()).unwrap();
        }
        self.keys.root.write_to_dir(dir, "root").unwrap();
        dir.to_path_buf()
    }

    /// Runs the `aegisctl` binary as `actor` of acme (signing key `<keys>/<actor>.key.json`,
    /// see [`Stack::write_keys`]) against the stack's NATS.
    pub fn aegisctl(&self, keys: &Path, actor: &str, args: &[&str]) -> crate::cli::Run {
        let key = keys.join(format!("{actor}.key.json"));
        let url = self.server.url();
        crate::cli::run(
            args,
            &[
                ("AEGIS_NATS_URL", url.as_str()),
                ("AEGIS_TENANT", ACME),
                ("AEGIS_ACTOR", actor),
                ("AEGIS_KEY", key.to_str().unwrap()),
            ],
        )
    }

    /// Runs a future on the stack's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// `acme`'s setup.
    pub fn acme(&self) -> &TenantSetup {
        &self.tenants[ACME]
    }

    /// The version last published for `acme`.
    pub fn version(&self) -> u64 {
        self.acme().version
    }

    /// A token request of `tenant`'s issuer for `agent` called through `chain` (origin first),
    /// valid for 10 minutes from now.
    pub fn token_request(&self, tenant: &str, agent: &str, chain: &[&str]) -> TokenRequest {
        TokenRequest {
            issuer: self.tenants[tenant].issuer_name(),
            tenant: TenantId::new(tenant).unwrap(),
            agent: AgentId::new(agent).unwrap(),
            audience: token::DEFAULT_AUDIENCE.into(),
            call_chain: chain.iter().map(|a| AgentId::new(*a).unwrap()).collect(),
            issued_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            ttl_seconds: 600,
            token_id: None,
        }
    }

    /// A valid token of `acme` for `agent` called through `chain`.
    pub fn token(&self, agent: &str, chain: &[&str]) -> String {
        self.token_for(ACME, agent, chain)
    }

    /// A valid token of `tenant`'s issuer.
    pub fn token_for(&self, tenant: &str, agent: &str, chain: &[&str]) -> String {
        token::issue(
            &self.token_request(tenant, agent, chain),
            &self.tenants[tenant].issuer,
        )
        .unwrap()
    }

    /// Options for a gateway of `acme` trusting the control plane's key.
    pub fn gateway_options(&self, id: &str) -> GatewayOptions {
        let mut options = GatewayOptions::new(id, &[ACME], &self.trust_file, &self.server.url());
        if self.accounts {
            let user = format!("gateway-{id}");
            options.user = Some((user.clone(), Self::password(&user)));
        }
        options
    }

    /// A gateway of `acme` with a fresh data directory, waited for until it is ready and
    /// enforces the version last published.
    pub fn gateway(&self, id: &str) -> Gateway {
        let gw = Gateway::start(&self.gateway_options(id)).unwrap();
        gw.wait_ready(WAIT).unwrap();
        gw.wait_version(ACME, self.version(), WAIT).unwrap();
        gw
    }

    /// Publishes `document` as the new finance policy of `acme` (proposed by alice, approved by
    /// bob and carol, published by pat) and waits for its announcement; returns the version.
    pub fn publish_change(&mut self, document: &str) -> u64 {
        self.publish_change_for(ACME, document)
    }

    /// [`Stack::publish_change`] for any tenant.
    pub fn publish_change_for(&mut self, tenant: &str, document: &str) -> u64 {
        self.publish_change_timed(tenant, document).0
    }

    /// [`Stack::publish_change_for`], also returning when JetStream acknowledged the
    /// `change_published` event (the moment the publish is on record).
    pub fn publish_change_timed(&mut self, tenant: &str, document: &str) -> (u64, Instant) {
        self.publish_change_staged(tenant, document, RolloutStage::Global)
    }

    /// [`Stack::publish_change_timed`] with the stage the change is published at (`shadow`
    /// or `partial`: a candidate version, which gateways do not enforce until the tenant's
    /// controls state names it).
    pub fn publish_change_staged(
        &mut self,
        tenant: &str,
        document: &str,
        stage: RolloutStage,
    ) -> (u64, Instant) {
        let vectors = FINANCE_VECTORS.replace("tenant: acme", &format!("tenant: {tenant}"));
        self.publish_change_with(tenant, document, &vectors, stage)
    }

    /// [`Stack::publish_change_for`] with other test vectors than the finance template's (for
    /// a document the template's vectors would reject, e.g. one without log masking).
    pub fn publish_change_with_vectors(
        &mut self,
        tenant: &str,
        document: &str,
        vectors: &str,
    ) -> u64 {
        self.publish_change_with(tenant, document, vectors, RolloutStage::Global)
            .0
    }

    fn publish_change_with(
        &mut self,
        tenant: &str,
        document: &str,
        vectors: &str,
        stage: RolloutStage,
    ) -> (u64, Instant) {
        let setup = &self.tenants[tenant];
        let id = setup.tenant.clone();
        let [alice, bob, carol, pat] = setup.actors.clone();
        let (version, acked) = self.rt.block_on(async {
            let js = &self.js;
            let revision = live_revision(js, &id).await;
            let change = ChangeId::random().unwrap();
            accept(
                js,
                &alice.sign(flow::finance_proposal_with_vectors(
                    &change, document, revision, vectors,
                )),
            )
            .await;
            for op in [&bob, &carol] {
                accept(
                    js,
                    &op.sign(ChangeApproved {
                        change_id: change.clone(),
                        comment: None,
                    }),
                )
                .await;
            }
            let env = pat.sign(ChangePublished {
                change_id: change.clone(),
                stage,
            });
            publish(js, &env, None).await.unwrap();
            let acked = Instant::now();
            let record = wait_outcome(&js.client(), &id, &env.id, WAIT)
                .await
                .unwrap();
            accepted(&record);
            let view = crate::controlplane::eventually(WAIT, "the change's version", || async {
                history(js, &id)
                    .await
                    .into_iter()
                    .rev()
                    .find(|v| v.change_id.as_ref() == Some(&change))
            })
            .await
            .unwrap();
            announced(js, &id, view.version).await;
            (view.version, acked)
        });
        self.tenants.get_mut(tenant).unwrap().version = version;
        (version, acked)
    }

    /// Registers `key` as a token issuer of `tenant` under the name `issuer` (signed by the
    /// root admin) and waits for the version that carries it; returns that version.
    pub fn register_issuer(&mut self, tenant: &str, issuer: &str, key: &Keypair) -> u64 {
        let id = TenantId::new(tenant).unwrap();
        let next = self.tenants[tenant].version + 1;
        self.rt.block_on(async {
            let root = self.keys.root_operator(&id);
            accept(
                &self.js,
                &root.sign(TokenIssuerRegistered {
                    issuer: issuer.to_owned(),
                    key_id: key.key_id().clone(),
                    public_key: key.public_key().to_base64(),
                }),
            )
            .await;
            announced(&self.js, &id, next).await;
        });
        self.tenants.get_mut(tenant).unwrap().version = next;
        next
    }

    /// The history of `tenant`'s versions.
    pub fn history(&self, tenant: &str) -> Vec<VersionView> {
        let id = TenantId::new(tenant).unwrap();
        self.rt.block_on(history(&self.js, &id))
    }

    /// The view of `acme`'s newest version.
    pub fn current(&self) -> VersionView {
        self.history(ACME)
            .into_iter()
            .max_by_key(|v| v.version)
            .unwrap()
    }

    /// The bytes stored in object store `aegis-bundles` under `digest`.
    pub fn bundle_bytes(&self, digest: &str) -> Vec<u8> {
        self.rt.block_on(async {
            let bucket = self.js.get_object_store(BUNDLE_OBJECT_STORE).await.unwrap();
            let mut object = bucket.get(digest).await.unwrap();
            let mut bytes = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
                .await
                .unwrap();
            bytes
        })
    }

    /// Does what the control plane does to publish a bundle, with any bytes and any key: puts
    /// `bytes` into the object store under their digest, and announces them as `version` with
    /// a `bundle_published` signed by `key` on `aegis.bundles.<tenant>`. Returns the digest.
    pub fn announce_bundle(
        &self,
        tenant: &str,
        version: u64,
        bytes: &[u8],
        key: &Keypair,
    ) -> String {
        let tenant = TenantId::new(tenant).unwrap();
        let digest = aegis_core::bundle::bundle_digest(bytes);
        self.rt.block_on(async {
            let bucket = self.js.get_object_store(BUNDLE_OBJECT_STORE).await.unwrap();
            let mut reader = bytes;
            bucket.put(digest.as_str(), &mut reader).await.unwrap();
            let event = BundlePublished {
                version,
                digest: digest.clone(),
                size: bytes.len() as u64,
                created_at: aegis_core::events::envelope::format_time(
                    time::OffsetDateTime::now_utc(),
                )
                .unwrap(),
                change_id: None,
                rollback_of: None,
                stage: RolloutStage::Global,
                signer: key.key_id().clone(),
            };
            let env = Envelope::sign(
                EventId::random().unwrap(),
                tenant.clone(),
                ActorId::new("controlplane").unwrap(),
                key,
                time::OffsetDateTime::now_utc(),
                Event::BundlePublished(event),
            )
            .unwrap();
            let publish = aegis_nats::Publish::new(
                bundles_subject(&tenant).unwrap(),
                env.to_bytes().unwrap(),
            )
            .msg_id(env.id.to_string());
            aegis_nats::publish(&self.js, publish).await.unwrap();
        });
        digest
    }

    /// `tenant`'s version `version` as a controls state names it.
    pub fn bundle_ref(&self, tenant: &str, version: u64) -> BundleRef {
        let v = self
            .history(tenant)
            .into_iter()
            .find(|v| v.version == version)
            .unwrap_or_else(|| panic!("{tenant} has no version {version}"));
        BundleRef {
            version,
            digest: v.digest,
            size: v.size,
        }
    }

    /// Publishes `state` as `tenant`'s signed `tenant_controls` on
    /// `aegis.bundles.<tenant>.controls`, signed by the control plane's key — the message the
    /// control plane publishes after every change to rollout, kill switch or freeze. (Each
    /// with a fresh `Nats-Msg-Id`, so a replayed epoch is a new message.)
    pub fn publish_controls(&self, tenant: &str, state: &TenantControls) {
        self.publish_controls_signed(tenant, state, &self.keys.control_plane);
    }

    /// [`Stack::publish_controls`] signed by any key.
    pub fn publish_controls_signed(&self, tenant: &str, state: &TenantControls, key: &Keypair) {
        let tenant = TenantId::new(tenant).unwrap();
        self.rt.block_on(async {
            let env = Envelope::sign(
                EventId::random().unwrap(),
                tenant.clone(),
                ActorId::new("controlplane").unwrap(),
                key,
                time::OffsetDateTime::now_utc(),
                Event::TenantControls(state.clone()),
            )
            .unwrap();
            let publish = aegis_nats::Publish::new(
                controls_subject(&tenant).unwrap(),
                env.to_bytes().unwrap(),
            )
            .msg_id(env.id.to_string());
            aegis_nats::publish(&self.js, publish).await.unwrap();
        });
    }

    /// The heartbeat `gateway` last wrote for `tenant` into KV `aegis-gateways`.
    pub fn heartbeat(
        &self,
        tenant: &str,
        gateway: &str,
    ) -> Option<aegis_core::heartbeat::Heartbeat> {
        self.rt.block_on(async {
            let kv = self.js.get_key_value(GATEWAYS_KV).await.ok()?;
            let bytes = kv.get(format!("{tenant}.{gateway}")).await.ok()??;
            Some(serde_json::from_slice(&bytes).unwrap())
        })
    }

    /// Waits until `gateway`'s heartbeat for `tenant` satisfies `done`; returns it.
    pub fn wait_heartbeat(
        &self,
        tenant: &str,
        gateway: &str,
        what: &str,
        done: impl Fn(&aegis_core::heartbeat::Heartbeat) -> bool,
    ) -> aegis_core::heartbeat::Heartbeat {
        let deadline = Instant::now() + WAIT;
        loop {
            let beat = self.heartbeat(tenant, gateway);
            if let Some(b) = beat.as_ref().filter(|b| done(b)) {
                return b.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{gateway}'s heartbeat never showed {what}: {beat:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every message of `AEGIS_DECISIONS` on `filter` (e.g. `aegis.decisions.acme.gw-1`), as
    /// JSON, in stream order.
    pub fn decision_records(&self, filter: &str) -> Vec<Value> {
        let stored: Vec<Stored> = self.rt.block_on(async {
            let info_ok = self.js.get_stream(DECISIONS_STREAM).await.is_ok();
            if !info_ok {
                return Vec::new();
            }
            flow::read_stream(&self.js, DECISIONS_STREAM, filter).await
        });
        stored
            .iter()
            .map(|m| serde_json::from_slice(&m.raw).unwrap())
            .collect()
    }

    /// Waits until every id of `ids` is on `filter`, then returns all the records there.
    pub fn wait_decisions(
        &self,
        filter: &str,
        ids: &BTreeSet<String>,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.decision_records(filter);
            let seen: BTreeSet<&str> = records.iter().filter_map(|r| r["id"].as_str()).collect();
            let missing = ids.iter().filter(|id| !seen.contains(id.as_str())).count();
            if missing == 0 {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} decision events not on {filter} after {timeout:?}",
                ids.len()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The finance template's log masking (account numbers).
pub const FINANCE_MASKING: &str = "  log_masking:\n    params: [account_number]\n";

/// [`finance_with_approval_limit`] for acme without log masking: every decision it records
/// can be replayed.
pub fn unmasked_finance(limit: u64) -> String {
    let policy = finance_with_approval_limit(ACME, limit);
    assert_eq!(
        policy.matches(FINANCE_MASKING).count(),
        1,
        "the template changed"
    );
    policy.replace(FINANCE_MASKING, "")
}

/// The template's vectors without their expectations on masked parameters (for
/// [`unmasked_finance`]).
pub fn unmasked_finance_vectors() -> String {
    let kept: Vec<&str> = FINANCE_VECTORS
        .lines()
        .filter(|l| !(l.trim_start().starts_with("logged_params:") && l.contains("[MASKED]")))
        .collect();
    assert_eq!(
        FINANCE_VECTORS.lines().count() - kept.len(),
        3,
        "the template changed"
    );
    kept.join("\n") + "\n"
}

/// The live revision of `tenant`'s finance-agent policy (0 before the first publish).
pub async fn live_revision(js: &jetstream::Context, tenant: &TenantId) -> u64 {
    flow::status(&js.client(), tenant)
        .await
        .and_then(|s| {
            s.live_policies
                .into_iter()
                .find(|p| p.name.as_str() == "finance-agent")
                .map(|p| p.revision)
        })
        .unwrap_or(0)
}

async fn history(js: &jetstream::Context, tenant: &TenantId) -> Vec<VersionView> {
    match query(&js.client(), tenant, QueryRequest::History).await {
        Ok(QueryAnswer::History(h)) => h,
        other => panic!("history of {tenant}: {other:?}"),
    }
}

/// `body` (a decide request) retried with runtime approval `id`.
pub fn with_approval(body: &Value, id: &str) -> Value {
    let mut body = body.clone();
    body["approval_id"] = Value::String(id.to_owned());
    body
}

/// Asserts `record` is a valid decision event: `schemas/decision-event.schema.json` and the
/// Rust type both accept it.
pub fn assert_decision_event(record: &Value) {
    let validator = aegis_core::schemas::decision_event_validator().unwrap();
    let errors: Vec<String> = validator
        .iter_errors(record)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{record:#}");
    serde_json::from_value::<aegis_core::decision_log::DecisionEvent>(record.clone())
        .unwrap_or_else(|e| panic!("not a DecisionEvent ({e}): {record:#}"));
}

/// Asserts `record` is a valid `bundle_rejected` record.
pub fn assert_bundle_rejected(record: &Value) {
    let validator = aegis_core::schemas::bundle_rejected_validator().unwrap();
    let errors: Vec<String> = validator
        .iter_errors(record)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{record:#}");
    serde_json::from_value::<aegis_core::decision_log::BundleRejected>(record.clone())
        .unwrap_or_else(|e| panic!("not a BundleRejected ({e}): {record:#}"));
}

/// How many times each `id` occurs among `records`.
pub fn id_counts(records: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        if let Some(id) = r["id"].as_str() {
            *counts.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// The records among `records` whose `id` is `id`.
pub fn with_id<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["id"] == id).collect()
}

/// `POST /v1/decide` with an optional `Authorization` header value and a raw body.
pub fn decide_raw(gw: &Gateway, authorization: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut client = gw.client().unwrap();
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    let (status, text) = client
        .request("POST", "/v1/decide", &headers, body)
        .unwrap();
    let answer =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
    (status, answer)
}

/// `tenant`'s entry of the gateway's `/v1/status`.
pub fn tenant_status(gw: &Gateway, tenant: &str) -> Value {
    let status = gw.status().unwrap();
    status["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["tenant"] == tenant))
        .cloned()
        .unwrap_or_else(|| panic!("no tenant {tenant} in {status:#}"))
}

/// The gateway's `/metrics` text.
pub fn metrics(gw: &Gateway) -> String {
    let (status, text) = gw.get("/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

/// Polls `done` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the gateway's decision log has shipped everything (`spool_events` and
/// `in_flight` both 0).
pub fn wait_drained(gw: &Gateway, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let status = gw.status().ok();
        let log = status.as_ref().map(|s| s["decision_log"].clone());
        if let Some(log) = &log
            && log["spool_events"] == 0
            && log["in_flight"] == 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: decision log not drained after {timeout:?}: {log:?}; log tail:\n{}",
            gw.id,
            tail(&gw.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}
