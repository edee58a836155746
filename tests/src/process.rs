//! A fixture's child process: a workspace binary with its stdout and stderr appended to a log
//! file, that can be killed (SIGKILL or SIGTERM) and started again with the same arguments. The
//! control-plane and gateway fixtures are built on it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Starting the process failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SpawnError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpawnError {
    let what = what.into();
    move |source| SpawnError { what, source }
}

/// The arguments and log file of a process, and the process while it runs. Dropping it kills
/// the process (SIGKILL).
#[derive(Debug)]
pub struct LoggedChild {
    child: Option<Child>,
    args: Vec<String>,
    log_file: PathBuf,
}

impl LoggedChild {
    /// Not started yet: [`spawn`](Self::spawn) starts it.
    pub fn new(args: Vec<String>, log_file: &Path) -> LoggedChild {
        LoggedChild {
            child: None,
            args,
            log_file: log_file.to_path_buf(),
        }
    }

    /// Starts `bin` with the arguments, `RUST_LOG=info`, no stdin, and stdout and stderr
    /// appended to the log file.
    pub fn spawn(&mut self, bin: &Path) -> Result<(), SpawnError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(io(format!("opening {}", self.log_file.display())))?;
        let log2 = log.try_clone().map_err(io("cloning the log handle"))?;
        let child = Command::new(bin)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (up to `timeout`) for a clean exit; SIGKILL after that.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Whether the process is still running; `Some(status)` if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        self.kill9();
    }
}
