//! The decision-event shipper: every decision the gateway answers is published to JetStream
//! (stream `AEGIS_DECISIONS`, subject `aegis.decisions.<tenant>.<gateway>`, header
//! `Nats-Msg-Id: <event id>`), and spooled to local disk while NATS is away, so that no decision
//! is dropped and the request path never waits on NATS or on the disk.
//!
//! # Shape
//!
//! ```text
//! request path ──submit (try_send, never waits)──▶ bounded queue ──▶ shipper task
//!                                                                    │
//!            healthy: publish, ≤ max_in_flight unacked ──────────────┤──▶ JetStream
//!            NATS away/slow: append to the spool ──▶ segments on disk ──drain──▶ JetStream
//! ```
//!
//! [`start`] opens (recovers) the spool and spawns one task that owns all the state; the
//! [`ShipperHandle`] the request path holds only does a `try_send` on a bounded channel and reads
//! atomics. The task runs in one of two modes:
//!
//! - **Direct** (NATS healthy, spool empty): events are published with `publish_with_headers`
//!   as they arrive; the returned ack futures are awaited in the background, in order, with at
//!   most [`ShipperConfig::max_in_flight`] unacknowledged at a time. No disk I/O.
//! - **Spooling**: entered when the client is not connected, a publish fails, or an ack does
//!   not come within [`ShipperConfig::ack_timeout`]. The failed event and every later one are
//!   appended to the spool ([`spool`]: segment files of length-prefixed, CRC-checked records).
//!   While the client is connected the spool is drained in order with the same bounded
//!   pipelining, each event with its original `Nats-Msg-Id`; the persisted cursor advances only
//!   over acknowledged events and acknowledged segments are deleted. A failure during the drain
//!   stops it, waits for the outstanding acks, rewinds to the cursor and retries after a backoff
//!   (100 ms doubling to 5 s). The drain's window of unacknowledged publishes starts at one,
//!   grows by one with every ack (so it doubles every round trip) up to `max_in_flight`, and
//!   halves on a failure: a server that is up but slow gets as much as it acknowledges within
//!   `ack_timeout`, instead of a full window of publishes that time out and are resent.
//!   While the spool holds anything, new events are appended behind it: order is kept, and
//!   there is one path to reason about. When the spool is empty again the task returns to
//!   Direct mode.
//!
//! Events whose publish was in flight when NATS failed are spooled when their ack times out,
//! so they may land after events submitted later; otherwise the stream receives events in
//! submission order.
//!
//! # No loss, no duplicates
//!
//! An event leaves the shipper's care only when JetStream acknowledged it (it is then stored;
//! a `duplicate` ack means an earlier attempt was stored). A resend of an event that was in
//! fact stored before a failure (ack lost in a NATS restart, timeout) carries the same
//! `Nats-Msg-Id`, and JetStream drops it if it comes within the stream's duplicate window (2
//! minutes for `AEGIS_DECISIONS`; the window survives a server restart). So a NATS restart
//! while publishing or draining neither loses nor duplicates events. A duplicate can only
//! appear when an event whose ack was lost is resent more than 2 minutes after its first
//! attempt (NATS away for longer than that right after storing it); consumers can drop those
//! by event id.
//!
//! Events NATS refuses permanently (larger than the server's `max_payload`) cannot ever be
//! recorded: they are logged at error level with their id and counted as `unrecorded`.
//!
//! # Durability of the spool
//!
//! - Appends are buffered in memory and handed to the OS once per batch the task handles
//!   (typically every few milliseconds under load, at once when idle). From then on they
//!   survive a crash or `kill -9` of the gateway.
//! - The spool files, and the directory when segments are created or deleted, are `fsync`ed
//!   every [`FSYNC_INTERVAL`] (1 s) off the async runtime, and at shutdown: a power failure
//!   loses at most the last second of spooled events.
//! - The cursor is persisted (atomic rename) at most every 100 ms and before deleting a
//!   segment. If it is older than the acks after a crash, the events in between are sent
//!   again (deduplicated within the window above).
//! - A record cut short by a crash is detected on the next start by its length and CRC-32 and
//!   truncated, never read as an event (see [`spool`]).
//! - What lives only in memory: the hand-off queue and, in Direct mode, the publishes awaiting
//!   their ack (at most `max_in_flight`). A graceful [`ShipperHandle::shutdown`] publishes or
//!   spools all of it; a `kill -9` or crash of the gateway loses the part of it that NATS had
//!   not stored.
//!
//! # Spool full
//!
//! When an event does not fit under [`ShipperConfig::max_spool_bytes`] (or the disk refuses a
//! write) the task keeps it in memory, stops taking events from the queue, and the spool is
//! "full" until it can append again (a drained segment is deleted, the disk write succeeds).
//! While full, [`ShipperHandle::submit`] returns [`ShipError::Full`], and with
//! [`SpoolFullPolicy::Deny`] (the default) [`ShipperHandle::accepting`] returns false so the
//! request path refuses new calls (`decision_log_full`, HTTP 503) before deciding; with
//! [`SpoolFullPolicy::Serve`] calls are answered and the caller counts each unrecorded decision
//! ([`ShipperHandle::count_unrecorded`]). Each transition is logged once.
//!
//! # Shutdown
//!
//! [`ShipperHandle::shutdown`] stops accepting (later submits get [`ShipError::Closed`]), then
//! for up to three quarters of the deadline publishes what is queued (Direct mode) and waits for
//! outstanding acks; whatever is still queued, held or unacknowledged after that is appended to
//! the spool (even past `max_spool_bytes`, rather than lose it), the cursor is written and the
//! spool is `fsync`ed. Dropping every handle does the same with a 5 s deadline.
//!
//! One gateway process must own a spool directory at a time.

pub mod spool;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, publish::PublishAck};
use bytes::Bytes;
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use spool::{Position, Spool, SpoolError, SpoolOptions};
use std::collections::VecDeque;
use std::future::{Future, IntoFuture as _};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often the spool is `fsync`ed while it has unsynced data.
pub const FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often the drain cursor is persisted while it moves.
pub const CURSOR_INTERVAL: Duration = Duration::from_millis(100);
/// Shutdown deadline used when every handle is dropped without [`ShipperHandle::shutdown`].
pub const DROP_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

const TICK: Duration = Duration::from_millis(20);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most events taken from the queue at once in Spooling mode.
const SPOOL_BATCH: usize = 4096;
/// Extra wait in [`ShipperHandle::shutdown`] beyond its deadline for the final fsync.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// One decision event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// `aegis.decisions.<tenant>.<gateway>`.
    pub subject: String,
    /// The event id, sent as `Nats-Msg-Id`.
    pub id: String,
    /// The event bytes.
    pub payload: Bytes,
}

/// What to do while the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFullPolicy {
    /// Refuse new calls (`decision_log_full`, 503): no decision without a record. Fail closed.
    #[default]
    Deny,
    /// Answer calls; each decision that cannot be recorded is counted as unrecorded.
    Serve,
}

/// Shipper settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipperConfig {
    /// The spool directory (created if missing). One gateway process per directory.
    pub spool_dir: PathBuf,
    /// Largest spool on disk, bytes. Default 1 GiB.
    pub max_spool_bytes: u64,
    /// Most unacknowledged publishes. Default 1024.
    pub max_in_flight: usize,
    /// How long to wait for a publish ack before spooling the event. Default 5 s.
    pub ack_timeout: Duration,
    /// Capacity of the in-memory hand-off queue, events. Default 65,536.
    pub queue_capacity: usize,
    /// What to do while the spool is full. Default [`SpoolFullPolicy::Deny`].
    pub on_spool_full: SpoolFullPolicy,
}

impl ShipperConfig {
    /// The defaults with a spool directory.
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            spool_dir: spool_dir.into(),
            max_spool_bytes: 1 << 30,
            max_in_flight: 1024,
            ack_timeout: Duration::from_secs(5),
            queue_capacity: 65_536,
            on_spool_full: SpoolFullPolicy::Deny,
        }
    }
}

impl Default for ShipperConfig {
    /// The defaults, spooling to `./spool` (relative to the working directory).
    fn default() -> Self {
        Self::new("spool")
    }
}

/// Why an event was not accepted by [`ShipperHandle::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShipError {
    /// The hand-off queue is full, or the spool is full: the decision cannot be recorded.
    #[error("the decision log cannot accept the event (hand-off queue or disk spool full)")]
    Full,
    /// The shipper was shut down.
    #[error("the decision shipper is shut down")]
    Closed,
    /// The event can never be published: a subject that is not a valid NATS publish subject,
    /// an id that cannot be a header value, or a part too large for the spool. A bug in the
    /// caller; logged at error level.
    #[error("invalid decision event: {0}")]
    Invalid(&'static str),
}

/// Why the shipper could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    /// A setting is out of range.
    #[error("invalid shipper configuration: {0}")]
    Config(String),
    /// The spool cannot be opened or recovered.
    #[error("opening the decision spool: {0}")]
    Spool(#[from] SpoolError),
    /// The blocking recovery task did not complete.
    #[error("decision spool recovery did not complete: {0}")]
    Task(String),
}

/// A snapshot of the shipper's counters (since start) and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShipperStats {
    /// Events acknowledged by JetStream.
    pub shipped: u64,
    /// Publish attempts that failed (error, negative or missing ack); the event was spooled
    /// or stays spooled and is retried, so this is not a count of lost events.
    pub failed: u64,
    /// Events appended to the spool.
    pub spooled: u64,
    /// Decisions answered without a record: counted by the caller
    /// ([`ShipperHandle::count_unrecorded`]), plus events NATS refuses permanently.
    pub unrecorded: u64,
    /// Publishes awaiting their ack.
    pub in_flight: u64,
    /// Events in the spool not yet acknowledged.
    pub spool_events: u64,
    /// Bytes the spool takes (on disk and buffered).
    pub spool_bytes: u64,
    /// Events handed over and not yet published or spooled.
    pub queued: u64,
}

#[derive(Debug)]
struct Shared {
    policy: SpoolFullPolicy,
    full: AtomicBool,
    queue_full: AtomicBool,
    shipped: AtomicU64,
    failed: AtomicU64,
    spooled: AtomicU64,
    unrecorded: AtomicU64,
    in_flight: AtomicU64,
    spool_events: AtomicU64,
    spool_bytes: AtomicU64,
    held: AtomicU64,
}

impl Shared {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The request path's side of the shipper. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShipperHandle {
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    stop: Arc<watch::Sender<Option<Instant>>>,
    done: watch::Receiver<bool>,
}

impl ShipperHandle {
    /// Non-blocking hand-off (a bounded channel `try_send`). `Err(ShipError::Full)` only when
    /// the event cannot be accepted (queue full, or the spool is full); `Err(ShipError::Closed)`
    /// after [`ShipperHandle::shutdown`].
    pub fn submit(&self, event: Outgoing) -> Result<(), ShipError> {
        if let Err(why) = check_event(&event) {
            tracing::error!(
                id = %event.id.escape_debug(),
                subject = %event.subject.escape_debug(),
                why,
                "decision event refused: it can never be published"
            );
            return Err(ShipError::Invalid(why));
        }
        if self.shared.full.load(Ordering::Acquire) {
            return Err(ShipError::Full);
        }
        match self.tx.try_send(event) {
            Ok(()) => {
                if self.shared.queue_full.load(Ordering::Relaxed)
                    && self.shared.queue_full.swap(false, Ordering::Relaxed)
                {
                    tracing::info!("decision hand-off queue accepts events again");
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.shared.queue_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        capacity = self.tx.max_capacity(),
                        "decision hand-off queue full: events are refused until the shipper catches up"
                    );
                }
                Err(ShipError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ShipError::Closed),
        }
    }

    /// False while the spool is full and the policy is [`SpoolFullPolicy::Deny`]: the request
    /// path then denies new calls with reason `decision_log_full` (HTTP 503) before deciding.
    pub fn accepting(&self) -> bool {
        !(self.shared.policy == SpoolFullPolicy::Deny && self.shared.full.load(Ordering::Acquire))
    }

    /// Counts a decision that was answered but could not be recorded (Serve policy).
    pub fn count_unrecorded(&self) {
        Shared::add(&self.shared.unrecorded);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ShipperStats {
        let s = &self.shared;
        let queue = self.tx.max_capacity().saturating_sub(self.tx.capacity()) as u64;
        ShipperStats {
            shipped: s.shipped.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            spooled: s.spooled.load(Ordering::Relaxed),
            unrecorded: s.unrecorded.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            spool_events: s.spool_events.load(Ordering::Relaxed),
            spool_bytes: s.spool_bytes.load(Ordering::Relaxed),
            queued: queue + s.held.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, publishes or spools everything queued, waits for in-flight acks
    /// (spooling what is not acknowledged) and fsyncs the spool; see the module docs. Returns
    /// when that is done (or, if the disk hangs, a few seconds after `deadline`). Calling it
    /// again waits for the same shutdown.
    pub async fn shutdown(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        self.stop.send_if_modified(|stop| {
            if stop.is_none() {
                *stop = Some(until);
                true
            } else {
                false
            }
        });
        let mut done = self.done.clone();
        match tokio::time::timeout(deadline + FINISH_GRACE, done.wait_for(|d| *d)).await {
            // A closed channel means the task is gone: nothing left to wait for.
            Ok(_) => {}
            Err(_) => tracing::error!(
                ?deadline,
                "decision shipper did not finish shutting down in time; spooled events are on \
                 disk but the last ones may not be fsynced"
            ),
        }
    }
}

/// Opens (recovers) the spool and starts the background task on the current tokio runtime.
pub async fn start(
    client: async_nats::Client,
    config: ShipperConfig,
) -> Result<ShipperHandle, ShipperError> {
    if config.max_in_flight == 0 {
        return Err(ShipperError::Config(
            "max_in_flight must be at least 1".into(),
        ));
    }
    if config.queue_capacity == 0 {
        return Err(ShipperError::Config(
            "queue_capacity must be at least 1".into(),
        ));
    }
    if config.max_spool_bytes == 0 {
        return Err(ShipperError::Config(
            "max_spool_bytes must be above 0".into(),
        ));
    }
    if config.ack_timeout.is_zero() {
        return Err(ShipperError::Config("ack_timeout must be above 0".into()));
    }
    let dir = config.spool_dir.clone();
    let options = SpoolOptions::for_max_bytes(config.max_spool_bytes);
    let (spool, recovery) = tokio::task::spawn_blocking(move || Spool::open(&dir, options))
        .await
        .map_err(|e| ShipperError::Task(e.to_string()))??;
    if recovery.events > 0 {
        tracing::info!(
            spool = %config.spool_dir.display(),
            events = recovery.events,
            bytes = recovery.bytes,
            segments = recovery.segments,
            "decision spool holds events from before this start; they are sent once NATS answers"
        );
    }

    // Publishes never wait on the client's ack semaphore (the shipper bounds them itself), and
    // acks the shipper gave up on do not hold its permits for long.
    let js = jetstream::ContextBuilder::new()
        .timeout(config.ack_timeout)
        .max_ack_inflight(config.max_in_flight.saturating_mul(2).max(64))
        .backpressure_on_inflight(false)
        .ack_timeout(Duration::from_millis(100))
        .build(client.clone());
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let shared = Arc::new(Shared {
        policy: config.on_spool_full,
        full: AtomicBool::new(false),
        queue_full: AtomicBool::new(false),
        shipped: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        spooled: AtomicU64::new(0),
        unrecorded: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        spool_events: AtomicU64::new(recovery.events),
        spool_bytes: AtomicU64::new(recovery.bytes),
        held: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(None);
    let (done_tx, done_rx) = watch::channel(false);
    let now = Instant::now();
    let worker = Worker {
        js,
        client,
        mode: if recovery.events > 0 {
            Mode::Spooling
        } else {
            Mode::Direct
        },
        config,
        spool,
        rx,
        rx_done: false,
        shared: shared.clone(),
        in_flight: FuturesOrdered::new(),
        origins: VecDeque::new(),
        spool_in_flight: 0,
        drain: Drain::new(),
        held: VecDeque::new(),
        sync: None,
        last_sync: now,
        last_cursor: now,
        stopping: None,
        stop_rx,
        spool_error_logged: false,
    };
    tokio::spawn(worker.run(DoneGuard(done_tx)));
    Ok(ShipperHandle {
        tx,
        shared,
        stop: Arc::new(stop_tx),
        done: done_rx,
    })
}

/// Tells [`ShipperHandle::shutdown`] the task is over, however it ends.
struct DoneGuard(watch::Sender<bool>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Spooling,
}

/// What a pending ack is for.
#[derive(Debug)]
enum Origin {
    /// Published straight from the queue: spool it if the publish fails.
    Direct(Outgoing),
    /// Published from the spool: the record ends at this position.
    Spooled(Position),
}

#[derive(Debug)]
enum Failure {
    Publish(jetstream::context::PublishError),
    Timeout(Duration),
    /// Not publishable at all (see [`check_event`]).
    Invalid(&'static str),
}

impl Failure {
    /// NATS will never take this event.
    ///
    /// Only these are: retrying one forever would stop the drain behind it. Anything else
    /// (timeouts, no responders while a server restarts, other API errors) is retried.
    fn is_permanent(&self) -> bool {
        match self {
            Self::Invalid(_) => true,
            Self::Timeout(_) => false,
            Self::Publish(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => true,
            Self::Publish(e) => std::error::Error::source(e)
                .and_then(|source| source.downcast_ref::<jetstream::Error>())
                .is_some_and(|api| {
                    let code = api.error_code();
                    code == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                        || code == jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
                }),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Publish(e) => write!(f, "{e}"),
            Self::Timeout(after) => write!(f, "no ack within {after:?}"),
            Self::Invalid(why) => write!(f, "not publishable: {why}"),
        }
    }
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, Failure>> + Send>>;

#[derive(Debug)]
struct Drain {
    /// A spooled publish failed: no more until the outstanding ones are in, then rewind.
    failed: bool,
    /// Publishes allowed in flight: +1 per ack up to `max_in_flight`, halved on a failure.
    window: usize,
    retry_at: Option<Instant>,
    backoff: Duration,
    consecutive_failures: u64,
}

impl Drain {
    fn new() -> Self {
        Self {
            failed: false,
            window: 1,
            retry_at: None,
            backoff: MIN_BACKOFF,
            consecutive_failures: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Stopping {
    /// Publishing and waiting for acks stop here; the rest of the deadline is for the spool.
    publish_until: Instant,
}

struct Worker {
    js: jetstream::Context,
    client: async_nats::Client,
    config: ShipperConfig,
    spool: Spool,
    rx: mpsc::Receiver<Outgoing>,
    /// The queue is closed and empty.
    rx_done: bool,
    shared: Arc<Shared>,
    /// Ack futures in publish order, with their origins in `origins` (same order).
    in_flight: FuturesOrdered<AckFuture>,
    origins: VecDeque<Origin>,
    spool_in_flight: usize,
    mode: Mode,
    drain: Drain,
    /// Events taken from the queue that the spool could not take yet (full): kept in order.
    held: VecDeque<Outgoing>,
    sync: Option<JoinHandle<Result<(), SpoolError>>>,
    last_sync: Instant,
    last_cursor: Instant,
    stopping: Option<Stopping>,
    stop_rx: watch::Receiver<Option<Instant>>,
    spool_error_logged: bool,
}

impl Worker {
    async fn run(mut self, done: DoneGuard) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            self.unhold();
            self.pump().await;
            self.maybe_direct();
            // NATS is up but slower than decisions arrive: rather than let the hand-off queue
            // fill (and calls be refused as unrecordable), spill to the spool and drain it.
            if self.mode == Mode::Direct
                && self.stopping.is_none()
                && self.in_flight.len() >= self.config.max_in_flight
                && self.rx.len() >= (self.config.queue_capacity / 4).max(1)
            {
                self.enter_spooling("NATS acknowledges more slowly than decisions arrive");
            }
            if self.finished() {
                break;
            }
            let receive = self.can_receive();
            let limit = self.receive_limit();
            tokio::select! {
                biased;
                changed = self.stop_rx.changed(), if self.stopping.is_none() => {
                    let deadline = match changed {
                        Ok(()) => *self.stop_rx.borrow_and_update(),
                        Err(_) => None,
                    };
                    self.begin_stop(
                        deadline.unwrap_or_else(|| Instant::now() + DROP_SHUTDOWN_DEADLINE),
                    );
                }
                Some(result) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.on_ack(result);
                    while let Some(Some(result)) = self.in_flight.next().now_or_never() {
                        self.on_ack(result);
                    }
                }
                n = self.rx.recv_many(&mut batch, limit), if receive => {
                    if n == 0 {
                        self.rx_done = true;
                        if self.stopping.is_none() {
                            self.begin_stop(Instant::now() + DROP_SHUTDOWN_DEADLINE);
                        }
                    }
                    for event in batch.drain(..) {
                        self.route(event).await;
                    }
                }
                result = wait_sync(&mut self.sync), if self.sync.is_some() => {
                    self.sync = None;
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(
                            error = %e,
                            "decision spool fsync failed: spooled events survive a gateway crash \
                             but may not survive a power failure"
                        ),
                        Err(e) => tracing::error!(error = %e, "decision spool fsync task failed"),
                    }
                }
                _ = tick.tick() => {}
            }
            self.housekeeping();
        }
        self.finish().await;
        drop(done);
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn publishing_allowed(&self) -> bool {
        self.stopping
            .is_none_or(|s| Instant::now() < s.publish_until)
    }

    fn can_receive(&self) -> bool {
        if self.rx_done || !self.held.is_empty() {
            return false;
        }
        match self.mode {
            Mode::Direct => {
                !self.publishing_allowed() || self.in_flight.len() < self.config.max_in_flight
            }
            Mode::Spooling => true,
        }
    }

    fn receive_limit(&self) -> usize {
        match self.mode {
            Mode::Direct if self.publishing_allowed() => self
                .config
                .max_in_flight
                .saturating_sub(self.in_flight.len())
                .max(1),
            _ => SPOOL_BATCH,
        }
    }

    /// Stops when the queue is empty and every ack is in, or when publishing time is up.
    fn finished(&self) -> bool {
        match self.stopping {
            None => false,
            Some(stop) => {
                Instant::now() >= stop.publish_until
                    || (self.rx_done && self.in_flight.is_empty() && self.held.is_empty())
            }
        }
    }

    fn begin_stop(&mut self, deadline: Instant) {
        let now = Instant::now();
        let publish_until = now + deadline.saturating_duration_since(now) * 3 / 4;
        self.stopping = Some(Stopping { publish_until });
        self.rx.close();
        tracing::info!(
            queued = self.rx.len(),
            in_flight = self.in_flight.len(),
            spool_events = self.spool.pending_events(),
            "decision shipper stopping: no new events; publishing or spooling what is queued"
        );
    }

    /// An event taken from the queue.
    async fn route(&mut self, event: Outgoing) {
        if self.mode == Mode::Direct && !self.held.is_empty() {
            self.enter_spooling("the spool holds events");
        }
        match self.mode {
            Mode::Direct if !self.publishing_allowed() => {
                self.enter_spooling("shutting down");
                self.spool_event(event);
            }
            Mode::Direct if !self.connected() => {
                self.enter_spooling("NATS is not connected");
                self.spool_event(event);
            }
            Mode::Direct => match publish(&self.js, &event).await {
                Ok(ack) => self.push(Origin::Direct(event), ack),
                Err(failure) => {
                    if failure.is_permanent() {
                        self.unrecordable(&event, &failure);
                    } else {
                        Shared::add(&self.shared.failed);
                        self.enter_spooling(&format!("publish failed: {failure}"));
                        self.spool_event(event);
                    }
                }
            },
            Mode::Spooling => self.spool_event(event),
        }
    }

    fn push(&mut self, origin: Origin, ack: PublishAckFuture) {
        let timeout = self.config.ack_timeout;
        let deadline = Instant::now() + timeout;
        self.origins.push_back(origin);
        self.in_flight.push_back(Box::pin(async move {
            match tokio::time::timeout_at(deadline, ack.into_future()).await {
                Ok(Ok(ack)) => Ok(ack),
                Ok(Err(e)) => Err(Failure::Publish(e)),
                Err(_) => Err(Failure::Timeout(timeout)),
            }
        }));
    }

    /// A publish that failed before it was sent, kept in order with the others.
    fn push_failed(&mut self, origin: Origin, failure: Failure) {
        self.origins.push_back(origin);
        self.in_flight
            .push_back(Box::pin(std::future::ready(Err(failure))));
    }

    fn on_ack(&mut self, result: Result<PublishAck, Failure>) {
        let Some(origin) = self.origins.pop_front() else {
            tracing::error!("decision shipper: an ack without a pending publish (ignored)");
            return;
        };
        match origin {
            Origin::Direct(event) => match result {
                Ok(ack) => {
                    if ack.duplicate {
                        tracing::debug!(id = %event.id, "decision event was already stored");
                    }
                    Shared::add(&self.shared.shipped);
                }
                Err(failure) if failure.is_permanent() => self.unrecordable(&event, &failure),
                Err(failure) => {
                    Shared::add(&self.shared.failed);
                    tracing::debug!(id = %event.id, error = %failure, "decision publish failed; spooling it");
                    self.enter_spooling(&format!("publish failed: {failure}"));
                    self.spool_event(event);
                }
            },
            Origin::Spooled(end) => {
                self.spool_in_flight = self.spool_in_flight.saturating_sub(1);
                match result {
                    // After a failure, later acks do not move the cursor: those events are sent
                    // again after the rewind (and dropped by JetStream as duplicates).
                    Ok(_) if self.drain.failed => {}
                    Ok(_) => {
                        self.ack_spooled(end);
                        Shared::add(&self.shared.shipped);
                        self.drain.window = (self.drain.window + 1).min(self.config.max_in_flight);
                        self.drain.backoff = MIN_BACKOFF;
                        self.drain.consecutive_failures = 0;
                    }
                    Err(failure) if failure.is_permanent() && !self.drain.failed => {
                        self.ack_spooled(end);
                        tracing::error!(
                            error = %failure,
                            "decision event in the spool permanently refused by NATS; it is not recorded"
                        );
                        Shared::add(&self.shared.unrecorded);
                    }
                    Err(failure) => {
                        Shared::add(&self.shared.failed);
                        if !self.drain.failed {
                            self.drain.failed = true;
                            self.drain.window = (self.drain.window / 2).max(1);
                            self.drain.consecutive_failures += 1;
                            let n = self.drain.consecutive_failures;
                            if n == 1 || n.is_multiple_of(100) {
                                tracing::warn!(
                                    error = %failure,
                                    consecutive_failures = n,
                                    spool_events = self.spool.pending_events(),
                                    "draining the decision spool failed; retrying"
                                );
                            }
                        }
                    }
                }
                self.settle_drain();
            }
        }
    }

    /// After a drain failure, once no spooled publish is outstanding: rewind and back off.
    fn settle_drain(&mut self) {
        if self.drain.failed && self.spool_in_flight == 0 {
            self.spool.rewind();
            self.drain.failed = false;
            self.drain.retry_at = Some(Instant::now() + self.drain.backoff);
            self.drain.backoff = (self.drain.backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn ack_spooled(&mut self, end: Position) {
        if let Err(e) = self.spool.ack(end) {
            tracing::error!(error = %e, "decision spool: cannot advance the cursor on disk");
        }
    }

    fn unrecordable(&self, event: &Outgoing, failure: &Failure) {
        tracing::error!(
            id = %event.id,
            subject = %event.subject,
            bytes = event.payload.len(),
            error = %failure,
            "decision event permanently refused by NATS; it is not recorded"
        );
        Shared::add(&self.shared.unrecorded);
    }

    fn enter_spooling(&mut self, reason: &str) {
        if self.mode == Mode::Direct {
            self.mode = Mode::Spooling;
            self.drain.window = 1;
            self.drain.retry_at = Some(Instant::now() + MIN_BACKOFF);
            tracing::warn!(
                reason,
                spool = %self.spool.dir().display(),
                "decision events go to the disk spool until NATS takes them again"
            );
        }
    }

    /// Back to Direct mode once the spool is empty and NATS is there.
    fn maybe_direct(&mut self) {
        if self.mode == Mode::Spooling
            && self.stopping.is_none()
            && self.held.is_empty()
            && self.spool.is_empty()
            && self.spool_in_flight == 0
            && !self.drain.failed
            && self.connected()
        {
            self.mode = Mode::Direct;
            self.drain = Drain::new();
            self.persist_cursor();
            tracing::info!("decision spool drained; publishing directly again");
        }
    }

    /// Appends to the spool, or holds the event (in order) when the spool cannot take it.
    fn spool_event(&mut self, event: Outgoing) {
        if !self.held.is_empty() {
            self.held.push_back(event);
            return;
        }
        if let Err(event) = self.try_append(event) {
            self.held.push_back(event);
        }
    }

    /// Appends one event; gives it back if the spool is full or failing.
    fn try_append(&mut self, event: Outgoing) -> Result<(), Outgoing> {
        let result = if self.stopping.is_some() {
            self.spool.append_unbounded(&event)
        } else {
            self.spool.append(&event)
        };
        match result {
            Ok(_) => {
                Shared::add(&self.shared.spooled);
                Ok(())
            }
            Err(e @ SpoolError::TooLarge { .. }) => {
                tracing::error!(
                    id = %event.id,
                    error = %e,
                    "decision event cannot be spooled; it is not recorded"
                );
                Shared::add(&self.shared.unrecorded);
                Ok(())
            }
            Err(e) => {
                self.set_full(Some(&e));
                Err(event)
            }
        }
    }

    /// Moves held events into the spool when it has room again.
    fn unhold(&mut self) {
        while let Some(event) = self.held.pop_front() {
            if let Err(event) = self.try_append(event) {
                self.held.push_front(event);
                return;
            }
        }
        self.set_full(None);
    }

    /// Records the spool-full state (`Some(why)`) or its end (`None`), logging transitions.
    fn set_full(&mut self, why: Option<&SpoolError>) {
        let full = why.is_some();
        if self.shared.full.swap(full, Ordering::AcqRel) == full {
            return;
        }
        match why {
            Some(e) => {
                let consequence = match self.shared.policy {
                    SpoolFullPolicy::Deny => {
                        "new calls are refused (decision_log_full) until it has room"
                    }
                    SpoolFullPolicy::Serve => {
                        "calls are served and their decisions counted as unrecorded until it has room"
                    }
                };
                tracing::warn!(
                    error = %e,
                    spool = %self.spool.dir().display(),
                    spool_bytes = self.spool.bytes(),
                    max_spool_bytes = self.config.max_spool_bytes,
                    policy = ?self.shared.policy,
                    "decision spool cannot take more events: {consequence}"
                );
            }
            None => tracing::warn!(
                spool_bytes = self.spool.bytes(),
                "decision spool has room again; accepting events"
            ),
        }
    }

    /// Publishes spooled events while NATS is connected, within the window.
    async fn pump(&mut self) {
        if self.mode != Mode::Spooling
            || self.stopping.is_some()
            || self.drain.failed
            || self.drain.retry_at.is_some_and(|at| Instant::now() < at)
            || !self.connected()
        {
            return;
        }
        if self.spool.has_buffered() && self.spool.all_read() {
            self.flush();
        }
        let window = self.drain.window.min(self.config.max_in_flight);
        while self.in_flight.len() < window {
            match self.spool.next_record() {
                Ok(Some((event, end))) => {
                    self.spool_in_flight += 1;
                    match publish(&self.js, &event).await {
                        Ok(ack) => self.push(Origin::Spooled(end), ack),
                        Err(e) => {
                            self.push_failed(Origin::Spooled(end), e);
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "decision spool: cannot read the next event; retrying (a restart of \
                         the gateway truncates a corrupt segment)"
                    );
                    self.drain.failed = true;
                    self.settle_drain();
                    break;
                }
            }
        }
    }

    fn flush(&mut self) {
        match self.spool.flush() {
            Ok(()) => self.spool_error_logged = false,
            Err(e) => {
                if !self.spool_error_logged {
                    self.spool_error_logged = true;
                    tracing::error!(
                        error = %e,
                        "decision spool write failed; events stay in memory and new ones are \
                         held until a write succeeds"
                    );
                }
            }
        }
    }

    fn persist_cursor(&mut self) {
        if let Err(e) = self.spool.persist_cursor() {
            tracing::error!(error = %e, "decision spool: cannot write the cursor");
        }
    }

    /// After every turn of the loop: hand spooled events to the OS, persist the cursor and
    /// start an fsync when due, publish the gauges.
    fn housekeeping(&mut self) {
        if self.spool.has_buffered() {
            self.flush();
        }
        let now = Instant::now();
        if now.duration_since(self.last_cursor) >= CURSOR_INTERVAL {
            self.last_cursor = now;
            self.persist_cursor();
        }
        if self.sync.is_none() && now.duration_since(self.last_sync) >= FSYNC_INTERVAL {
            self.last_sync = now;
            match self.spool.sync_job() {
                Ok(Some(job)) => {
                    self.sync = Some(tokio::task::spawn_blocking(move || job.run()));
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "decision spool: cannot prepare the fsync"),
            }
        }
        let s = &self.shared;
        s.in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        s.spool_events
            .store(self.spool.pending_events(), Ordering::Relaxed);
        s.spool_bytes.store(self.spool.bytes(), Ordering::Relaxed);
        s.held.store(self.held.len() as u64, Ordering::Relaxed);
    }

    /// The end of a shutdown: spool what is still in memory, write the cursor, fsync.
    async fn finish(mut self) {
        self.rx.close();
        if self.stopping.is_none() {
            self.stopping = Some(Stopping {
                publish_until: Instant::now(),
            });
        }
        let mut leftovers = 0u64;
        // Unacknowledged direct publishes (spooled ones are in the spool already).
        let origins = std::mem::take(&mut self.origins);
        self.in_flight = FuturesOrdered::new();
        self.spool_in_flight = 0;
        let held = std::mem::take(&mut self.held);
        for event in origins
            .into_iter()
            .filter_map(|origin| match origin {
                Origin::Direct(event) => Some(event),
                Origin::Spooled(_) => None,
            })
            .chain(held)
        {
            leftovers += 1;
            self.spool_event(event);
        }
        while let Ok(event) = self.rx.try_recv() {
            leftovers += 1;
            self.spool_event(event);
        }
        let lost = self.held.len();
        if lost > 0 {
            tracing::error!(
                events = lost,
                "decision spool cannot take the events still in memory at shutdown; they are \
                 not recorded"
            );
            self.shared
                .unrecorded
                .fetch_add(lost as u64, Ordering::Relaxed);
            self.held.clear();
        }
        self.flush();
        self.persist_cursor();
        if let Some(running) = self.sync.take() {
            let _ = running.await;
        }
        match self.spool.sync_job() {
            Ok(Some(job)) => match tokio::task::spawn_blocking(move || job.run()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "decision spool fsync at shutdown failed")
                }
                Err(e) => tracing::error!(error = %e, "decision spool fsync task failed"),
            },
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "decision spool: cannot flush at shutdown"),
        }
        self.housekeeping();
        tracing::info!(
            shipped = self.shared.shipped.load(Ordering::Relaxed),
            spooled_at_shutdown = leftovers,
            spool_events = self.spool.pending_events(),
            spool_bytes = self.spool.bytes(),
            "decision shipper stopped"
        );
    }
}

/// Sends one event with its id as `Nats-Msg-Id`; the ack comes later through the future.
async fn publish(js: &jetstream::Context, event: &Outgoing) -> Result<PublishAckFuture, Failure> {
    check_event(event).map_err(Failure::Invalid)?;
    let id = event
        .id
        .parse::<async_nats::HeaderValue>()
        .map_err(|_| Failure::Invalid("the id cannot be a header value"))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    js.publish_with_headers(event.subject.clone(), headers, event.payload.clone())
        .await
        .map_err(Failure::Publish)
}

/// Why `event` can never be published (or spooled), if so: the subject must be a NATS publish
/// subject (dot-separated non-empty tokens, no wildcards, whitespace or control characters),
/// the id a non-empty header value, and both must fit a spool record.
pub fn check_event(event: &Outgoing) -> Result<(), &'static str> {
    let subject = event.subject.as_str();
    if subject.is_empty() {
        return Err("empty subject");
    }
    if subject.len() > usize::from(u16::MAX) {
        return Err("subject too long");
    }
    if subject
        .split('.')
        .any(|token| token.is_empty() || token == "*" || token == ">")
    {
        return Err("subject has an empty or wildcard token");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("subject contains whitespace or control characters");
    }
    if event.id.is_empty() {
        return Err("empty id");
    }
    if event.id.len() > usize::from(u16::MAX) {
        return Err("id too long");
    }
    if event.id.chars().any(char::is_control) {
        return Err("id contains control characters");
    }
    if event.payload.len() > spool::MAX_RECORD_BYTES as usize {
        return Err("payload larger than 64 MiB");
    }
    Ok(())
}

async fn wait_sync(
    sync: &mut Option<JoinHandle<Result<(), SpoolError>>>,
) -> Result<Result<(), SpoolError>, tokio::task::JoinError> {
    match sync {
        Some(handle) => handle.await,
        None => std::future::pending().await,
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

    fn event(subject: &str, id: &str) -> Outgoing {
        Outgoing {
            subject: subject.into(),
            id: id.into(),
            payload: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn events_that_can_never_be_published_are_refused() {
        assert_eq!(
            check_event(&event("aegis.decisions.acme.gw-1", "evt-1")),
            Ok(())
        );
        for (subject, id) in [
            ("", "a"),
            ("aegis..acme", "a"),
            ("aegis.decisions.", "a"),
            ("aegis.decisions.*", "a"),
            ("aegis.decisions.>", "a"),
            ("aegis.decisions.a b", "a"),
            ("aegis.decisions.a\tb", "a"),
            ("aegis.decisions.acme", ""),
            ("aegis.decisions.acme", "a\r\nNats-Expected-Stream: X"),
        ] {
            assert!(
                check_event(&event(subject, id)).is_err(),
                "{subject:?} {id:?}"
            );
        }
    }

    #[tokio::test]
    async fn submit_refuses_invalid_events_and_stops_after_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens there: the client never connects and events are spooled.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let handle = start(client, ShipperConfig::new(dir.path())).await.unwrap();
        assert!(matches!(
            handle.submit(event("aegis.decisions.acme.gw", "bad\nid")),
            Err(ShipError::Invalid(_))
        ));
        handle
            .submit(event("aegis.decisions.acme.gw", "ok"))
            .unwrap();
        handle.shutdown(Duration::from_secs(1)).await;
        let stats = handle.stats();
        assert_eq!((stats.spooled, stats.spool_events), (1, 1), "{stats:?}");
        assert_eq!(
            handle.submit(event("aegis.decisions.acme.gw", "late")),
            Err(ShipError::Closed)
        );
        // The spooled event is there for the next start.
        let (_, recovery) = Spool::open(dir.path(), SpoolOptions::for_max_bytes(1 << 20)).unwrap();
        assert_eq!(recovery.events, 1);
    }

    #[test]
    fn only_refusals_that_cannot_change_are_permanent() {
        assert!(Failure::Invalid("x").is_permanent());
        assert!(!Failure::Timeout(Duration::from_secs(1)).is_permanent());
        assert!(
            Failure::Publish(jetstream::context::PublishError::new(
                PublishErrorKind::MaxPayloadExceeded
            ))
            .is_permanent()
        );
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::MaxAckPending,
            PublishErrorKind::Other,
        ] {
            assert!(!Failure::Publish(jetstream::context::PublishError::new(kind)).is_permanent());
        }
    }
}
