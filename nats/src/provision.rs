//! Idempotent provisioning of the [`Topology`]: create what is missing, compare what exists,
//! report drift instead of silently overwriting it.
//!
//! For every stream the fields Aegis owns are compared (subjects, retention, storage, replicas,
//! deny_delete, deny_purge, allow_direct, duplicate_window, max_age, max_msg_size); for the
//! object store and KV bucket the fields their config sets (replicas, storage, max_age, and for
//! KV history and max value size). Anything else on the server (limits an operator tuned,
//! metadata, placement) is left alone. A drifted resource is an error
//! ([`ProvisionError::Drift`]) unless [`ProvisionOptions::fix_drift`] is set, in which case it is
//! updated in place and reported as [`Outcome::Updated`].

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{
    self, ErrorCode,
    context::GetStreamErrorKind,
    stream::{self, RetentionPolicy, StorageType},
};

use crate::topology::{Topology, kv_stream, object_store_stream};

/// How to treat what already exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProvisionOptions {
    /// Update drifted resources to the expected config instead of failing. Off by default: an
    /// operator should see drift before it is overwritten.
    pub fix_drift: bool,
}

/// What kind of resource a report line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// A JetStream stream.
    Stream,
    /// A JetStream object store (its stream is `OBJ_<bucket>`).
    ObjectStore,
    /// A JetStream KV bucket (its stream is `KV_<bucket>`).
    KeyValue,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stream => "stream",
            Self::ObjectStore => "object store",
            Self::KeyValue => "KV bucket",
        })
    }
}

/// What provisioning did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It was missing and has been created.
    Created,
    /// It existed with the expected config.
    Unchanged,
    /// It had drifted and was updated (only with [`ProvisionOptions::fix_drift`]).
    Updated,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Unchanged => "unchanged",
            Self::Updated => "updated",
        })
    }
}

/// One field whose value on the server differs from the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDrift {
    /// The config field (`max_age`, `subjects`, ...).
    pub field: &'static str,
    /// What the topology says.
    pub expected: String,
    /// What the server has.
    pub actual: String,
}

impl fmt::Display for FieldDrift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {}, expected {}",
            self.field, self.actual, self.expected
        )
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceReport {
    /// Stream, object store or KV bucket.
    pub kind: ResourceKind,
    /// The stream name, or the bucket name for object store and KV.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
    /// For [`Outcome::Updated`]: the fields that were changed.
    pub fixed: Vec<FieldDrift>,
}

impl fmt::Display for ResourceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.name, self.outcome)?;
        if !self.fixed.is_empty() {
            let fixed: Vec<String> = self.fixed.iter().map(ToString::to_string).collect();
            write!(f, " (was: {})", fixed.join("; "))?;
        }
        Ok(())
    }
}

/// What [`provision`] did, one line per resource, streams first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Every resource of the topology, in provisioning order.
    pub resources: Vec<ResourceReport>,
}

impl ProvisionReport {
    /// The outcome for the resource called `name` (stream name or bucket name).
    pub fn outcome(&self, name: &str) -> Option<Outcome> {
        self.resources
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.outcome)
    }

    /// True when nothing was created or updated.
    pub fn all_unchanged(&self) -> bool {
        self.resources
            .iter()
            .all(|r| r.outcome == Outcome::Unchanged)
    }
}

impl fmt::Display for ProvisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.resources {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Why provisioning stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// An existing resource differs from the topology in a field Aegis owns.
    #[error(
        "{kind} {stream} has drifted from the Aegis topology: {field} is {actual}, expected \
         {expected}{also}; nothing was changed. Re-run provisioning with fix_drift to update \
         it, or fix it by hand",
        also = if other_fields.is_empty() { String::new() } else { format!(" (also drifted: {})", other_fields.join(", ")) }
    )]
    Drift {
        /// Stream, object store or KV bucket.
        kind: ResourceKind,
        /// The stream name (for object store and KV: the bucket name).
        stream: String,
        /// The first drifted field.
        field: &'static str,
        /// What the topology says.
        expected: String,
        /// What the server has.
        actual: String,
        /// Other drifted fields, if any.
        other_fields: Vec<&'static str>,
    },
    /// Reading a resource failed (JetStream disabled, no permission, timeout).
    #[error(
        "could not look up {kind} {name}: {source} (is JetStream enabled, and may this user \
         use the $JS.API subjects?)"
    )]
    Lookup {
        /// Stream, object store or KV bucket.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// What the client reported.
        #[source]
        source: async_nats::Error,
    },
    /// Creating a missing resource failed.
    #[error("could not create {kind} {name}: {source}")]
    Create {
        /// Stream, object store or KV bucket.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// What the client reported.
        #[source]
        source: async_nats::Error,
    },
    /// Updating a drifted resource failed (some fields, like storage, cannot be changed in
    /// place).
    #[error("could not update drifted {kind} {name} ({drift}): {source}")]
    Update {
        /// Stream, object store or KV bucket.
        kind: ResourceKind,
        /// Its name.
        name: String,
        /// The drift that was being fixed.
        drift: String,
        /// What the client reported.
        #[source]
        source: async_nats::Error,
    },
}

/// Creates what is missing of `topo`, checks what exists, and reports each resource.
///
/// Idempotent: a second run reports every resource [`Outcome::Unchanged`]. Safe to run from
/// several processes at once (a concurrent create of an identical stream is accepted).
pub async fn provision(
    js: &jetstream::Context,
    topo: &Topology,
) -> Result<ProvisionReport, ProvisionError> {
    provision_with(js, topo, ProvisionOptions::default()).await
}

/// [`provision`] with options (e.g. [`ProvisionOptions::fix_drift`]).
pub async fn provision_with(
    js: &jetstream::Context,
    topo: &Topology,
    options: ProvisionOptions,
) -> Result<ProvisionReport, ProvisionError> {
    let mut report = ProvisionReport::default();
    for config in topo.stream_configs() {
        let line = ensure_stream(js, ResourceKind::Stream, config, options).await?;
        report.resources.push(line);
    }
    report
        .resources
        .push(ensure_object_store(js, topo, options).await?);
    for expected in topo.kv_configs() {
        report
            .resources
            .push(ensure_kv(js, expected, options).await?);
    }
    Ok(report)
}

/// Reads stream `name`; `None` when it does not exist.
async fn stream_info(
    js: &jetstream::Context,
    kind: ResourceKind,
    display_name: &str,
    name: &str,
) -> Result<Option<stream::Info>, ProvisionError> {
    match js.get_stream(name).await {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| ProvisionError::Lookup {
                kind,
                name: display_name.to_owned(),
                source: Box::new(e),
            })?;
            Ok(Some(info.clone()))
        }
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(js_err)
                if js_err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(ProvisionError::Lookup {
                kind,
                name: display_name.to_owned(),
                source: Box::new(e),
            }),
        },
    }
}

fn is_name_in_use(error: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(e)
            if e.error_code() == ErrorCode::STREAM_NAME_EXIST
    )
}

async fn ensure_stream(
    js: &jetstream::Context,
    kind: ResourceKind,
    expected: stream::Config,
    options: ProvisionOptions,
) -> Result<ResourceReport, ProvisionError> {
    let name = expected.name.clone();
    let existing = match stream_info(js, kind, &name, &name).await? {
        Some(info) => info.config,
        None => match js.create_stream(expected.clone()).await {
            Ok(_) => return Ok(report(kind, &name, Outcome::Created, Vec::new())),
            // Someone created it between our lookup and our create: compare with theirs.
            Err(e) if is_name_in_use(&e) => match stream_info(js, kind, &name, &name).await? {
                Some(info) => info.config,
                None => {
                    return Err(ProvisionError::Create {
                        kind,
                        name,
                        source: Box::new(e),
                    });
                }
            },
            Err(e) => {
                return Err(ProvisionError::Create {
                    kind,
                    name,
                    source: Box::new(e),
                });
            }
        },
    };
    let drift = stream_drift(&expected, &existing);
    reconcile(js, kind, &name, existing, drift, options, |cfg| {
        apply_stream_fields(cfg, &expected)
    })
    .await
}

/// Either Unchanged, Drift error, or update and Updated.
async fn reconcile(
    js: &jetstream::Context,
    kind: ResourceKind,
    name: &str,
    mut existing: stream::Config,
    drift: Vec<FieldDrift>,
    options: ProvisionOptions,
    apply: impl FnOnce(&mut stream::Config),
) -> Result<ResourceReport, ProvisionError> {
    let Some(first) = drift.first() else {
        return Ok(report(kind, name, Outcome::Unchanged, Vec::new()));
    };
    if !options.fix_drift {
        return Err(ProvisionError::Drift {
            kind,
            stream: name.to_owned(),
            field: first.field,
            expected: first.expected.clone(),
            actual: first.actual.clone(),
            other_fields: drift.iter().skip(1).map(|d| d.field).collect(),
        });
    }
    apply(&mut existing);
    js.update_stream(&existing)
        .await
        .map_err(|e| ProvisionError::Update {
            kind,
            name: name.to_owned(),
            drift: drift
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            source: Box::new(e),
        })?;
    Ok(report(kind, name, Outcome::Updated, drift))
}

fn report(
    kind: ResourceKind,
    name: &str,
    outcome: Outcome,
    fixed: Vec<FieldDrift>,
) -> ResourceReport {
    ResourceReport {
        kind,
        name: name.to_owned(),
        outcome,
        fixed,
    }
}

/// Sets the fields Aegis owns on an existing stream config, keeping everything else.
fn apply_stream_fields(cfg: &mut stream::Config, expected: &stream::Config) {
    cfg.subjects.clone_from(&expected.subjects);
    cfg.retention = expected.retention;
    cfg.storage = expected.storage;
    cfg.num_replicas = expected.num_replicas;
    cfg.deny_delete = expected.deny_delete;
    cfg.deny_purge = expected.deny_purge;
    cfg.allow_direct = expected.allow_direct;
    cfg.duplicate_window = expected.duplicate_window;
    cfg.max_age = expected.max_age;
    cfg.max_message_size = expected.max_message_size;
}

fn push_drift(out: &mut Vec<FieldDrift>, field: &'static str, expected: String, actual: String) {
    if expected != actual {
        out.push(FieldDrift {
            field,
            expected,
            actual,
        });
    }
}

/// The owned fields of a stream that differ, in a fixed order.
pub fn stream_drift(expected: &stream::Config, actual: &stream::Config) -> Vec<FieldDrift> {
    let mut out = Vec::new();
    push_drift(
        &mut out,
        "subjects",
        fmt_subjects(&expected.subjects),
        fmt_subjects(&actual.subjects),
    );
    push_drift(
        &mut out,
        "retention",
        fmt_retention(expected.retention),
        fmt_retention(actual.retention),
    );
    push_drift(
        &mut out,
        "storage",
        fmt_storage(expected.storage),
        fmt_storage(actual.storage),
    );
    push_drift(
        &mut out,
        "replicas",
        expected.num_replicas.max(1).to_string(),
        actual.num_replicas.max(1).to_string(),
    );
    push_drift(
        &mut out,
        "deny_delete",
        expected.deny_delete.to_string(),
        actual.deny_delete.to_string(),
    );
    push_drift(
        &mut out,
        "deny_purge",
        expected.deny_purge.to_string(),
        actual.deny_purge.to_string(),
    );
    push_drift(
        &mut out,
        "allow_direct",
        expected.allow_direct.to_string(),
        actual.allow_direct.to_string(),
    );
    push_drift(
        &mut out,
        "duplicate_window",
        fmt_duration(expected.duplicate_window),
        fmt_duration(actual.duplicate_window),
    );
    push_drift(
        &mut out,
        "max_age",
        fmt_duration(expected.max_age),
        fmt_duration(actual.max_age),
    );
    push_drift(
        &mut out,
        "max_msg_size",
        fmt_size(expected.max_message_size),
        fmt_size(actual.max_message_size),
    );
    out
}

async fn ensure_object_store(
    js: &jetstream::Context,
    topo: &Topology,
    options: ProvisionOptions,
) -> Result<ResourceReport, ProvisionError> {
    let kind = ResourceKind::ObjectStore;
    let expected = topo.object_store_config();
    let bucket = expected.bucket.clone();
    let stream_name = object_store_stream(&bucket);
    let Some(info) = stream_info(js, kind, &bucket, &stream_name).await? else {
        return match js.create_object_store(expected).await {
            Ok(_) => Ok(report(kind, &bucket, Outcome::Created, Vec::new())),
            Err(e) => Err(ProvisionError::Create {
                kind,
                name: bucket,
                source: Box::new(e),
            }),
        };
    };
    let actual = info.config;
    let mut drift = Vec::new();
    push_drift(
        &mut drift,
        "replicas",
        expected.num_replicas.max(1).to_string(),
        actual.num_replicas.max(1).to_string(),
    );
    push_drift(
        &mut drift,
        "storage",
        fmt_storage(expected.storage),
        fmt_storage(actual.storage),
    );
    push_drift(
        &mut drift,
        "max_age",
        fmt_duration(expected.max_age),
        fmt_duration(actual.max_age),
    );
    reconcile(js, kind, &bucket, actual, drift, options, |cfg| {
        cfg.num_replicas = expected.num_replicas;
        cfg.storage = expected.storage;
        cfg.max_age = expected.max_age;
    })
    .await
}

async fn ensure_kv(
    js: &jetstream::Context,
    expected: async_nats::jetstream::kv::Config,
    options: ProvisionOptions,
) -> Result<ResourceReport, ProvisionError> {
    let kind = ResourceKind::KeyValue;
    let bucket = expected.bucket.clone();
    let stream_name = kv_stream(&bucket);
    let Some(info) = stream_info(js, kind, &bucket, &stream_name).await? else {
        return match js.create_key_value(expected).await {
            Ok(_) => Ok(report(kind, &bucket, Outcome::Created, Vec::new())),
            Err(e) => Err(ProvisionError::Create {
                kind,
                name: bucket,
                source: Box::new(e),
            }),
        };
    };
    let actual = info.config;
    let mut drift = Vec::new();
    push_drift(
        &mut drift,
        "replicas",
        expected.num_replicas.max(1).to_string(),
        actual.num_replicas.max(1).to_string(),
    );
    push_drift(
        &mut drift,
        "storage",
        fmt_storage(expected.storage),
        fmt_storage(actual.storage),
    );
    push_drift(
        &mut drift,
        "max_age",
        fmt_duration(expected.max_age),
        fmt_duration(actual.max_age),
    );
    push_drift(
        &mut drift,
        "history",
        expected.history.to_string(),
        actual.max_messages_per_subject.to_string(),
    );
    push_drift(
        &mut drift,
        "max_value_size",
        fmt_size(expected.max_value_size),
        fmt_size(actual.max_message_size),
    );
    reconcile(js, kind, &bucket, actual, drift, options, |cfg| {
        cfg.num_replicas = expected.num_replicas;
        cfg.storage = expected.storage;
        cfg.max_age = expected.max_age;
        cfg.max_messages_per_subject = expected.history;
        cfg.max_message_size = expected.max_value_size;
    })
    .await
}

fn fmt_subjects(subjects: &[String]) -> String {
    let mut sorted: Vec<&str> = subjects.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    format!("[{}]", sorted.join(", "))
}

fn fmt_retention(retention: RetentionPolicy) -> String {
    match retention {
        RetentionPolicy::Limits => "limits",
        RetentionPolicy::Interest => "interest",
        RetentionPolicy::WorkQueue => "workqueue",
    }
    .to_owned()
}

fn fmt_storage(storage: StorageType) -> String {
    match storage {
        StorageType::File => "file",
        StorageType::Memory => "memory",
    }
    .to_owned()
}

/// `unlimited` for zero, else the largest whole unit (`30d`, `2m`, `90s`, `1500ms`).
pub fn fmt_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "unlimited".to_owned();
    }
    let ms = duration.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = duration.as_secs();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs.is_multiple_of(len) {
            return format!("{}{unit}", secs / len);
        }
    }
    format!("{secs}s")
}

fn fmt_size(size: i32) -> String {
    if size <= 0 {
        return "unlimited".to_owned();
    }
    let size = u64::from(size.unsigned_abs());
    if size.is_multiple_of(1024 * 1024) {
        format!("{} MiB", size / (1024 * 1024))
    } else if size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} bytes")
    }
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
    use crate::topology::CHANGES_STREAM;

    #[test]
    fn formats() {
        assert_eq!(fmt_duration(Duration::ZERO), "unlimited");
        assert_eq!(fmt_duration(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(fmt_duration(Duration::from_secs(120)), "2m");
        assert_eq!(fmt_duration(Duration::from_secs(3_600)), "1h");
        assert_eq!(fmt_duration(Duration::from_secs(61)), "61s");
        assert_eq!(fmt_duration(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(fmt_size(-1), "unlimited");
        assert_eq!(fmt_size(8 * 1024 * 1024), "8 MiB");
        assert_eq!(fmt_size(64 * 1024), "64 KiB");
        assert_eq!(fmt_size(1000), "1000 bytes");
    }

    #[test]
    fn drift_lists_owned_fields_only() {
        let expected = Topology::single().stream_config(CHANGES_STREAM).unwrap();
        let mut actual = expected.clone();
        assert!(stream_drift(&expected, &actual).is_empty());
        actual.max_bytes = 1 << 30; // not ours
        actual.subjects = vec!["aegis.changes.>".into()];
        assert!(stream_drift(&expected, &actual).is_empty());
        actual.max_age = Duration::from_secs(3600);
        actual.deny_purge = false;
        let drift = stream_drift(&expected, &actual);
        let fields: Vec<_> = drift.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["deny_purge", "max_age"]);
        assert_eq!(drift[1].to_string(), "max_age is 1h, expected unlimited");
    }

    #[test]
    fn drift_error_says_what_to_do() {
        let error = ProvisionError::Drift {
            kind: ResourceKind::Stream,
            stream: "AEGIS_CHANGES".into(),
            field: "max_age",
            expected: "unlimited".into(),
            actual: "1h".into(),
            other_fields: vec!["subjects"],
        };
        let text = error.to_string();
        assert!(text.contains("stream AEGIS_CHANGES"), "{text}");
        assert!(text.contains("max_age is 1h, expected unlimited"), "{text}");
        assert!(text.contains("also drifted: subjects"), "{text}");
        assert!(text.contains("fix_drift"), "{text}");
    }
}
