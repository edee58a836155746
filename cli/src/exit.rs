//! Exit codes and the error type every command returns.

use aegis_core::decision::DecisionKind;
use std::fmt;
use std::path::Path;

/// What `aegisctl` exits with. Scripts and CI may rely on these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success; for `eval`, the decision was `allow` or `sanitize`.
    Ok,
    /// 1: failure: tests failed, a bundle was rejected, an I/O error.
    Failure,
    /// 2: invalid input: lint problems, bad arguments (clap also uses 2).
    Invalid,
    /// 3: `eval` decided `deny`.
    Deny,
    /// 4: `eval` decided `approval_needed`.
    ApprovalNeeded,
    /// 5: the control plane applied the event and rejected it (missing role, self-approval,
    /// frozen tenant, stale base, ...).
    Rejected,
    /// 6: NATS or the control plane could not be reached, or did not finish in `--timeout`.
    Unavailable,
    /// 7: someone else edited the same policy concurrently (re-run `propose`).
    Conflict,
    /// 8: `gateways`: the fleet has not converged — a gateway is behind the latest published
    /// version, stale, or without a bundle, or no gateway has reported.
    NotConverged,
    /// 9: `audit replay`: a recorded decision disagrees with the version it records, or a
    /// recorded version could not be fetched, verified or reproduced.
    Inconsistent,
}

impl Exit {
    /// The numeric process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Invalid => 2,
            Exit::Deny => 3,
            Exit::ApprovalNeeded => 4,
            Exit::Rejected => 5,
            Exit::Unavailable => 6,
            Exit::Conflict => 7,
            Exit::NotConverged => 8,
            Exit::Inconsistent => 9,
        }
    }

    /// The exit code `eval` uses for a decision.
    pub fn for_decision(kind: DecisionKind) -> Exit {
        match kind {
            DecisionKind::Allow | DecisionKind::Sanitize => Exit::Ok,
            DecisionKind::Deny => Exit::Deny,
            DecisionKind::ApprovalNeeded => Exit::ApprovalNeeded,
        }
    }
}

/// The exit-code table shown in `aegisctl --help` and the README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok (for eval: decision allow or sanitize)
  1  failure: tests failed, bundle rejected, checks failed, audit findings, I/O error
  2  invalid input: lint problems, bad arguments
  3  eval decision: deny
  4  eval decision: approval_needed
  5  rejected by the control plane (the reason is printed)
  6  NATS or the control plane unreachable, or not done within --timeout
  7  conflict: someone else edited the same policy concurrently (re-run propose)
  8  gateways: fleet not converged (a gateway behind, stale or without a bundle, or none)
  9  audit replay: a recorded decision disagrees with its version, or a version is unverifiable";

/// Why a command stopped, and the exit code it maps to. Details already printed by the command
/// (diagnostics, failing vectors) are not repeated in the message.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    /// Exit 2: the input (policies, arguments, input documents) is invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Invalid,
            message: message.into(),
        }
    }

    /// Exit 1: something failed.
    pub fn failure(message: impl Into<String>) -> Self {
        CliError {
            exit: Exit::Failure,
            message: message.into(),
        }
    }

    /// Exit 1: an I/O error on `path`.
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        CliError::failure(format!("{}: {err}", path.display()))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<std::io::Error> for CliError {
    fn from(err: std::io::Error) -> Self {
        CliError::failure(format!("cannot write output: {err}"))
    }
}

/// What every command returns: the exit code on success, or an error carrying one.
pub type CliResult = Result<Exit, CliError>;
