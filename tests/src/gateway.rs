//! The gateway as a test sees it: the real `aegis-gateway` binary as a child process (SIGKILL,
//! SIGTERM, restart on the same data directory), and a small blocking HTTP/1.1 client with
//! keep-alive for calling it.
//!
//! Test support: a programming error here (an invalid literal) panics, like an assertion.
#![allow(clippy::indexing_slicing)]

use crate::controlplane::binary;
use crate::process::{LoggedChild, SpawnError};
use serde_json::Value;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// What went wrong in a gateway fixture.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Binary(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad HTTP response from {addr}: {detail}")]
    Http { addr: SocketAddr, detail: String },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

type Result<T> = std::result::Result<T, GatewayError>;

impl From<SpawnError> for GatewayError {
    fn from(e: SpawnError) -> Self {
        GatewayError::Io {
            what: e.what,
            source: e.source,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GatewayError {
    let what = what.into();
    move |source| GatewayError::Io { what, source }
}

/// A free TCP port on 127.0.0.1 (bound and released; racy in theory, fine in practice).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(l.local_addr().map_err(io("reading the port"))?.port())
}

/// How to start a gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub id: String,
    pub tenants: Vec<String>,
    /// Control-plane public key file (or directory) bundles must be signed with.
    pub trust: PathBuf,
    pub nats_url: String,
    pub user: Option<(String, String)>,
    /// Extra flags for `aegis-gateway run`.
    pub extra: Vec<String>,
}

impl GatewayOptions {
    pub fn new(id: &str, tenants: &[&str], trust: &Path, nats_url: &str) -> Self {
        Self {
            id: id.to_owned(),
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            trust: trust.to_path_buf(),
            nats_url: nats_url.to_owned(),
            user: None,
            extra: Vec::new(),
        }
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_owned());
        self
    }
}

/// A running `aegis-gateway run`.
#[derive(Debug)]
pub struct Gateway {
    /// First, so that dropping the fixture kills the process before its directory goes.
    process: LoggedChild,
    pub id: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    _dir: Option<TempDir>,
}

impl Gateway {
    /// Starts a gateway on a free port with a fresh data directory.
    pub fn start(options: &GatewayOptions) -> Result<Gateway> {
        let dir = tempfile::tempdir().map_err(io("creating a data directory"))?;
        let data = dir.path().join(&options.id);
        let mut gw = Self::start_on(options, &data)?;
        gw._dir = Some(dir);
        Ok(gw)
    }

    /// Starts a gateway on a given data directory (kept by the caller).
    pub fn start_on(options: &GatewayOptions, data_dir: &Path) -> Result<Gateway> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut args = vec![
            "run".to_owned(),
            "--id".to_owned(),
            options.id.clone(),
            "--data".to_owned(),
            data_dir.display().to_string(),
            "--trust".to_owned(),
            options.trust.display().to_string(),
            "--listen".to_owned(),
            addr.to_string(),
            "--nats".to_owned(),
            options.nats_url.clone(),
            "--heartbeat-secs".to_owned(),
            "1".to_owned(),
        ];
        for t in &options.tenants {
            args.push("--tenant".to_owned());
            args.push(t.clone());
        }
        if let Some((user, password)) = &options.user {
            args.extend([
                "--user".to_owned(),
                user.clone(),
                "--password".to_owned(),
                password.clone(),
            ]);
        }
        args.extend(options.extra.iter().cloned());
        std::fs::create_dir_all(data_dir)
            .map_err(io(format!("creating {}", data_dir.display())))?;
        let log_file = data_dir.with_extension("log");
        let mut gw = Gateway {
            process: LoggedChild::new(args, &log_file),
            id: options.id.clone(),
            addr,
            log_file,
            data_dir: data_dir.to_path_buf(),
            _dir: None,
        };
        gw.spawn()?;
        gw.wait_healthy(Duration::from_secs(20))?;
        Ok(gw)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = binary("aegis-gateway").map_err(|e| GatewayError::Binary(e.to_string()))?;
        Ok(self.process.spawn(&bin)?)
    }

    /// Waits until `/healthz` answers.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Err(GatewayError::Binary(format!(
                    "aegis-gateway exited with {status} during start; log:\n{}",
                    self.log()
                )));
            }
            if let Ok((200, _)) = self.get("/healthz") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(GatewayError::Timeout(
            timeout,
            format!("{} to answer /healthz; log:\n{}", self.id, self.log()),
        ))
    }

    /// Waits until `/readyz` is 200.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, "readiness", |gw| Ok(gw.get("/readyz")?.0 == 200))
    }

    /// Waits until the gateway enforces `version` for `tenant` (from `/v1/status`).
    pub fn wait_version(&self, tenant: &str, version: u64, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, &format!("{tenant} v{version}"), |gw| {
            Ok(gw.version(tenant)? == Some(version))
        })
    }

    /// The version enforced for `tenant`.
    pub fn version(&self, tenant: &str) -> Result<Option<u64>> {
        let status = self.status()?;
        Ok(status["tenants"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["tenant"] == tenant))
            .and_then(|t| t["version"].as_u64()))
    }

    /// `/v1/status` as JSON.
    pub fn status(&self) -> Result<Value> {
        let (_, body) = self.get("/v1/status")?;
        serde_json::from_str(&body).map_err(|e| GatewayError::Http {
            addr: self.addr,
            detail: format!("/v1/status is not JSON: {e}: {body}"),
        })
    }

    fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Gateway) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(true) = done(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(GatewayError::Timeout(
            timeout,
            format!(
                "{} to reach {what}; log tail:\n{}",
                self.id,
                tail(&self.log(), 40)
            ),
        ))
    }

    /// One GET on a fresh connection.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut c = HttpClient::connect(self.addr)?;
        c.request("GET", path, &[], b"")
    }

    /// A keep-alive client for this gateway.
    pub fn client(&self) -> Result<HttpClient> {
        HttpClient::connect(self.addr)
    }

    /// One decide call on a fresh connection: status and JSON answer.
    pub fn decide(&self, token: &str, body: &Value) -> Result<(u16, Value)> {
        self.client()?.decide(token, body)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then wait (up to `timeout`) for a clean exit; SIGKILL after that.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.process.terminate(timeout)
    }

    /// Starts the process again on the same data directory and port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()?;
        self.wait_healthy(Duration::from_secs(20))
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A blocking HTTP/1.1 client on one keep-alive connection (reconnects when the server closed it).
#[derive(Debug)]
pub struct HttpClient {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl HttpClient {
    pub fn connect(addr: SocketAddr) -> Result<HttpClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(io(format!("connecting to {addr}")))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io("read timeout"))?;
        let _ = stream.set_nodelay(true);
        Ok(HttpClient {
            addr,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads the response (`Content-Length` or chunked bodies).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, String)> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        wire.extend_from_slice(body);
        let first = self.send(&wire);
        match first {
            Ok(r) => Ok(r),
            // The server may have closed an idle keep-alive connection: one fresh try.
            Err(_) => {
                *self = HttpClient::connect(self.addr)?;
                self.send(&wire)
            }
        }
    }

    fn send(&mut self, wire: &[u8]) -> Result<(u16, String)> {
        let addr = self.addr;
        let bad = |detail: String| GatewayError::Http { addr, detail };
        self.reader
            .get_mut()
            .write_all(wire)
            .map_err(io("sending a request"))?;
        let mut status_line = String::new();
        let n = self
            .reader
            .read_line(&mut status_line)
            .map_err(io("reading the status line"))?;
        if n == 0 {
            return Err(bad("connection closed".into()));
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("status line {status_line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .map_err(io("reading headers"))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.reader
                    .read_line(&mut size)
                    .map_err(io("reading a chunk size"))?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| bad(format!("chunk size {size:?}")))?;
                let mut chunk = vec![0; n + 2];
                self.reader
                    .read_exact(&mut chunk)
                    .map_err(io("reading a chunk"))?;
                chunk.truncate(n);
                body.extend(chunk);
                if n == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.reader
                .read_exact(&mut body)
                .map_err(io("reading the body"))?;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `POST /v1/decide` with a bearer token.
    pub fn decide(&mut self, token: &str, body: &Value) -> Result<(u16, Value)> {
        let auth = format!("Bearer {token}");
        let (status, text) = self.request(
            "POST",
            "/v1/decide",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )?;
        let value = serde_json::from_str(&text).map_err(|e| GatewayError::Http {
            addr: self.addr,
            detail: format!("answer is not JSON ({e}): {text}"),
        })?;
        Ok((status, value))
    }
}
