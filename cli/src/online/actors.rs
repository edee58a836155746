//! `aegisctl actor add|grant|revoke|revoke-key|list`: who may sign what in a tenant.

use super::render::Table;
use super::{Client, outcome_exit, outcome_line, submit};
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::{ActorRegistered, Event, KeyRevoked, Role, RoleGranted, RoleRevoked};
use aegis_core::ids::ActorId;
use aegis_core::keys::{KeyId, PublicKey};
use std::io::Write;
use std::path::PathBuf;

/// Options for [`add`]; also the `aegisctl actor add` arguments. The public key is a
/// `*.pub.json` from `aegisctl keys generate`; each role is granted right after registering, one
/// `role_granted` event each.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// The actor to act on
    #[arg(id = "id", value_name = "ACTOR")]
    pub actor: ActorId,
    /// The actor's *.pub.json
    #[arg(long, value_name = "FILE")]
    pub public_key: PathBuf,
    /// Display name
    #[arg(long = "name", value_name = "NAME")]
    pub display_name: Option<String>,
    /// admin, editor, approver, publisher or auditor (repeatable)
    #[arg(long = "role")]
    pub roles: Vec<Role>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Registers an actor (or adds a key to one) with `actor_registered`, then grants each role.
/// Stops at the first rejection (exit 5).
pub async fn add(client: &Client, args: &AddArgs, out: &mut dyn Write) -> CliResult {
    let key = PublicKey::load(&args.public_key).map_err(|e| CliError::invalid(e.to_string()))?;
    let mut events = vec![Event::ActorRegistered(ActorRegistered {
        actor: args.actor.clone(),
        public_key: key.to_base64(),
        key_id: key.key_id().clone(),
        display_name: args.display_name.clone(),
    })];
    let mut roles = args.roles.clone();
    roles.sort();
    roles.dedup();
    events.extend(roles.into_iter().map(|role| {
        Event::RoleGranted(RoleGranted {
            actor: args.actor.clone(),
            role,
        })
    }));
    let mut records = Vec::new();
    let mut exit = Exit::Ok;
    for event in events {
        let label = match &event {
            Event::RoleGranted(g) => format!("grant {} to {}", g.role, g.actor),
            _ => format!("register {} with key {}", args.actor, key.key_id()),
        };
        let record = client.publish_event(event).await?;
        if !args.json {
            writeln!(out, "{label}: {}", outcome_line(&record.outcome))?;
        }
        exit = outcome_exit(&record.outcome);
        records.push(record);
        if exit != Exit::Ok {
            break;
        }
    }
    if args.json {
        write_json(out, &records)?;
    }
    Ok(exit)
}

/// Options for [`grant`] and [`revoke`]; also the `aegisctl actor grant|revoke` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RoleArgs {
    /// The actor to act on
    #[arg(id = "id", value_name = "ACTOR")]
    pub actor: ActorId,
    pub role: Role,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// `role_granted`.
pub async fn grant(client: &Client, args: &RoleArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::RoleGranted(RoleGranted {
        actor: args.actor.clone(),
        role: args.role,
    });
    submit(client, event, args.json, out).await
}

/// `role_revoked`.
pub async fn revoke(client: &Client, args: &RoleArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::RoleRevoked(RoleRevoked {
        actor: args.actor.clone(),
        role: args.role,
    });
    submit(client, event, args.json, out).await
}

/// Options for [`revoke_key`]; also the `aegisctl actor revoke-key` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeKeyArgs {
    /// The actor to act on
    #[arg(id = "id", value_name = "ACTOR")]
    pub actor: ActorId,
    pub key_id: KeyId,
    #[arg(long)]
    pub reason: Option<String>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// `key_revoked`: events signed with the key from now on are rejected.
pub async fn revoke_key(client: &Client, args: &RevokeKeyArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::KeyRevoked(KeyRevoked {
        actor: args.actor.clone(),
        key_id: args.key_id.clone(),
        reason: args.reason.clone(),
    });
    submit(client, event, args.json, out).await
}

/// Options for [`list`]; `aegisctl actor list` has no arguments of its own.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ListArgs {
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// The registered actors: roles and keys (revoked keys marked).
pub async fn list(client: &Client, args: &ListArgs, out: &mut dyn Write) -> CliResult {
    let actors = client.actors().await?;
    if args.json {
        write_json(out, &actors)?;
        return Ok(Exit::Ok);
    }
    let mut table = Table::new(&["actor", "name", "roles", "keys"]);
    for a in &actors {
        let mut roles: Vec<String> = a.roles.iter().map(|r| r.to_string()).collect();
        if a.root {
            roles.insert(0, "root".to_owned());
        }
        let keys: Vec<String> = a
            .keys
            .iter()
            .map(|k| {
                if k.revoked {
                    format!("{} (revoked)", k.key_id)
                } else {
                    k.key_id.to_string()
                }
            })
            .collect();
        table.row(vec![
            a.actor.to_string(),
            a.display_name.clone().unwrap_or_else(|| "-".to_owned()),
            if roles.is_empty() {
                "-".to_owned()
            } else {
                roles.join(",")
            },
            keys.join(" "),
        ]);
    }
    if table.is_empty() {
        writeln!(out, "no actors registered in tenant {}", client.tenant())?;
    } else {
        table.write(out)?;
    }
    Ok(Exit::Ok)
}
