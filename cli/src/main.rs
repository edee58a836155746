//! `aegisctl`: offline tooling for Aegis policies, and the online commands that drive the control
//! plane over NATS. Argument parsing only; the commands live in the library.

use aegis_core::bundle::HighWater;
use aegis_core::events::{Role, RolloutStage};
use aegis_core::ids::{ActorId, AgentId, ChangeId, TenantId, ToolId};
use aegis_core::keys::KeyId;
use aegis_core::query::ChangeState;
use aegisctl::exit::{CliError, CliResult, EXIT_CODES_HELP, Exit};
use aegisctl::online::{
    self, Client, OnlineArgs, actors, audit, changes, propose, publish, status, tenant,
};
use aegisctl::{bundle, diff, eval, init, keys, lint, test};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "aegisctl",
    version,
    about = "Lint, test, evaluate, bundle, sign and diff Aegis agent policies; propose, review, \
             publish and audit them through the control plane",
    after_help = EXIT_CODES_HELP,
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a policy tree from a shipped template
    #[command(
        after_help = "Example:\n  aegisctl init --template finance --dir ./policies/acme\n\nRefuses to overwrite existing files."
    )]
    Init {
        #[arg(long, value_enum)]
        template: TemplateArg,
        /// Target directory [default: ./<template>]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Validate policy and test-vector files, reporting every problem with file:line
    #[command(
        after_help = "Example:\n  aegisctl lint policies/\n  aegisctl lint --json acme.yaml\n\nExit 0 when clean, 2 on problems."
    )]
    Lint {
        /// Files or directories (searched recursively for .yaml/.yml/.json)
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print diagnostics as a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Run every test vector in the tree against its policies
    #[command(
        after_help = "Example:\n  aegisctl test policies/\n  aegisctl test policies/ --filter refund\n\nExit 0 when all pass, 1 on failures, 2 on invalid policies."
    )]
    Test {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Only run vectors whose name or file contains this
        #[arg(long)]
        filter: Option<String>,
    },
    /// Decide one tool call against a policy tree or a verified bundle
    #[command(
        after_help = "Examples:\n  aegisctl eval policies/ --tenant acme --agent finance-agent --tool payments \\\n      --action create_payment --params '{\"amount\": 6000, \"currency\": \"USD\"}' --chain planner\n  aegisctl eval policies/ --input call.json --json\n  aegisctl eval acme-v3.tar.gz --trust trust/ --input -\n\nExit 0 for allow/sanitize, 3 for deny, 4 for approval_needed."
    )]
    Eval {
        /// A policy tree (files/directories), or one bundle file ending in .tar.gz
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Decide input as JSON (a file, or - for stdin)
        #[arg(long, conflicts_with_all = ["tenant", "agent", "tool", "action", "params", "context", "chain"])]
        input: Option<PathBuf>,
        #[arg(long, required_unless_present = "input")]
        tenant: Option<TenantId>,
        #[arg(long, required_unless_present = "input")]
        agent: Option<AgentId>,
        #[arg(long, required_unless_present = "input")]
        tool: Option<ToolId>,
        #[arg(long, required_unless_present = "input")]
        action: Option<String>,
        /// Tool parameters as a JSON object
        #[arg(long)]
        params: Option<String>,
        /// Context as a JSON object
        #[arg(long)]
        context: Option<String>,
        /// Call chain, origin first, direct caller last
        #[arg(long, value_delimiter = ',')]
        chain: Vec<AgentId>,
        /// Trust file or directory of *.pub.json (required when PATH is a bundle)
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Print the decision as JSON
        #[arg(long)]
        json: bool,
    },
    /// Build, verify and inspect signed policy bundles
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Manage signing keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show what became stricter, looser or changed between two policy sets
    #[command(
        after_help = "Examples:\n  aegisctl diff old-policies/ policies/\n  aegisctl diff acme-v3.tar.gz acme-v4.tar.gz --json\n\nOLD and NEW are policy trees or bundles. Bundles are read WITHOUT a trust check (no signature\nverification); a diff is a review aid, use `aegisctl bundle verify` before trusting a bundle.\nAlways exits 0 when both sides load."
    )]
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print the changes as JSON
        #[arg(long)]
        json: bool,
    },

    // ---- online: these talk to NATS and the control plane ----
    /// Provision the NATS topology (streams, object store, KV bucket)
    #[command(subcommand)]
    Nats(NatsCommand),
    /// Register actors, grant and revoke roles and keys
    #[command(subcommand)]
    Actor(ActorCommand),
    /// Tenant settings
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Propose the difference between a policy tree and what is live, and wait for the checks
    #[command(
        after_help = "Example:\n  aegisctl propose policies/acme --intent 'Raise the payment approval threshold to 7,500' \\\n      --ticket FIN-1042 --tenant acme --actor alice --key keys/alice.key.json\n\nThe tree is validated first (exit 2 with the lint diagnostics). Only --tenant's documents\nare proposed; policies compared after parsing, so formatting-only edits do not count.\nExit 0 when the checks passed, 1 when they failed or there is nothing to propose,\n5 when the control plane rejected an event, 7 on a concurrent edit of the same policy."
    )]
    Propose {
        /// The policy tree (files or directories)
        #[arg(required = true, value_name = "DIR")]
        paths: Vec<PathBuf>,
        /// Why: one or two sentences a reviewer reads first
        #[arg(long)]
        intent: String,
        #[arg(long)]
        ticket: Option<String>,
        /// Also delete live policies that are not in the tree
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// List and show change requests
    #[command(subcommand)]
    Changes(ChangesCommand),
    /// Approve someone else's change
    #[command(
        after_help = "Example:\n  aegisctl approve chg-0123456789abcdef --comment 'reviewed the diff' --actor bob --key keys/bob.key.json"
    )]
    Approve {
        change_id: ChangeId,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Reject a change: it can no longer be approved or published
    Reject {
        change_id: ChangeId,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Publish an approved change, and wait until its bundle is announced
    #[command(
        after_help = "Example:\n  aegisctl publish chg-0123456789abcdef --stage global --actor carol --key keys/carol.key.json\n\nPrints the new version and its bundle digest."
    )]
    Publish {
        change_id: ChangeId,
        #[arg(long, value_enum, default_value_t = StageArg::Global)]
        stage: StageArg,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Publish a new version with the content of an older one
    #[command(
        after_help = "Example:\n  aegisctl rollback --to 3 --reason 'v4 blocks refunds' --actor carol --key keys/carol.key.json"
    )]
    Rollback {
        /// The version whose content to publish again
        #[arg(long = "to", value_name = "V")]
        to: u64,
        #[arg(long)]
        reason: String,
        /// An incident rollback
        #[arg(long)]
        emergency: bool,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Block every publish, rollback and rollout for the tenant
    Freeze {
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Lift a freeze
    Unfreeze {
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// The tenant at a glance: freeze, latest version, open changes, live policies, audit chain
    Status {
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Every published version
    History {
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Export the audit trail, verify the audit hash chain
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand, Debug)]
enum NatsCommand {
    /// Create the streams, object store and KV bucket, or check that they match
    #[command(
        after_help = "Example:\n  aegisctl nats init --nats nats://127.0.0.1:4222\n  aegisctl nats init --replicas 3 --nats nats://n1:4222,nats://n2:4223\n\nIdempotent. A resource whose config drifted is an error unless --fix-drift."
    )]
    Init {
        /// 1 for a single server, 3 for a cluster
        #[arg(long, default_value = "1", value_parser = ["1", "3"])]
        replicas: String,
        /// Update drifted resources in place
        #[arg(long)]
        fix_drift: bool,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ActorCommand {
    /// Register an actor (or add a key to one) and grant roles
    #[command(
        after_help = "Example:\n  aegisctl keys generate --out keys/ --name bob\n  aegisctl actor add bob --public-key keys/bob.pub.json --name 'Bob B.' --role approver \\\n      --tenant acme --actor admin --key keys/admin.key.json"
    )]
    Add {
        /// The actor to act on
        #[arg(value_name = "ACTOR")]
        id: ActorId,
        /// The actor's *.pub.json
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Display name
        #[arg(long)]
        name: Option<String>,
        /// admin, editor, approver, publisher or auditor (repeatable)
        #[arg(long = "role")]
        roles: Vec<Role>,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Grant a role
    Grant {
        /// The actor to act on
        #[arg(value_name = "ACTOR")]
        id: ActorId,
        role: Role,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Revoke a role
    Revoke {
        /// The actor to act on
        #[arg(value_name = "ACTOR")]
        id: ActorId,
        role: Role,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Revoke one of an actor's keys
    RevokeKey {
        /// The actor to act on
        #[arg(value_name = "ACTOR")]
        id: ActorId,
        key_id: KeyId,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// List actors, roles and keys
    List {
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Set required approvals per risk tier and bundle expiry (unset flags keep their value)
    Configure {
        #[arg(long)]
        low: Option<u32>,
        #[arg(long)]
        medium: Option<u32>,
        #[arg(long)]
        high: Option<u32>,
        #[arg(long, value_name = "D")]
        bundle_expiry_days: Option<u32>,
        /// Published bundles never expire
        #[arg(long, conflicts_with = "bundle_expiry_days")]
        no_bundle_expiry: bool,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ChangesCommand {
    /// Changes, newest first
    List {
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// One change in full: documents, checks, approvals, publish
    Show {
        change_id: ChangeId,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Who changed what, when, who approved, which bundle digest: one row per change event and
    /// per published version
    #[command(
        after_help = "Example:\n  aegisctl audit export --format csv --output acme-audit.csv --tenant acme"
    )]
    Export {
        #[arg(long, value_enum, default_value_t = FormatArg::Json)]
        format: FormatArg,
        /// Write to FILE instead of stdout
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Recompute the tenant's hash chain from AEGIS_CHANGES and check it against the signed
    /// checkpoints on AEGIS_AUDIT
    #[command(
        after_help = "Example:\n  aegisctl audit verify --tenant acme --trust trust/controlplane.pub.json\n\nExit 0 when intact, 1 on any finding (each printed with kind, position, event id, sequence)."
    )]
    Verify {
        /// The control plane's public key(s): also verify checkpoint signatures
        #[arg(long, value_name = "PATH")]
        trust: Option<PathBuf>,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum StageArg {
    Shadow,
    Partial,
    Global,
}

impl From<StageArg> for RolloutStage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Shadow => RolloutStage::Shadow,
            StageArg::Partial => RolloutStage::Partial,
            StageArg::Global => RolloutStage::Global,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum StateArg {
    Open,
    Approved,
    Rejected,
    Published,
}

impl From<StateArg> for ChangeState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Open => ChangeState::Open,
            StateArg::Approved => ChangeState::Approved,
            StateArg::Rejected => ChangeState::Rejected,
            StateArg::Published => ChangeState::Published,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    Json,
    Csv,
}

#[derive(Subcommand, Debug)]
enum BundleCommand {
    /// Lint, test and compile one tenant's policies into a signed, deterministic bundle
    #[command(
        after_help = "Example:\n  aegisctl bundle build policies/ --tenant acme --version 4 --key keys/signing.key.json \\\n      --out acme-v4.tar.gz --created-at 2025-06-01T00:00:00Z --change CR-1234\n\nThe same inputs and --created-at give byte-identical bundles."
    )]
    Build(bundle::BuildArgs),
    /// Verify a bundle as a gateway would (signature, hashes, tenant, high-water, expiry)
    #[command(
        after_help = "Example:\n  aegisctl bundle verify acme-v4.tar.gz --trust trust/ --tenant acme \\\n      --high-water 3 --high-water-digest sha256:...\n\nExit 0 when verified, 1 when rejected."
    )]
    Verify {
        file: PathBuf,
        /// Trust file, or directory of *.pub.json (+ revoked.json)
        #[arg(long)]
        trust: PathBuf,
        /// Expected tenant
        #[arg(long)]
        tenant: Option<TenantId>,
        /// Highest version applied so far
        #[arg(long, requires = "high_water_digest")]
        high_water: Option<u64>,
        /// Digest of the bundle applied at --high-water
        #[arg(long, requires = "high_water")]
        high_water_digest: Option<String>,
    },
    /// Show a bundle's manifest and files (NOT a trust check)
    #[command(
        after_help = "Example:\n  aegisctl bundle inspect acme-v4.tar.gz\n\nInspect does not verify the signature or trust; use `aegisctl bundle verify` for that.\nExit 1 when the bundle cannot be read or a file does not match its listed hash."
    )]
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Generate an ed25519 signing keypair
    #[command(
        after_help = "Example:\n  aegisctl keys generate --out keys/ --name release\n\nWrites keys/release.key.json (secret, mode 0600) and keys/release.pub.json; never overwrites."
    )]
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "signing")]
        name: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum TemplateArg {
    Finance,
    Ehr,
    Cicd,
}

fn run(cli: Cli, out: &mut dyn Write) -> aegisctl::exit::CliResult {
    match cli.command {
        Command::Init { template, dir } => {
            let template = match template {
                TemplateArg::Finance => init::Template::Finance,
                TemplateArg::Ehr => init::Template::Ehr,
                TemplateArg::Cicd => init::Template::Cicd,
            };
            init::run(&init::InitArgs { template, dir }, out)
        }
        Command::Lint { paths, json } => lint::run(&lint::LintArgs { paths, json }, out),
        Command::Test { paths, filter } => test::run(&test::TestArgs { paths, filter }, out),
        Command::Eval {
            paths,
            input,
            tenant,
            agent,
            tool,
            action,
            params,
            context,
            chain,
            trust,
            json,
        } => {
            let input = match (input, tenant, agent, tool, action) {
                (Some(file), ..) => eval::InputSource::File(file),
                (None, Some(tenant), Some(agent), Some(tool), Some(action)) => {
                    eval::InputSource::Fields {
                        tenant,
                        agent,
                        tool,
                        action,
                        params,
                        context,
                        chain,
                    }
                }
                _ => {
                    return Err(aegisctl::exit::CliError::invalid(
                        "give --input, or all of --tenant --agent --tool --action",
                    ));
                }
            };
            eval::run(
                &eval::EvalArgs {
                    paths,
                    input,
                    trust,
                    json,
                },
                out,
            )
        }
        Command::Bundle(BundleCommand::Build(args)) => bundle::build_cmd(&args, out),
        Command::Bundle(BundleCommand::Verify {
            file,
            trust,
            tenant,
            high_water,
            high_water_digest,
        }) => {
            let high_water = match (high_water, high_water_digest) {
                (Some(version), Some(digest)) => Some(HighWater { version, digest }),
                _ => None,
            };
            bundle::verify_cmd(
                &bundle::VerifyArgs {
                    file,
                    trust,
                    tenant,
                    high_water,
                },
                out,
            )
        }
        Command::Bundle(BundleCommand::Inspect { file, json }) => {
            bundle::inspect_cmd(&bundle::InspectArgs { file, json }, out)
        }
        Command::Keys(KeysCommand::Generate { out: dir, name }) => {
            keys::generate(&keys::GenerateArgs { out: dir, name }, out)
        }
        Command::Diff { old, new, json } => diff::run(&diff::DiffArgs { old, new, json }, out),
        command => run_online(command, out),
    }
}

/// A runtime for one online command.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))
}

/// Connects as `online` says and runs `f` with the client.
fn with_client(
    online: &OnlineArgs,
    out: &mut dyn Write,
    f: impl AsyncFnOnce(&Client, &mut dyn Write) -> CliResult,
) -> CliResult {
    let options = online.client_options()?;
    runtime()?.block_on(async {
        let client = Client::connect(&options).await?;
        f(&client, out).await
    })
}

fn run_online(command: Command, out: &mut dyn Write) -> CliResult {
    match command {
        Command::Nats(NatsCommand::Init {
            replicas,
            fix_drift,
            online,
        }) => {
            let args = online::nats::InitArgs {
                replicas: replicas.parse().unwrap_or(1),
                fix_drift,
            };
            runtime()?.block_on(async {
                let client = aegis_nats::connect(&online.connect_options())
                    .await
                    .map_err(|source| CliError::from(online::ClientError::Connect { source }))?;
                online::nats::init(&aegis_nats::jetstream(client), &args, out).await
            })
        }
        Command::Actor(ActorCommand::Add {
            id: actor,
            public_key,
            name,
            roles,
            online,
        }) => {
            let args = actors::AddArgs {
                actor,
                public_key,
                display_name: name,
                roles,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                actors::add(c, &args, out).await
            })
        }
        Command::Actor(ActorCommand::Grant {
            id: actor,
            role,
            online,
        }) => {
            let args = actors::RoleArgs {
                actor,
                role,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                actors::grant(c, &args, out).await
            })
        }
        Command::Actor(ActorCommand::Revoke {
            id: actor,
            role,
            online,
        }) => {
            let args = actors::RoleArgs {
                actor,
                role,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                actors::revoke(c, &args, out).await
            })
        }
        Command::Actor(ActorCommand::RevokeKey {
            id: actor,
            key_id,
            reason,
            online,
        }) => {
            let args = actors::RevokeKeyArgs {
                actor,
                key_id,
                reason,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                actors::revoke_key(c, &args, out).await
            })
        }
        Command::Actor(ActorCommand::List { online }) => {
            let args = actors::ListArgs { json: online.json };
            with_client(&online, out, async |c, out| {
                actors::list(c, &args, out).await
            })
        }
        Command::Tenant(TenantCommand::Configure {
            low,
            medium,
            high,
            bundle_expiry_days,
            no_bundle_expiry,
            online,
        }) => {
            let args = tenant::ConfigureArgs {
                low,
                medium,
                high,
                bundle_expiry_days,
                no_bundle_expiry,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                tenant::configure(c, &args, out).await
            })
        }
        Command::Propose {
            paths,
            intent,
            ticket,
            prune,
            online,
        } => {
            let args = propose::ProposeArgs {
                paths,
                intent,
                ticket,
                prune,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                propose::run(c, &args, out).await
            })
        }
        Command::Changes(ChangesCommand::List { state, online }) => {
            let args = changes::ListArgs {
                state: state.map(Into::into),
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                changes::list(c, &args, out).await
            })
        }
        Command::Changes(ChangesCommand::Show { change_id, online }) => {
            let args = changes::ShowArgs {
                change_id,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                changes::show(c, &args, out).await
            })
        }
        Command::Approve {
            change_id,
            comment,
            online,
        } => {
            let args = changes::ApproveArgs {
                change_id,
                comment,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                changes::approve(c, &args, out).await
            })
        }
        Command::Reject {
            change_id,
            reason,
            online,
        } => {
            let args = changes::RejectArgs {
                change_id,
                reason,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                changes::reject(c, &args, out).await
            })
        }
        Command::Publish {
            change_id,
            stage,
            online,
        } => {
            let args = publish::PublishArgs {
                change_id,
                stage: stage.into(),
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                publish::publish(c, &args, out).await
            })
        }
        Command::Rollback {
            to,
            reason,
            emergency,
            online,
        } => {
            let args = publish::RollbackArgs {
                to_version: to,
                reason,
                emergency,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                publish::rollback(c, &args, out).await
            })
        }
        Command::Freeze { reason, online } => {
            let args = publish::FreezeArgs {
                reason,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                publish::freeze(c, &args, out).await
            })
        }
        Command::Unfreeze { reason, online } => {
            let args = publish::UnfreezeArgs {
                reason,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                publish::unfreeze(c, &args, out).await
            })
        }
        Command::Status { online } => {
            let args = status::ViewArgs { json: online.json };
            with_client(&online, out, async |c, out| {
                status::status(c, &args, out).await
            })
        }
        Command::History { online } => {
            let args = status::ViewArgs { json: online.json };
            with_client(&online, out, async |c, out| {
                status::history(c, &args, out).await
            })
        }
        Command::Audit(AuditCommand::Export {
            format,
            output,
            online,
        }) => {
            let args = audit::ExportArgs {
                format: match format {
                    FormatArg::Json => audit::ExportFormat::Json,
                    FormatArg::Csv => audit::ExportFormat::Csv,
                },
                output,
            };
            with_client(&online, out, async |c, out| {
                audit::export(c, &args, out).await
            })
        }
        Command::Audit(AuditCommand::Verify { trust, online }) => {
            let args = audit::VerifyArgs {
                trust,
                json: online.json,
            };
            with_client(&online, out, async |c, out| {
                audit::verify(c, &args, out).await
            })
        }
        Command::Init { .. }
        | Command::Lint { .. }
        | Command::Test { .. }
        | Command::Eval { .. }
        | Command::Bundle(_)
        | Command::Keys(_)
        | Command::Diff { .. } => Err(CliError::failure("not an online command")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = run(cli, &mut out);
    let flushed: anyhow::Result<()> = out.flush().map_err(anyhow::Error::from);
    let exit = match result {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit
        }
    };
    if let Err(e) = flushed {
        eprintln!("error: cannot write output: {e:#}");
        return ExitCode::from(Exit::Failure.code());
    }
    ExitCode::from(exit.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
