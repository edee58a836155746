//! The online commands: they talk to the control plane over NATS.
//!
//! Every state-changing command signs one or more events as `--actor` with `--key`, publishes
//! each on `aegis.changes.<tenant>.…` (`Nats-Msg-Id` = event id), then polls the control
//! plane's query service until it has applied the event and prints `accepted` or
//! `rejected: <reason>` (exit [`Exit::Rejected`]). Read-only commands only query.
//!
//! [`Client`] is the reusable part (connect, sign, publish, wait, query); the command functions
//! take a `&Client`, typed arguments and a writer, so tests can run them in-process.

pub mod actors;
pub mod approvals;
pub mod audit;
pub mod block;
pub mod changes;
mod client;
pub mod coverage;
pub mod gateways;
pub mod issuers;
pub mod nats;
pub mod propose;
pub mod publish;
pub mod render;
pub mod replay;
pub mod rollout;
pub mod slice_args;
pub mod status;
pub mod tail;
pub mod tenant;

pub use client::{
    Client, ClientError, ClientOptions, DEFAULT_TIMEOUT, EVENTS_PAGE, MAX_QUERY_TIMEOUT,
    POLL_INTERVAL, Poll, Published, Signer, SignerSource, change_subject,
};

use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::Event;
use aegis_core::ids::{ActorId, TenantId};
use aegis_core::query::{EventRecord, Outcome};
use aegis_nats::ConnectOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach NATS: the connection flags every online command takes (flags, or the
/// environment). Alone, for the commands that read streams and buckets directly instead of
/// asking the control plane (`gateways`, `tail`); flattened into [`OnlineArgs`] for the rest.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// NATS URL, or a comma-separated list of URLs
    #[arg(long = "nats", env = "AEGIS_NATS_URL", default_value = aegis_nats::connect::DEFAULT_URL, value_name = "URL")]
    pub nats: String,
    /// NATS credentials file (.creds: JWT and nkey seed)
    #[arg(long, env = "AEGIS_NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// NATS user (the user/password accounts of nats/conf/accounts.conf)
    #[arg(long, env = "AEGIS_NATS_USER", requires = "password")]
    pub user: Option<String>,
    /// NATS password (prefer the environment variable)
    #[arg(
        long,
        env = "AEGIS_NATS_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,
}

impl ConnectArgs {
    /// How to reach NATS.
    pub fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new(self.nats.clone()).name("aegisctl");
        options.creds = self.creds.clone();
        options.user = self.user.clone();
        options.password = self.password.clone();
        options
    }

    /// Connects (failing fast, exit 6, with the URL in the error) and returns a JetStream
    /// context.
    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context, CliError> {
        let client = aegis_nats::connect(&self.connect_options())
            .await
            .map_err(|source| CliError::from(ClientError::Connect { source }))?;
        Ok(aegis_nats::jetstream(client))
    }
}

/// The options every online command takes (flags, or the environment).
#[derive(clap::Args, Debug, Clone)]
pub struct OnlineArgs {
    /// How to reach NATS
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Tenant to act on
    #[arg(long, env = "AEGIS_TENANT")]
    pub tenant: Option<TenantId>,
    /// Actor who signs the events (must be registered with the key)
    #[arg(long, env = "AEGIS_ACTOR", value_name = "ID")]
    pub actor: Option<ActorId>,
    /// The actor's signing key file (*.key.json from `aegisctl keys generate`)
    #[arg(long, env = "AEGIS_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Seconds to wait for the control plane (outcomes, checks, bundle announcements)
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
    /// Print machine-readable JSON instead of text
    #[arg(long)]
    pub json: bool,
}

impl OnlineArgs {
    /// How to reach NATS.
    pub fn connect_options(&self) -> ConnectOptions {
        self.connect.connect_options()
    }

    /// The tenant, or an exit-2 error saying how to give it.
    pub fn tenant(&self) -> Result<TenantId, CliError> {
        self.tenant
            .clone()
            .ok_or_else(|| CliError::invalid("no tenant: give --tenant T or set AEGIS_TENANT"))
    }

    /// Everything [`Client::connect`] needs.
    pub fn client_options(&self) -> Result<ClientOptions, CliError> {
        let signer = match (&self.actor, &self.key) {
            (Some(actor), Some(key)) => Some(SignerSource {
                actor: actor.clone(),
                key_file: key.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(CliError::invalid(
                    "--actor is given but no --key (or AEGIS_KEY): the actor's signing key is needed",
                ));
            }
            (None, Some(_)) => {
                return Err(CliError::invalid(
                    "--key is given but no --actor (or AEGIS_ACTOR): say whose key it is",
                ));
            }
        };
        Ok(ClientOptions {
            connect: self.connect_options(),
            tenant: self.tenant()?,
            signer,
            timeout: Duration::from_secs(self.timeout),
        })
    }
}

/// The arguments of an online command. `--json` is declared once, in [`OnlineArgs`]; the
/// command's own arguments (`#[arg(skip)] json`) take it from there.
pub trait CommandArgs {
    /// Sets whether the command prints JSON.
    fn set_json(&mut self, json: bool);
}

macro_rules! command_args_with_json {
    ($($args:ty),+ $(,)?) => {
        $(impl CommandArgs for $args {
            fn set_json(&mut self, json: bool) {
                self.json = json;
            }
        })+
    };
}

command_args_with_json!(
    actors::AddArgs,
    actors::RoleArgs,
    actors::RevokeKeyArgs,
    actors::ListArgs,
    tenant::ConfigureArgs,
    propose::ProposeArgs,
    changes::ListArgs,
    changes::ShowArgs,
    changes::ApproveArgs,
    changes::RejectArgs,
    publish::PublishArgs,
    publish::RollbackArgs,
    publish::FreezeArgs,
    publish::UnfreezeArgs,
    status::ViewArgs,
    audit::VerifyArgs,
    issuers::AddArgs,
    issuers::RevokeArgs,
    issuers::ListArgs,
    rollout::StageArgs,
    rollout::PartialArgs,
    rollout::AbortArgs,
    rollout::StatusArgs,
    block::BlockAgentArgs,
    block::BlockToolArgs,
    block::UnblockAgentArgs,
    block::UnblockToolArgs,
    approvals::ListArgs,
    approvals::GrantArgs,
    approvals::DenyArgs,
);

/// `--format` decides the export's format; `--json` is accepted and ignored.
impl CommandArgs for audit::ExportArgs {
    fn set_json(&mut self, _json: bool) {}
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        let exit = if e.is_unavailable() {
            Exit::Unavailable
        } else {
            match e {
                ClientError::Conflict { .. } => Exit::Conflict,
                ClientError::NoSigner | ClientError::Key { .. } | ClientError::Subject(_) => {
                    Exit::Invalid
                }
                _ => Exit::Failure,
            }
        };
        CliError {
            exit,
            message: e.to_string(),
        }
    }
}

/// `accepted`, or `rejected: <reason>`.
pub fn outcome_line(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Accepted => "accepted".to_owned(),
        Outcome::Rejected { reason } => format!("rejected: {reason}"),
    }
}

/// Exit 0 for an accepted event, [`Exit::Rejected`] for a rejected one.
pub fn outcome_exit(outcome: &Outcome) -> Exit {
    match outcome {
        Outcome::Accepted => Exit::Ok,
        Outcome::Rejected { .. } => Exit::Rejected,
    }
}

/// Prints one applied event: the outcome line, or the record as JSON.
pub fn write_outcome(record: &EventRecord, json: bool, out: &mut dyn Write) -> CliResult {
    if json {
        write_json(out, record)?;
    } else {
        writeln!(out, "{}", outcome_line(&record.outcome))?;
    }
    Ok(outcome_exit(&record.outcome))
}

/// Signs, publishes, waits and prints the outcome of one event: what every single-event
/// command does.
pub async fn submit(client: &Client, event: Event, json: bool, out: &mut dyn Write) -> CliResult {
    let record = client.publish_event(event).await?;
    write_outcome(&record, json, out)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    #[test]
    fn client_errors_map_to_exit_codes() {
        let unavailable = ClientError::NoControlPlane {
            subject: "aegis.query.acme.status".into(),
            url: "nats://127.0.0.1:4222".into(),
        };
        let e = CliError::from(unavailable);
        assert_eq!(e.exit, Exit::Unavailable);
        assert!(e.message.contains("nats://127.0.0.1:4222"), "{}", e.message);
        assert!(e.message.contains("control plane running"), "{}", e.message);
        let conflict = ClientError::Conflict {
            subject: "aegis.changes.acme.policy.p".into(),
            expected: 3,
            actual: Some(5),
        };
        assert_eq!(CliError::from(conflict).exit, Exit::Conflict);
        assert_eq!(CliError::from(ClientError::NoSigner).exit, Exit::Invalid);
        let timeout = ClientError::TimedOut {
            what: "change_approved evt-1 was published (stream sequence 9), but applying it".into(),
            timeout: Duration::from_secs(30),
            progress: Some("the control plane has applied stream sequences up to 7".into()),
            cause: None,
        };
        let e = CliError::from(timeout);
        assert_eq!(e.exit, Exit::Unavailable);
        assert!(e.message.contains("within 30s"), "{}", e.message);
        assert!(e.message.contains("up to 7"), "{}", e.message);
        assert!(
            e.message.contains("is the control plane running"),
            "{}",
            e.message
        );
        let silent = ClientError::TimedOut {
            what: "tenant_frozen evt-2 was published (stream sequence 3), but applying it".into(),
            timeout: Duration::from_secs(2),
            progress: None,
            cause: Some("no control plane answers aegis.query.acme.outcome".into()),
        };
        assert_eq!(
            silent.to_string(),
            "tenant_frozen evt-2 was published (stream sequence 3), but applying it was not \
             done within 2s: no control plane answers aegis.query.acme.outcome"
        );
    }

    fn record(outcome: Outcome) -> EventRecord {
        EventRecord {
            position: 7,
            seq: 12,
            id: "evt-7".into(),
            event_type: Some(aegis_core::events::EventType::ChangeApproved),
            actor: Some("alice".parse().unwrap()),
            time: Some("2026-01-01T00:00:00.000Z".into()),
            subject: "aegis.changes.acme.change.chg-1".into(),
            outcome,
            summary: "approved chg-1".into(),
            chain: aegis_core::events::ChainEntry {
                position: 7,
                seq: 12,
                id: "evt-7".into(),
                hash: "00".into(),
            },
        }
    }

    #[test]
    fn a_rejected_outcome_prints_its_reason_and_exits_5() {
        let rejected = record(Outcome::Rejected {
            reason: "alice may not approve her own change chg-1".into(),
        });
        let mut out = Vec::new();
        let exit = write_outcome(&rejected, false, &mut out).unwrap();
        assert_eq!(exit, Exit::Rejected);
        assert_eq!(exit.code(), 5);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "rejected: alice may not approve her own change chg-1\n"
        );

        let mut out = Vec::new();
        let exit = write_outcome(&rejected, true, &mut out).unwrap();
        assert_eq!(exit, Exit::Rejected);
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["outcome"]["status"], "rejected");
        assert_eq!(
            json["outcome"]["reason"],
            "alice may not approve her own change chg-1"
        );
        assert_eq!(json["type"], "change_approved");

        let mut out = Vec::new();
        let exit = write_outcome(&record(Outcome::Accepted), false, &mut out).unwrap();
        assert_eq!(
            (exit, String::from_utf8(out).unwrap()),
            (Exit::Ok, "accepted\n".to_owned())
        );
    }

    #[test]
    fn identity_needs_both_actor_and_key() {
        let mut args = OnlineArgs {
            connect: ConnectArgs {
                nats: "nats://127.0.0.1:4222".into(),
                creds: None,
                user: None,
                password: None,
            },
            tenant: Some("acme".parse().unwrap()),
            actor: Some("alice".parse().unwrap()),
            key: None,
            timeout: 5,
            json: false,
        };
        assert_eq!(args.client_options().unwrap_err().exit, Exit::Invalid);
        args.key = Some("alice.key.json".into());
        let options = args.client_options().unwrap();
        assert_eq!(options.timeout, Duration::from_secs(5));
        assert_eq!(options.connect.url, "nats://127.0.0.1:4222");
        args.tenant = None;
        assert!(
            args.client_options()
                .unwrap_err()
                .message
                .contains("AEGIS_TENANT")
        );
    }
}
