//! Publishing approval requests on `AEGIS_APPROVALS`, off the request path.
//!
//! One background task drains a bounded queue and publishes each request on
//! `aegis.approvals.<tenant>.<approval_id>` with `Nats-Msg-Id` = the approval id (so a retry
//! after a lost ack is not stored twice), retrying with backoff; a request that still cannot be
//! published is logged and counted (`aegis_approval_requests_total{outcome="failed"}`) — the
//! agent's retry then finds nothing and is denied `approval_unknown`. At shutdown the task
//! publishes what is still queued, within a deadline ([`super::Approvals::shutdown`]).

use super::ApprovalStats;
use aegis_core::approvals::ApprovalRequested;
use async_nats::jetstream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// First pause between tries; doubled each time, at most [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bound on one publish (send + ack).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The running publisher.
#[derive(Debug)]
pub struct Publisher {
    pub queue: mpsc::Sender<ApprovalRequested>,
    /// Notified once at shutdown: publish what is queued, then stop.
    pub closing: Arc<Notify>,
    pub task: JoinHandle<()>,
}

/// Starts the publisher.
pub fn spawn_publisher(
    js: jetstream::Context,
    capacity: usize,
    tries: u32,
    stats: Arc<ApprovalStats>,
) -> Publisher {
    let (queue, mut rx) = mpsc::channel::<ApprovalRequested>(capacity);
    let closing = Arc::new(Notify::new());
    let close = closing.clone();
    let task = tokio::spawn(async move {
        let publish = |requested: ApprovalRequested| {
            let (js, stats) = (js.clone(), stats.clone());
            async move {
                if publish_one(&js, &requested, tries).await {
                    ApprovalStats::inc(&stats.requests_published);
                } else {
                    ApprovalStats::inc(&stats.requests_failed);
                }
            }
        };
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(requested) => publish(requested).await,
                    None => return,
                },
                () = close.notified() => {
                    while let Ok(requested) = rx.try_recv() {
                        publish(requested).await;
                    }
                    return;
                }
            }
        }
    });
    Publisher {
        queue,
        closing,
        task,
    }
}

async fn publish_one(js: &jetstream::Context, requested: &ApprovalRequested, tries: u32) -> bool {
    let id = &requested.approval_id;
    let subject = match aegis_nats::topology::approvals_subject(&requested.tenant, id) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(approval_id = %id, error = %e, "approval request has no subject");
            return false;
        }
    };
    let payload = match aegis_core::canonical::to_canonical_vec_of(requested) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(approval_id = %id, error = %e, "cannot encode an approval request");
            return false;
        }
    };
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=tries {
        let message = aegis_nats::Publish::new(subject.clone(), payload.clone()).msg_id(id.clone());
        let error = match tokio::time::timeout(PUBLISH_TIMEOUT, aegis_nats::publish(js, message))
            .await
        {
            Ok(Ok(ack)) => {
                tracing::info!(approval_id = %id, tenant = %requested.tenant, seq = ack.sequence, "approval requested");
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no ack within {} ms", PUBLISH_TIMEOUT.as_millis()),
        };
        if attempt == tries {
            tracing::error!(approval_id = %id, tenant = %requested.tenant, error, attempts = tries, "approval request could not be published: it cannot be granted");
            return false;
        }
        tracing::warn!(approval_id = %id, error, attempt, "publishing an approval request failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    false
}
