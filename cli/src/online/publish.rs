//! `aegisctl publish`, `rollback`, `freeze`, `unfreeze`: putting versions live, and stopping
//! that.

use super::{Client, Poll, outcome_exit, outcome_line, submit};
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::{
    ChangePublished, DataPlaneFrozen, DataPlaneUnfrozen, Event, RollbackRequested, RolloutStage,
    TenantFrozen, TenantUnfrozen,
};
use aegis_core::ids::ChangeId;
use aegis_core::query::{EventRecord, VersionView};
use clap::builder::{EnumValueParser, TypedValueParser};
use serde::Serialize;
use std::io::Write;

/// Options for [`publish`]; also the `aegisctl publish` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    pub change_id: ChangeId,
    #[arg(
        long,
        value_parser = EnumValueParser::<StageArg>::new().map(RolloutStage::from),
        default_value = "global"
    )]
    pub stage: RolloutStage,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// The `--stage` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StageArg {
    Shadow,
    Partial,
    Global,
}

impl From<StageArg> for RolloutStage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Shadow => RolloutStage::Shadow,
            StageArg::Partial => RolloutStage::Partial,
            StageArg::Global => RolloutStage::Global,
        }
    }
}

/// Options for [`rollback`]; also the `aegisctl rollback` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RollbackArgs {
    /// The version whose content to publish again
    #[arg(long = "to", value_name = "V")]
    pub to_version: u64,
    #[arg(long)]
    pub reason: String,
    /// An incident rollback: needs the admin role, goes through a tenant freeze, is recorded
    /// as an emergency, and leaves the tenant frozen afterwards (`aegisctl unfreeze` when the
    /// incident is over)
    #[arg(long)]
    pub emergency: bool,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// What [`publish`], [`rollback`] and `aegisctl issuer add|revoke` print with `--json`: the
/// event's outcome and, once announced, the new version.
#[derive(Debug, Serialize)]
struct Report<'a> {
    event: &'a EventRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a VersionView>,
}

/// Which new version a publish or rollback produces.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    Change(&'a ChangeId),
    RollbackTo(u64),
}

impl Target<'_> {
    fn matches(&self, v: &VersionView, above: u64) -> bool {
        v.version > above
            && match self {
                Target::Change(id) => v.change_id.as_ref() == Some(*id),
                Target::RollbackTo(to) => v.rollback_of == Some(*to),
            }
    }
}

/// The newest version in `history` that `target` produced after `above`, and whether it is
/// announced.
fn find_version<'h>(
    history: &'h [VersionView],
    target: Target<'_>,
    above: u64,
) -> Option<&'h VersionView> {
    history
        .iter()
        .filter(|v| target.matches(v, above))
        .max_by_key(|v| v.version)
}

async fn publish_and_wait(
    client: &Client,
    event: Event,
    target: Target<'_>,
    what: String,
    json: bool,
    out: &mut dyn Write,
) -> CliResult {
    let above = newest_version(client).await?;
    let record = client.publish_event(event).await?;
    let exit = outcome_exit(&record.outcome);
    if exit != Exit::Ok {
        write_outcome(&record, json, out)?;
        return Ok(exit);
    }
    wait_announced(
        client,
        &record,
        "the bundle to be built and announced",
        what,
        |history| find_version(history, target, above),
        json,
        out,
    )
    .await
}

/// The newest version in the tenant's history, 0 before the first: what a publish's new version
/// is looked for above.
pub(super) async fn newest_version(client: &Client) -> Result<u64, CliError> {
    Ok(client
        .history()
        .await?
        .iter()
        .map(|v| v.version)
        .max()
        .unwrap_or(0))
}

/// Prints an event's outcome without a version: the JSON report, or the outcome line.
pub(super) fn write_outcome(
    record: &EventRecord,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if json {
        write_json(
            out,
            &Report {
                event: record,
                version: None,
            },
        )?;
    } else {
        writeln!(out, "{}", outcome_line(&record.outcome))?;
    }
    Ok(())
}

/// After an accepted `record`: prints its outcome and that it waits for `waiting` (text only),
/// polls the history until `find` picks out a version that is announced (`what` names it in
/// the timeout message), then prints it: with `--json` the report with `record`, else
/// [`write_version`].
pub(super) async fn wait_announced<F>(
    client: &Client,
    record: &EventRecord,
    waiting: &str,
    what: String,
    find: F,
    json: bool,
    out: &mut dyn Write,
) -> CliResult
where
    F: Fn(&[VersionView]) -> Option<&VersionView>,
{
    if !json {
        writeln!(out, "{}", outcome_line(&record.outcome))?;
        writeln!(out, "waiting for {waiting} ...")?;
        out.flush()?;
    }
    let find = &find;
    let version = client
        .poll(what, || async move {
            let history = client.history().await?;
            Ok(match find(&history) {
                Some(v) if v.announced => Poll::Ready(v.clone()),
                Some(v) => Poll::Pending(Some(format!(
                    "version {} is built but not announced yet",
                    v.version
                ))),
                None => Poll::Pending(Some("no new version in the history yet".to_owned())),
            })
        })
        .await?;
    if json {
        write_json(
            out,
            &Report {
                event: record,
                version: Some(&version),
            },
        )?;
    } else {
        write_version(&version, out)?;
    }
    Ok(Exit::Ok)
}

/// `version 5 sha256:… (stage global, signed by …)`.
pub fn write_version(v: &VersionView, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "version: {}", v.version)?;
    writeln!(out, "digest:  {}", v.digest)?;
    writeln!(out, "stage:   {}", v.stage)?;
    writeln!(out, "signer:  {}", v.signer)?;
    if let Some(expires) = &v.expires_at {
        writeln!(out, "expires: {expires}")?;
    }
    Ok(())
}

/// `change_published`; once accepted, waits until the history shows the new version announced
/// (bundle in the object store, `BundlePublished` sent) and prints version and digest.
pub async fn publish(client: &Client, args: &PublishArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::ChangePublished(ChangePublished {
        change_id: args.change_id.clone(),
        stage: args.stage,
    });
    publish_and_wait(
        client,
        event,
        Target::Change(&args.change_id),
        format!(
            "change {} was published, but announcing its bundle",
            args.change_id
        ),
        args.json,
        out,
    )
    .await
}

/// `rollback_requested`: a new version with the content of `to_version`; waits like
/// [`publish`].
pub async fn rollback(client: &Client, args: &RollbackArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::RollbackRequested(RollbackRequested {
        to_version: args.to_version,
        reason: args.reason.clone(),
        emergency: args.emergency,
    });
    publish_and_wait(
        client,
        event,
        Target::RollbackTo(args.to_version),
        format!(
            "the rollback to version {} was accepted, but announcing its bundle",
            args.to_version
        ),
        args.json,
        out,
    )
    .await
}

/// Options for [`freeze`]; also the `aegisctl freeze` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FreezeArgs {
    #[arg(long)]
    pub reason: String,
    /// Freeze the data plane instead: every gateway stays on the bundles it runs now, whatever
    /// is published, until `unfreeze --data-plane` (blocks still apply)
    #[arg(long)]
    pub data_plane: bool,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// `tenant_frozen`: every publish, rollback and rollout is refused until unfrozen. With
/// `--data-plane`, `data_plane_frozen`: gateways stay on what they run.
pub async fn freeze(client: &Client, args: &FreezeArgs, out: &mut dyn Write) -> CliResult {
    let event = if args.data_plane {
        Event::DataPlaneFrozen(DataPlaneFrozen {
            reason: args.reason.clone(),
        })
    } else {
        Event::TenantFrozen(TenantFrozen {
            reason: args.reason.clone(),
        })
    };
    submit(client, event, args.json, out).await
}

/// Options for [`unfreeze`]; also the `aegisctl unfreeze` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UnfreezeArgs {
    #[arg(long)]
    pub reason: Option<String>,
    /// Lift the data-plane freeze instead: gateways move to what is live
    #[arg(long)]
    pub data_plane: bool,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// `tenant_unfrozen`, or with `--data-plane` `data_plane_unfrozen`.
pub async fn unfreeze(client: &Client, args: &UnfreezeArgs, out: &mut dyn Write) -> CliResult {
    let event = if args.data_plane {
        Event::DataPlaneUnfrozen(DataPlaneUnfrozen {
            reason: args.reason.clone(),
        })
    } else {
        Event::TenantUnfrozen(TenantUnfrozen {
            reason: args.reason.clone(),
        })
    };
    submit(client, event, args.json, out).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aegis_core::ids::ActorId;
    use aegis_core::keys::KeyId;

    fn version(
        n: u64,
        change: Option<&str>,
        rollback_of: Option<u64>,
        announced: bool,
    ) -> VersionView {
        VersionView {
            version: n,
            digest: format!("sha256:{n}"),
            size: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            change_id: change.map(|c| ChangeId::new(c).unwrap()),
            rollback_of,
            emergency: false,
            stage: RolloutStage::Global,
            published_by: ActorId::new("carol").unwrap(),
            approved_by: vec![],
            signer: KeyId::new(format!("ed25519:{}", "a".repeat(16))).unwrap(),
            announced,
        }
    }

    #[test]
    fn finds_the_new_version_of_a_change_or_rollback() {
        let history = vec![
            version(1, Some("chg-1"), None, true),
            version(2, Some("chg-2"), None, true),
            version(3, None, Some(1), true),
            version(4, None, Some(1), false),
        ];
        let chg2 = ChangeId::new("chg-2").unwrap();
        assert_eq!(
            find_version(&history, Target::Change(&chg2), 1).map(|v| v.version),
            Some(2)
        );
        assert!(find_version(&history, Target::Change(&chg2), 2).is_none());
        // An older rollback to the same version does not count.
        let v = find_version(&history, Target::RollbackTo(1), 3).unwrap();
        assert_eq!((v.version, v.announced), (4, false));
    }
}
