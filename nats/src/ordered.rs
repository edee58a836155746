//! Reading a stream with an ordered push consumer: what `aegisctl tail`, the approvals and
//! gateways readers and the replayer's `SliceReader` share.

use aegis_core::ids::EventId;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::{self, ErrorCode};

/// Why reading a stream with an ordered consumer failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("cannot make a consumer name: {0}")]
    Random(String),
    #[error(
        "stream {stream} does not exist: has the topology been provisioned (`aegisctl nats init`)?"
    )]
    NoStream { stream: String },
    #[error(
        "creating a consumer on {stream} filtered to {filter} got no answer in time: is NATS \
         running with JetStream? (a user that may not read {filter} gets no answer either: check \
         the credentials; tenant operators may only read their own tenant's subjects)"
    )]
    TimedOut { stream: String, filter: String },
    #[error("reading {filter} from {stream} failed: {detail}")]
    Failed {
        stream: String,
        filter: String,
        detail: String,
    },
}

/// An ordered push consumer on `stream` filtered to `filter`, named `<prefix>-<random>` (the
/// name puts the filter into the API subject, which tenant permissions check), delivering to a
/// fresh inbox. Also returns how many messages were pending when it was created.
pub async fn ordered(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    deliver_policy: DeliverPolicy,
    prefix: &str,
) -> Result<(Ordered, u64), ConsumeError> {
    let failed = |detail: String| ConsumeError::Failed {
        stream: stream.to_owned(),
        filter: filter.to_owned(),
        detail,
    };
    let name = EventId::random()
        .map(|id| format!("{prefix}-{}", id.as_str().trim_start_matches("evt-")))
        .map_err(|e| ConsumeError::Random(e.to_string()))?;
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let consumer = handle
        .create_consumer(OrderedConfig {
            name: Some(name),
            filter_subject: filter.to_owned(),
            deliver_subject: js.client().new_inbox(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            use async_nats::jetstream::stream::ConsumerErrorKind as K;
            match e.kind() {
                K::TimedOut => ConsumeError::TimedOut {
                    stream: stream.to_owned(),
                    filter: filter.to_owned(),
                },
                K::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                    ConsumeError::NoStream {
                        stream: stream.to_owned(),
                    }
                }
                _ => failed(e.to_string()),
            }
        })?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok((messages, pending))
}
