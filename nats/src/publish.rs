//! Typed JetStream publishing and "last message on a subject" reads, shared by every service.
//!
//! [`publish`] sets `Nats-Msg-Id` (deduplication) and `Nats-Expected-Last-Subject-Sequence`
//! (optimistic concurrency) and waits for the stream's ack. A lost race on the expected sequence
//! becomes [`PublishError::Conflict`], never a generic error, so callers can re-read and retry.

use async_nats::HeaderMap;
use async_nats::jetstream::{
    self,
    context::PublishErrorKind,
    stream::{DirectGetErrorKind, Stream},
};
use bytes::Bytes;

/// Header carrying the message id JetStream deduplicates on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header carrying the expected last sequence of the subject.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: &str = "Nats-Expected-Last-Subject-Sequence";

/// One message to publish to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The subject (build it with [`crate::topology`]).
    pub subject: String,
    /// The payload (an event envelope, usually JSON).
    pub payload: Bytes,
    /// `Nats-Msg-Id`: a retry with the same id inside the stream's duplicate window is
    /// acknowledged with the first message's sequence and `duplicate: true`, and not stored
    /// twice. Use the event id.
    pub msg_id: Option<String>,
    /// `Nats-Expected-Last-Subject-Sequence`: the publish only lands if the last message on
    /// `subject` has this stream sequence; `Some(0)` means "the subject must be empty". Read it
    /// with [`last_subject_sequence`].
    pub expected_last_subject_sequence: Option<u64>,
    /// Further headers to send.
    pub headers: Option<HeaderMap>,
}

impl Publish {
    /// A message with no id and no expectation.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            payload: payload.into(),
            msg_id: None,
            expected_last_subject_sequence: None,
            headers: None,
        }
    }

    /// Sets `Nats-Msg-Id`.
    pub fn msg_id(mut self, id: impl Into<String>) -> Self {
        self.msg_id = Some(id.into());
        self
    }

    /// Sets `Nats-Expected-Last-Subject-Sequence` (`0`: the subject must have no message).
    pub fn expect_last_subject_sequence(mut self, sequence: u64) -> Self {
        self.expected_last_subject_sequence = Some(sequence);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .get_or_insert_with(HeaderMap::new)
            .insert(name, value);
        self
    }

    fn header_map(&self) -> HeaderMap {
        let mut headers = self.headers.clone().unwrap_or_default();
        if let Some(id) = &self.msg_id {
            headers.insert(MSG_ID_HEADER, id.as_str());
        }
        if let Some(seq) = self.expected_last_subject_sequence {
            headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER, seq.to_string());
        }
        headers
    }
}

/// The stream's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// The stream that stored the message.
    pub stream: String,
    /// Its stream sequence (for a duplicate: the first copy's sequence).
    pub sequence: u64,
    /// True when the `msg_id` had been seen inside the duplicate window and nothing new was
    /// stored.
    pub duplicate: bool,
}

/// Why a publish did not land.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Someone else wrote to the subject after it was read.
    #[error(
        "conflict on {subject}: someone else changed it first (expected its last sequence to be \
         {expected}, {actual}); re-read it and retry",
        actual = match actual { Some(seq) => format!("it is now {seq}"), None => "it has moved on".to_owned() }
    )]
    Conflict {
        /// The subject.
        subject: String,
        /// The sequence the publish expected.
        expected: u64,
        /// The subject's actual last sequence, when the server said.
        actual: Option<u64>,
    },
    /// No stream captures the subject (provisioning not run, or a typo in the subject).
    #[error("no stream captures {subject}; has the topology been provisioned?")]
    NoStream {
        /// The subject.
        subject: String,
    },
    /// No ack arrived in time. The message may or may not be stored: retry with the same
    /// `msg_id` to make that safe.
    #[error(
        "no ack for {subject} in time (the message may or may not be stored; retry with the \
         same msg_id), or this user may not publish there: {source}"
    )]
    TimedOut {
        /// The subject.
        subject: String,
        /// What the client reported.
        #[source]
        source: jetstream::context::PublishError,
    },
    /// The stream refused the message (too large, stream sealed, ...), or the client could not
    /// send it.
    #[error("publish to {subject} failed: {source}")]
    Failed {
        /// The subject.
        subject: String,
        /// What the client or server reported.
        #[source]
        source: jetstream::context::PublishError,
    },
}

/// Publishes `message` and waits for the stream's ack.
pub async fn publish(
    js: &jetstream::Context,
    message: Publish,
) -> Result<PublishAck, PublishError> {
    let headers = message.header_map();
    let Publish {
        subject,
        payload,
        expected_last_subject_sequence,
        ..
    } = message;
    let result = match js
        .publish_with_headers(subject.clone(), headers, payload)
        .await
    {
        Ok(ack) => ack.await,
        Err(e) => Err(e),
    };
    match result {
        Ok(ack) => Ok(PublishAck {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        }),
        Err(e) => Err(map_publish_error(
            subject,
            expected_last_subject_sequence,
            e,
        )),
    }
}

fn map_publish_error(
    subject: String,
    expected: Option<u64>,
    error: jetstream::context::PublishError,
) -> PublishError {
    match error.kind() {
        PublishErrorKind::WrongLastSequence => PublishError::Conflict {
            subject,
            expected: expected.unwrap_or_default(),
            actual: actual_sequence(&error),
        },
        PublishErrorKind::StreamNotFound => PublishError::NoStream { subject },
        PublishErrorKind::TimedOut => PublishError::TimedOut {
            subject,
            source: error,
        },
        _ => PublishError::Failed {
            subject,
            source: error,
        },
    }
}

/// The server says `wrong last sequence: <n>` (error code 10071); `<n>` is the actual one.
fn actual_sequence(error: &jetstream::context::PublishError) -> Option<u64> {
    let source = std::error::Error::source(error)?;
    let text = source.to_string();
    let (_, rest) = text.split_once("wrong last sequence:")?;
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The last message on one subject of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastMessage {
    /// Its stream sequence (what [`Publish::expected_last_subject_sequence`] wants).
    pub sequence: u64,
    /// Its subject (differs from the one asked for when that had a wildcard).
    pub subject: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its headers (`Nats-Msg-Id` included).
    pub headers: HeaderMap,
}

/// Why a read failed. ("No message" is not an error: the functions return `None`.)
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream does not answer direct gets: it does not exist, or `allow_direct` is off.
    #[error(
        "stream {stream} does not answer direct gets (does it exist, with allow_direct? has \
         the topology been provisioned?)"
    )]
    NoStream {
        /// The stream.
        stream: String,
    },
    /// No answer in time (or this user may not read that subject).
    #[error(
        "reading the last message on {subject} from {stream} timed out (or this user may not \
         read it)"
    )]
    TimedOut {
        /// The stream.
        stream: String,
        /// The subject.
        subject: String,
    },
    /// Anything else the client or server reported.
    #[error("reading the last message on {subject} from {stream} failed: {source}")]
    Failed {
        /// The stream.
        stream: String,
        /// The subject.
        subject: String,
        /// What was reported.
        #[source]
        source: jetstream::stream::DirectGetError,
    },
}

/// The stream sequence of the last message on `subject`, `None` when it has none.
///
/// Pass the result (or `0` for `None`) as [`Publish::expected_last_subject_sequence`] to
/// publish "only if nobody wrote in between". Uses a direct get, which any replica may answer:
/// a replica that lags can return an older sequence, in which case the publish fails with
/// [`PublishError::Conflict`] and the caller re-reads — never a lost update.
pub async fn last_subject_sequence(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> Result<Option<u64>, ReadError> {
    Ok(last_message(js, stream, subject)
        .await?
        .map(|message| message.sequence))
}

/// The last message on `subject` in `stream`, `None` when it has none. `subject` may end in a
/// wildcard (`aegis.changes.acme.>`: the last change of the tenant). See
/// [`last_subject_sequence`] on consistency.
pub async fn last_message(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> Result<Option<LastMessage>, ReadError> {
    let handle: Stream<()> =
        js.get_stream_no_info(stream)
            .await
            .map_err(|_| ReadError::NoStream {
                stream: stream.to_owned(),
            })?;
    match handle.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(LastMessage {
            sequence: message.sequence,
            subject: message.subject.to_string(),
            payload: message.payload,
            headers: message.headers,
        })),
        Err(e) => match e.kind() {
            DirectGetErrorKind::NotFound => Ok(None),
            DirectGetErrorKind::TimedOut => Err(ReadError::TimedOut {
                stream: stream.to_owned(),
                subject: subject.to_owned(),
            }),
            DirectGetErrorKind::ErrorResponse(status, _)
                if status == async_nats::StatusCode::NO_RESPONDERS =>
            {
                Err(ReadError::NoStream {
                    stream: stream.to_owned(),
                })
            }
            _ => Err(ReadError::Failed {
                stream: stream.to_owned(),
                subject: subject.to_owned(),
                source: e,
            }),
        },
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

    #[test]
    fn headers_are_set() {
        let message = Publish::new("aegis.changes.acme.x", "{}")
            .msg_id("evt-1")
            .expect_last_subject_sequence(0)
            .header("Aegis-Type", "PolicyEdited");
        let headers = message.header_map();
        assert_eq!(headers.get(MSG_ID_HEADER).unwrap().as_str(), "evt-1");
        assert_eq!(
            headers
                .get(EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER)
                .unwrap()
                .as_str(),
            "0"
        );
        assert_eq!(headers.get("Aegis-Type").unwrap().as_str(), "PolicyEdited");
        assert!(Publish::new("s", "p").header_map().is_empty());
    }

    #[test]
    fn conflict_message_says_what_to_do() {
        let conflict = PublishError::Conflict {
            subject: "aegis.changes.acme.policy.p".into(),
            expected: 3,
            actual: Some(5),
        };
        let text = conflict.to_string();
        assert!(text.contains("someone else changed it first"), "{text}");
        assert!(text.contains("re-read it and retry"), "{text}");
        assert!(
            text.contains("expected its last sequence to be 3, it is now 5"),
            "{text}"
        );
    }
}
