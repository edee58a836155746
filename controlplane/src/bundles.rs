//! Building a tenant's signed bundle from a live set and the tenant's trust data (`trust.json`:
//! its token issuer keys). Deterministic: the version, times, author and change come from the
//! publishing event, the trust data from the fold's state, and ed25519 signatures are
//! deterministic, so two control planes with the same key build the same bytes.

use crate::checks;
use crate::records::LiveSet;
use aegis_core::bundle::{BuiltBundle, BundleSpec, TRUST_PATH, TrustData, build};
use aegis_core::ids::{ActorId, ChangeId, TenantId};
use aegis_core::keys::Keypair;

/// What a bundle is built from.
#[derive(Debug)]
pub struct BundleInput<'a> {
    pub tenant: &'a TenantId,
    pub version: u64,
    pub created_at: &'a str,
    pub expires_at: Option<String>,
    pub author: &'a ActorId,
    pub change: Option<&'a ChangeId>,
    pub live: &'a LiveSet,
    /// The tenant's token issuer keys, shipped as `trust.json` (even when there are none).
    pub trust: &'a TrustData,
}

/// Compiles and signs. `Err` says why, in one line.
pub fn build_bundle(input: &BundleInput<'_>, key: &Keypair) -> Result<BuiltBundle, String> {
    let (set, _) = checks::load(input.tenant, input.live).map_err(|p| p.join("; "))?;
    let (compiled, _) = checks::compile(input.tenant, &set)?;
    let spec = BundleSpec {
        tenant: input.tenant.clone(),
        version: input.version,
        created_at: input.created_at.to_owned(),
        expires_at: input.expires_at.clone(),
        author: input.author.to_string(),
        source_change: input.change.map(ToString::to_string),
    };
    let mut files = compiled.files();
    files.insert(TRUST_PATH.to_owned(), input.trust.to_bytes());
    build(&spec, &files, key).map_err(|e| e.to_string())
}

/// `created_at` plus `days`, RFC 3339.
pub fn expiry(created_at: &str, days: Option<u32>) -> Option<String> {
    let days = days?;
    let t = aegis_core::events::envelope::parse_time(created_at).ok()?;
    aegis_core::events::envelope::format_time(t + time::Duration::days(i64::from(days))).ok()
}
