//! The server configs shipped in `nats/conf/`, and the per-tenant user template.
//!
//! `accounts.conf` is embedded here so tests (and tools) use exactly the shipped file; the
//! tenant operator blocks in it are renderings of [`TENANT_OPERATOR_TEMPLATE`], which a unit
//! test checks.

use std::path::PathBuf;

use aegis_core::ids::TenantId;

use crate::topology::TopologyError;

/// `nats/conf/accounts.conf`: the AEGIS account, its users and their permissions.
pub const ACCOUNTS_CONF: &str = include_str!("../conf/accounts.conf");
/// `nats/conf/single.conf`: one server, JetStream, `sync_interval: always`.
pub const SINGLE_CONF: &str = include_str!("../conf/single.conf");
/// `nats/conf/tenant-operator.conf.tmpl`: the user block of one tenant's operator, with
/// `@TENANT@` and `@PASSWORD@` placeholders.
pub const TENANT_OPERATOR_TEMPLATE: &str = include_str!("../conf/tenant-operator.conf.tmpl");

/// Environment variables `accounts.conf` reads the passwords from, by user.
pub const PASSWORD_ENV_VARS: [(&str, &str); 4] = [
    ("controlplane", "AEGIS_NATS_CONTROLPLANE_PASSWORD"),
    ("gateway-gw1", "AEGIS_NATS_GATEWAY_GW1_PASSWORD"),
    ("acme-operator", "AEGIS_NATS_ACME_OPERATOR_PASSWORD"),
    ("globex-operator", "AEGIS_NATS_GLOBEX_OPERATOR_PASSWORD"),
];

/// The `nats/conf` directory in the source tree this crate was built from (for tests and
/// tools running from a checkout; deployed hosts have their own copy).
pub fn conf_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/conf"))
}

/// The user name of `tenant`'s operator: `<tenant>-operator`.
pub fn tenant_operator_user(tenant: &TenantId) -> Result<String, TopologyError> {
    let token = crate::topology::subject_token(tenant.as_str())?;
    Ok(format!("{token}-operator"))
}

/// The accounts.conf user block for `tenant`'s operator. `password` is inserted verbatim as a
/// config value: a variable reference such as `$AEGIS_NATS_ACME_OPERATOR_PASSWORD`, or a quoted
/// bcrypt hash.
///
/// The tenant must be one subject token (see [`crate::topology::subject_token`]); it also must
/// not be a config-syntax hazard, which the id rules (`[A-Za-z0-9._:@/-]`) already ensure.
pub fn render_tenant_operator(tenant: &TenantId, password: &str) -> Result<String, TopologyError> {
    let token = crate::topology::subject_token(tenant.as_str())?;
    Ok(TENANT_OPERATOR_TEMPLATE
        .replace("@TENANT@", &token)
        .replace("@PASSWORD@", password))
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
    fn accounts_conf_tenant_blocks_are_the_template() {
        for (tenant, var) in [
            ("acme", "$AEGIS_NATS_ACME_OPERATOR_PASSWORD"),
            ("globex", "$AEGIS_NATS_GLOBEX_OPERATOR_PASSWORD"),
        ] {
            let block = render_tenant_operator(&TenantId::new(tenant).unwrap(), var).unwrap();
            assert!(
                ACCOUNTS_CONF.contains(&block),
                "accounts.conf does not contain the rendered block for {tenant}; re-render it \
                 from tenant-operator.conf.tmpl (see nats/conf/README.md)"
            );
        }
        for (_, var) in PASSWORD_ENV_VARS {
            assert!(ACCOUNTS_CONF.contains(&format!("${var}")), "{var} unused");
        }
    }

    #[test]
    fn rendering_checks_the_tenant() {
        let dotted = TenantId::new("acme.eu").unwrap();
        assert!(render_tenant_operator(&dotted, "$X").is_err());
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(tenant_operator_user(&acme).unwrap(), "acme-operator");
        let block = render_tenant_operator(&acme, "$X").unwrap();
        assert!(!block.contains('@'), "{block}");
        assert!(block.contains("\"aegis.changes.acme.>\""));
    }
}
