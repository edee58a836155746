//! `aegisctl issuer add|revoke|list`: the token issuer keys a tenant trusts. Agents present
//! EdDSA JWTs signed by these keys; the control plane ships them to gateways in every bundle's
//! `trust.json`, and publishes a new version (same policies, new trust data) as soon as a key
//! is registered or revoked once the tenant has a published version.

use super::publish::{newest_version, wait_announced, write_outcome};
use super::render::Table;
use super::{Client, outcome_exit};
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::{Event, TokenIssuerRegistered, TokenIssuerRevoked};
use aegis_core::keys::{KeyId, PublicKey};
use aegis_core::query::{IssuerView, VersionView};
use std::io::Write;
use std::path::PathBuf;

/// Options for [`add`]; also the `aegisctl issuer add` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// The issuer's name: exactly the `iss` claim of the tokens it signs
    #[arg(long, value_name = "NAME")]
    pub issuer: String,
    /// The issuer's public key (a *.pub.json from `aegisctl keys generate`)
    #[arg(long, value_name = "FILE")]
    pub public_key: PathBuf,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for [`revoke`]; also the `aegisctl issuer revoke` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    /// The issuer key to revoke (`ed25519:…`, as `aegisctl issuer list` shows it)
    #[arg(long, value_name = "ID")]
    pub key_id: KeyId,
    /// Why, e.g. `IdP key rotated` or an incident reference
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for [`list`]; `aegisctl issuer list` has no arguments of its own.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ListArgs {
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// `token_issuer_registered` with the key read from `--public-key`.
pub async fn add(client: &Client, args: &AddArgs, out: &mut dyn Write) -> CliResult {
    let key = PublicKey::load(&args.public_key).map_err(|e| CliError::invalid(e.to_string()))?;
    if !args.json {
        writeln!(
            out,
            "register token issuer {} with key {}",
            args.issuer,
            key.key_id()
        )?;
    }
    let event = Event::TokenIssuerRegistered(TokenIssuerRegistered {
        issuer: args.issuer.clone(),
        key_id: key.key_id().clone(),
        public_key: key.to_base64(),
    });
    submit_trust_change(client, event, args.json, out).await
}

/// `token_issuer_revoked`.
pub async fn revoke(client: &Client, args: &RevokeArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::TokenIssuerRevoked(TokenIssuerRevoked {
        key_id: args.key_id.clone(),
        reason: args.reason.clone(),
    });
    submit_trust_change(client, event, args.json, out).await
}

/// Publishes a trust change and waits for its verdict; once accepted, and if the tenant had a
/// published version, waits until the version carrying the new `trust.json` is announced.
async fn submit_trust_change(
    client: &Client,
    event: Event,
    json: bool,
    out: &mut dyn Write,
) -> CliResult {
    let above = newest_version(client).await?;
    let record = client.publish_event(event).await?;
    let exit = outcome_exit(&record.outcome);
    if exit != Exit::Ok || above == 0 {
        write_outcome(&record, json, out)?;
        if exit == Exit::Ok && !json {
            writeln!(
                out,
                "no version is published yet: the first publish carries the trust data"
            )?;
        }
        return Ok(exit);
    }
    let time = record.time.as_deref();
    wait_announced(
        client,
        &record,
        "the version with the new trust data to be announced",
        format!(
            "{} was accepted, but announcing the version with the new trust data",
            record.id
        ),
        |history| trust_version(history, above, time),
        json,
        out,
    )
    .await
}

/// The version a trust change published: above `above`, neither a change nor a rollback, and
/// created at the event's time.
fn trust_version<'h>(
    history: &'h [VersionView],
    above: u64,
    event_time: Option<&str>,
) -> Option<&'h VersionView> {
    history.iter().find(|v| {
        v.version > above
            && v.change_id.is_none()
            && v.rollback_of.is_none()
            && Some(v.created_at.as_str()) == event_time
    })
}

/// The tenant's token issuer keys: registered ones and revoked ones, by key id.
pub async fn list(client: &Client, args: &ListArgs, out: &mut dyn Write) -> CliResult {
    let issuers = client.issuers().await?;
    if args.json {
        write_json(out, &issuers)?;
        return Ok(Exit::Ok);
    }
    if issuers.is_empty() {
        writeln!(
            out,
            "no token issuer keys registered in tenant {}",
            client.tenant()
        )?;
        return Ok(Exit::Ok);
    }
    issuer_table(&issuers).write(out)?;
    Ok(Exit::Ok)
}

fn issuer_table(issuers: &[IssuerView]) -> Table {
    let mut table = Table::new(&["key id", "issuer", "registered", "status"]);
    for i in issuers {
        let status = match &i.revoked {
            None => "trusted".to_owned(),
            Some(r) => format!(
                "revoked by {} at {}: {}",
                r.actor,
                r.at,
                r.note.as_deref().unwrap_or("-")
            ),
        };
        table.row(vec![
            i.key_id.to_string(),
            i.issuer.clone(),
            format!("{} at {}", i.registered.actor, i.registered.at),
            status,
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use aegis_core::events::RolloutStage;
    use aegis_core::ids::{ActorId, ChangeId, EventId};
    use aegis_core::query::ActView;

    fn version(n: u64, change: Option<&str>, created_at: &str) -> VersionView {
        VersionView {
            version: n,
            digest: format!("sha256:{n}"),
            size: 1,
            created_at: created_at.into(),
            expires_at: None,
            change_id: change.map(|c| ChangeId::new(c).unwrap()),
            rollback_of: None,
            emergency: false,
            stage: RolloutStage::Global,
            published_by: ActorId::new("root").unwrap(),
            approved_by: vec![],
            signer: KeyId::new(format!("ed25519:{}", "a".repeat(16))).unwrap(),
            announced: true,
        }
    }

    #[test]
    fn finds_the_version_a_trust_change_published() {
        let t = "2026-01-01T00:00:05.000Z";
        let history = vec![
            version(1, Some("chg-1"), "2026-01-01T00:00:00.000Z"),
            version(2, Some("chg-2"), t),
            version(3, None, t),
        ];
        assert_eq!(
            trust_version(&history, 1, Some(t)).map(|v| v.version),
            Some(3)
        );
        assert!(trust_version(&history, 3, Some(t)).is_none());
        assert!(trust_version(&history, 1, Some("2026-01-01T00:00:06.000Z")).is_none());
    }

    #[test]
    fn the_list_shows_trusted_and_revoked_keys() {
        let act = |actor: &str, note: Option<&str>| ActView {
            actor: ActorId::new(actor).unwrap(),
            at: "2026-01-01T00:00:00.000Z".into(),
            event_id: EventId::new("evt-1").unwrap(),
            note: note.map(str::to_owned),
        };
        let key = |c: char| KeyId::new(format!("ed25519:{}", c.to_string().repeat(16))).unwrap();
        let issuers = vec![
            IssuerView {
                issuer: "acme-idp".into(),
                key_id: key('a'),
                public_key: String::new(),
                registered: act("root", None),
                revoked: None,
            },
            IssuerView {
                issuer: "old-idp".into(),
                key_id: key('b'),
                public_key: String::new(),
                registered: act("root", None),
                revoked: Some(act("sec", Some("leaked"))),
            },
        ];
        let mut out = Vec::new();
        issuer_table(&issuers).write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("key id"), "{text}");
        assert!(
            lines[1].contains("acme-idp") && lines[1].ends_with("trusted"),
            "{text}"
        );
        assert!(
            lines[2].ends_with("revoked by sec at 2026-01-01T00:00:00.000Z: leaked"),
            "{text}"
        );
    }
}
