//! `aegisctl propose DIR --intent TEXT`: turn the difference between a policy tree and what is
//! live into draft edits and one change request, then wait for the control plane's checks.
//!
//! The pure part — loading one tenant's documents from the tree ([`load_tree`]), comparing them
//! with the live set ([`plan`]) and building the events ([`draft_edits`], [`change_proposed`]) —
//! does no I/O on NATS and is unit-tested; [`run`] drives it against a [`Client`].

use super::render::write_checks;
use super::{Client, ClientError, Poll, outcome_exit, outcome_line};
use crate::exit::{CliError, CliResult, Exit};
use crate::output::{load_tree as load_policy_set, plural, write_json};
use aegis_core::events::{
    ChangeProposed, DeletedDocument, DocumentFormat, Event, PolicyDeleted, PolicyUpserted,
    ProposedDocument, VectorDocument,
};
use aegis_core::ids::{ChangeId, PolicyName, TenantId};
use aegis_core::policy::PolicyDocument;
use aegis_core::policy::set::parse_document;
use aegis_core::policy::source;
use aegis_core::query::{ChangeView, EventRecord, LiveView, Outcome};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Options for [`run`]; also the `aegisctl propose` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ProposeArgs {
    /// The policy tree (files or directories)
    #[arg(required = true, value_name = "DIR")]
    pub paths: Vec<PathBuf>,
    /// Why: one or two sentences a reviewer reads first
    #[arg(long)]
    pub intent: String,
    #[arg(long)]
    pub ticket: Option<String>,
    /// Also delete live policies that are not in the tree
    #[arg(long)]
    pub prune: bool,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// One policy document of the tenant, as found in the tree.
#[derive(Debug, Clone)]
pub struct TreePolicy {
    pub name: PolicyName,
    pub path: PathBuf,
    pub format: DocumentFormat,
    /// The file's text, sent as is.
    pub text: String,
    pub doc: PolicyDocument,
}

/// One test-vector file of the tenant, as found in the tree.
#[derive(Debug, Clone)]
pub struct TreeVectors {
    /// The name the change carries it under (see [`vector_name`]).
    pub name: String,
    pub path: PathBuf,
    pub format: DocumentFormat,
    pub text: String,
    pub value: Value,
}

/// The tenant's part of a policy tree.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub policies: Vec<TreePolicy>,
    pub vectors: Vec<TreeVectors>,
    /// Policies of other tenants in the tree (ignored).
    pub other_tenant_policies: usize,
    /// Vector files whose vectors are all for other tenants (ignored).
    pub other_tenant_vectors: usize,
}

/// The format a document is in, from its file extension (`.json`, else YAML).
pub fn format_of(path: &Path) -> DocumentFormat {
    match source::Format::of(path) {
        Some(source::Format::Json) => DocumentFormat::Json,
        _ => DocumentFormat::Yaml,
    }
}

/// The name a vector file travels under: `<metadata.name>.<ext>` when the file has a
/// `metadata.name`, else its file name. (Trees often hold several files called
/// `vectors.yaml`; the metadata name stays the same wherever the file lives, so a later change
/// replaces the same live vector file.)
pub fn vector_name(path: &Path, value: &Value) -> String {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("yaml")
        .to_owned();
    let meta = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    match meta {
        Some(name) => format!("{name}.{ext}"),
        None => path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("vectors")
            .to_owned(),
    }
}

/// Loads and validates the whole tree (printing every problem as `aegisctl lint` does, exit 2),
/// then keeps `tenant`'s policies and the vector files whose vectors are all for `tenant`.
pub fn load_tree(
    paths: &[PathBuf],
    tenant: &TenantId,
    out: &mut dyn Write,
) -> Result<Tree, CliError> {
    let set = load_policy_set(paths, out)?;
    let mut tree = Tree::default();
    for p in set.policies {
        if &p.doc.metadata.tenant != tenant {
            tree.other_tenant_policies += 1;
            continue;
        }
        let text = std::fs::read_to_string(&p.path).map_err(|e| CliError::io(&p.path, e))?;
        tree.policies.push(TreePolicy {
            name: p.doc.metadata.name.clone(),
            format: format_of(&p.path),
            path: p.path,
            text,
            doc: p.doc,
        });
    }
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for v in set.vectors {
        let ours = v
            .vectors
            .iter()
            .filter(|x| &x.input.tenant == tenant)
            .count();
        if ours == 0 {
            tree.other_tenant_vectors += 1;
            continue;
        }
        if ours != v.vectors.len() {
            return Err(CliError::invalid(format!(
                "{}: has vectors for tenant {tenant} and for other tenants; a change carries \
                 one tenant's vectors, so split the file",
                v.path.display()
            )));
        }
        let text = std::fs::read_to_string(&v.path).map_err(|e| CliError::io(&v.path, e))?;
        let value = source::parse(&v.path, text.clone())
            .map_err(|d| CliError::invalid(d.to_string()))?
            .value;
        let name = vector_name(&v.path, &value);
        if let Some(first) = names.insert(name.clone(), v.path.clone()) {
            return Err(CliError::invalid(format!(
                "{} and {} would both be proposed as vector file `{name}`: give them different \
                 `metadata.name`s",
                first.display(),
                v.path.display()
            )));
        }
        tree.vectors.push(TreeVectors {
            name,
            format: format_of(&v.path),
            path: v.path,
            text,
            value,
        });
    }
    tree.policies.sort_by(|a, b| a.name.cmp(&b.name));
    tree.vectors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tree)
}

/// How one policy of the tree compares with the live set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyChange {
    New,
    Changed,
}

/// A policy the change writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedUpsert {
    pub kind: PolicyChange,
    pub path: PathBuf,
    /// With `base_revision` = the live revision (0 when new).
    pub document: ProposedDocument,
}

/// What a proposal would change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub upserts: Vec<PlannedUpsert>,
    /// Live policies missing from the tree (only with `prune`), with their live revision.
    pub deletes: Vec<DeletedDocument>,
    /// Live policies missing from the tree, left alone (no `prune`).
    pub kept: Vec<PolicyName>,
    /// Policies whose document equals the live one (formatting, comments and key order do not
    /// count).
    pub unchanged: Vec<PolicyName>,
    /// Every vector file of the tenant in the tree (the change carries them all).
    pub vectors: Vec<VectorDocument>,
    /// Names of the vector files that are new or differ from the live ones.
    pub vectors_changed: Vec<String>,
    /// Live vector files the tree does not have (a change cannot remove them).
    pub live_vectors_not_in_tree: Vec<String>,
}

impl Plan {
    /// Nothing to write, delete or replace.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty() && self.vectors_changed.is_empty()
    }
}

/// A live document parsed like a file of its format.
fn parse_live(name: &PolicyName, format: DocumentFormat, text: &str) -> Option<PolicyDocument> {
    let path = PathBuf::from(format!("live/{name}.{}", format.extension()));
    parse_document(&path, text.to_owned()).ok()
}

fn parse_value(name: &str, format: DocumentFormat, text: &str) -> Option<Value> {
    let path = PathBuf::from(format!("live/{name}.{}", format.extension()));
    source::parse(&path, text.to_owned()).ok().map(|s| s.value)
}

/// Compares the tenant's tree with the live set by policy name (`metadata.name`). Documents
/// are compared parsed, so formatting-only differences (comments, quoting, key order, YAML vs
/// JSON) do not count.
pub fn plan(tree: &Tree, live: &LiveView, prune: bool) -> Plan {
    let mut p = Plan::default();
    let live_by_name: BTreeMap<&PolicyName, _> =
        live.policies.iter().map(|d| (&d.name, d)).collect();
    for t in &tree.policies {
        let (kind, base_revision) = match live_by_name.get(&t.name) {
            None => (Some(PolicyChange::New), 0),
            Some(l) => {
                let same = parse_live(&l.name, l.format, &l.document).is_some_and(|d| d == t.doc);
                (
                    if same {
                        None
                    } else {
                        Some(PolicyChange::Changed)
                    },
                    l.revision,
                )
            }
        };
        match kind {
            None => p.unchanged.push(t.name.clone()),
            Some(kind) => p.upserts.push(PlannedUpsert {
                kind,
                path: t.path.clone(),
                document: ProposedDocument {
                    name: t.name.clone(),
                    format: t.format,
                    document: t.text.clone(),
                    base_revision,
                },
            }),
        }
    }
    let in_tree: BTreeSet<&PolicyName> = tree.policies.iter().map(|t| &t.name).collect();
    for l in &live.policies {
        if in_tree.contains(&l.name) {
            continue;
        }
        if prune {
            p.deletes.push(DeletedDocument {
                name: l.name.clone(),
                base_revision: l.revision,
            });
        } else {
            p.kept.push(l.name.clone());
        }
    }
    let live_vectors: BTreeMap<&str, _> =
        live.vectors.iter().map(|v| (v.name.as_str(), v)).collect();
    for v in &tree.vectors {
        let same = live_vectors
            .get(v.name.as_str())
            .and_then(|l| parse_value(&l.name, l.format, &l.document))
            .is_some_and(|value| value == v.value);
        if !same {
            p.vectors_changed.push(v.name.clone());
        }
        p.vectors.push(VectorDocument {
            name: v.name.clone(),
            format: v.format,
            document: v.text.clone(),
        });
    }
    let tree_vectors: BTreeSet<&str> = tree.vectors.iter().map(|v| v.name.as_str()).collect();
    p.live_vectors_not_in_tree = live
        .vectors
        .iter()
        .filter(|v| !tree_vectors.contains(v.name.as_str()))
        .map(|v| v.name.clone())
        .collect();
    p
}

/// One draft edit: the event and the revision it is based on (also its
/// `Nats-Expected-Last-Subject-Sequence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftEdit {
    pub name: PolicyName,
    pub base_revision: u64,
    pub event: Event,
}

/// The policies a plan edits: each needs the revision its edit is based on.
pub fn edited_policies(plan: &Plan) -> Vec<PolicyName> {
    plan.upserts
        .iter()
        .map(|u| u.document.name.clone())
        .chain(plan.deletes.iter().map(|d| d.name.clone()))
        .collect()
}

/// The `policy_upserted` / `policy_deleted` events for a plan, each based on `revisions[name]`
/// (0 when absent: the policy's subject has no message yet).
///
/// The revision to use is the last stream sequence on `aegis.changes.<tenant>.policy.<name>`
/// ([`Client::last_subject_sequence`]): that is what the fold compares `base_revision` with,
/// and what `Nats-Expected-Last-Subject-Sequence` checks. It equals the `Drafts` revision
/// unless an edit after the last accepted one was rejected: the rejected message still moves
/// the subject on, so the `Drafts` revision would be refused by the stream forever.
pub fn draft_edits(
    plan: &Plan,
    revisions: &BTreeMap<PolicyName, u64>,
    change_id: &ChangeId,
) -> Vec<DraftEdit> {
    let revision = |name: &PolicyName| revisions.get(name).copied().unwrap_or(0);
    let upserts = plan.upserts.iter().map(|u| {
        let base_revision = revision(&u.document.name);
        DraftEdit {
            name: u.document.name.clone(),
            base_revision,
            event: Event::PolicyUpserted(PolicyUpserted {
                name: u.document.name.clone(),
                format: u.document.format,
                document: u.document.document.clone(),
                base_revision,
                change_id: Some(change_id.clone()),
            }),
        }
    });
    let deletes = plan.deletes.iter().map(|d| {
        let base_revision = revision(&d.name);
        DraftEdit {
            name: d.name.clone(),
            base_revision,
            event: Event::PolicyDeleted(PolicyDeleted {
                name: d.name.clone(),
                base_revision,
                change_id: Some(change_id.clone()),
            }),
        }
    });
    upserts.chain(deletes).collect()
}

/// The `change_proposed` event for a plan.
pub fn change_proposed(
    change_id: ChangeId,
    intent: String,
    ticket: Option<String>,
    plan: &Plan,
) -> ChangeProposed {
    ChangeProposed {
        change_id,
        intent,
        ticket,
        documents: plan.upserts.iter().map(|u| u.document.clone()).collect(),
        deleted: plan.deletes.clone(),
        vectors: plan.vectors.clone(),
    }
}

fn policies(n: usize) -> String {
    if n == 1 {
        "1 policy".to_owned()
    } else {
        format!("{n} policies")
    }
}

/// Prints what the proposal will do.
pub fn write_plan(
    tenant: &TenantId,
    tree: &Tree,
    plan: &Plan,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "tenant {tenant}: {} to write, {} to delete, {} unchanged; {} ({} new or changed)",
        policies(plan.upserts.len()),
        plan.deletes.len(),
        plan.unchanged.len(),
        plural(plan.vectors.len(), "vector file"),
        plan.vectors_changed.len()
    )?;
    for u in &plan.upserts {
        let kind = match u.kind {
            PolicyChange::New => "new",
            PolicyChange::Changed => "changed",
        };
        writeln!(
            out,
            "  {kind:<8} {} ({}, live revision {})",
            u.document.name,
            u.path.display(),
            u.document.base_revision
        )?;
    }
    for d in &plan.deletes {
        writeln!(
            out,
            "  delete   {} (live revision {})",
            d.name, d.base_revision
        )?;
    }
    for k in &plan.kept {
        writeln!(
            out,
            "  keep     {k} (live, not in the tree; --prune would delete it)"
        )?;
    }
    for v in &plan.vectors_changed {
        writeln!(out, "  vectors  {v}")?;
    }
    for v in &plan.live_vectors_not_in_tree {
        writeln!(
            out,
            "  note: live vector file {v} is not in the tree; it stays live (a change cannot remove vector files)"
        )?;
    }
    if tree.other_tenant_policies + tree.other_tenant_vectors > 0 {
        writeln!(
            out,
            "  ignored: {} and {} of other tenants",
            policies(tree.other_tenant_policies),
            plural(tree.other_tenant_vectors, "vector file")
        )?;
    }
    Ok(())
}

/// The conflict error of a draft edit.
pub fn conflict_error(name: &PolicyName, based_on: u64, actual: Option<u64>) -> CliError {
    CliError {
        exit: Exit::Conflict,
        message: format!(
            "policy {name} was edited concurrently by someone else (revision {}, you based on \
             {based_on}); re-run propose",
            actual.map_or_else(|| "unknown".to_owned(), |a| a.to_string())
        ),
    }
}

#[derive(Debug, Serialize)]
struct ProposeReport<'a> {
    change_id: &'a ChangeId,
    drafts: &'a [EventRecord],
    #[serde(skip_serializing_if = "Option::is_none")]
    proposed: Option<&'a EventRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change: Option<&'a ChangeView>,
}

/// Loads the tree, compares it with the live set, publishes the draft edits and the change,
/// and waits for the checks. Exit 0 when the checks passed, 1 when they failed, 5 when the
/// control plane rejected an event, 7 on a concurrent edit.
pub async fn run(client: &Client, args: &ProposeArgs, out: &mut dyn Write) -> CliResult {
    let tenant = client.tenant().clone();
    let tree = load_tree(&args.paths, &tenant, out)?;
    let live = client.live().await?;
    let plan = plan(&tree, &live, args.prune);
    if plan.is_empty() {
        if !args.json {
            write_plan(&tenant, &tree, &plan, out)?;
        }
        return Err(CliError::failure(format!(
            "nothing to propose: the tree matches what is live for tenant {tenant}"
        )));
    }
    if !args.json {
        write_plan(&tenant, &tree, &plan, out)?;
    }
    let mut revisions = BTreeMap::new();
    for name in edited_policies(&plan) {
        let subject = aegis_nats::topology::changes_subject(&tenant, &format!("policy.{name}"))
            .map_err(|e| CliError::invalid(e.to_string()))?;
        let last = client.last_subject_sequence(&subject).await?;
        revisions.insert(name, last.unwrap_or(0));
    }
    let change_id = ChangeId::random()
        .map_err(|e| CliError::failure(format!("cannot make a change id: {e}")))?;
    let mut records = Vec::new();
    let report = |records: &[EventRecord],
                  proposed: Option<&EventRecord>,
                  change: Option<&ChangeView>,
                  out: &mut dyn Write|
     -> Result<(), CliError> {
        write_json(
            out,
            &ProposeReport {
                change_id: &change_id,
                drafts: records,
                proposed,
                change,
            },
        )
    };
    for edit in draft_edits(&plan, &revisions, &change_id) {
        let record = match client
            .publish_event_expecting(edit.event, Some(edit.base_revision))
            .await
        {
            Ok(r) => r,
            Err(ClientError::Conflict { actual, .. }) => {
                return Err(conflict_error(&edit.name, edit.base_revision, actual));
            }
            Err(e) => return Err(e.into()),
        };
        if !args.json {
            writeln!(
                out,
                "draft {}: {}",
                edit.name,
                outcome_line(&record.outcome)
            )?;
        }
        let exit = outcome_exit(&record.outcome);
        records.push(record);
        if exit != Exit::Ok {
            if args.json {
                report(&records, None, None, out)?;
            }
            return Ok(exit);
        }
    }
    let event = change_proposed(
        change_id.clone(),
        args.intent.clone(),
        args.ticket.clone(),
        &plan,
    );
    let proposed = client.publish_event(Event::ChangeProposed(event)).await?;
    if !args.json {
        writeln!(
            out,
            "change {change_id}: {}",
            outcome_line(&proposed.outcome)
        )?;
    }
    if let Outcome::Rejected { .. } = proposed.outcome {
        if args.json {
            report(&records, Some(&proposed), None, out)?;
        }
        return Ok(Exit::Rejected);
    }
    if !args.json {
        writeln!(out, "waiting for checks on {change_id} ...")?;
        out.flush()?;
    }
    let change = client
        .poll(
            format!("change {change_id} was proposed, but its checks"),
            || async {
                let change = client.change(&change_id).await?;
                Ok(if change.checks.is_some() {
                    Poll::Ready(change)
                } else {
                    Poll::Pending(Some("checks not reported yet".to_owned()))
                })
            },
        )
        .await?;
    let passed = change.checks.as_ref().is_some_and(|c| c.passed);
    if args.json {
        report(&records, Some(&proposed), Some(&change), out)?;
    } else if let Some(checks) = &change.checks {
        write_checks(checks, change.required_approvals, out)?;
        writeln!(out, "change id: {change_id}")?;
    }
    Ok(if passed { Exit::Ok } else { Exit::Failure })
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
    use aegis_core::policy::model::RiskTier;
    use aegis_core::query::LiveDocument;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    fn name(n: &str) -> PolicyName {
        PolicyName::new(n).unwrap()
    }

    /// Tenant acme's part of the shipped `policies/` tree: the finance template and the two
    /// examples (one of them JSON); the other templates belong to other tenants.
    fn templates() -> Tree {
        let mut sink = Vec::new();
        load_tree(&[repo().join("policies")], &acme(), &mut sink).unwrap()
    }

    fn live_of(tree: &Tree, revision: u64) -> LiveView {
        LiveView {
            policies: tree
                .policies
                .iter()
                .map(|p| LiveDocument {
                    name: p.name.clone(),
                    revision,
                    risk_tier: p.doc.metadata.risk_tier,
                    format: p.format,
                    document: p.text.clone(),
                })
                .collect(),
            vectors: tree
                .vectors
                .iter()
                .map(|v| VectorDocument {
                    name: v.name.clone(),
                    format: v.format,
                    document: v.text.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn templates_load_with_distinct_vector_names() {
        let tree = templates();
        let names: Vec<_> = tree.policies.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(names, ["finance-agent", "research-agent", "support-agent"]);
        let vectors: Vec<_> = tree.vectors.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            vectors,
            [
                "finance-vectors.yaml",
                "research-agent-vectors.yaml",
                "support-agent-vectors.json"
            ]
        );
        let formats: Vec<_> = tree.policies.iter().map(|p| p.format).collect();
        assert_eq!(
            formats,
            [
                DocumentFormat::Yaml,
                DocumentFormat::Yaml,
                DocumentFormat::Json
            ]
        );
        assert_eq!(tree.other_tenant_policies, 2);
        assert_eq!(tree.other_tenant_vectors, 2);
    }

    #[test]
    fn everything_is_new_against_an_empty_live_set() {
        let tree = templates();
        let p = plan(
            &tree,
            &LiveView {
                policies: vec![],
                vectors: vec![],
            },
            false,
        );
        assert_eq!(p.upserts.len(), 3);
        assert!(p.upserts.iter().all(|u| u.kind == PolicyChange::New));
        assert!(p.upserts.iter().all(|u| u.document.base_revision == 0));
        assert_eq!(p.vectors_changed.len(), 3);
        assert!(!p.is_empty());
    }

    #[test]
    fn formatting_only_differences_do_not_count() {
        let tree = templates();
        let mut live = live_of(&tree, 4);
        // Same finance policy, written as JSON with another key order and no comments.
        let finance = tree
            .policies
            .iter()
            .find(|p| p.name == name("finance-agent"))
            .unwrap();
        let json = serde_json::to_string_pretty(&finance.doc).unwrap();
        let entry = live
            .policies
            .iter_mut()
            .find(|l| l.name == finance.name)
            .unwrap();
        entry.format = DocumentFormat::Json;
        entry.document = json;
        // And a vector file reflowed as JSON.
        let v = &tree.vectors[0];
        live.vectors[0].format = DocumentFormat::Json;
        live.vectors[0].document = serde_json::to_string(&v.value).unwrap();
        let p = plan(&tree, &live, true);
        assert!(p.is_empty(), "{p:#?}");
        assert_eq!(p.unchanged.len(), 3);
    }

    #[test]
    fn detects_changed_new_and_deleted_policies() {
        let tree = templates();
        let mut live = live_of(&tree, 7);
        // finance changed on the live side; deploy-agent not live yet; an extra live policy.
        let finance = live
            .policies
            .iter_mut()
            .find(|l| l.name == name("finance-agent"))
            .unwrap();
        finance.document = finance.document.replace("lte: 25000", "lte: 20000");
        assert!(finance.document.contains("20000"));
        live.policies.retain(|l| l.name != name("support-agent"));
        live.policies.push(LiveDocument {
            name: name("legacy-agent"),
            revision: 3,
            risk_tier: RiskTier::Low,
            format: DocumentFormat::Yaml,
            document: "{}".into(),
        });
        live.vectors.push(VectorDocument {
            name: "legacy-vectors.yaml".into(),
            format: DocumentFormat::Yaml,
            document: "{}".into(),
        });

        let p = plan(&tree, &live, false);
        let kinds: Vec<_> = p
            .upserts
            .iter()
            .map(|u| {
                (
                    u.document.name.to_string(),
                    u.kind,
                    u.document.base_revision,
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("finance-agent".to_owned(), PolicyChange::Changed, 7),
                ("support-agent".to_owned(), PolicyChange::New, 0)
            ]
        );
        assert!(p.deletes.is_empty());
        assert_eq!(p.kept, [name("legacy-agent")]);
        assert_eq!(p.unchanged, [name("research-agent")]);
        assert!(p.vectors_changed.is_empty());
        assert_eq!(p.live_vectors_not_in_tree, ["legacy-vectors.yaml"]);

        let pruned = plan(&tree, &live, true);
        assert_eq!(
            pruned.deletes,
            [DeletedDocument {
                name: name("legacy-agent"),
                base_revision: 3
            }]
        );
        assert!(pruned.kept.is_empty());
    }

    #[test]
    fn builds_draft_edits_and_the_change_from_the_tree() {
        let tree = templates();
        let mut live = live_of(&tree, 7);
        live.policies.retain(|l| l.name != name("finance-agent"));
        live.policies.push(LiveDocument {
            name: name("legacy-agent"),
            revision: 2,
            risk_tier: RiskTier::Low,
            format: DocumentFormat::Yaml,
            document: "{}".into(),
        });
        live.vectors.clear();
        let p = plan(&tree, &live, true);
        let change_id = ChangeId::new("chg-1").unwrap();
        assert_eq!(
            edited_policies(&p),
            [name("finance-agent"), name("legacy-agent")]
        );
        let revisions = BTreeMap::from([(name("legacy-agent"), 41)]);
        let edits = draft_edits(&p, &revisions, &change_id);
        assert_eq!(edits.len(), 2);
        match &edits[0].event {
            Event::PolicyUpserted(u) => {
                assert_eq!(u.name, name("finance-agent"));
                assert_eq!(u.base_revision, 0);
                assert_eq!(edits[0].base_revision, 0);
                assert_eq!(u.change_id, Some(change_id.clone()));
                assert_eq!(u.format, DocumentFormat::Yaml);
                assert!(u.document.contains("kind: AgentPolicy"));
            }
            other => panic!("{other:?}"),
        }
        match &edits[1].event {
            Event::PolicyDeleted(d) => {
                assert_eq!(d.name, name("legacy-agent"));
                assert_eq!(d.base_revision, 41);
                assert_eq!(edits[1].base_revision, 41);
            }
            other => panic!("{other:?}"),
        }

        let event = change_proposed(
            change_id.clone(),
            "Add the finance agent".into(),
            Some("FIN-1".into()),
            &p,
        );
        assert_eq!(event.change_id, change_id);
        assert_eq!(event.ticket.as_deref(), Some("FIN-1"));
        assert_eq!(event.documents.len(), 1);
        assert_eq!(event.documents[0].name, name("finance-agent"));
        assert_eq!(event.documents[0].base_revision, 0);
        assert_eq!(
            event.deleted,
            [DeletedDocument {
                name: name("legacy-agent"),
                base_revision: 2
            }]
        );
        // Every vector file of the tenant travels with the change.
        assert_eq!(event.vectors.len(), 3);
        assert!(
            event
                .vectors
                .iter()
                .all(|v| v.document.contains("TestVectors"))
        );
        // It serializes as the event schema expects.
        let json = serde_json::to_value(Event::ChangeProposed(event)).unwrap();
        assert_eq!(json["type"], "change_proposed");
        assert_eq!(json["payload"]["documents"][0]["format"], "yaml");
    }

    #[test]
    fn other_tenants_are_ignored_and_mixed_vector_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let policy = |tenant: &str| {
            format!(
                "apiVersion: aegis.dev/v1\nkind: AgentPolicy\nmetadata: {{tenant: {tenant}, name: p-{tenant}, owner: o, risk_tier: low}}\nspec:\n  agent_id: a\n  rules:\n    - {{id: r, tool_id: t, actions: [x]}}\n"
            )
        };
        std::fs::write(dir.path().join("acme.yaml"), policy("acme")).unwrap();
        std::fs::write(dir.path().join("globex.json.yaml"), policy("globex")).unwrap();
        let tree = load_tree(&[dir.path().to_path_buf()], &acme(), &mut Vec::new()).unwrap();
        assert_eq!(tree.policies.len(), 1);
        assert_eq!(tree.other_tenant_policies, 1);

        let vector = |tenant: &str| {
            format!(
                "  - name: v-{tenant}\n    input: {{tenant: {tenant}, agent_id: a, tool_id: t, action: x}}\n    expect: {{decision: allow}}\n"
            )
        };
        std::fs::write(
            dir.path().join("vectors.yaml"),
            format!(
                "apiVersion: aegis.dev/v1\nkind: TestVectors\nvectors:\n{}{}",
                vector("acme"),
                vector("globex")
            ),
        )
        .unwrap();
        let err = load_tree(&[dir.path().to_path_buf()], &acme(), &mut Vec::new()).unwrap_err();
        assert!(err.message.contains("split the file"), "{}", err.message);
    }

    #[test]
    fn an_invalid_tree_is_refused_with_lint_diagnostics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.yaml"),
            "apiVersion: aegis.dev/v1\nkind: AgentPolicy\nmetadata: {tenant: acme, name: p, owner: o, risk_tier: extreme}\nspec:\n  agent_id: a\n  rules: []\n",
        )
        .unwrap();
        let mut out = Vec::new();
        let err = load_tree(&[dir.path().to_path_buf()], &acme(), &mut out).unwrap_err();
        assert_eq!(err.exit, Exit::Invalid);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("bad.yaml:3:"), "{text}");
    }

    #[test]
    fn conflicts_name_the_policy_and_both_revisions() {
        let e = conflict_error(&name("finance-agent"), 12, Some(15));
        assert_eq!(e.exit, Exit::Conflict);
        assert_eq!(
            e.message,
            "policy finance-agent was edited concurrently by someone else (revision 15, you \
             based on 12); re-run propose"
        );
    }
}
