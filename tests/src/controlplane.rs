//! The control plane as a test sees it: the real `aegis-controlplane` binary as a child process
//! (stoppable with SIGTERM or SIGKILL, restartable on the same RocksDB directory), operators that sign
//! events with their own keys, and the query calls that wait for an event's outcome.
//!
//! Test support: a programming error here (an invalid literal id) panics, like an assertion.
#![allow(clippy::panic)]

use crate::process::{LoggedChild, SpawnError};
use aegis_core::events::{Envelope, Event};
use aegis_core::ids::{ActorId, EventId, TenantId};
use aegis_core::keys::Keypair;
use aegis_core::query::{EventOutcome, EventRecord, QueryAnswer, QueryReply, QueryRequest};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// What went wrong in a control-plane fixture.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "the aegis-controlplane binary is not at {path}: run `cargo build --bins` (scripts/test.sh does) or set AEGIS_CONTROLPLANE_BIN"
    )]
    NoBinary { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key: {0}")]
    Key(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("query {op} for tenant {tenant}: {message}")]
    Query {
        op: &'static str,
        tenant: String,
        message: String,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

type Result<T> = std::result::Result<T, ControlPlaneError>;

impl From<SpawnError> for ControlPlaneError {
    fn from(e: SpawnError) -> Self {
        ControlPlaneError::Io {
            what: e.what,
            source: e.source,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlPlaneError {
    let what = what.into();
    move |source| ControlPlaneError::Io { what, source }
}

/// Where the workspace's binaries are: `$AEGIS_CONTROLPLANE_BIN`'s directory, or the profile
/// directory this test executable runs from (`target/<profile>/deps/..`).
pub fn binary(name: &str) -> Result<PathBuf> {
    if let Some(p) =
        std::env::var_os("AEGIS_CONTROLPLANE_BIN").filter(|_| name == "aegis-controlplane")
    {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(io("locating the test executable"))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = profile_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ControlPlaneError::NoBinary { path })
    }
}

/// The keys a control plane and its root admin use.
#[derive(Debug)]
pub struct Keys {
    pub dir: TempDir,
    pub control_plane: Keypair,
    pub control_plane_file: PathBuf,
    pub root: Keypair,
    pub root_public_file: PathBuf,
}

impl Keys {
    /// A fresh control-plane key and root admin key, written to a temporary directory.
    pub fn generate() -> Result<Keys> {
        let dir = tempfile::tempdir().map_err(io("creating a key directory"))?;
        let control_plane =
            Keypair::generate().map_err(|e| ControlPlaneError::Key(e.to_string()))?;
        let root = Keypair::generate().map_err(|e| ControlPlaneError::Key(e.to_string()))?;
        let cp = control_plane
            .write_to_dir(dir.path(), "control-plane")
            .map_err(|e| ControlPlaneError::Key(e.to_string()))?;
        let rp = root
            .write_to_dir(dir.path(), "root")
            .map_err(|e| ControlPlaneError::Key(e.to_string()))?;
        Ok(Keys {
            control_plane_file: cp.signing_key,
            root_public_file: rp.public_key,
            dir,
            control_plane,
            root,
        })
    }

    /// The root admin as an operator of `tenant`.
    pub fn root_operator(&self, tenant: &TenantId) -> Operator {
        Operator {
            tenant: tenant.clone(),
            actor: ActorId::new("root").unwrap_or_else(|_| unreachable!()),
            key: self.root.clone(),
        }
    }
}

/// A running `aegis-controlplane run`.
#[derive(Debug)]
pub struct ControlPlane {
    /// First, so that dropping the fixture kills the process before its directory goes.
    process: LoggedChild,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    _dir: Option<TempDir>,
}

impl ControlPlane {
    /// Starts a control plane against `nats_url` with a fresh data directory.
    pub fn start(nats_url: &str, keys: &Keys, extra: &[&str]) -> Result<ControlPlane> {
        let dir = tempfile::tempdir().map_err(io("creating a data directory"))?;
        let data_dir = dir.path().join("rocksdb");
        let mut cp = Self::start_on(nats_url, keys, &data_dir, extra)?;
        cp._dir = Some(dir);
        Ok(cp)
    }

    /// Starts a control plane on a given data directory (kept by the caller).
    pub fn start_on(
        nats_url: &str,
        keys: &Keys,
        data_dir: &Path,
        extra: &[&str],
    ) -> Result<ControlPlane> {
        let mut args = vec![
            "run".to_owned(),
            "--nats".to_owned(),
            nats_url.to_owned(),
            "--data".to_owned(),
            data_dir.display().to_string(),
            "--key".to_owned(),
            keys.control_plane_file.display().to_string(),
            "--root-admin".to_owned(),
            format!("root={}", keys.root_public_file.display()),
            "--checkpoint-idle-ms".to_owned(),
            "200".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log_file = data_dir.with_extension("log");
        let mut cp = ControlPlane {
            process: LoggedChild::new(args, &log_file),
            data_dir: data_dir.to_path_buf(),
            log_file,
            _dir: None,
        };
        cp.spawn()?;
        Ok(cp)
    }

    fn spawn(&mut self) -> Result<()> {
        Ok(self.process.spawn(&binary("aegis-controlplane")?)?)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then wait up to `timeout` for the process to exit (SIGKILL after that). Its
    /// exit status; `None` if it was not running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.process.terminate(timeout)
    }

    /// Starts the process again on the same data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Whether the process is still running; `Some(status)` if it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }

    /// The log so far (for assertion messages).
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Runs `aegis-controlplane state-digest` on a data directory (the process must be stopped).
pub fn state_digest(data_dir: &Path) -> Result<serde_json::Value> {
    let out = Command::new(binary("aegis-controlplane")?)
        .args(["state-digest", "--data"])
        .arg(data_dir)
        .output()
        .map_err(io("running state-digest"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| ControlPlaneError::Io {
        what: format!(
            "state-digest printed no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        source: std::io::Error::other("bad output"),
    })
}

/// Rebuilds a fresh data directory from the stream (`--fold-only --until-caught-up`) and waits.
pub fn rebuild(nats_url: &str, keys: &Keys, data_dir: &Path) -> Result<std::process::Output> {
    Command::new(binary("aegis-controlplane")?)
        .args(["run", "--nats", nats_url, "--data"])
        .arg(data_dir)
        .arg("--key")
        .arg(&keys.control_plane_file)
        .arg("--root-admin")
        .arg(format!("root={}", keys.root_public_file.display()))
        .args(["--fold-only", "--until-caught-up", "--no-provision"])
        .output()
        .map_err(io("running a rebuild"))
}

/// Someone who signs events for one tenant.
#[derive(Debug, Clone)]
pub struct Operator {
    pub tenant: TenantId,
    pub actor: ActorId,
    pub key: Keypair,
}

impl Operator {
    /// A new operator with a fresh key.
    pub fn new(tenant: &str, actor: &str) -> Operator {
        Operator {
            tenant: TenantId::new(tenant).unwrap_or_else(|e| panic!("{e}")),
            actor: ActorId::new(actor).unwrap_or_else(|e| panic!("{e}")),
            key: Keypair::generate().unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// Signs `event` now, with a random id.
    pub fn sign(&self, event: impl Into<Event>) -> Envelope {
        Envelope::sign(
            EventId::random().unwrap_or_else(|e| panic!("{e}")),
            self.tenant.clone(),
            self.actor.clone(),
            &self.key,
            time::OffsetDateTime::now_utc(),
            event.into(),
        )
        .unwrap_or_else(|e| panic!("signing: {e}"))
    }

    /// The subject an envelope belongs on.
    pub fn subject(env: &Envelope) -> String {
        aegis_nats::topology::change_event_subject(&env.tenant, &env.event)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `actor_registered` for `who` (signed by this operator).
    pub fn register(&self, who: &Operator) -> Envelope {
        self.sign(aegis_core::events::ActorRegistered {
            actor: who.actor.clone(),
            public_key: who.key.public_key().to_base64(),
            key_id: who.key.key_id().clone(),
            display_name: None,
        })
    }
}

/// Publishes an envelope to its subject with its id as `Nats-Msg-Id`.
pub async fn publish(
    js: &async_nats::jetstream::Context,
    env: &Envelope,
    expected_last_subject_sequence: Option<u64>,
) -> std::result::Result<aegis_nats::PublishAck, aegis_nats::PublishError> {
    publish_raw(
        js,
        &Operator::subject(env),
        env.to_bytes().unwrap_or_else(|e| panic!("{e}")),
        &env.id.to_string(),
        expected_last_subject_sequence,
    )
    .await
}

/// Publishes arbitrary bytes (for tampered or malformed events).
pub async fn publish_raw(
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
    msg_id: &str,
    expected_last_subject_sequence: Option<u64>,
) -> std::result::Result<aegis_nats::PublishAck, aegis_nats::PublishError> {
    let mut p = aegis_nats::Publish::new(subject.to_owned(), payload).msg_id(msg_id.to_owned());
    p.expected_last_subject_sequence = expected_last_subject_sequence;
    aegis_nats::publish(js, p).await
}

/// Asks the query service.
pub async fn query(
    client: &async_nats::Client,
    tenant: &TenantId,
    request: QueryRequest,
) -> Result<QueryAnswer> {
    let op = request.op();
    let subject = aegis_nats::topology::query_subject(tenant, op)
        .map_err(|e| ControlPlaneError::Nats(e.to_string()))?;
    let body = serde_json::to_vec(&request).map_err(|e| ControlPlaneError::Nats(e.to_string()))?;
    let reply = client
        .request(subject, body.into())
        .await
        .map_err(|e| ControlPlaneError::Nats(e.to_string()))?;
    match serde_json::from_slice::<QueryReply>(&reply.payload) {
        Ok(QueryReply::Ok(a)) => Ok(a),
        Ok(QueryReply::Error(e)) => Err(ControlPlaneError::Query {
            op,
            tenant: tenant.to_string(),
            message: e.to_string(),
        }),
        Err(e) => Err(ControlPlaneError::Query {
            op,
            tenant: tenant.to_string(),
            message: format!("unreadable reply: {e}"),
        }),
    }
}

/// Polls until the control plane has folded `id` (up to `timeout`). Waits for the query service
/// to come up too.
pub async fn wait_outcome(
    client: &async_nats::Client,
    tenant: &TenantId,
    id: &EventId,
    timeout: Duration,
) -> Result<EventRecord> {
    let start = Instant::now();
    loop {
        if let Ok(QueryAnswer::Outcome(EventOutcome::Applied { record })) = query(
            client,
            tenant,
            QueryRequest::Outcome {
                event_id: id.clone(),
            },
        )
        .await
        {
            return Ok(*record);
        }
        if start.elapsed() > timeout {
            return Err(ControlPlaneError::Timeout(
                timeout,
                format!("the outcome of {id}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes and waits for the outcome.
pub async fn submit(js: &async_nats::jetstream::Context, env: &Envelope) -> Result<EventRecord> {
    publish(js, env, None)
        .await
        .map_err(|e| ControlPlaneError::Nats(e.to_string()))?;
    wait_outcome(&js.client(), &env.tenant, &env.id, Duration::from_secs(60)).await
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(ControlPlaneError::Timeout(timeout, what.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the control plane answers queries for `tenant` (it provisions the topology
/// before it starts answering).
pub async fn wait_ready(
    client: &async_nats::Client,
    tenant: &TenantId,
    timeout: Duration,
) -> Result<()> {
    eventually(timeout, "the control plane to answer queries", || async {
        query(client, tenant, QueryRequest::Status)
            .await
            .ok()
            .map(|_| ())
    })
    .await
}
