//! `aegisctl`: offline tooling for Aegis policies. Argument parsing only; the commands live in
//! the library.

use aegis_core::bundle::HighWater;
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegisctl::exit::{EXIT_CODES_HELP, Exit};
use aegisctl::{bundle, diff, eval, init, keys, lint, test};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "aegisctl",
    version,
    about = "Lint, test, evaluate, bundle, sign and diff Aegis agent policies (offline)",
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
