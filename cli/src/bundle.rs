//! `aegisctl bundle build|verify|inspect`: signed, deterministic policy bundles.

use crate::exit::{CliError, CliResult, Exit};
use crate::output::{load_tree, plural, read_file, write_json};
use crate::test::{filter_by, report};
use aegis_core::bundle::{
    BundleSpec, HighWater, MANIFEST_PATH, SizeLimits, VerifyPolicy, build, inspect, verify,
};
use aegis_core::eval::{EvalLimits, Evaluator, Provenance};
use aegis_core::ids::TenantId;
use aegis_core::keys::{Keypair, TrustStore};
use aegis_core::vectors::run_all;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Options for [`build_cmd`]; also the `aegisctl bundle build` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Policy files or directory trees
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long)]
    pub tenant: TenantId,
    /// Bundle version (>= 1, above every version published for the tenant)
    #[arg(long)]
    pub version: u64,
    /// Signing key file (<name>.key.json)
    #[arg(long)]
    pub key: PathBuf,
    /// Output file (.tar.gz)
    #[arg(long)]
    pub out: PathBuf,
    /// RFC 3339 creation time [default: now, printed so the build can be reproduced]
    #[arg(long)]
    pub created_at: Option<String>,
    /// RFC 3339 expiry time
    #[arg(long)]
    pub expires_at: Option<String>,
    /// Author [default: $USER, else "aegisctl"]
    #[arg(long)]
    pub author: Option<String>,
    /// Change (request) id the bundle is built from
    #[arg(long)]
    pub change: Option<String>,
    /// Build even if the tenant's test vectors fail
    #[arg(long)]
    pub skip_tests: bool,
}

/// Lints, tests the tenant's vectors, compiles the tenant, builds, signs and writes the bundle.
pub fn build_cmd(args: &BuildArgs, out: &mut dyn Write) -> CliResult {
    let set = load_tree(&args.paths, out)?;
    if !set
        .policies
        .iter()
        .any(|p| p.doc.metadata.tenant == args.tenant)
    {
        let known: Vec<String> = set.tenants().iter().map(ToString::to_string).collect();
        return Err(CliError::invalid(format!(
            "tenant `{}` has no policy in the tree (tenants found: {})",
            args.tenant,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    }
    let compiled = set.compile_tenant(&args.tenant);
    if args.skip_tests {
        writeln!(
            out,
            "warning: --skip-tests: the tenant's test vectors were not run"
        )?;
    } else {
        let eval = Evaluator::new(&compiled, Provenance::default(), EvalLimits::default())
            .map_err(|e| {
                CliError::invalid(format!(
                    "policies of tenant `{}` do not compile: {e}",
                    args.tenant
                ))
            })?;
        let vectors = filter_by(&set.vectors, |_, _, v| v.input.tenant == args.tenant);
        let results = run_all(&eval, &vectors);
        if results.is_empty() {
            writeln!(
                out,
                "warning: the tree has no test vectors for tenant `{}`",
                args.tenant
            )?;
        }
        if !report(&results, out)? {
            return Err(CliError::failure(format!(
                "not building: test vectors of tenant `{}` fail (use --skip-tests to override)",
                args.tenant
            )));
        }
        writeln!(out)?;
    }
    let created_at = match &args.created_at {
        Some(t) => t.clone(),
        None => {
            let now = OffsetDateTime::now_utc();
            let now = now.replace_nanosecond(0).unwrap_or(now);
            let t = now
                .format(&Rfc3339)
                .map_err(|e| CliError::failure(format!("cannot format the current time: {e}")))?;
            writeln!(
                out,
                "created_at: {t} (pass --created-at {t} to reproduce these bytes)"
            )?;
            t
        }
    };
    let author = args
        .author
        .clone()
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_else(|| "aegisctl".to_owned());
    let key = Keypair::load(&args.key)
        .map_err(|e| CliError::failure(format!("cannot load signing key: {e}")))?;
    let spec = BundleSpec {
        tenant: args.tenant.clone(),
        version: args.version,
        created_at,
        expires_at: args.expires_at.clone(),
        author,
        source_change: args.change.clone(),
    };
    let files = compiled.files();
    let built = build(&spec, &files, &key)
        .map_err(|e| CliError::invalid(format!("cannot build the bundle: {e}")))?;
    std::fs::write(&args.out, &built.bytes).map_err(|e| CliError::io(&args.out, e))?;
    writeln!(
        out,
        "built {} ({} bytes)",
        args.out.display(),
        built.bytes.len()
    )?;
    writeln!(out, "tenant:  {}", built.manifest.tenant)?;
    writeln!(out, "version: {}", built.manifest.version)?;
    writeln!(out, "digest:  {}", built.digest)?;
    writeln!(out, "key id:  {}", built.manifest.key_id)?;
    writeln!(out, "files:")?;
    for (path, bytes) in &files {
        writeln!(out, "  {path} ({} bytes)", bytes.len())?;
    }
    Ok(Exit::Ok)
}

/// Options for [`verify_cmd`].
#[derive(Debug, Clone)]
pub struct VerifyArgs {
    pub file: PathBuf,
    /// Trust file or directory of `*.pub.json`.
    pub trust: PathBuf,
    pub tenant: Option<TenantId>,
    pub high_water: Option<HighWater>,
}

/// Verifies a bundle as a gateway would. Exit 0 when verified, 1 when rejected.
pub fn verify_cmd(args: &VerifyArgs, out: &mut dyn Write) -> CliResult {
    let store = TrustStore::load(&args.trust)
        .map_err(|e| CliError::failure(format!("cannot load trust store: {e}")))?;
    let bytes = read_file(&args.file)?;
    let mut policy = VerifyPolicy::new(OffsetDateTime::now_utc());
    policy.expected_tenant = args.tenant.clone();
    policy.high_water = args.high_water.clone();
    match verify(&bytes, &store, &policy) {
        Ok(v) => {
            writeln!(
                out,
                "verified: {} v{} {} signed by {}",
                v.manifest.tenant, v.manifest.version, v.digest, v.manifest.key_id
            )?;
            Ok(Exit::Ok)
        }
        Err(e) => {
            writeln!(out, "rejected: {e}")?;
            Ok(Exit::Failure)
        }
    }
}

/// Options for [`inspect_cmd`].
#[derive(Debug, Clone)]
pub struct InspectArgs {
    pub file: PathBuf,
    pub json: bool,
}

/// Prints a bundle's manifest and files without any trust check. Exit 0, or 1 when the bundle
/// cannot be read or a file's hash differs from the manifest.
pub fn inspect_cmd(args: &InspectArgs, out: &mut dyn Write) -> CliResult {
    let bytes = read_file(&args.file)?;
    let b = inspect(&bytes, &SizeLimits::default()).map_err(|e| {
        CliError::failure(format!("{}: cannot read bundle: {e}", args.file.display()))
    })?;
    let status = |listed: Option<&str>, actual: &str, path: &str| match listed {
        _ if path == MANIFEST_PATH => "manifest",
        Some(l) if l == actual => "matches",
        Some(_) => "MISMATCH",
        None => "not listed",
    };
    let missing: Vec<&String> = b
        .manifest
        .files
        .keys()
        .filter(|p| !b.entries.iter().any(|e| &e.path == *p))
        .collect();
    let bad = b.entries.iter().any(|e| {
        matches!(
            status(e.listed_sha256.as_deref(), &e.sha256, &e.path),
            "MISMATCH" | "not listed"
        )
    }) || !missing.is_empty();
    if args.json {
        let entries: Vec<_> = b
            .entries
            .iter()
            .map(|e| json!({"path": e.path, "size": e.size, "sha256": e.sha256, "listed_sha256": e.listed_sha256, "status": status(e.listed_sha256.as_deref(), &e.sha256, &e.path)}))
            .collect();
        write_json(
            out,
            &json!({"trusted": false, "digest": b.digest, "compressed_size": b.compressed_size, "manifest": b.manifest, "entries": entries, "missing": missing}),
        )?;
    } else {
        writeln!(
            out,
            "NOTE: inspect does not check the signature or trust; use `aegisctl bundle verify`."
        )?;
        let m = &b.manifest;
        writeln!(out, "bundle:         {}", args.file.display())?;
        writeln!(out, "digest:         {}", b.digest)?;
        writeln!(
            out,
            "size:           {} bytes (compressed)",
            b.compressed_size
        )?;
        writeln!(out, "schema_version: {}", m.schema_version)?;
        writeln!(out, "tenant:         {}", m.tenant)?;
        writeln!(out, "version:        {}", m.version)?;
        writeln!(out, "revision:       {}", m.revision())?;
        writeln!(out, "created_at:     {}", m.created_at)?;
        writeln!(
            out,
            "expires_at:     {}",
            m.expires_at.as_deref().unwrap_or("(never)")
        )?;
        writeln!(out, "author:         {}", m.author)?;
        writeln!(
            out,
            "source_change:  {}",
            m.source_change.as_deref().unwrap_or("(none)")
        )?;
        writeln!(out, "key_id:         {}", m.key_id)?;
        writeln!(
            out,
            "signature:      {}",
            if m.signature.is_some() {
                "present (not checked)"
            } else {
                "MISSING"
            }
        )?;
        writeln!(out, "{}:", plural(b.entries.len(), "file"))?;
        for e in &b.entries {
            writeln!(
                out,
                "  {:<40} {:>8} bytes  sha256:{}  {}",
                e.path,
                e.size,
                e.sha256,
                status(e.listed_sha256.as_deref(), &e.sha256, &e.path)
            )?;
        }
        for p in &missing {
            writeln!(
                out,
                "  {p:<40} listed in the manifest but MISSING from the archive"
            )?;
        }
    }
    Ok(if bad { Exit::Failure } else { Exit::Ok })
}
