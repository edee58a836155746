//! A policy tree: every policy document and test-vector file under some paths, validated one by
//! one and then together (one document per tenant and agent, unique names, unique custom
//! packages), and compiled into the files a bundle carries.

use super::compile::{CompiledData, compile};
use super::diagnostic::{Diagnostic, Diagnostics};
use super::model::{POLICY_KIND, PolicyDocument};
use super::source::{self, SourceFile};
use super::validate::{custom_package, validate_document};
use crate::ids::TenantId;
use crate::vectors::{VECTORS_KIND, VectorFile, validate_vectors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The shared decision logic, `policies/aegis.rego`, as shipped in every bundle.
pub const SHARED_REGO: &str = include_str!("../../../policies/aegis.rego");

/// A loaded policy document and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    pub path: PathBuf,
    pub doc: PolicyDocument,
}

/// Everything found under the given paths.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: Vec<LoadedPolicy>,
    pub vectors: Vec<VectorFile>,
}

/// The payload files of a bundle (or of an in-memory evaluator): `data.json`, `policy.rego` and
/// one `custom/<tenant>/<name>.rego` per custom module.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPolicies {
    pub data: CompiledData,
    pub modules: BTreeMap<String, String>,
}

impl CompiledPolicies {
    /// `path -> bytes` for the bundle builder: data.json in canonical JSON, then the modules.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        files.insert(
            "data.json".to_owned(),
            crate::canonical::to_canonical_vec(&self.data.to_value()),
        );
        for (path, text) in &self.modules {
            files.insert(path.clone(), text.as_bytes().to_vec());
        }
        files
    }
}

impl PolicySet {
    /// Loads and validates every `.yaml`/`.yml`/`.json` file under `paths`. Files are either
    /// `kind: AgentPolicy` or `kind: TestVectors`; anything else is an error. All problems in
    /// all files are reported together.
    pub fn load(paths: &[PathBuf]) -> Result<PolicySet, Diagnostics> {
        let mut diags = Diagnostics::default();
        let files = source::discover(paths).map_err(|d| Diagnostics(vec![d]))?;
        let mut set = PolicySet::default();
        for path in files {
            let src = match source::read(&path) {
                Ok(src) => src,
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            };
            match src.value.get("kind").and_then(|k| k.as_str()) {
                Some(POLICY_KIND) => match validate_document(&src) {
                    Ok(doc) => set.policies.push(LoadedPolicy { path, doc }),
                    Err(d) => diags.extend(d),
                },
                Some(VECTORS_KIND) => match validate_vectors(&src) {
                    Ok(v) => set.vectors.push(v),
                    Err(d) => diags.extend(d),
                },
                other => diags.push(src.locator().diagnostic(
                    &path,
                    "/kind",
                    match other {
                        Some(k) => format!("unknown document kind `{k}`"),
                        None => "not an Aegis document: no `kind`".to_owned(),
                    },
                    Some(format!("use `kind: {POLICY_KIND}` for a policy or `kind: {VECTORS_KIND}` for test vectors")),
                )),
            }
        }
        set.cross_checks(&mut diags);
        diags.sort();
        diags.into_result().map(|()| set)
    }

    /// Builds a set from documents already in memory (tests, the control plane).
    pub fn from_documents(docs: Vec<(PathBuf, PolicyDocument)>) -> Result<PolicySet, Diagnostics> {
        let mut set = PolicySet {
            policies: docs
                .into_iter()
                .map(|(path, doc)| LoadedPolicy { path, doc })
                .collect(),
            vectors: Vec::new(),
        };
        let mut diags = Diagnostics::default();
        set.cross_checks(&mut diags);
        diags.into_result().map(|()| set)
    }

    fn cross_checks(&mut self, diags: &mut Diagnostics) {
        let loc = |path: &Path, field: &str, message: String, hint: Option<String>| {
            let src = source::read(path).ok();
            match src {
                Some(src) => src.locator().diagnostic(path, field, message, hint),
                None => Diagnostic {
                    file: path.to_path_buf(),
                    line: None,
                    column: None,
                    field: super::diagnostic::pointer_to_field(field),
                    message,
                    hint,
                },
            }
        };
        let mut agents: BTreeMap<(String, String), &Path> = BTreeMap::new();
        let mut names: BTreeMap<(String, String), &Path> = BTreeMap::new();
        let mut customs: BTreeMap<String, &Path> = BTreeMap::new();
        for p in &self.policies {
            let m = &p.doc.metadata;
            if let Some(first) = agents.insert(
                (m.tenant.to_string(), p.doc.spec.agent_id.to_string()),
                &p.path,
            ) {
                diags.push(loc(
                    &p.path,
                    "/spec/agent_id",
                    format!(
                        "agent `{}` of tenant `{}` already has a policy in {}",
                        p.doc.spec.agent_id,
                        m.tenant,
                        first.display()
                    ),
                    Some("keep one policy document per agent; merge the rules".into()),
                ));
            }
            if let Some(first) = names.insert((m.tenant.to_string(), m.name.to_string()), &p.path) {
                diags.push(loc(
                    &p.path,
                    "/metadata/name",
                    format!(
                        "policy name `{}` is already used in tenant `{}` by {}",
                        m.name,
                        m.tenant,
                        first.display()
                    ),
                    Some("policy names are unique per tenant".into()),
                ));
            }
            if let Some(Ok(pkg)) = p.doc.spec.custom_rego.as_deref().map(custom_package)
                && let Some(first) = customs.insert(pkg.clone(), &p.path)
            {
                diags.push(loc(
                    &p.path,
                    "/spec/custom_rego",
                    format!(
                        "custom package `aegis.custom.{pkg}` is already defined by {}",
                        first.display()
                    ),
                    Some("give each custom module its own package name".into()),
                ));
            }
        }
    }

    /// The tenants this set has policies for.
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut t: Vec<TenantId> = self
            .policies
            .iter()
            .map(|p| p.doc.metadata.tenant.clone())
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Compiles the whole set (all tenants) — what local evaluation and tests use.
    pub fn compile(&self) -> CompiledPolicies {
        self.compile_filtered(|_| true)
    }

    /// Compiles only `tenant`'s policies — what a tenant's bundle carries.
    pub fn compile_tenant(&self, tenant: &TenantId) -> CompiledPolicies {
        self.compile_filtered(|p| &p.doc.metadata.tenant == tenant)
    }

    fn compile_filtered(&self, keep: impl Fn(&LoadedPolicy) -> bool) -> CompiledPolicies {
        let kept: Vec<&LoadedPolicy> = self.policies.iter().filter(|p| keep(p)).collect();
        let docs: Vec<&PolicyDocument> = kept.iter().map(|p| &p.doc).collect();
        let data = compile(&docs);
        let mut modules = BTreeMap::new();
        modules.insert("policy.rego".to_owned(), SHARED_REGO.to_owned());
        for p in kept {
            if let Some(rego) = &p.doc.spec.custom_rego
                && let Ok(pkg) = custom_package(rego)
            {
                modules.insert(
                    format!("custom/{}/{pkg}.rego", p.doc.metadata.tenant),
                    rego.clone(),
                );
            }
        }
        CompiledPolicies { data, modules }
    }
}

/// Parses one in-memory document (for callers that hold text rather than files).
pub fn parse_document(path: &Path, text: String) -> Result<PolicyDocument, Diagnostics> {
    let src: SourceFile = source::parse(path, text).map_err(|d| Diagnostics(vec![d]))?;
    validate_document(&src)
}
