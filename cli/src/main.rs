//! `aegisctl`: offline tooling for Aegis policies, and the online commands that drive the control
//! plane over NATS. Argument parsing only; the commands live in the library.

use aegis_core::bundle::HighWater;
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegisctl::exit::{CliError, CliResult, EXIT_CODES_HELP, Exit};
use aegisctl::online::{
    self, Client, CommandArgs, ConnectArgs, OnlineArgs, actors, approvals, audit, block, changes,
    coverage, gateways, issuers, propose, publish, replay, rollout, status, tail, tenant,
};
use aegisctl::{bundle, diff, eval, init, keys, lint, test, token, up};
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
    /// Issue and inspect agent tokens (EdDSA JWTs with the call chain as RFC 8693 act claims)
    #[command(subcommand)]
    Token(TokenCommand),
    /// The whole stack on this machine: nats-server, control plane, one gateway, provisioned
    /// with the three templates
    #[command(
        after_help = "Examples:\n  aegisctl up                       # foreground; Ctrl-C stops everything\n  aegisctl up --detach --fresh --dir /tmp/aegis-up --nats-port 14222 --gateway-port 18181\n  aegisctl up --down --dir /tmp/aegis-up\n\nFinds nats-server >= 2.10 ($AEGIS_NATS_SERVER, PATH, <repo>/tools/bin; else runs\nscripts/setup.sh) and aegis-controlplane / aegis-gateway next to aegisctl (then PATH).\nIn --dir: keys, a JetStream store, control-plane and gateway state, logs/*.log, env (shell\nexports incl. AEGIS_DEMO_TOKEN) and pids. Tenants acme (finance), stmarys (ehr) and buildco\n(cicd) are proposed by alice, approved by bob and carol and published by pat; gateway gw1\nserves them. Exit 1 when a step fails or a process dies (its log is named)."
    )]
    Up(up::UpArgs),

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
    /// Register, revoke and list the token issuer keys agents' tokens are signed with
    #[command(subcommand)]
    Issuer(IssuerCommand),
    /// Propose the difference between a policy tree and what is live, and wait for the checks
    #[command(
        after_help = "Example:\n  aegisctl propose policies/acme --intent 'Raise the payment approval threshold to 7,500' \\\n      --ticket FIN-1042 --tenant acme --actor alice --key keys/alice.key.json\n\nThe tree is validated first (exit 2 with the lint diagnostics). Only --tenant's documents\nare proposed; policies compared after parsing, so formatting-only edits do not count.\nExit 0 when the checks passed, 1 when they failed or there is nothing to propose,\n5 when the control plane rejected an event, 7 on a concurrent edit of the same policy."
    )]
    Propose {
        #[command(flatten)]
        args: propose::ProposeArgs,
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
        #[command(flatten)]
        args: changes::ApproveArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Reject a change: it can no longer be approved or published
    Reject {
        #[command(flatten)]
        args: changes::RejectArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Publish an approved change, and wait until its bundle is announced
    #[command(
        after_help = "Example:\n  aegisctl publish chg-0123456789abcdef --stage global --actor carol --key keys/carol.key.json\n\nPrints the new version and its bundle digest."
    )]
    Publish {
        #[command(flatten)]
        args: publish::PublishArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Publish a new version with the content of an older one
    #[command(
        after_help = "Examples:\n  aegisctl rollback --to 3 --reason 'v4 blocks refunds' --actor carol --key keys/carol.key.json\n  aegisctl rollback --to 3 --reason 'INC-7: v4 denies all refunds' --emergency --actor admin --key keys/admin.key.json\n\n--emergency is for incidents: it needs the admin role, goes through a tenant freeze, is\nrecorded as an emergency (history shows it), and leaves the tenant frozen afterwards so\nnothing else is published until `aegisctl unfreeze`. Waits until the version is announced."
    )]
    Rollback {
        #[command(flatten)]
        args: publish::RollbackArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Block every publish, rollback and rollout for the tenant; with --data-plane, pin every
    /// gateway to the bundles it runs now
    #[command(
        after_help = "Examples:\n  aegisctl freeze --reason 'incident 42'\n  aegisctl freeze --data-plane --reason 'incident 42: hold every gateway where it is'\n\nThe tenant freeze (tenant_frozen) stops changes at the control plane; the data-plane\nfreeze (data_plane_frozen) keeps gateways on their current stable and candidate bundles\nwhatever is published, until `unfreeze --data-plane`. Blocks still apply. Publisher or admin."
    )]
    Freeze {
        #[command(flatten)]
        args: publish::FreezeArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Lift a freeze (with --data-plane: the data-plane freeze)
    #[command(
        after_help = "Examples:\n  aegisctl unfreeze --reason 'resolved'\n  aegisctl unfreeze --data-plane"
    )]
    Unfreeze {
        #[command(flatten)]
        args: publish::UnfreezeArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Staged rollout of a published version: shadow, partial (a cohort), global, abort, status,
    /// readiness (measured now) and approve (a promotion below the readiness thresholds)
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Kill switch: every gateway denies the agent or tool at once, without a policy change
    #[command(subcommand)]
    Block(BlockCommand),
    /// Lift a block
    #[command(subcommand)]
    Unblock(UnblockCommand),
    /// Runtime approval requests from gateways (approval_needed): list, grant, deny
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// The tenant at a glance: freeze, latest version, open changes, live policies, audit chain
    Status {
        #[command(flatten)]
        args: status::ViewArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Every published version
    History {
        #[command(flatten)]
        args: status::ViewArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Export the audit trail, verify the audit hash chain
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The gateway fleet: which version each gateway enforces per tenant, against the latest
    #[command(
        after_help = "Examples:\n  aegisctl gateways\n  aegisctl gateways --tenant acme --wait 30s\n  aegisctl gateways --tenant acme --trust keys/control-plane.pub.json\n  aegisctl gateways --json\n\nSTATUS is current, behind (vN < vM), no bundle, or stale (no heartbeat for 3 intervals).\nLATEST is the last bundle_published on aegis.bundles.<tenant>, read UNVERIFIED unless\n--trust is given; with --trust, the newest one signed by a trusted control-plane key.\nExit 0 when every gateway is current, 8 when any is behind, stale or without a bundle, or\nnone has reported (--wait polls until converged or the time is up), 6 when NATS is\nunreachable. Reads KV aegis-gateways: a tenant operator may read its own tenant's\ngateways (--tenant), the whole fleet needs credentials that may read every key."
    )]
    Gateways {
        #[command(flatten)]
        args: gateways::GatewaysArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Follow the decision log (AEGIS_DECISIONS): decisions and bundle rejections
    #[command(
        after_help = "Examples:\n  aegisctl tail --tenant acme --decision deny --format table\n  aegisctl tail --tenant acme --since 10m | my-siem-forwarder\n  aegisctl tail --tenant acme --from-start --limit 100 --format json\n\nStarts with new records unless --since or --from-start; JSON lines (each record exactly as\nstored) unless stdout is a terminal. --agent/--tool/--decision select decisions, leaving\nbundle_rejected records out. Runs until interrupted, or until --limit records are printed."
    )]
    Tail {
        #[command(flatten)]
        args: tail::TailArgs,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Shadow diff: replay recorded decisions against a candidate policy and report what changes
    #[command(
        after_help = "Examples:\n  aegisctl replay --tenant acme --policies policies/ --since 2026-11-19T00:00:00Z\n  aegisctl replay --tenant acme --version 7 --trust keys/control-plane.pub.json --format json\n  aegisctl replay --tenant acme --policies policies/ --format html --output replay.html\n  aegisctl replay --tenant acme --bundle acme-v8.tar.gz --trust keys/control-plane.pub.json --tool payments --from-seq 1000 --to-seq 5000\n\nReads AEGIS_DECISIONS for the tenant (aegis.decisions.<tenant>.>) from --from-seq or --since\nto --to-seq/--until, or to the last record stored when the replay starts, and evaluates each\nrecorded call again with the candidate on every core. Decisions with masked parameters, an\nunverified identity, missing input, or decided by the gateway (limits, blocks, approvals)\nare counted as not replayable, never guessed. Exit 0 when the replay ran (whatever it\nfound), 1 when a bundle is rejected or reading fails, 2 on bad arguments or policy tree\nproblems, 6 when NATS or the control plane does not answer."
    )]
    Replay {
        #[command(flatten)]
        args: replay::ReplayArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Policy coverage: per agent and tool, calls decided by an explicit rule vs default deny
    #[command(
        after_help = "Examples:\n  aegisctl coverage --tenant acme --trust keys/control-plane.pub.json\n  aegisctl coverage --tenant acme --trust keys/control-plane.pub.json --since 2026-11-19T00:00:00Z --json\n  aegisctl coverage --tenant acme --trust keys/control-plane.pub.json --agent finance-agent --from-seq 1000\n\nReads AEGIS_DECISIONS for the tenant (aegis.decisions.<tenant>.>) from --from-seq or --since\nto --to-seq/--until, or to the last record stored when reading starts. A call is covered when\nan explicit rule decided it, default deny when no rule covers it (reason no_policy); other\ndecisions (no bundle, blocks, errors) are counted but left out of the percentage. Risk tiers\ncome from the newest version that decided a call of the slice, fetched and verified with\n--trust; tools are listed critical first (high, medium, low, unknown), lowest coverage first\nwithin a tier, then the rules that decided nothing. Exit 0 when the slice was read, 1 when\nreading fails, 2 on bad arguments, 6 when NATS does not answer."
    )]
    Coverage {
        #[command(flatten)]
        args: coverage::CoverageArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    /// Gateways keep enforcing the stable version and evaluate V too, recording both results
    #[command(
        after_help = "Example:\n  aegisctl rollout shadow --version 5 --actor carol --key keys/carol.key.json\n\nrollout_stage_changed; publisher or admin; refused while the tenant is frozen."
    )]
    Shadow {
        #[command(flatten)]
        args: rollout::StageArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Enforce V for a cohort (listed agents and/or a percentage hashed on the agent id), the
    /// stable version for everyone else
    #[command(
        after_help = "Examples:\n  aegisctl rollout partial --version 5 --agents planner,finance-agent\n  aegisctl rollout partial --version 5 --percent 10\n\nAn agent listed in --agents, or in the --percent bucket, gets V. Give at least one."
    )]
    Partial {
        #[command(flatten)]
        args: rollout::PartialArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Make V the stable version for every agent
    #[command(after_help = "Example:\n  aegisctl rollout global --version 5")]
    Global {
        #[command(flatten)]
        args: rollout::StageArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Call off the candidate V: every agent back on the stable version
    #[command(
        after_help = "Example:\n  aegisctl rollout abort --version 5 --reason 'partial run denies refunds'\n\nrollout_aborted; V must be the current candidate. The live policies become the stable\nversion's again, so the next change is proposed against them."
    )]
    Abort {
        #[command(flatten)]
        args: rollout::AbortArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// The tenant's stable version and candidate (version, stage, cohort), and the candidate's
    /// readiness for promotion (measurement, thresholds, verdict, approvals)
    Status {
        #[command(flatten)]
        args: rollout::StatusArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Approve promoting the candidate V to global although it may not meet the tenant's
    /// readiness thresholds (counts for any promoter but you)
    #[command(
        after_help = "Example:\n  aegisctl rollout approve --version 5 --comment 'the disagreements are the intended limit'\n\nrollout_promotion_approved; approver, publisher or admin. Below the thresholds\n(`aegisctl tenant configure --min-shadow-days/--max-disagreement-basis-points/--min-decisions`)\n`rollout global` needs such an approval by someone other than the promoter."
    )]
    Approve {
        #[command(flatten)]
        args: rollout::ApproveArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Measure the candidate (or V) now from the decision stream: decisions compared,
    /// disagreements, would-deny, and the verdict against the tenant's thresholds
    #[command(
        after_help = "Example:\n  aegisctl rollout readiness\n  aegisctl rollout readiness --version 5 --json"
    )]
    Readiness {
        #[command(flatten)]
        args: rollout::ReadinessArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum BlockCommand {
    /// Every gateway denies every call by this agent (agent_blocked)
    #[command(
        after_help = "Example:\n  aegisctl block agent planner --reason 'INC-7: planner coerces payments' \\\n      --actor carol --key keys/carol.key.json\n\nPublisher or admin. Works while the tenant or the data plane is frozen."
    )]
    Agent {
        #[command(flatten)]
        args: block::BlockAgentArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Every gateway denies every call to this tool (tool_blocked)
    #[command(after_help = "Example:\n  aegisctl block tool payments --reason 'PSP outage'")]
    Tool {
        #[command(flatten)]
        args: block::BlockToolArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum UnblockCommand {
    /// Lift an agent block (agent_unblocked)
    #[command(after_help = "Example:\n  aegisctl unblock agent planner --reason 'INC-7 closed'")]
    Agent {
        #[command(flatten)]
        args: block::UnblockAgentArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Lift a tool block (tool_unblocked)
    #[command(after_help = "Example:\n  aegisctl unblock tool payments")]
    Tool {
        #[command(flatten)]
        args: block::UnblockToolArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ApprovalsCommand {
    /// Approval requests of the tenant: pending ones, or every one with --all
    #[command(
        after_help = "Examples:\n  aegisctl approvals list --tenant acme\n  aegisctl approvals list --all --json\n\nReads aegis.approvals.<tenant>.> on AEGIS_APPROVALS (an ordered consumer, from the start, up\nto what is there). STATE is pending, granted (usable once), denied, used, or expired (a request\nundecided past its expiry, or a grant unused past its own). --json prints one JSON object per\napproval: the request, the control plane's decision, the use, and any unreadable message."
    )]
    List {
        #[command(flatten)]
        args: approvals::ListArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Grant a pending request: that exact call may go through once, at any gateway, until --ttl
    #[command(
        after_help = "Example:\n  aegisctl approvals grant apr-0123456789abcdef0123456789abcdef --ttl 15m \\\n      --comment 'confirmed with the CFO' --actor bob --key keys/bob.key.json\n\nShows the request (agent, chain, tool, action, params, reasons), then signs\nruntime_approval_granted with the request's call digest and waits for the control plane's\nverdict and its relay to gateways. Approver or admin. Exit 1 when there is no such request or\nit is no longer pending (granted, denied, used, expired), 5 when the control plane rejects it."
    )]
    Grant {
        #[command(flatten)]
        args: approvals::GrantArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Deny a pending request
    #[command(
        after_help = "Example:\n  aegisctl approvals deny apr-0123456789abcdef0123456789abcdef --reason 'not in the budget'\n\nLike grant, with runtime_approval_denied."
    )]
    Deny {
        #[command(flatten)]
        args: approvals::DenyArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Sign an agent token with a token issuer key and print it
    #[command(
        after_help = "Example:\n  TOKEN=$(aegisctl token issue --tenant acme --agent finance-agent \\\n      --act user-portal --act planner --key keys/acme-idp.key.json --issuer acme-idp --ttl 1h)\n\n--act is repeated in call order, origin first, direct caller last: here planner calls\nfinance-agent and becomes the outermost act claim (RFC 8693). The key must be registered\nwith `aegisctl issuer add` under the same --issuer name for gateways to accept the token.\nPrints only the token and a newline."
    )]
    Issue(token::IssueArgs),
    /// Decode a token's header and claims and show its call chain (NOT verified)
    #[command(
        after_help = "Example:\n  aegisctl token inspect \"$TOKEN\"\n  echo \"$TOKEN\" | aegisctl token inspect - --json\n\nNothing is verified: not the signature, issuer key, tenant, audience or expiry.\nExit 1 when the token cannot be decoded."
    )]
    Inspect(token::InspectArgs),
}

#[derive(Subcommand, Debug)]
enum NatsCommand {
    /// Create the streams, object store and KV bucket, or check that they match
    #[command(
        after_help = "Example:\n  aegisctl nats init --nats nats://127.0.0.1:4222\n  aegisctl nats init --replicas 3 --nats nats://n1:4222,nats://n2:4223\n\nIdempotent. A resource whose config drifted is an error unless --fix-drift."
    )]
    Init {
        #[command(flatten)]
        args: online::nats::InitArgs,
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
        #[command(flatten)]
        args: actors::AddArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Grant a role
    Grant {
        #[command(flatten)]
        args: actors::RoleArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Revoke a role
    Revoke {
        #[command(flatten)]
        args: actors::RoleArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Revoke one of an actor's keys
    RevokeKey {
        #[command(flatten)]
        args: actors::RevokeKeyArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// List actors, roles and keys
    List {
        #[command(flatten)]
        args: actors::ListArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum IssuerCommand {
    /// Register a token issuer key; it reaches gateways in the bundle's trust.json
    #[command(
        after_help = "Example:\n  aegisctl keys generate --out keys/ --name acme-idp\n  aegisctl issuer add --issuer acme-idp --public-key keys/acme-idp.pub.json \\\n      --tenant acme --actor admin --key keys/admin.key.json\n\nOnce the tenant has a published version, a new version (same policies, new trust data)\nis published at once; the command waits until it is announced.\nExit 5 when the control plane rejects the key (mismatched id, already registered or\nrevoked, tenant frozen)."
    )]
    Add {
        #[command(flatten)]
        args: issuers::AddArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Revoke a token issuer key (allowed while frozen); a new version drops it from trust.json
    #[command(
        after_help = "Example:\n  aegisctl issuer revoke --key-id ed25519:0123456789abcdef --reason 'IdP key leaked' \\\n      --tenant acme --actor admin --key keys/admin.key.json"
    )]
    Revoke {
        #[command(flatten)]
        args: issuers::RevokeArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// List the tenant's token issuer keys, trusted and revoked
    List {
        #[command(flatten)]
        args: issuers::ListArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Set required approvals per risk tier and bundle expiry (unset flags keep their value)
    Configure {
        #[command(flatten)]
        args: tenant::ConfigureArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ChangesCommand {
    /// Changes, newest first
    List {
        #[command(flatten)]
        args: changes::ListArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// One change in full: documents, checks, approvals, publish
    Show {
        #[command(flatten)]
        args: changes::ShowArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Who changed what, when, who approved, which bundle digest: one row per change event and
    /// per published version
    #[command(
        after_help = "Examples:\n  aegisctl audit export --format csv --output acme-audit.csv --tenant acme\n  aegisctl audit export --decisions --since 2026-11-26T08:00:00Z --until 2026-11-26T09:00:00Z \\\n      --format html --output acme-decisions.html --trust keys/controlplane.pub.json --tenant acme"
    )]
    Export {
        #[command(flatten)]
        args: audit::ExportArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Recompute the tenant's hash chain from AEGIS_CHANGES and check it against the signed
    /// checkpoints on AEGIS_AUDIT
    #[command(
        after_help = "Example:\n  aegisctl audit verify --tenant acme --trust trust/controlplane.pub.json\n\nExit 0 when intact, 1 on any finding (each printed with kind, position, event id, sequence)."
    )]
    Verify {
        #[command(flatten)]
        args: audit::VerifyArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Re-evaluate each recorded decision against the bundle version it records (fetched from
    /// object store aegis-bundles by digest, verified with --trust) and prove they agree
    #[command(
        after_help = "Example:\n  aegisctl audit replay --tenant acme --trust trust/controlplane.pub.json --since 2026-11-01T00:00:00Z\n\nExit 0 when consistent (every replayable decision agrees with its own version), 9 on any\ndisagreement (listed with both results) or unverifiable version, 2/6/1 when the audit could not run."
    )]
    Replay {
        #[command(flatten)]
        args: audit::ReplayArgs,
        #[command(flatten)]
        online: OnlineArgs,
    },
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
        Command::Token(TokenCommand::Issue(args)) => {
            token::issue(&args, time::OffsetDateTime::now_utc(), out)
        }
        Command::Token(TokenCommand::Inspect(args)) => {
            token::inspect(&args, time::OffsetDateTime::now_utc(), out)
        }
        Command::Up(args) => up::run(&args, out),
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

/// Connects as `online` says and runs `command` with the client and `args` (with `--json`
/// handed on from `online`).
fn with_client<A: CommandArgs>(
    online: &OnlineArgs,
    mut args: A,
    out: &mut dyn Write,
    command: impl AsyncFnOnce(&Client, &A, &mut dyn Write) -> CliResult,
) -> CliResult {
    args.set_json(online.json);
    let options = online.client_options()?;
    runtime()?.block_on(async {
        let client = Client::connect(&options).await?;
        command(&client, &args, out).await
    })
}

fn run_online(command: Command, out: &mut dyn Write) -> CliResult {
    match command {
        Command::Nats(NatsCommand::Init { args, online }) => runtime()?.block_on(async {
            let client = aegis_nats::connect(&online.connect_options())
                .await
                .map_err(|source| CliError::from(online::ClientError::Connect { source }))?;
            online::nats::init(&aegis_nats::jetstream(client), &args, out).await
        }),
        Command::Actor(ActorCommand::Add { args, online }) => {
            with_client(&online, args, out, actors::add)
        }
        Command::Actor(ActorCommand::Grant { args, online }) => {
            with_client(&online, args, out, actors::grant)
        }
        Command::Actor(ActorCommand::Revoke { args, online }) => {
            with_client(&online, args, out, actors::revoke)
        }
        Command::Actor(ActorCommand::RevokeKey { args, online }) => {
            with_client(&online, args, out, actors::revoke_key)
        }
        Command::Actor(ActorCommand::List { args, online }) => {
            with_client(&online, args, out, actors::list)
        }
        Command::Tenant(TenantCommand::Configure { args, online }) => {
            with_client(&online, args, out, tenant::configure)
        }
        Command::Issuer(IssuerCommand::Add { args, online }) => {
            with_client(&online, args, out, issuers::add)
        }
        Command::Issuer(IssuerCommand::Revoke { args, online }) => {
            with_client(&online, args, out, issuers::revoke)
        }
        Command::Issuer(IssuerCommand::List { args, online }) => {
            with_client(&online, args, out, issuers::list)
        }
        Command::Propose { args, online } => with_client(&online, args, out, propose::run),
        Command::Changes(ChangesCommand::List { args, online }) => {
            with_client(&online, args, out, changes::list)
        }
        Command::Changes(ChangesCommand::Show { args, online }) => {
            with_client(&online, args, out, changes::show)
        }
        Command::Approve { args, online } => with_client(&online, args, out, changes::approve),
        Command::Reject { args, online } => with_client(&online, args, out, changes::reject),
        Command::Publish { args, online } => with_client(&online, args, out, publish::publish),
        Command::Rollback { args, online } => with_client(&online, args, out, publish::rollback),
        Command::Freeze { args, online } => with_client(&online, args, out, publish::freeze),
        Command::Unfreeze { args, online } => with_client(&online, args, out, publish::unfreeze),
        Command::Rollout(RolloutCommand::Shadow { args, online }) => {
            with_client(&online, args, out, rollout::shadow)
        }
        Command::Rollout(RolloutCommand::Partial { args, online }) => {
            with_client(&online, args, out, rollout::partial)
        }
        Command::Rollout(RolloutCommand::Global { args, online }) => {
            with_client(&online, args, out, rollout::global)
        }
        Command::Rollout(RolloutCommand::Abort { args, online }) => {
            with_client(&online, args, out, rollout::abort)
        }
        Command::Rollout(RolloutCommand::Status { args, online }) => {
            with_client(&online, args, out, rollout::status)
        }
        Command::Rollout(RolloutCommand::Approve { args, online }) => {
            with_client(&online, args, out, rollout::approve)
        }
        Command::Rollout(RolloutCommand::Readiness { args, online }) => {
            with_client(&online, args, out, rollout::readiness)
        }
        Command::Block(BlockCommand::Agent { args, online }) => {
            with_client(&online, args, out, block::block_agent)
        }
        Command::Block(BlockCommand::Tool { args, online }) => {
            with_client(&online, args, out, block::block_tool)
        }
        Command::Unblock(UnblockCommand::Agent { args, online }) => {
            with_client(&online, args, out, block::unblock_agent)
        }
        Command::Unblock(UnblockCommand::Tool { args, online }) => {
            with_client(&online, args, out, block::unblock_tool)
        }
        Command::Approvals(ApprovalsCommand::List { args, online }) => {
            with_client(&online, args, out, approvals::list)
        }
        Command::Approvals(ApprovalsCommand::Grant { args, online }) => {
            with_client(&online, args, out, approvals::grant)
        }
        Command::Approvals(ApprovalsCommand::Deny { args, online }) => {
            with_client(&online, args, out, approvals::deny)
        }
        Command::Status { args, online } => with_client(&online, args, out, status::status),
        Command::History { args, online } => with_client(&online, args, out, status::history),
        Command::Audit(AuditCommand::Export { args, online }) => {
            with_client(&online, args, out, audit::export)
        }
        Command::Audit(AuditCommand::Verify { args, online }) => {
            with_client(&online, args, out, audit::verify)
        }
        Command::Audit(AuditCommand::Replay { args, online }) => {
            with_client(&online, args, out, audit::replay)
        }
        Command::Replay { args, online } => with_client(&online, args, out, replay::run),
        Command::Coverage { args, online } => with_client(&online, args, out, coverage::run),
        Command::Gateways { args, connect } => runtime()?
            .block_on(async { gateways::run(&connect.jetstream().await?, &args, out).await }),
        Command::Tail { args, connect } => {
            use std::io::IsTerminal as _;
            let format = args.effective_format(std::io::stdout().is_terminal());
            runtime()?.block_on(async {
                let js = connect.jetstream().await?;
                tail::run(&js, &args, format, out, &mut std::io::stderr()).await
            })
        }
        Command::Init { .. }
        | Command::Lint { .. }
        | Command::Test { .. }
        | Command::Eval { .. }
        | Command::Bundle(_)
        | Command::Keys(_)
        | Command::Diff { .. }
        | Command::Token(_)
        | Command::Up(_) => Err(CliError::failure("not an online command")),
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
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use aegis_core::events::{Role, RolloutStage};
    use aegis_core::query::ChangeState;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("aegisctl").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn online_flags_land_in_the_library_arguments() {
        let Command::Publish { args, online } = parse(&["publish", "chg-0123456789abcdef"]) else {
            panic!("not publish");
        };
        assert_eq!(args.stage, RolloutStage::Global);
        assert!(!online.json);
        let Command::Publish { args, .. } =
            parse(&["publish", "chg-0123456789abcdef", "--stage", "shadow"])
        else {
            panic!("not publish");
        };
        assert_eq!(args.stage, RolloutStage::Shadow);

        let Command::Changes(ChangesCommand::List { args, .. }) =
            parse(&["changes", "list", "--state", "approved"])
        else {
            panic!("not changes list");
        };
        assert_eq!(args.state, Some(ChangeState::Approved));

        let Command::Nats(NatsCommand::Init { args, .. }) = parse(&["nats", "init"]) else {
            panic!("not nats init");
        };
        assert_eq!((args.replicas, args.fix_drift), (1, false));
        let Command::Nats(NatsCommand::Init { args, .. }) =
            parse(&["nats", "init", "--replicas", "3", "--fix-drift"])
        else {
            panic!("not nats init");
        };
        assert_eq!((args.replicas, args.fix_drift), (3, true));

        let Command::Audit(AuditCommand::Export { args, .. }) =
            parse(&["audit", "export", "--format", "csv", "--output", "a.csv"])
        else {
            panic!("not audit export");
        };
        assert_eq!(args.format, audit::ExportFormat::Csv);
        assert_eq!(args.output, Some(PathBuf::from("a.csv")));

        let Command::Rollback { args, .. } = parse(&["rollback", "--to", "3", "--reason", "r"])
        else {
            panic!("not rollback");
        };
        assert_eq!((args.to_version, args.emergency), (3, false));

        let Command::Actor(ActorCommand::Add { args, online }) = parse(&[
            "actor",
            "add",
            "bob",
            "--public-key",
            "bob.pub.json",
            "--name",
            "Bob B.",
            "--role",
            "approver",
            "--role",
            "editor",
            "--actor",
            "admin",
        ]) else {
            panic!("not actor add");
        };
        assert_eq!(args.actor.as_str(), "bob");
        assert_eq!(online.actor.unwrap().as_str(), "admin");
        assert_eq!(args.display_name.as_deref(), Some("Bob B."));
        assert_eq!(args.roles, [Role::Approver, Role::Editor]);
    }

    #[test]
    fn rollout_block_freeze_and_approvals_arguments() {
        let Command::Rollout(RolloutCommand::Partial { args, .. }) = parse(&[
            "rollout",
            "partial",
            "--version",
            "5",
            "--agents",
            "planner,finance-agent",
            "--percent",
            "10",
        ]) else {
            panic!("not rollout partial");
        };
        let agents: Vec<&str> = args.agents.iter().map(AgentId::as_str).collect();
        assert_eq!(
            (args.version, agents, args.percent),
            (5, vec!["planner", "finance-agent"], Some(10))
        );
        let Command::Rollout(RolloutCommand::Shadow { args, .. }) =
            parse(&["rollout", "shadow", "--version", "4"])
        else {
            panic!("not rollout shadow");
        };
        assert_eq!(args.version, 4);
        assert!(matches!(
            parse(&["rollout", "global", "--version", "4"]),
            Command::Rollout(RolloutCommand::Global { .. })
        ));
        let Command::Rollout(RolloutCommand::Abort { args, .. }) =
            parse(&["rollout", "abort", "--version", "4", "--reason", "r"])
        else {
            panic!("not rollout abort");
        };
        assert_eq!((args.version, args.reason.as_str()), (4, "r"));
        assert!(matches!(
            parse(&["rollout", "status", "--json"]),
            Command::Rollout(RolloutCommand::Status { online, .. }) if online.json
        ));
        let Command::Rollout(RolloutCommand::Approve { args, .. }) =
            parse(&["rollout", "approve", "--version", "4", "--comment", "c"])
        else {
            panic!("not rollout approve");
        };
        assert_eq!((args.version, args.comment.as_deref()), (4, Some("c")));
        let Command::Rollout(RolloutCommand::Readiness { args, .. }) =
            parse(&["rollout", "readiness"])
        else {
            panic!("not rollout readiness");
        };
        assert_eq!(args.version, None);

        let Command::Rollback { args, .. } =
            parse(&["rollback", "--to", "3", "--reason", "r", "--emergency"])
        else {
            panic!("not rollback");
        };
        assert!(args.emergency);

        let Command::Block(BlockCommand::Agent { args, .. }) =
            parse(&["block", "agent", "planner", "--reason", "INC-7"])
        else {
            panic!("not block agent");
        };
        assert_eq!(
            (args.agent.as_str(), args.reason.as_str()),
            ("planner", "INC-7")
        );
        let Command::Block(BlockCommand::Tool { args, .. }) =
            parse(&["block", "tool", "payments", "--reason", "outage"])
        else {
            panic!("not block tool");
        };
        assert_eq!(args.tool.as_str(), "payments");
        let Command::Unblock(UnblockCommand::Agent { args, .. }) =
            parse(&["unblock", "agent", "planner"])
        else {
            panic!("not unblock agent");
        };
        assert_eq!((args.agent.as_str(), args.reason), ("planner", None));
        let Command::Unblock(UnblockCommand::Tool { args, .. }) =
            parse(&["unblock", "tool", "payments", "--reason", "back"])
        else {
            panic!("not unblock tool");
        };
        assert_eq!(args.reason.as_deref(), Some("back"));

        let Command::Freeze { args, .. } = parse(&["freeze", "--reason", "r"]) else {
            panic!("not freeze");
        };
        assert!(!args.data_plane);
        let Command::Freeze { args, .. } = parse(&["freeze", "--data-plane", "--reason", "r"])
        else {
            panic!("not freeze");
        };
        assert!(args.data_plane);
        let Command::Unfreeze { args, .. } = parse(&["unfreeze", "--data-plane"]) else {
            panic!("not unfreeze");
        };
        assert!(args.data_plane && args.reason.is_none());

        let Command::Approvals(ApprovalsCommand::List { args, online }) =
            parse(&["approvals", "list", "--all", "--json", "--tenant", "acme"])
        else {
            panic!("not approvals list");
        };
        assert!(args.all && online.json);
        let Command::Approvals(ApprovalsCommand::List { args, .. }) = parse(&["approvals", "list"])
        else {
            panic!("not approvals list");
        };
        assert!(!args.all);
        let id = "apr-0123456789abcdef0123456789abcdef";
        let Command::Approvals(ApprovalsCommand::Grant { args, .. }) =
            parse(&["approvals", "grant", id])
        else {
            panic!("not approvals grant");
        };
        assert_eq!(args.approval_id, id);
        assert_eq!(args.ttl, std::time::Duration::from_secs(15 * 60));
        assert_eq!(args.comment, None);
        let Command::Approvals(ApprovalsCommand::Grant { args, .. }) =
            parse(&["approvals", "grant", id, "--ttl", "2h", "--comment", "ok"])
        else {
            panic!("not approvals grant");
        };
        assert_eq!(args.ttl, std::time::Duration::from_secs(7200));
        assert_eq!(args.comment.as_deref(), Some("ok"));
        let Command::Approvals(ApprovalsCommand::Deny { args, .. }) =
            parse(&["approvals", "deny", id, "--reason", "no"])
        else {
            panic!("not approvals deny");
        };
        assert_eq!(
            (args.approval_id.as_str(), args.reason.as_str()),
            (id, "no")
        );

        for bad in [
            // partial needs a cohort; percent is 0..=100; shadow/global take no cohort
            &["rollout", "partial", "--version", "5"][..],
            &["rollout", "partial", "--version", "5", "--percent", "101"][..],
            &["rollout", "shadow", "--version", "5", "--agents", "planner"][..],
            &["rollout", "global"][..],
            &["rollout", "abort", "--version", "5"][..],
            &["block", "agent", "planner"][..],
            &["block", "agent", "--reason", "r"][..],
            &["freeze", "--data-plane"][..],
            &["approvals", "deny", "apr-1"][..],
            &["approvals", "grant", "apr-1", "--ttl", "soon"][..],
            &["approvals", "grant"][..],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("aegisctl").chain(bad.iter().copied()))
                    .is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn json_is_handed_on_from_the_online_flags() {
        let Command::Approve { mut args, online } =
            parse(&["approve", "chg-0123456789abcdef", "--json"])
        else {
            panic!("not approve");
        };
        assert!(online.json && !args.json);
        args.set_json(online.json);
        assert!(args.json);
    }

    #[test]
    fn token_gateways_and_tail_arguments() {
        let Command::Token(TokenCommand::Issue(args)) = parse(&[
            "token",
            "issue",
            "--tenant",
            "acme",
            "--agent",
            "finance-agent",
            "--act",
            "user-portal",
            "--act",
            "planner",
            "--key",
            "idp.key.json",
            "--issuer",
            "acme-idp",
        ]) else {
            panic!("not token issue");
        };
        let chain: Vec<&str> = args.act.iter().map(AgentId::as_str).collect();
        assert_eq!(chain, ["user-portal", "planner"]);
        assert_eq!(args.ttl, std::time::Duration::from_secs(3600));
        assert_eq!(args.audience, "aegis-gateway");

        let Command::Gateways { args, connect } = parse(&[
            "gateways",
            "--tenant",
            "acme",
            "--wait",
            "30s",
            "--json",
            "--user",
            "u",
            "--password",
            "p",
        ]) else {
            panic!("not gateways");
        };
        assert_eq!(args.tenant.unwrap().as_str(), "acme");
        assert_eq!(args.wait, Some(std::time::Duration::from_secs(30)));
        assert!(args.json);
        assert_eq!(connect.connect_options().user.as_deref(), Some("u"));

        let Command::Tail { args, .. } = parse(&[
            "tail",
            "--tenant",
            "acme",
            "--tenant",
            "globex",
            "--decision",
            "approval_needed",
            "--since",
            "10m",
            "--limit",
            "5",
            "--format",
            "table",
        ]) else {
            panic!("not tail");
        };
        assert_eq!(args.tenants.len(), 2);
        assert_eq!(
            args.decisions,
            [aegis_core::decision::DecisionKind::ApprovalNeeded]
        );
        assert_eq!(args.since, Some(std::time::Duration::from_secs(600)));
        assert_eq!(args.limit, Some(5));
        assert_eq!(args.format, Some(tail::TailFormat::Table));
        let Command::Replay { args, online } = parse(&[
            "replay",
            "--tenant",
            "acme",
            "--version",
            "3",
            "--trust",
            "cp.pub.json",
            "--from-seq",
            "2",
            "--tool",
            "payments",
            "--decision",
            "allow",
            "--format",
            "markdown",
        ]) else {
            panic!("not replay");
        };
        assert_eq!(online.tenant.unwrap().as_str(), "acme");
        assert_eq!(
            (args.version, args.slice.from_seq, args.slice.to_seq),
            (Some(3), Some(2), None)
        );
        assert_eq!(args.filter.tools.len(), 1);
        assert_eq!(args.format, Some(replay::ReplayFormat::Markdown));
        assert_eq!(args.output, None);
        let Command::Replay { args, .. } = parse(&[
            "replay",
            "--policies",
            "policies/",
            "--format",
            "html",
            "--output",
            "replay.html",
        ]) else {
            panic!("not replay");
        };
        assert_eq!(args.format, Some(replay::ReplayFormat::Html));
        assert_eq!(args.output, Some(PathBuf::from("replay.html")));
        for bad in [
            &[
                "replay",
                "--from-seq",
                "1",
                "--since",
                "2026-11-26T00:00:00Z",
            ][..],
            &["replay", "--since", "last week"][..],
            &["tail", "--decision", "maybe"][..],
            &["tail", "--since", "10m", "--from-start"][..],
            &["gateways", "--wait", "soon"][..],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("aegisctl").chain(bad.iter().copied()))
                    .is_err(),
                "{bad:?} was accepted"
            );
        }
    }
}
