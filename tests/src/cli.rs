//! Running the real `aegisctl` binary from tests: with a clean Aegis environment (none of the
//! caller's `AEGIS_*` connection or identity variables leak in) plus what the test passes.
//!
//! The binary comes from `target/<profile>/`: `cargo build -p aegisctl` first.
//!
//! Test support: a failed step panics with what went wrong, like an assertion.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The variables a test never inherits from the shell running it.
const SCRUBBED: [&str; 7] = [
    "AEGIS_NATS_URL",
    "AEGIS_NATS_CREDS",
    "AEGIS_NATS_USER",
    "AEGIS_NATS_PASSWORD",
    "AEGIS_TENANT",
    "AEGIS_ACTOR",
    "AEGIS_KEY",
];

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The `aegisctl` binary next to the test executable.
pub fn aegisctl_bin() -> PathBuf {
    crate::controlplane::binary("aegisctl")
        .unwrap_or_else(|e| panic!("{e} (build it: cargo build -p aegisctl)"))
}

/// `run` must have exited 0 (`what` says which step it was); returns it.
pub fn ok(run: Run, what: &str) -> Run {
    assert_eq!(run.code, 0, "{what}: {run:#?}");
    run
}

/// `aegisctl args` with a clean Aegis environment plus `env`.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(aegisctl_bin());
    cmd.args(args).stdin(Stdio::null());
    for var in SCRUBBED {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `aegisctl args` to the end.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = command(args, env).output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Starts `aegisctl args` in the background, its output going to files in a new directory
/// under `dir` (returned).
pub fn spawn(args: &[&str], env: &[(&str, &str)], dir: &Path) -> (Child, PathBuf) {
    let out_dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(dir)
        .unwrap()
        .keep();
    let child = command(args, env)
        .stdout(std::fs::File::create(out_dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(out_dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    (child, out_dir)
}

/// Waits for a spawned run, killing it after `timeout` (a test failure).
pub fn finish(mut child: Child, out_dir: &Path, timeout: Duration, what: &str) -> Run {
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "aegisctl {what} did not finish within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(out_dir.join("stdout")).unwrap_or_default(),
                std::fs::read_to_string(out_dir.join("stderr")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(out_dir.join("stdout")).unwrap(),
        stderr: std::fs::read_to_string(out_dir.join("stderr")).unwrap(),
    }
}
