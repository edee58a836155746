//! Runtime approvals at the gateway (the wire contract: [`aegis_core::approvals`]).
//!
//! - **Request** ([`request`]): when the policy answers `approval_needed` and the call carries no
//!   approval id, the decision path mints `apr-<32 hex>` and hands an
//!   [`ApprovalRequested`](aegis_core::approvals::ApprovalRequested) to a background task
//!   through a bounded queue; the task publishes it on `aegis.approvals.<tenant>.<id>`
//!   (`Nats-Msg-Id` = the approval id) with retries. The request path never waits on NATS. A
//!   full queue is counted and the call is denied (`approval_unavailable`): an approval nobody
//!   can see could never be granted, so saying `approval_needed` would only make the agent wait.
//! - **Webhook** ([`webhook`]): the same request is posted as a Slack-compatible message to
//!   `--approval-webhook`, from another background task (bounded queue, timeouts, retries).
//! - **Retry** ([`grant`]): a call that carries `approval_id`, and that the policy still answers
//!   `approval_needed`, is checked against the last message on the approval's subject. A
//!   verified, unexpired grant for exactly this call is consumed by publishing
//!   [`ApprovalConsumed`](aegis_core::approvals::ApprovalConsumed) with
//!   `Nats-Expected-Last-Subject-Sequence` = the grant's sequence: of any number of gateways
//!   racing for one grant exactly one wins. Everything else is a deny (or, while nobody has
//!   decided, `approval_needed` again), and any error fails closed.

pub mod grant;
pub mod request;
pub mod webhook;

use aegis_core::approvals::ApprovalRequested;
use aegis_core::keys::TrustStore;
use async_nats::jetstream;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

pub use grant::{Checked, Grant};

/// Why approvals could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalsError {
    #[error("--approval-webhook {url:?}: {reason}")]
    Webhook { url: String, reason: String },
}

/// How approvals behave.
#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    /// Where approval requests are posted as Slack-compatible messages (`https://` or `http://`).
    pub webhook: Option<String>,
    /// Requests waiting to be published (and, separately, posted), at most.
    pub queue_capacity: usize,
    /// Tries to publish one request before giving up on it.
    pub publish_tries: u32,
    /// Bound on reading an approval's subject and on consuming a grant, each.
    pub check_timeout: Duration,
    /// Bound on one webhook post.
    pub webhook_timeout: Duration,
    /// Tries to post one message.
    pub webhook_tries: u32,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            queue_capacity: 1024,
            publish_tries: 5,
            check_timeout: Duration::from_secs(2),
            webhook_timeout: Duration::from_secs(5),
            webhook_tries: 3,
        }
    }
}

/// Counters reported on `/metrics`.
#[derive(Debug, Default)]
pub struct ApprovalStats {
    pub requests_published: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_queue_full: AtomicU64,
    pub webhook_ok: AtomicU64,
    pub webhook_failed: AtomicU64,
    pub webhook_queue_full: AtomicU64,
    pub grants_consumed: AtomicU64,
    /// Retries refused, by outcome.
    pub retries_refused: AtomicU64,
    pub checks_unavailable: AtomicU64,
}

impl ApprovalStats {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let series: [(&str, &str, &str, u64); 9] = [
            (
                "aegis_approval_requests_total",
                "Approval requests, by outcome: published on AEGIS_APPROVALS, failed after every retry, or refused because the queue was full (the call was then denied).",
                "outcome=\"published\"",
                get(&self.requests_published),
            ),
            (
                "aegis_approval_requests_total",
                "",
                "outcome=\"failed\"",
                get(&self.requests_failed),
            ),
            (
                "aegis_approval_requests_total",
                "",
                "outcome=\"queue_full\"",
                get(&self.requests_queue_full),
            ),
            (
                "aegis_approval_webhook_posts_total",
                "Approval requests posted to the webhook, by outcome.",
                "outcome=\"ok\"",
                get(&self.webhook_ok),
            ),
            (
                "aegis_approval_webhook_posts_total",
                "",
                "outcome=\"failed\"",
                get(&self.webhook_failed),
            ),
            (
                "aegis_approval_webhook_posts_total",
                "",
                "outcome=\"queue_full\"",
                get(&self.webhook_queue_full),
            ),
            (
                "aegis_approval_retries_total",
                "Calls retried with an approval id, by outcome: a grant consumed (allowed), refused, or not checkable (NATS away: denied).",
                "outcome=\"consumed\"",
                get(&self.grants_consumed),
            ),
            (
                "aegis_approval_retries_total",
                "",
                "outcome=\"refused\"",
                get(&self.retries_refused),
            ),
            (
                "aegis_approval_retries_total",
                "",
                "outcome=\"unavailable\"",
                get(&self.checks_unavailable),
            ),
        ];
        for (name, help, labels, value) in series {
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
            }
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// The gateway's approvals: the request queue, the webhook queue, and grant checks.
pub struct Approvals {
    gateway_id: String,
    js: jetstream::Context,
    trust: Arc<TrustStore>,
    requests: mpsc::Sender<ApprovalRequested>,
    closing: Arc<tokio::sync::Notify>,
    publisher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    webhook: Option<webhook::WebhookHandle>,
    check_timeout: Duration,
    pub stats: Arc<ApprovalStats>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("gateway_id", &self.gateway_id)
            .field("webhook", &self.webhook.as_ref().map(|w| w.url()))
            .finish_non_exhaustive()
    }
}

/// Why a request could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the approval request queue is full")]
pub struct QueueFull;

impl Approvals {
    /// Starts the background tasks (needs a tokio runtime). `trust` is the gateway's trust
    /// store: grants must be signed by one of its keys (the control plane's).
    pub fn start(
        gateway_id: String,
        js: jetstream::Context,
        trust: Arc<TrustStore>,
        config: &ApprovalsConfig,
    ) -> Result<Approvals, ApprovalsError> {
        let stats = Arc::new(ApprovalStats::default());
        let webhook = match &config.webhook {
            Some(url) => Some(webhook::WebhookHandle::start(url, config, stats.clone())?),
            None => None,
        };
        let publisher = request::spawn_publisher(
            js.clone(),
            config.queue_capacity.max(1),
            config.publish_tries.max(1),
            stats.clone(),
        );
        Ok(Approvals {
            gateway_id,
            js,
            trust,
            requests: publisher.queue,
            closing: publisher.closing,
            publisher: std::sync::Mutex::new(Some(publisher.task)),
            webhook,
            check_timeout: config.check_timeout,
            stats,
        })
    }

    /// Hands a request to the publisher (and the webhook). Never blocks. `Err` when the
    /// publisher's queue is full: the request would never be seen, so the caller denies.
    pub fn submit(&self, requested: ApprovalRequested) -> Result<(), QueueFull> {
        let for_webhook = self.webhook.as_ref().map(|_| requested.clone());
        let id = requested.approval_id.clone();
        if self.requests.try_send(requested).is_err() {
            ApprovalStats::inc(&self.stats.requests_queue_full);
            tracing::error!(approval_id = %id, "approval request queue full: the call is denied (approval_unavailable)");
            return Err(QueueFull);
        }
        if let (Some(webhook), Some(requested)) = (&self.webhook, for_webhook) {
            webhook.submit(requested);
        }
        Ok(())
    }

    /// At shutdown (after the HTTP server stopped): publishes the requests still queued,
    /// waiting at most `deadline`; what is left is logged (those approvals cannot be granted:
    /// the agents' retries get `approval_unknown`).
    pub async fn shutdown(&self, deadline: Duration) {
        let task = self.publisher.lock().ok().and_then(|mut t| t.take());
        let Some(task) = task else {
            return;
        };
        let queued = self.requests.max_capacity() - self.requests.capacity();
        self.closing.notify_one();
        if tokio::time::timeout(deadline, task).await.is_err() {
            tracing::warn!(
                queued,
                "approval requests still queued at shutdown were not published"
            );
        }
    }

    /// The gateway id written into consumption records.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }
}
