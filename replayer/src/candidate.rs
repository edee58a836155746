//! The policy a slice is replayed against: a bundle file (verified with a trust store), a
//! policy tree on disk (compiled for the slice's tenant the way `aegisctl bundle build` does),
//! or a published version (its digest from the control plane's history, its bytes from object
//! store `aegis-bundles`, verified), or a proposed change (the control plane's candidate set:
//! live policies with the change applied, compiled here and pinned to the digest its checks
//! compiled). Each becomes an [`Evaluator`].

use aegis_core::bundle::{self, VerifiedBundle, VerifyPolicy, sha256_hex};
use aegis_core::eval::{EvalError, EvalLimits, Evaluator, Provenance};
use aegis_core::ids::TenantId;
use aegis_core::keys::TrustStore;
use aegis_core::policy::PolicySet;
use aegis_core::policy::compile::CompiledData;
use aegis_core::policy::set::parse_document;
use aegis_core::query::{ChangeCandidate, QueryAnswer, QueryReply, QueryRequest};
use aegis_nats::topology::{self, BUNDLE_OBJECT_STORE};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

/// Why a candidate could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bundle {source_label} rejected: {detail}")]
    Rejected {
        source_label: String,
        detail: String,
    },
    #[error("{source_label} cannot be evaluated: {source}")]
    Compile {
        source_label: String,
        source: EvalError,
    },
    #[error("policy tree {paths}: {count} problem(s):\n{details}")]
    Tree {
        paths: String,
        count: usize,
        details: String,
    },
    #[error("policy tree {paths} has no policy of tenant {tenant}")]
    NoPolicies { paths: String, tenant: TenantId },
    #[error("change {change_id}: {detail}")]
    Change { change_id: String, detail: String },
    #[error("tenant {tenant} has no published version {version}")]
    NoSuchVersion { tenant: TenantId, version: u64 },
    #[error("asking the control plane for the history of {tenant} failed: {detail}")]
    History { tenant: TenantId, detail: String },
    #[error(
        "object store {BUNDLE_OBJECT_STORE} did not answer ({detail}): is NATS running with \
         JetStream, and may these credentials read it? (tenant operators may not: replay a \
         published version with credentials that may, or give its bundle file)"
    )]
    ObjectStoreUnavailable { detail: String },
    #[error("cannot fetch {digest} from object store {BUNDLE_OBJECT_STORE}: {detail}")]
    Fetch { digest: String, detail: String },
}

/// What kind of candidate a report was made against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateKind {
    BundleFile,
    PolicyTree,
    PublishedVersion,
    ProposedChange,
}

/// Where the candidate came from, as shown in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateInfo {
    pub kind: CandidateKind,
    /// The file, directory or `version N` it was read from.
    pub source: String,
    /// The bundle's version (bundle file, published version).
    pub version: Option<u64>,
    /// `sha256:<hex>` of the bundle (bundle file, published version).
    pub digest: Option<String>,
}

/// A prepared candidate.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub info: CandidateInfo,
    pub evaluator: Evaluator,
    /// The compiled `data.json` (used to find changed thresholds), when it parses.
    pub data: Option<CompiledData>,
}

/// Verifies `bytes` as a bundle of `tenant` against `trust` (signature, hashes, tenant, expiry
/// now) and compiles it, the way a gateway prepares a bundle before enforcing it.
pub fn verify_bundle(
    bytes: &[u8],
    trust: &TrustStore,
    tenant: &TenantId,
    source_label: &str,
) -> Result<VerifiedBundle, CandidateError> {
    verify_bundle_at(
        bytes,
        trust,
        tenant,
        source_label,
        OffsetDateTime::now_utc(),
    )
}

/// [`verify_bundle`] with expiry checked at `at` (an audit checks a bundle at the time of the
/// decision it made, not at the time of the audit).
pub fn verify_bundle_at(
    bytes: &[u8],
    trust: &TrustStore,
    tenant: &TenantId,
    source_label: &str,
    at: OffsetDateTime,
) -> Result<VerifiedBundle, CandidateError> {
    let mut policy = VerifyPolicy::new(at);
    policy.expected_tenant = Some(tenant.clone());
    bundle::verify(bytes, trust, &policy).map_err(|e| CandidateError::Rejected {
        source_label: source_label.to_owned(),
        detail: e.to_string(),
    })
}

/// The compiled data of a verified bundle, if its `data.json` parses.
pub fn bundle_data(verified: &VerifiedBundle) -> Option<CompiledData> {
    verified
        .data()
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
}

impl Candidate {
    /// A verified bundle's evaluator, stamped with its version and digest.
    pub fn from_verified(
        verified: &VerifiedBundle,
        kind: CandidateKind,
        source_label: String,
    ) -> Result<Candidate, CandidateError> {
        let provenance = Provenance {
            policy_version: Some(verified.manifest.version),
            bundle_digest: Some(verified.digest.clone()),
        };
        let evaluator = Evaluator::from_files(&verified.files, provenance, EvalLimits::default())
            .map_err(|source| CandidateError::Compile {
            source_label: source_label.clone(),
            source,
        })?;
        Ok(Candidate {
            info: CandidateInfo {
                kind,
                source: source_label,
                version: Some(verified.manifest.version),
                digest: Some(verified.digest.clone()),
            },
            evaluator,
            data: bundle_data(verified),
        })
    }

    /// A bundle file, verified against `trust` as a bundle of `tenant`.
    pub fn from_bundle_file(
        path: &Path,
        trust: &TrustStore,
        tenant: &TenantId,
    ) -> Result<Candidate, CandidateError> {
        let bytes = std::fs::read(path).map_err(|source| CandidateError::Read {
            path: path.to_owned(),
            source,
        })?;
        let label = path.display().to_string();
        let verified = verify_bundle(&bytes, trust, tenant, &label)?;
        Candidate::from_verified(&verified, CandidateKind::BundleFile, label)
    }

    /// A policy tree (files or directories), compiled for `tenant` only — what a bundle of
    /// the tenant would carry.
    pub fn from_policy_tree(
        paths: &[PathBuf],
        tenant: &TenantId,
    ) -> Result<Candidate, CandidateError> {
        let label = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let set = PolicySet::load(paths).map_err(|diags| CandidateError::Tree {
            paths: label.clone(),
            count: diags.len(),
            details: diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        })?;
        if !set.tenants().contains(tenant) {
            return Err(CandidateError::NoPolicies {
                paths: label,
                tenant: tenant.clone(),
            });
        }
        Candidate::compile(&set, tenant, CandidateKind::PolicyTree, label)
    }

    /// The candidate set of a proposed change (the control plane's `candidate` query),
    /// compiled for `tenant`. Its digest (`sha256:` of the compiled `data.json`) must be the
    /// one the change's checks compiled: otherwise the live policies moved since the checks
    /// ran and a report would describe a candidate nobody reviewed.
    pub fn from_change(
        change: &ChangeCandidate,
        tenant: &TenantId,
    ) -> Result<Candidate, CandidateError> {
        let failed = |detail: String| CandidateError::Change {
            change_id: change.change_id.to_string(),
            detail,
        };
        let mut docs = Vec::new();
        for p in &change.policies {
            let path = p.path();
            let doc = parse_document(&path, p.document.clone())
                .map_err(|d| failed(format!("{} does not parse: {d}", path.display())))?;
            docs.push((path, doc));
        }
        let set = PolicySet::from_documents(docs).map_err(|d| failed(d.to_string()))?;
        let candidate = Candidate::compile(
            &set,
            tenant,
            CandidateKind::ProposedChange,
            format!("change {}", change.change_id),
        )?;
        let Some(checked) = &change.checked_digest else {
            return Err(failed(
                "its checks have not compiled a candidate (pending, or the candidate does not compile)"
                    .to_owned(),
            ));
        };
        if candidate.info.digest.as_ref() != Some(checked) {
            return Err(failed(format!(
                "its candidate compiles to {} today but its checks compiled {checked}: the live policies moved since the checks ran; propose the change again against today's policies",
                candidate.info.digest.as_deref().unwrap_or("nothing")
            )));
        }
        Ok(candidate)
    }

    /// Compiles `set` for `tenant`; the digest is `sha256:` of the compiled `data.json`, as
    /// the control plane's checks compute it.
    fn compile(
        set: &PolicySet,
        tenant: &TenantId,
        kind: CandidateKind,
        label: String,
    ) -> Result<Candidate, CandidateError> {
        let compiled = set.compile_tenant(tenant);
        let evaluator = Evaluator::new(&compiled, Provenance::default(), EvalLimits::default())
            .map_err(|source| CandidateError::Compile {
                source_label: label.clone(),
                source,
            })?;
        let digest = (kind == CandidateKind::ProposedChange)
            .then(|| {
                compiled
                    .files()
                    .get("data.json")
                    .map(|d| format!("sha256:{}", sha256_hex(d)))
            })
            .flatten();
        Ok(Candidate {
            info: CandidateInfo {
                kind,
                source: label,
                version: None,
                digest,
            },
            evaluator,
            data: Some(compiled.data),
        })
    }

    /// Published `version` of `tenant`: its digest from the control plane's history, its
    /// bytes from object store `aegis-bundles`, verified against `trust` (the control plane's
    /// public key).
    pub async fn from_published(
        js: &async_nats::jetstream::Context,
        tenant: &TenantId,
        version: u64,
        trust: &TrustStore,
        timeout: Duration,
    ) -> Result<Candidate, CandidateError> {
        let digest = published_digest(&js.client(), tenant, version, timeout).await?;
        let verified = fetch_verified(js, tenant, &digest, trust).await?;
        if verified.manifest.version != version {
            return Err(CandidateError::Rejected {
                source_label: format!("version {version}"),
                detail: format!(
                    "the bundle stored under {digest} is version {}",
                    verified.manifest.version
                ),
            });
        }
        Candidate::from_verified(
            &verified,
            CandidateKind::PublishedVersion,
            format!("version {version}"),
        )
    }
}

/// The digest of published `version` of `tenant`, from the control plane's `history` query.
pub async fn published_digest(
    nats: &async_nats::Client,
    tenant: &TenantId,
    version: u64,
    timeout: Duration,
) -> Result<String, CandidateError> {
    let failed = |detail: String| CandidateError::History {
        tenant: tenant.clone(),
        detail,
    };
    let request = QueryRequest::History;
    let subject =
        topology::query_subject(tenant, request.op()).map_err(|e| failed(e.to_string()))?;
    let body = serde_json::to_vec(&request).map_err(|e| failed(e.to_string()))?;
    let reply = tokio::time::timeout(timeout, nats.request(subject.clone(), body.into()))
        .await
        .map_err(|_| failed(format!("no answer on {subject} within {timeout:?}")))?
        .map_err(|e| failed(format!("{subject}: {e}")))?;
    let history = match serde_json::from_slice::<QueryReply>(&reply.payload) {
        Ok(QueryReply::Ok(QueryAnswer::History(h))) => h,
        Ok(QueryReply::Ok(_)) => return Err(failed("the answer is not a history".to_owned())),
        Ok(QueryReply::Error(e)) => return Err(failed(e.to_string())),
        Err(e) => return Err(failed(format!("unreadable answer: {e}"))),
    };
    history
        .into_iter()
        .find(|v| v.version == version)
        .map(|v| v.digest)
        .ok_or_else(|| CandidateError::NoSuchVersion {
            tenant: tenant.clone(),
            version,
        })
}

/// The bundle stored under `digest` in object store `aegis-bundles`, checked against the
/// digest and verified as a bundle of `tenant`.
pub async fn fetch_verified(
    js: &async_nats::jetstream::Context,
    tenant: &TenantId,
    digest: &str,
    trust: &TrustStore,
) -> Result<VerifiedBundle, CandidateError> {
    fetch_verified_at(js, tenant, digest, trust, OffsetDateTime::now_utc()).await
}

/// [`fetch_verified`] with expiry checked at `at`.
pub async fn fetch_verified_at(
    js: &async_nats::jetstream::Context,
    tenant: &TenantId,
    digest: &str,
    trust: &TrustStore,
    at: OffsetDateTime,
) -> Result<VerifiedBundle, CandidateError> {
    let fetch = |detail: String| CandidateError::Fetch {
        digest: digest.to_owned(),
        detail,
    };
    let bucket = js
        .get_object_store(BUNDLE_OBJECT_STORE)
        .await
        .map_err(|e| CandidateError::ObjectStoreUnavailable {
            detail: e.to_string(),
        })?;
    let mut object = bucket.get(digest).await.map_err(|e| fetch(e.to_string()))?;
    let max = bundle::SizeLimits::default().max_compressed_bytes;
    let mut bytes = Vec::new();
    (&mut object)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| fetch(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(fetch(format!("over the {max}-byte limit for bundles")));
    }
    let actual = bundle::bundle_digest(&bytes);
    if actual != digest {
        return Err(fetch(format!("the bytes hash to {actual}")));
    }
    verify_bundle_at(&bytes, trust, tenant, digest, at)
}
