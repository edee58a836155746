//! `aegisctl eval`: decide one call against a policy tree or a verified bundle.

use crate::exit::{CliError, CliResult, Exit};
use crate::output::{is_bundle, load_tree, read_file, write_json};
use aegis_core::bundle::{VerifyPolicy, verify};
use aegis_core::decision::{DecideInput, Decision};
use aegis_core::eval::{EvalLimits, Evaluator, Provenance};
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegis_core::keys::TrustStore;
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where the decide input comes from.
#[derive(Debug, Clone)]
pub enum InputSource {
    /// A JSON file holding a whole decide input; `-` is stdin.
    File(PathBuf),
    /// The input given field by field.
    Fields {
        tenant: TenantId,
        agent: AgentId,
        tool: ToolId,
        action: String,
        /// JSON object text.
        params: Option<String>,
        /// JSON object text.
        context: Option<String>,
        chain: Vec<AgentId>,
    },
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct EvalArgs {
    /// A policy tree, or a single bundle file (`.tar.gz`).
    pub paths: Vec<PathBuf>,
    pub input: InputSource,
    /// Trust file or directory; required for a bundle.
    pub trust: Option<PathBuf>,
    pub json: bool,
}

/// Decides and prints. Exit 0 (allow/sanitize), 3 (deny) or 4 (approval_needed).
pub fn run(args: &EvalArgs, out: &mut dyn Write) -> CliResult {
    let input = read_input(&args.input)?;
    let eval = evaluator(&args.paths, args.trust.as_deref(), out)?;
    let decision = eval.decide(&input);
    if args.json {
        write_json(out, &decision)?;
    } else {
        print_decision(&decision, out)?;
    }
    Ok(Exit::for_decision(decision.decision))
}

/// Builds the evaluator for a policy tree, or for a bundle after verifying it against `trust`.
pub fn evaluator(
    paths: &[PathBuf],
    trust: Option<&Path>,
    out: &mut dyn Write,
) -> Result<Evaluator, CliError> {
    match paths {
        [one] if is_bundle(one) => {
            let trust = trust.ok_or_else(|| {
                CliError::invalid(format!(
                    "{} is a bundle: --trust FILE|DIR is required to verify it before evaluating",
                    one.display()
                ))
            })?;
            let store = TrustStore::load(trust)
                .map_err(|e| CliError::failure(format!("cannot load trust store: {e}")))?;
            let bytes = read_file(one)?;
            let now = time::OffsetDateTime::now_utc();
            let verified = verify(&bytes, &store, &VerifyPolicy::new(now))
                .map_err(|e| CliError::failure(format!("rejected: {}: {e}", one.display())))?;
            let provenance = Provenance {
                policy_version: Some(verified.manifest.version),
                bundle_digest: Some(verified.digest.clone()),
            };
            Evaluator::from_files(&verified.files, provenance, EvalLimits::default()).map_err(|e| {
                CliError::failure(format!("bundle {} cannot be evaluated: {e}", one.display()))
            })
        }
        _ => {
            if let Some(b) = paths.iter().find(|p| is_bundle(p)) {
                return Err(CliError::invalid(format!(
                    "{}: a bundle must be the only PATH",
                    b.display()
                )));
            }
            let set = load_tree(paths, out)?;
            Evaluator::new(&set.compile(), Provenance::default(), EvalLimits::default())
                .map_err(|e| CliError::invalid(format!("policies do not compile: {e}")))
        }
    }
}

fn json_object(what: &str, text: Option<&str>) -> Result<Map<String, Value>, CliError> {
    match text {
        None => Ok(Map::new()),
        Some(t) => match serde_json::from_str::<Value>(t) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(CliError::invalid(format!("--{what} must be a JSON object"))),
            Err(e) => Err(CliError::invalid(format!(
                "--{what} is not valid JSON: {e}"
            ))),
        },
    }
}

/// Reads the decide input.
pub fn read_input(src: &InputSource) -> Result<DecideInput, CliError> {
    match src {
        InputSource::File(path) => {
            let (text, name) = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| CliError::failure(format!("cannot read stdin: {e}")))?;
                (s, "stdin".to_owned())
            } else {
                let bytes = read_file(path)?;
                (
                    String::from_utf8_lossy(&bytes).into_owned(),
                    path.display().to_string(),
                )
            };
            serde_json::from_str(&text)
                .map_err(|e| CliError::invalid(format!("{name}: not a valid decide input: {e}")))
        }
        InputSource::Fields {
            tenant,
            agent,
            tool,
            action,
            params,
            context,
            chain,
        } => Ok(DecideInput {
            tenant: tenant.clone(),
            agent_id: agent.clone(),
            call_chain: chain.clone(),
            tool_id: tool.clone(),
            action: action.clone(),
            params: json_object("params", params.as_deref())?,
            context: json_object("context", context.as_deref())?,
        }),
    }
}

/// Human-readable decision.
pub fn print_decision(d: &Decision, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "{}", d.decision.as_str().to_uppercase())?;
    if d.policy.is_some() || d.rule.is_some() {
        writeln!(
            out,
            "policy: {}  rule: {}",
            d.policy.as_deref().unwrap_or("-"),
            d.rule.as_deref().unwrap_or("-")
        )?;
    }
    if let (Some(v), Some(digest)) = (d.policy_version, d.bundle_digest.as_deref()) {
        writeln!(out, "bundle: v{v} {digest}")?;
    }
    if !d.reasons.is_empty() {
        writeln!(out, "reasons:")?;
        for r in &d.reasons {
            writeln!(out, "  {}: {}", r.code, r.message)?;
        }
    }
    if let Some(p) = &d.params {
        writeln!(out, "sanitized params: {}", Value::Object(p.clone()))?;
    }
    let o = &d.obligations;
    if o.approval.is_some()
        || !o.budgets.is_empty()
        || !o.rate_limits.is_empty()
        || !o.log_mask.is_empty()
    {
        writeln!(out, "obligations:")?;
        if let Some(a) = &o.approval {
            writeln!(out, "  approval required for: {}", a.codes.join(", "))?;
        }
        for b in &o.budgets {
            writeln!(
                out,
                "  budget: sum of {} <= {} per {}s ({})",
                b.param, b.max, b.window_seconds, b.scope
            )?;
        }
        for r in &o.rate_limits {
            writeln!(
                out,
                "  rate limit: {} calls per {}s ({})",
                r.calls, r.window_seconds, r.scope
            )?;
        }
        if !o.log_mask.is_empty() {
            writeln!(out, "  mask in logs: {}", o.log_mask.join(", "))?;
        }
    }
    Ok(())
}
