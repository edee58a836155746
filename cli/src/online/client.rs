//! [`Client`]: one tenant's connection to the control plane over NATS — sign an event, publish
//! it on `AEGIS_CHANGES`, wait until the control plane has folded it, and ask the query service.

use aegis_core::events::{Envelope, EnvelopeError, Event, EventType};
use aegis_core::ids::{ActorId, ChangeId, EventId, TenantId};
use aegis_core::keys::{KeyError, Keypair};
use aegis_core::query::{
    ActorView, ChangeCandidate, ChangeState, ChangeView, DraftView, EventOutcome, EventRecord,
    IssuerView, LiveView, QueryAnswer, QueryError, QueryReply, QueryRequest, TenantStatus,
    VersionView,
};
use aegis_nats::topology::{self, CHANGES_STREAM};
use aegis_nats::{ConnectError, ConnectOptions, Publish, PublishError, TopologyError};
use async_nats::jetstream;
use async_nats::{Request, RequestErrorKind};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::Instant;

/// How often [`Client::wait_outcome`] and the other waits poll the control plane.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest a single query may take before it counts as unanswered.
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The default for `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most events one `Events` query returns (the control plane's cap).
pub const EVENTS_PAGE: u32 = 1000;

/// How to connect, as whom, for which tenant.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How to reach NATS (URL list, credentials, connection name).
    pub connect: ConnectOptions,
    pub tenant: TenantId,
    /// Who signs the events. Needed only to publish; queries work without.
    pub signer: Option<SignerSource>,
    /// How long to wait for the control plane (outcomes, checks, announcements).
    pub timeout: Duration,
}

/// Where the signing identity comes from.
#[derive(Debug, Clone)]
pub struct SignerSource {
    pub actor: ActorId,
    /// A `*.key.json` file written by `aegisctl keys generate`.
    pub key_file: PathBuf,
}

/// The actor who signs, with its key.
#[derive(Debug)]
pub struct Signer {
    pub actor: ActorId,
    pub key: Keypair,
}

impl Signer {
    /// Loads the actor's signing key file.
    pub fn load(actor: ActorId, key_file: &Path) -> Result<Signer, ClientError> {
        let key = Keypair::load(key_file).map_err(|source| ClientError::Key {
            path: key_file.to_path_buf(),
            source,
        })?;
        Ok(Signer { actor, key })
    }
}

/// What went wrong talking to NATS or the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The initial connect failed (the message names the URL).
    #[error("{source}")]
    Connect {
        #[source]
        source: ConnectError,
    },
    /// The signing key file could not be read.
    #[error("cannot load the signing key {}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    /// A command that publishes was run without `--actor` / `--key`.
    #[error(
        "publishing needs a signing identity: give --actor ID and --key FILE (or set AEGIS_ACTOR \
         and AEGIS_KEY)"
    )]
    NoSigner,
    #[error("cannot sign the event: {0}")]
    Sign(#[from] EnvelopeError),
    #[error("cannot make a fresh id: {0}")]
    Random(String),
    /// An id cannot be used in a subject (e.g. it contains `.`).
    #[error("{0}")]
    Subject(#[from] TopologyError),
    #[error("{event_type} cannot be published by aegisctl: it is not a change event")]
    NotAChangeEvent { event_type: EventType },
    /// Someone else wrote to the subject after it was read.
    #[error(
        "conflict on {subject}: someone else wrote to it first (expected its last sequence to \
         be {expected}{})", actual.map(|a| format!(", it is now {a}")).unwrap_or_default()
    )]
    Conflict {
        subject: String,
        expected: u64,
        actual: Option<u64>,
    },
    /// No stream captures the subject.
    #[error(
        "no stream captures {subject} on {url}: the topology has not been provisioned (run \
         `aegisctl nats init`)"
    )]
    NoStream { subject: String, url: String },
    /// The publish was not acknowledged (or this user may not publish there).
    #[error("publishing to {subject} on {url} failed: {source}")]
    Publish {
        subject: String,
        url: String,
        #[source]
        source: PublishError,
    },
    /// Nobody listens on the query subject.
    #[error(
        "no control plane answers {subject} on {url}: is the control plane running (and \
         connected to this NATS)?"
    )]
    NoControlPlane { subject: String, url: String },
    /// The control plane did not answer a query in time.
    #[error(
        "the control plane did not answer {subject} on {url} within {}s: is it running and \
         healthy? (a NATS user that may not publish to {subject} gets no answer either: check \
         the credentials and --tenant)", timeout.as_secs_f32()
    )]
    QueryTimedOut {
        subject: String,
        url: String,
        timeout: Duration,
    },
    #[error("query {subject} on {url} failed: {detail}")]
    QueryFailed {
        subject: String,
        url: String,
        detail: String,
    },
    /// The control plane answered with an error.
    #[error("the control plane refused {op}: {error}")]
    Refused { op: &'static str, error: QueryError },
    #[error("the control plane's answer to {subject} is not a query reply: {detail}")]
    BadReply { subject: String, detail: String },
    #[error("the control plane answered {op} with a {got} answer")]
    UnexpectedAnswer { op: &'static str, got: &'static str },
    /// Something published was not folded in time.
    #[error(
        "{what} was not done within {}s{}", timeout.as_secs(),
        match (progress, cause) {
            (_, Some(cause)) => format!(": {cause}"),
            (Some(p), None) => format!(" ({p}): is the control plane running and keeping up? (raise --timeout to wait longer)"),
            (None, None) => ": is the control plane running and keeping up? (raise --timeout to wait longer)".to_owned(),
        }
    )]
    TimedOut {
        /// What was waited for, e.g. "event evt-… (stream sequence 12) was published, but
        /// applying it".
        what: String,
        timeout: Duration,
        /// What was seen last, e.g. "the control plane has applied up to sequence 10".
        progress: Option<String>,
        /// The last query failure, when the control plane did not answer at all.
        cause: Option<String>,
    },
}

impl ClientError {
    /// Whether retrying the same query later may succeed (the control plane is restarting, or
    /// slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::NoControlPlane { .. } | ClientError::QueryTimedOut { .. }
        )
    }

    /// Whether the error means NATS or the control plane could not be reached in time.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::NoControlPlane { .. }
                | ClientError::QueryTimedOut { .. }
                | ClientError::TimedOut { .. }
        ) || matches!(
            self,
            ClientError::Publish {
                source: PublishError::TimedOut { .. },
                ..
            }
        )
    }
}

/// An event that was published and acknowledged by `AEGIS_CHANGES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: EventId,
    pub event_type: EventType,
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// True when the stream had already stored an event with this id (a retry).
    pub duplicate: bool,
}

/// One tenant's connection to the control plane.
///
/// ```no_run
/// # async fn demo() -> Result<(), aegisctl::online::ClientError> {
/// use aegis_core::events::{Event, TenantFrozen};
/// use aegis_core::query::{Outcome, QueryRequest};
/// use aegisctl::online::{Client, ClientOptions, SignerSource};
///
/// let client = Client::connect(&ClientOptions {
///     connect: aegis_nats::ConnectOptions::new("nats://127.0.0.1:4222"),
///     tenant: "acme".parse().unwrap(),
///     signer: Some(SignerSource {
///         actor: "alice".parse().unwrap(),
///         key_file: "keys/alice.key.json".into(),
///     }),
///     timeout: std::time::Duration::from_secs(30),
/// })
/// .await?;
/// let record = client
///     .publish_event(Event::TenantFrozen(TenantFrozen { reason: "incident 42".into() }))
///     .await?;
/// assert!(matches!(record.outcome, Outcome::Accepted | Outcome::Rejected { .. }));
/// let status = client.status().await?;
/// println!("frozen: {}", status.frozen.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    nats: async_nats::Client,
    js: jetstream::Context,
    url: String,
    tenant: TenantId,
    signer: Option<Signer>,
    timeout: Duration,
    poll_interval: Duration,
}

impl Client {
    /// Connects to NATS (failing fast, with the URL in the error) and loads the signing key.
    pub async fn connect(options: &ClientOptions) -> Result<Client, ClientError> {
        let signer = match &options.signer {
            Some(s) => Some(Signer::load(s.actor.clone(), &s.key_file)?),
            None => None,
        };
        let mut connect = options.connect.clone();
        connect.request_timeout = options
            .timeout
            .clamp(Duration::from_secs(1), MAX_QUERY_TIMEOUT);
        let nats = aegis_nats::connect(&connect)
            .await
            .map_err(|source| ClientError::Connect { source })?;
        Ok(Client::new(
            nats,
            options.connect.url.clone(),
            options.tenant.clone(),
            signer,
            options.timeout,
        ))
    }

    /// Wraps an existing connection (tests reuse one connection for several actors).
    /// `url` is only used in error messages.
    pub fn new(
        nats: async_nats::Client,
        url: impl Into<String>,
        tenant: TenantId,
        signer: Option<Signer>,
        timeout: Duration,
    ) -> Client {
        let js = aegis_nats::jetstream(nats.clone());
        Client {
            nats,
            js,
            url: url.into(),
            tenant,
            signer,
            timeout,
            poll_interval: POLL_INTERVAL,
        }
    }

    /// The same connection and tenant, signing as someone else.
    pub fn with_signer(&self, signer: Option<Signer>) -> Client {
        Client {
            nats: self.nats.clone(),
            js: self.js.clone(),
            url: self.url.clone(),
            tenant: self.tenant.clone(),
            signer,
            timeout: self.timeout,
            poll_interval: self.poll_interval,
        }
    }

    /// Changes how long waits last.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Changes how often waits poll (default [`POLL_INTERVAL`]).
    pub fn set_poll_interval(&mut self, interval: Duration) {
        self.poll_interval = interval;
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The signing actor, if any.
    pub fn actor(&self) -> Option<&ActorId> {
        self.signer.as_ref().map(|s| &s.actor)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The URL(s) this client was given (for messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Signs `event` as this client's actor, with a fresh event id and the current time.
    pub fn sign(&self, event: Event) -> Result<Envelope, ClientError> {
        let signer = self.signer.as_ref().ok_or(ClientError::NoSigner)?;
        let id = EventId::random().map_err(|e| ClientError::Random(e.to_string()))?;
        Ok(Envelope::sign(
            id,
            self.tenant.clone(),
            signer.actor.clone(),
            &signer.key,
            OffsetDateTime::now_utc(),
            event,
        )?)
    }

    /// The subject an event is published on: `aegis.changes.<tenant>.<suffix>`.
    pub fn subject_for(&self, event: &Event) -> Result<String, ClientError> {
        change_subject(&self.tenant, event)
    }

    /// Publishes a signed envelope (its canonical bytes, `Nats-Msg-Id` = its id), optionally
    /// only if the subject's last sequence is `expected_last_subject_sequence`. Does not wait
    /// for the control plane.
    pub async fn publish_envelope(
        &self,
        envelope: &Envelope,
        expected_last_subject_sequence: Option<u64>,
    ) -> Result<Published, ClientError> {
        let subject = self.subject_for(&envelope.event)?;
        let mut message = Publish::new(subject.clone(), envelope.to_bytes()?)
            .msg_id(envelope.id.as_str().to_owned());
        if let Some(seq) = expected_last_subject_sequence {
            message = message.expect_last_subject_sequence(seq);
        }
        match aegis_nats::publish(&self.js, message).await {
            Ok(ack) => Ok(Published {
                event_id: envelope.id.clone(),
                event_type: envelope.event_type(),
                subject,
                seq: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(PublishError::Conflict {
                subject,
                expected,
                actual,
            }) => Err(ClientError::Conflict {
                subject,
                expected,
                actual,
            }),
            Err(PublishError::NoStream { subject }) => Err(ClientError::NoStream {
                subject,
                url: self.url.clone(),
            }),
            Err(source) => Err(ClientError::Publish {
                subject,
                url: self.url.clone(),
                source,
            }),
        }
    }

    /// Signs, publishes and waits for the control plane to apply `event`. The returned record's
    /// `outcome` says whether it was accepted or rejected (a rejection is not an `Err`).
    pub async fn publish_event(&self, event: Event) -> Result<EventRecord, ClientError> {
        self.publish_event_expecting(event, None).await
    }

    /// [`Client::publish_event`] with `Nats-Expected-Last-Subject-Sequence` (policy draft
    /// edits); a lost race is [`ClientError::Conflict`].
    pub async fn publish_event_expecting(
        &self,
        event: Event,
        expected_last_subject_sequence: Option<u64>,
    ) -> Result<EventRecord, ClientError> {
        let envelope = self.sign(event)?;
        let published = self
            .publish_envelope(&envelope, expected_last_subject_sequence)
            .await?;
        self.wait_published(&published).await
    }

    /// Waits for the outcome of an event this client published.
    pub async fn wait_published(&self, published: &Published) -> Result<EventRecord, ClientError> {
        self.wait_outcome_described(
            &published.event_id,
            format!(
                "{} {} was published (stream sequence {}), but applying it",
                published.event_type, published.event_id, published.seq
            ),
        )
        .await
    }

    /// Polls [`QueryRequest::Outcome`] every [`POLL_INTERVAL`] until the control plane has
    /// applied the event, up to the timeout.
    pub async fn wait_outcome(&self, event_id: &EventId) -> Result<EventRecord, ClientError> {
        self.wait_outcome_described(event_id, format!("applying event {event_id}"))
            .await
    }

    async fn wait_outcome_described(
        &self,
        event_id: &EventId,
        what: String,
    ) -> Result<EventRecord, ClientError> {
        let this = self;
        self.poll(what, move || async move {
            match this
                .query(QueryRequest::Outcome {
                    event_id: event_id.clone(),
                })
                .await?
            {
                QueryAnswer::Outcome(EventOutcome::Applied { record }) => Ok(Poll::Ready(*record)),
                QueryAnswer::Outcome(EventOutcome::Pending { applied_seq }) => {
                    Ok(Poll::Pending(Some(format!(
                        "the control plane has applied stream sequences up to {applied_seq}"
                    ))))
                }
                other => Err(unexpected("outcome", &other)),
            }
        })
        .await
    }

    /// Calls `step` every poll interval until it is ready, up to the timeout. Transient query
    /// failures (no responder, no answer) are retried; the timeout error then names them.
    pub async fn poll<T, F>(
        &self,
        what: impl Into<String>,
        mut step: impl FnMut() -> F,
    ) -> Result<T, ClientError>
    where
        F: Future<Output = Result<Poll<T>, ClientError>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut progress = None;
        let mut cause;
        loop {
            match step().await {
                Ok(Poll::Ready(value)) => return Ok(value),
                Ok(Poll::Pending(p)) => {
                    progress = p;
                    cause = None;
                }
                Err(e) if e.is_transient() => cause = Some(e.to_string()),
                Err(e) => return Err(e),
            }
            if Instant::now() + self.poll_interval > deadline {
                return Err(ClientError::TimedOut {
                    what: what.into(),
                    timeout: self.timeout,
                    progress,
                    cause,
                });
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// Asks the control plane's query service (`aegis.query.<tenant>.<op>`).
    pub async fn query(&self, request: QueryRequest) -> Result<QueryAnswer, ClientError> {
        let op = request.op();
        let subject = topology::query_subject(&self.tenant, op)?;
        let body = serde_json::to_vec(&request).map_err(|e| ClientError::QueryFailed {
            subject: subject.clone(),
            url: self.url.clone(),
            detail: format!("cannot encode the request: {e}"),
        })?;
        let timeout = self
            .timeout
            .clamp(Duration::from_millis(200), MAX_QUERY_TIMEOUT);
        let reply = with_deadline(
            timeout,
            self.nats.send_request(
                subject.clone(),
                Request::new().payload(body.into()).timeout(Some(timeout)),
            ),
        )
        .await;
        let message = match reply {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                return Err(match e.kind() {
                    RequestErrorKind::NoResponders => ClientError::NoControlPlane {
                        subject,
                        url: self.url.clone(),
                    },
                    RequestErrorKind::TimedOut => ClientError::QueryTimedOut {
                        subject,
                        url: self.url.clone(),
                        timeout,
                    },
                    _ => ClientError::QueryFailed {
                        subject,
                        url: self.url.clone(),
                        detail: e.to_string(),
                    },
                });
            }
            None => {
                return Err(ClientError::QueryTimedOut {
                    subject,
                    url: self.url.clone(),
                    timeout,
                });
            }
        };
        match serde_json::from_slice::<QueryReply>(&message.payload) {
            Ok(QueryReply::Ok(answer)) => Ok(answer),
            Ok(QueryReply::Error(error)) => Err(ClientError::Refused { op, error }),
            Err(e) => Err(ClientError::BadReply {
                subject,
                detail: e.to_string(),
            }),
        }
    }

    /// [`QueryRequest::Status`].
    pub async fn status(&self) -> Result<TenantStatus, ClientError> {
        match self.query(QueryRequest::Status).await? {
            QueryAnswer::Status(s) => Ok(s),
            other => Err(unexpected("status", &other)),
        }
    }

    /// [`QueryRequest::Changes`], newest first.
    pub async fn changes(
        &self,
        state: Option<ChangeState>,
    ) -> Result<Vec<ChangeView>, ClientError> {
        match self.query(QueryRequest::Changes { state }).await? {
            QueryAnswer::Changes(c) => Ok(c),
            other => Err(unexpected("changes", &other)),
        }
    }

    /// [`QueryRequest::Change`].
    pub async fn change(&self, change_id: &ChangeId) -> Result<ChangeView, ClientError> {
        match self
            .query(QueryRequest::Change {
                change_id: change_id.clone(),
            })
            .await?
        {
            QueryAnswer::Change(c) => Ok(*c),
            other => Err(unexpected("change", &other)),
        }
    }

    /// [`QueryRequest::Candidate`]: the candidate policy set of an open change.
    pub async fn candidate(&self, change_id: &ChangeId) -> Result<ChangeCandidate, ClientError> {
        match self
            .query(QueryRequest::Candidate {
                change_id: change_id.clone(),
            })
            .await?
        {
            QueryAnswer::Candidate(c) => Ok(*c),
            other => Err(unexpected("candidate", &other)),
        }
    }

    /// [`QueryRequest::History`], oldest first.
    pub async fn history(&self) -> Result<Vec<VersionView>, ClientError> {
        match self.query(QueryRequest::History).await? {
            QueryAnswer::History(h) => Ok(h),
            other => Err(unexpected("history", &other)),
        }
    }

    /// One page of [`QueryRequest::Events`].
    pub async fn events(
        &self,
        from_position: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, ClientError> {
        match self
            .query(QueryRequest::Events {
                from_position: Some(from_position),
                limit: Some(limit),
            })
            .await?
        {
            QueryAnswer::Events(e) => Ok(e),
            other => Err(unexpected("events", &other)),
        }
    }

    /// Every folded event of the tenant, in chain order (pages through
    /// [`QueryRequest::Events`]).
    pub async fn all_events(&self) -> Result<Vec<EventRecord>, ClientError> {
        let mut all: Vec<EventRecord> = Vec::new();
        let mut from = 1;
        loop {
            let page = self.events(from, EVENTS_PAGE).await?;
            let full = page.len() >= EVENTS_PAGE as usize;
            let Some(last) = page.last().map(|r| r.position) else {
                break;
            };
            all.extend(page);
            if !full || last < from {
                break;
            }
            from = last + 1;
        }
        Ok(all)
    }

    /// [`QueryRequest::Actors`].
    pub async fn actors(&self) -> Result<Vec<ActorView>, ClientError> {
        match self.query(QueryRequest::Actors).await? {
            QueryAnswer::Actors(a) => Ok(a),
            other => Err(unexpected("actors", &other)),
        }
    }

    /// [`QueryRequest::Drafts`].
    pub async fn drafts(&self) -> Result<Vec<DraftView>, ClientError> {
        match self.query(QueryRequest::Drafts).await? {
            QueryAnswer::Drafts(d) => Ok(d),
            other => Err(unexpected("drafts", &other)),
        }
    }

    /// [`QueryRequest::Live`].
    pub async fn live(&self) -> Result<LiveView, ClientError> {
        match self.query(QueryRequest::Live).await? {
            QueryAnswer::Live(l) => Ok(l),
            other => Err(unexpected("live", &other)),
        }
    }

    /// [`QueryRequest::Issuers`]: the tenant's token issuer keys, by key id.
    pub async fn issuers(&self) -> Result<Vec<IssuerView>, ClientError> {
        match self.query(QueryRequest::Issuers).await? {
            QueryAnswer::Issuers(i) => Ok(i),
            other => Err(unexpected("issuers", &other)),
        }
    }

    /// The stream sequence of the last message on `subject` in `AEGIS_CHANGES`, if any.
    pub async fn last_subject_sequence(&self, subject: &str) -> Result<Option<u64>, ClientError> {
        aegis_nats::last_subject_sequence(&self.js, CHANGES_STREAM, subject)
            .await
            .map_err(|e| ClientError::QueryFailed {
                subject: subject.to_owned(),
                url: self.url.clone(),
                detail: e.to_string(),
            })
    }
}

/// `aegis.changes.<tenant>.<suffix>` for a change event (see
/// [`EventType::changes_subject_suffix`]).
pub fn change_subject(tenant: &TenantId, event: &Event) -> Result<String, ClientError> {
    topology::change_event_subject(tenant, event).map_err(|e| match e {
        topology::TopologyError::NotAChangeEvent(event_type) => {
            ClientError::NotAChangeEvent { event_type }
        }
        other => other.into(),
    })
}

/// One step of [`Client::poll`].
#[derive(Debug)]
pub enum Poll<T> {
    Ready(T),
    /// Not yet; optionally what was seen (for the timeout message).
    Pending(Option<String>),
}

async fn with_deadline<F: Future>(timeout: Duration, f: F) -> Option<F::Output> {
    // The request carries its own timeout; this is a backstop a little later.
    tokio::time::timeout(timeout + Duration::from_millis(500), f)
        .await
        .ok()
}

fn answer_kind(answer: &QueryAnswer) -> &'static str {
    match answer {
        QueryAnswer::Status(_) => "status",
        QueryAnswer::Changes(_) => "changes",
        QueryAnswer::Change(_) => "change",
        QueryAnswer::History(_) => "history",
        QueryAnswer::Events(_) => "events",
        QueryAnswer::Outcome(_) => "outcome",
        QueryAnswer::Actors(_) => "actors",
        QueryAnswer::Drafts(_) => "drafts",
        QueryAnswer::Live(_) => "live",
        QueryAnswer::Issuers(_) => "issuers",
        QueryAnswer::Candidate(_) => "candidate",
    }
}

fn unexpected(op: &'static str, answer: &QueryAnswer) -> ClientError {
    ClientError::UnexpectedAnswer {
        op,
        got: answer_kind(answer),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aegis_core::events::TenantFrozen;

    fn assert_send<T: Send>(_: &T) {}

    /// Tests may run several clients' calls concurrently (`tokio::spawn`): the futures must be
    /// `Send`. Never called; it only has to compile.
    #[allow(dead_code)]
    fn client_futures_are_send(client: &Client, id: &EventId) {
        assert_send(&client.publish_event(Event::TenantFrozen(TenantFrozen {
            reason: String::new(),
        })));
        assert_send(&client.wait_outcome(id));
        assert_send(&client.all_events());
        assert_send(&client.query(QueryRequest::Status));
    }

    #[test]
    fn subjects_follow_the_event() {
        let acme = TenantId::new("acme").unwrap();
        let frozen = Event::TenantFrozen(TenantFrozen {
            reason: String::new(),
        });
        assert_eq!(
            change_subject(&acme, &frozen).unwrap(),
            "aegis.changes.acme.control"
        );
        let approved = Event::ChangeApproved(aegis_core::events::ChangeApproved {
            change_id: ChangeId::new("chg-1").unwrap(),
            comment: None,
        });
        assert_eq!(
            change_subject(&acme, &approved).unwrap(),
            "aegis.changes.acme.change.chg-1"
        );
        let checkpoint = Event::AuditCheckpoint(aegis_core::events::AuditCheckpoint {
            from_position: 1,
            to_position: 0,
            previous_head: String::new(),
            head: String::new(),
            entries: vec![],
        });
        assert!(matches!(
            change_subject(&acme, &checkpoint),
            Err(ClientError::NotAChangeEvent { .. })
        ));
        let dotted = TenantId::new("acme.eu").unwrap();
        assert!(matches!(
            change_subject(&dotted, &frozen),
            Err(ClientError::Subject(_))
        ));
    }
}
