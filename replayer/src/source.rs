//! Reading a slice of `AEGIS_DECISIONS`: one ordered push consumer on
//! `aegis.decisions.<tenant>.>`, started at the slice's first sequence or time, read one
//! message at a time (nothing but the message in hand is held) and stopped at the slice's end:
//! its upper bound, or else the last record stored when reading started.
//!
//! Ordered push consumers are what tenant-operator credentials may create (see
//! `nats/conf/accounts.conf` and `aegisctl tail`): a named consumer whose filter is part of
//! the API subject, delivering to the reader's own inbox, with nothing to acknowledge.

use crate::slice::{Bounds, Filter, SliceSpec};
use aegis_core::decision_log::{BUNDLE_REJECTED_TYPE, DECISION_TYPE, DecisionEvent};
use aegis_nats::ordered::ConsumeError;
use aegis_nats::topology::{self, DECISIONS_STREAM};
use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::{Ordered, OrderedErrorKind};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long the reader waits for the next record it knows is there before giving up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a slice could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid tenant for a subject: {0}")]
    Subject(String),
    #[error("cannot make a consumer name: {0}")]
    Random(String),
    #[error(
        "stream {DECISIONS_STREAM} does not exist: has the topology been provisioned (`aegisctl nats init`)?"
    )]
    NoStream,
    #[error(
        "creating a consumer on {DECISIONS_STREAM} filtered to {filter} got no answer in time: is \
         NATS running with JetStream, and may these credentials read {filter}?"
    )]
    TimedOut { filter: String },
    #[error("reading {filter} from {DECISIONS_STREAM} failed: {detail}")]
    Failed { filter: String, detail: String },
    #[error(
        "no record arrived from {DECISIONS_STREAM} for {idle:?} while {remaining} were still due"
    )]
    Stalled { idle: Duration, remaining: u64 },
}

impl From<ConsumeError> for SourceError {
    fn from(e: ConsumeError) -> SourceError {
        match e {
            ConsumeError::Random(detail) => SourceError::Random(detail),
            ConsumeError::NoStream { .. } => SourceError::NoStream,
            ConsumeError::TimedOut { filter, .. } => SourceError::TimedOut { filter },
            ConsumeError::Failed { filter, detail, .. } => SourceError::Failed { filter, detail },
        }
    }
}

/// Why a record of the slice is not replayed at all (as opposed to a decision that is read
/// but cannot be evaluated again: see [`crate::engine::NotReplayable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipCause {
    /// A `bundle_rejected` record.
    BundleRejected,
    /// JSON with another (or no) `type`.
    UnknownType,
    /// Not JSON, or a `decision` that does not parse as a decision event.
    Malformed,
    /// A decision left out by the slice's agent, tool or decision filter.
    FilteredOut,
}

impl SkipCause {
    pub const ALL: [SkipCause; 4] = [
        SkipCause::BundleRejected,
        SkipCause::UnknownType,
        SkipCause::Malformed,
        SkipCause::FilteredOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipCause::BundleRejected => "bundle_rejected",
            SkipCause::UnknownType => "unknown_type",
            SkipCause::Malformed => "malformed",
            SkipCause::FilteredOut => "filtered_out",
        }
    }
}

/// One record of a slice, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A decision event that passed the slice's filter.
    Decision {
        sequence: u64,
        event: Box<DecisionEvent>,
    },
    /// A record that is not replayed.
    Skipped { sequence: u64, cause: SkipCause },
}

/// Parses one stored record: a decision event, or why it is skipped.
pub fn classify(payload: &[u8]) -> Result<DecisionEvent, SkipCause> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    match serde_json::from_slice::<DecisionEvent>(payload) {
        Ok(event) if event.kind == DECISION_TYPE => Ok(event),
        Ok(_) => Err(SkipCause::UnknownType),
        Err(_) => match serde_json::from_slice::<Probe>(payload) {
            Ok(Probe { kind: Some(k) }) if k == BUNDLE_REJECTED_TYPE => {
                Err(SkipCause::BundleRejected)
            }
            Ok(Probe { kind: Some(k) }) if k == DECISION_TYPE => Err(SkipCause::Malformed),
            Ok(_) => Err(SkipCause::UnknownType),
            Err(_) => Err(SkipCause::Malformed),
        },
    }
}

/// What was actually read: the first and last record of the slice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceStats {
    /// Records read (every kind).
    pub records: u64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
    /// When NATS stored the first and last record read (RFC 3339).
    pub first_time: Option<String>,
    pub last_time: Option<String>,
}

impl SliceStats {
    fn saw(&mut self, sequence: u64, time: OffsetDateTime) {
        self.records = self.records.saturating_add(1);
        let stamp = time.format(&Rfc3339).ok();
        if self.first_sequence.is_none() {
            self.first_sequence = Some(sequence);
            self.first_time.clone_from(&stamp);
        }
        self.last_sequence = Some(sequence);
        self.last_time = stamp;
    }
}

/// Reads one slice, record by record.
pub struct SliceReader {
    messages: Pin<Box<Ordered>>,
    filter_subject: String,
    remaining: u64,
    bounds: Bounds,
    filter: Filter,
    stats: SliceStats,
    idle: Duration,
}

impl std::fmt::Debug for SliceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliceReader")
            .field("filter_subject", &self.filter_subject)
            .field("remaining", &self.remaining)
            .field("bounds", &self.bounds)
            .field("stats", &self.stats)
            .finish()
    }
}

impl SliceReader {
    /// Creates the consumer. The slice ends at its upper bound or at the last record matching
    /// the tenant's subject when the consumer was created, whichever comes first.
    pub async fn open(
        js: &jetstream::Context,
        spec: &SliceSpec,
    ) -> Result<SliceReader, SourceError> {
        let filter_subject = topology::decisions_filter(&spec.tenant)
            .map_err(|e| SourceError::Subject(e.to_string()))?;
        let deliver_policy = match spec.bounds {
            Bounds::Sequence { from, .. } if from <= 1 => DeliverPolicy::All,
            Bounds::Sequence { from, .. } => DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            Bounds::Time { since, .. } => DeliverPolicy::ByStartTime { start_time: since },
        };
        let (messages, remaining) = aegis_nats::ordered::ordered(
            js,
            DECISIONS_STREAM,
            &filter_subject,
            deliver_policy,
            "aegis-replay",
        )
        .await?;
        Ok(SliceReader {
            messages: Box::pin(messages),
            filter_subject,
            remaining,
            bounds: spec.bounds,
            filter: spec.filter.clone(),
            stats: SliceStats::default(),
            idle: DEFAULT_IDLE_TIMEOUT,
        })
    }

    /// How long to wait for a record that is due before failing with
    /// [`SourceError::Stalled`].
    pub fn with_idle_timeout(mut self, idle: Duration) -> SliceReader {
        self.idle = idle;
        self
    }

    /// What has been read so far.
    pub fn stats(&self) -> &SliceStats {
        &self.stats
    }

    /// The next record, or `None` at the slice's end.
    pub async fn next(&mut self) -> Option<Result<Record, SourceError>> {
        loop {
            if self.remaining == 0 {
                return None;
            }
            let next = match tokio::time::timeout(self.idle, self.messages.next()).await {
                Err(_) => {
                    return Some(Err(SourceError::Stalled {
                        idle: self.idle,
                        remaining: self.remaining,
                    }));
                }
                Ok(None) => {
                    return Some(Err(SourceError::Failed {
                        filter: self.filter_subject.clone(),
                        detail: "the consumer ended (connection closed?)".to_owned(),
                    }));
                }
                Ok(Some(next)) => next,
            };
            let message = match next {
                Ok(m) => m,
                // The ordered consumer recreates itself from the last sequence it delivered.
                Err(e) if matches!(e.kind(), OrderedErrorKind::MissingHeartbeat) => continue,
                Err(e) => {
                    return Some(Err(SourceError::Failed {
                        filter: self.filter_subject.clone(),
                        detail: e.to_string(),
                    }));
                }
            };
            let (sequence, stored) = match message.info() {
                Ok(info) => (info.stream_sequence, info.published),
                Err(e) => {
                    return Some(Err(SourceError::Failed {
                        filter: self.filter_subject.clone(),
                        detail: format!("message without JetStream metadata: {e}"),
                    }));
                }
            };
            self.remaining = self.remaining.saturating_sub(1);
            let past_end = match self.bounds {
                Bounds::Sequence { to: Some(to), .. } => sequence > to,
                Bounds::Time {
                    until: Some(until), ..
                } => stored > until,
                _ => false,
            };
            if past_end {
                self.remaining = 0;
                return None;
            }
            self.stats.saw(sequence, stored);
            let record = match classify(&message.payload) {
                Ok(event) if self.filter.matches(&event) => Record::Decision {
                    sequence,
                    event: Box::new(event),
                },
                Ok(_) => Record::Skipped {
                    sequence,
                    cause: SkipCause::FilteredOut,
                },
                Err(cause) => Record::Skipped { sequence, cause },
            };
            return Some(Ok(record));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn records_are_told_apart_by_type() {
        assert_eq!(
            classify(br#"{"type":"bundle_rejected","id":"rej-1"}"#),
            Err(SkipCause::BundleRejected)
        );
        assert_eq!(
            classify(br#"{"type":"something_new"}"#),
            Err(SkipCause::UnknownType)
        );
        assert_eq!(classify(br#"{"no_type":1}"#), Err(SkipCause::UnknownType));
        assert_eq!(classify(b"not json"), Err(SkipCause::Malformed));
        assert_eq!(
            classify(br#"{"type":"decision","id":3}"#),
            Err(SkipCause::Malformed)
        );
    }
}
