//! `scope: global` counters, shared by every gateway in JetStream KV bucket `aegis-limits`
//! ([`aegis_nats::topology::LIMITS_KV`], provisioned with the rest of the topology; history 1,
//! entries expire a month after their last update).
//!
//! One key per tenant, agent, tool, limit and window:
//! `<tenant>.<sha256 hex of ["<agent>","<tool>","<what>",<window_seconds>]>.<window index>`,
//! where `<what>` is `calls` or `param:<name>` and the window index is unix time divided by the
//! window length. Ids may hold characters KV keys do not allow (`:`, `@`), hence the hash; the
//! tenant stays readable (a character other than a letter, digit, `-` or `_` is written `=XX`,
//! its hex code). A new window is a new key, so windows roll over without a reset, and old keys
//! go with the bucket's `max_age`. The value is the count, or the budget's sum, as a decimal
//! string (`"17"`, `"6000.5"`).
//!
//! Updates are compare-and-set: the value is written with the revision it was computed from
//! (`Nats-Expected-Last-Subject-Sequence`; revision 0 creates a key that does not exist yet, as
//! `kv.create` does), and a conflict — another gateway wrote first — re-reads the key and tries
//! again (after a short random pause when the value it had just read was beaten too), at most
//! [`MAX_ATTEMPTS`] times. The last value and revision this gateway saw of each
//! counter is kept in memory and the update is tried with it directly, so while one gateway
//! counts a key alone a call costs one KV round trip; a conflict costs a read and another
//! write. Counts only grow within a window (except for a take-back), so a value seen is a
//! lower bound: a call that fits it is written optimistically and the write's revision check
//! decides; a call that does not fit is refused only after a fresh read.
//!
//! Within one gateway, calls on the same counter take turns (an async mutex per counter, taken
//! in key order when a rule has several), so they do not conflict with each other.
//!
//! Every call is bounded by a deadline (`--global-limit-timeout-ms`, 250 ms by default) covering
//! the wait for its turn, opening the bucket, reads and writes. NATS not connected, a deadline
//! passed, an error or too many conflicts: the call is denied with `limit_unavailable`. A write
//! whose answer did not arrive in time may still have been applied, and a call abandoned half
//! way (its client went away and the request was dropped) takes nothing back: the counter is
//! then over by that call (stricter, never looser).
//!
//! Gateways must keep their clocks in sync: windows are aligned to each gateway's own clock.

use super::{Exceeded, Subject, Want};
use async_nats::connection::State;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Mutex as AsyncMutex, OnceCell, OwnedMutexGuard};
use tokio::time::{Instant, timeout_at};

/// Compare-and-set attempts on one counter before the call is denied (`limit_unavailable`).
/// Optimistic updates are not fair: a gateway writing a hot counter back to back, from what
/// it wrote last, wins over one that must read first; a loser backs off (a random pause that
/// grows with the attempts, see [`backoff`]) and tries again, within the call's deadline.
pub const MAX_ATTEMPTS: u32 = 32;
/// The default bound on the global part of one decision.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Most counters whose last value is remembered; past it, those not in use are forgotten.
const MAX_SLOTS: usize = 100_000;

/// Why the shared counters could not be used.
#[derive(Debug, thiserror::Error)]
enum KvError {
    #[error("NATS is not connected")]
    NotConnected,
    #[error("no answer from NATS within {0:?}")]
    Timeout(Duration),
    #[error("cannot open KV bucket {bucket}: {reason}")]
    Open { bucket: String, reason: String },
    #[error("reading {key}: {reason}")]
    Read { key: String, reason: String },
    #[error("writing {key}: {reason}")]
    Write { key: String, reason: String },
    #[error("{key} holds {value:?}, not a count")]
    BadValue { key: String, value: String },
    #[error("{key} changed under {MAX_ATTEMPTS} attempts in a row")]
    Conflicts { key: String },
}

impl From<KvError> for Exceeded {
    fn from(e: KvError) -> Self {
        Exceeded::unavailable(format!(
            "the global limit counters cannot be reached ({e}): the call is denied"
        ))
    }
}

/// What this gateway last saw of a counter.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The window the value belongs to.
    index: i64,
    value: f64,
    /// The KV revision holding `value`.
    revision: u64,
}

/// A counter's turn-taking lock and its last seen value (`None`: nothing known).
type Slot = Arc<AsyncMutex<Option<Seen>>>;

/// A counter held for one call.
struct Held {
    want: Want,
    /// The KV key: `<base>.<window index>`.
    key: String,
    slot: OwnedMutexGuard<Option<Seen>>,
}

impl Held {
    /// The value and revision to compute from, as far as this gateway knows (0 and revision 0
    /// — "absent" — for a window it has not seen).
    fn known(&self) -> (f64, u64) {
        match *self.slot {
            Some(seen) if seen.index == self.want.index => (seen.value, seen.revision),
            _ => (0.0, 0),
        }
    }

    fn remember(&mut self, value: f64, revision: u64) {
        *self.slot = Some(Seen {
            index: self.want.index,
            value,
            revision,
        });
    }
}

/// The shared counters, as one gateway uses them.
pub struct GlobalCounters {
    client: async_nats::Client,
    js: jetstream::Context,
    bucket: String,
    store: OnceCell<kv::Store>,
    slots: Mutex<HashMap<String, Slot>>,
    timeout: Duration,
}

impl std::fmt::Debug for GlobalCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalCounters")
            .field("bucket", &self.bucket)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GlobalCounters {
    /// Counters in [`aegis_nats::topology::LIMITS_KV`] through `client`; the bucket is opened
    /// on first use (the gateway starts without NATS). `timeout` bounds each call.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self::with_bucket(client, aegis_nats::topology::LIMITS_KV, timeout)
    }

    /// [`GlobalCounters::new`] on another bucket.
    pub fn with_bucket(client: async_nats::Client, bucket: &str, timeout: Duration) -> Self {
        Self {
            js: aegis_nats::jetstream(client.clone()),
            client,
            bucket: bucket.to_owned(),
            store: OnceCell::new(),
            slots: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Checks the global counters of `wants` and counts the call in all of them, or in none.
    pub(super) async fn admit(&self, who: Subject<'_>, wants: &[Want]) -> Result<(), Exceeded> {
        let deadline = Instant::now() + self.timeout;
        if self.client.connection_state() != State::Connected {
            return Err(KvError::NotConnected.into());
        }
        let store = self.open(deadline).await?;

        // Take each counter's turn, in key order (no deadlock between rules sharing counters);
        // then check and count in the policy's order (rate limits first).
        let mut wanted: Vec<(String, usize, &Want)> = wants
            .iter()
            .enumerate()
            .map(|(i, w)| (counter_base(who, &w.what(), w.window_seconds), i, w))
            .collect();
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut held = Vec::with_capacity(wanted.len());
        for (base, i, want) in wanted {
            let slot = self.slot(&base);
            let guard = timeout_at(deadline, slot.lock_owned())
                .await
                .map_err(|_| KvError::Timeout(self.timeout))?;
            held.push((
                i,
                Held {
                    want: want.clone(),
                    key: format!("{base}.{}", want.index),
                    slot: guard,
                },
            ));
        }
        held.sort_by_key(|(i, _)| *i);
        let mut held: Vec<Held> = held.into_iter().map(|(_, h)| h).collect();

        // Check before counting: a counter known to be full is read again, and refuses the
        // call if it still is — before anything is counted.
        for h in &mut held {
            let (value, _) = h.known();
            if value + h.want.add > h.want.max() {
                let (value, _) = self.read(store, h, deadline).await?;
                if value + h.want.add > h.want.max() {
                    return Err(h.want.exceeded(who, value));
                }
            }
        }

        // Count, one counter after the other; on a refusal, take back what was counted.
        let mut counted = 0;
        let mut outcome = Ok(());
        for h in &mut held {
            match self.add(store, h, h.want.add, true, deadline).await {
                Ok(Ok(())) => counted += 1,
                Ok(Err(used)) => {
                    outcome = Err(h.want.exceeded(who, used));
                    break;
                }
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            }
        }
        if outcome.is_err() && counted > 0 {
            let deadline = Instant::now() + self.timeout;
            for h in held.iter_mut().take(counted) {
                let amount = -h.want.add;
                if let Err(e) = self.add(store, h, amount, false, deadline).await {
                    tracing::warn!(key = %h.key, error = %e, "a global limit counter could not be taken back: it is over-counted until its window ends");
                }
            }
        }
        outcome
    }

    /// The KV bucket, opened once.
    async fn open(&self, deadline: Instant) -> Result<&kv::Store, KvError> {
        let open = self
            .store
            .get_or_try_init(|| async { self.js.get_key_value(self.bucket.as_str()).await });
        match timeout_at(deadline, open).await {
            Ok(Ok(store)) => Ok(store),
            Ok(Err(e)) => Err(KvError::Open {
                bucket: self.bucket.clone(),
                reason: e.to_string(),
            }),
            Err(_) => Err(KvError::Timeout(self.timeout)),
        }
    }

    /// The counter's slot, created on first use.
    fn slot(&self, base: &str) -> Slot {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(slot) = slots.get(base) {
            return slot.clone();
        }
        if slots.len() >= MAX_SLOTS {
            // Forget the counters no call holds: only costs a read the next time.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let slot = Slot::default();
        slots.insert(base.to_owned(), slot.clone());
        slot
    }

    /// Reads the counter; remembers and returns its value and revision (0, 0 when absent).
    async fn read(
        &self,
        store: &kv::Store,
        h: &mut Held,
        deadline: Instant,
    ) -> Result<(f64, u64), KvError> {
        let entry = match timeout_at(deadline, store.entry(h.key.as_str())).await {
            Ok(Ok(entry)) => entry,
            Ok(Err(e)) => {
                *h.slot = None;
                return Err(KvError::Read {
                    key: h.key.clone(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                *h.slot = None;
                return Err(KvError::Timeout(self.timeout));
            }
        };
        let (value, revision) = match entry {
            None => (0.0, 0),
            Some(e) => match e.operation {
                kv::Operation::Put => (parse_value(&h.key, &e.value)?, e.revision),
                // Deleted or purged by hand: counts from zero, written over that revision.
                kv::Operation::Delete | kv::Operation::Purge => (0.0, e.revision),
            },
        };
        h.remember(value, revision);
        Ok((value, revision))
    }

    /// Adds `amount` to the counter with compare-and-set. With `bounded`, refuses (the inner
    /// `Err`, with the value counted so far) when the sum would exceed the limit.
    async fn add(
        &self,
        store: &kv::Store,
        h: &mut Held,
        amount: f64,
        bounded: bool,
        deadline: Instant,
    ) -> Result<Result<(), f64>, KvError> {
        let (mut value, mut revision) = h.known();
        let mut fresh = false;
        let mut attempt = 0;
        for _ in 0..MAX_ATTEMPTS {
            let next = (value + amount).max(0.0);
            if bounded && next > h.want.max() {
                if fresh {
                    return Ok(Err(value));
                }
                // What this gateway saw may be above the truth after a take-back: read first.
                (value, revision) = self.read(store, h, deadline).await?;
                fresh = true;
                continue;
            }
            let written = timeout_at(
                deadline,
                store.update(h.key.as_str(), format_value(next), revision),
            )
            .await;
            match written {
                Ok(Ok(new_revision)) => {
                    h.remember(next, new_revision);
                    return Ok(Ok(()));
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Computed from a value just read and still beaten: another gateway is
                    // writing this counter now; pause before reading again.
                    if fresh {
                        attempt += 1;
                        if timeout_at(deadline, tokio::time::sleep(backoff(attempt)))
                            .await
                            .is_err()
                        {
                            return Err(KvError::Timeout(self.timeout));
                        }
                    }
                    (value, revision) = self.read(store, h, deadline).await?;
                    fresh = true;
                }
                Ok(Err(e)) => {
                    // It may have been applied: read again next time.
                    *h.slot = None;
                    return Err(KvError::Write {
                        key: h.key.clone(),
                        reason: e.to_string(),
                    });
                }
                Err(_) => {
                    *h.slot = None;
                    return Err(KvError::Timeout(self.timeout));
                }
            }
        }
        Err(KvError::Conflicts { key: h.key.clone() })
    }
}

/// `<tenant>.<sha256 hex of [agent, tool, what, window_seconds]>`: the key of a counter without
/// its window index.
pub fn counter_base(who: Subject<'_>, what: &str, window_seconds: u64) -> String {
    let identity = serde_json::json!([who.agent, who.tool, what, window_seconds]).to_string();
    format!(
        "{}.{}",
        key_token(who.tenant),
        aegis_core::bundle::sha256_hex(identity.as_bytes())
    )
}

/// `<counter_base>.<window index>`: the KV key counting `what` for `who` at unix time `now`.
pub fn counter_key(who: Subject<'_>, what: &str, window_seconds: u64, now: i64) -> String {
    let w = window_seconds.max(1);
    format!(
        "{}.{}",
        counter_base(who, what, w),
        super::window_index(now, w)
    )
}

/// `value` with every character but letters, digits, `-` and `_` written `=XX` (hex): a KV
/// key token that stays readable for ordinary ids.
fn key_token(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("={b:02X}"));
            }
        }
    }
    out
}

/// A random pause after the `attempt`-th conflict on a value just read: up to 250 µs times
/// the attempt, at most 2 ms, so gateways contending for one counter spread out.
fn backoff(attempt: u32) -> Duration {
    let mut bytes = [0u8; 4];
    let random = match getrandom::fill(&mut bytes) {
        Ok(()) => u32::from_le_bytes(bytes),
        Err(_) => attempt.wrapping_mul(2_654_435_761),
    };
    let ceiling = 250 * attempt.clamp(1, 8);
    Duration::from_micros(u64::from(random % ceiling))
}

fn format_value(value: f64) -> Bytes {
    Bytes::from(value.to_string())
}

fn parse_value(key: &str, raw: &[u8]) -> Result<f64, KvError> {
    let bad = || KvError::BadValue {
        key: key.to_owned(),
        value: String::from_utf8_lossy(raw).chars().take(64).collect(),
    };
    let value: f64 = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(bad)?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn who(tenant: &'static str, agent: &'static str) -> Subject<'static> {
        Subject {
            tenant,
            agent,
            tool: "payments",
        }
    }

    #[test]
    fn keys_are_valid_kv_keys_with_a_readable_tenant_and_one_per_window() {
        let k = counter_key(
            who("acme", "finance-agent"),
            "param:amount",
            86_400,
            86_400 * 3 + 5,
        );
        let parts: Vec<&str> = k.split('.').collect();
        assert_eq!(parts.len(), 3, "{k}");
        assert_eq!(parts.first(), Some(&"acme"));
        assert_eq!(parts.get(1).map(|h| h.len()), Some(64));
        assert_eq!(parts.get(2), Some(&"3"));
        // Ids with characters KV keys refuse still make valid, distinct keys.
        let odd = counter_key(who("org:acme@eu", "agent/x:1"), "calls", 60, 0);
        assert!(odd.starts_with("org=3Aacme=40eu."), "{odd}");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)),
            "{odd}"
        );
        // Agent, tool, what and window each change the key; the window index only its end.
        let base = counter_base(who("acme", "a"), "calls", 60);
        for other in [
            counter_base(who("acme", "b"), "calls", 60),
            counter_base(who("acme", "a"), "param:calls", 60),
            counter_base(who("acme", "a"), "calls", 61),
            counter_base(who("acme2", "a"), "calls", 60),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(
            counter_key(who("acme", "a"), "calls", 60, 119),
            format!("{base}.1")
        );
    }

    #[test]
    fn values_are_decimal_strings_and_anything_else_is_refused() {
        for v in [0.0, 17.0, 6000.5, 1e12] {
            let raw = format_value(v);
            assert_eq!(parse_value("k", &raw).unwrap(), v);
        }
        assert_eq!(&format_value(17.0)[..], b"17");
        for bad in [&b"x"[..], b"-1", b"NaN", b"inf", b""] {
            assert!(parse_value("k", bad).is_err(), "{bad:?}");
        }
    }
}
