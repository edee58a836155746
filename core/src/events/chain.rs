//! The audit hash chain over one tenant's change events, and checking a stream against the
//! signed checkpoints taken from it.
//!
//! Every message the control plane folds from `aegis.changes.<tenant>.>` — accepted or rejected,
//! because a refused forgery is part of the record too — becomes the next position of the chain,
//! except a repeat of an event id already folded (JetStream's duplicate window is finite, so the
//! fold drops those itself). With `h(x)` = lowercase hex SHA-256:
//!
//! ```text
//! event_hash(n) = h(raw message bytes)
//! head(0)       = h("aegis-audit-chain/v1\n" + tenant)
//! head(n)       = h(head(n-1) + ":" + event_hash(n))
//! ```
//!
//! A checkpoint ([`super::AuditCheckpoint`]) lists each position it covers with the event's
//! stream sequence, id and hash, so a verifier can name what is wrong and where.

use crate::ids::TenantId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// One position of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainEntry {
    /// 1-based position in the tenant's chain.
    pub position: u64,
    /// Stream sequence the event had in `AEGIS_CHANGES` when it was folded.
    pub seq: u64,
    /// The envelope id, or `-` for a message that was not an envelope.
    pub id: String,
    /// Hex SHA-256 of the raw message bytes.
    pub hash: String,
}

/// A chain head: hex SHA-256.
pub type ChainHead = String;

/// The head before any event of `tenant`.
pub fn genesis(tenant: &TenantId) -> ChainHead {
    hex::encode(Sha256::digest(
        format!("aegis-audit-chain/v1\n{tenant}").as_bytes(),
    ))
}

/// The hash of one raw message.
pub fn event_hash(raw: &[u8]) -> String {
    hex::encode(Sha256::digest(raw))
}

/// The head after appending an event with `event_hash` to `prev`.
pub fn link(prev: &str, event_hash: &str) -> ChainHead {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b":");
    h.update(event_hash.as_bytes());
    hex::encode(h.finalize())
}

/// The envelope id inside raw message bytes, or `-`.
pub fn raw_event_id(raw: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned())
}

/// A message read back from the stream.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub seq: u64,
    pub raw: Vec<u8>,
}

/// What is wrong at one position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The event is there but its bytes differ from what was checkpointed.
    Edited,
    /// A checkpointed event is not in the stream.
    Missing,
    /// The event is in the stream, but not where it was checkpointed.
    Reordered,
    /// An event in the checkpointed range that no checkpoint lists.
    Inserted,
    /// A checkpoint that does not chain onto the previous one or whose head does not match its
    /// entries.
    BrokenCheckpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// Position in the chain as checkpointed (for `inserted`: the position in the stream).
    pub position: u64,
    pub event_id: String,
    /// The stream sequence recorded in the checkpoint (or found in the stream for `inserted`).
    pub seq: u64,
    pub detail: String,
}

/// The result of checking a stream against its checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// Positions covered by checkpoints.
    pub checkpointed: u64,
    /// Events in the stream (after dropping repeated ids).
    pub events: u64,
    /// Events after the last checkpoint: not yet covered, so not verified.
    pub unverified_tail: u64,
    /// The head recomputed from the stream at the last checkpointed position, when it got there.
    pub head: Option<ChainHead>,
    pub findings: Vec<Finding>,
}

impl ChainReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Positions the fold would give `messages` (in stream order): repeats of an id already seen
/// are dropped; each remaining message gets the next position.
pub fn entries(messages: &[StreamMessage]) -> Vec<ChainEntry> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let id = raw_event_id(&m.raw);
        if id != "-" && !seen.insert(id.clone()) {
            continue;
        }
        out.push(ChainEntry {
            position: out.len() as u64 + 1,
            seq: m.seq,
            id,
            hash: event_hash(&m.raw),
        });
    }
    out
}

/// Checks `messages` (the tenant's events in stream order) against `checkpoints` (already
/// signature-checked, in stream order).
pub fn verify(
    tenant: &TenantId,
    messages: &[StreamMessage],
    checkpoints: &[super::AuditCheckpoint],
) -> ChainReport {
    let actual = entries(messages);
    let mut report = ChainReport {
        events: actual.len() as u64,
        ..ChainReport::default()
    };

    // 1. The checkpoints must form one chain on their own.
    let mut expected: Vec<ChainEntry> = Vec::new();
    let mut head = genesis(tenant);
    for cp in checkpoints {
        let mut broken = |detail: String| {
            report.findings.push(Finding {
                kind: FindingKind::BrokenCheckpoint,
                position: cp.from_position,
                event_id: String::new(),
                seq: cp.entries.first().map(|e| e.seq).unwrap_or_default(),
                detail,
            })
        };
        if cp.from_position != expected.len() as u64 + 1 || cp.previous_head != head {
            broken(format!(
                "checkpoint for positions {}..={} does not continue the chain at position {}",
                cp.from_position,
                cp.to_position,
                expected.len() + 1
            ));
        }
        let mut h = cp.previous_head.clone();
        for (i, e) in cp.entries.iter().enumerate() {
            if e.position != cp.from_position + i as u64 {
                broken(format!("entry {} has position {}", i, e.position));
            }
            h = link(&h, &e.hash);
        }
        if h != cp.head || cp.to_position + 1 != cp.from_position + cp.entries.len() as u64 {
            broken(format!(
                "checkpoint head for positions {}..={} does not match its entries",
                cp.from_position, cp.to_position
            ));
        }
        head = cp.head.clone();
        expected.extend(cp.entries.iter().cloned());
    }
    report.checkpointed = expected.len() as u64;

    // 2. Compare what was checkpointed with what the stream holds now.
    let by_id: HashMap<&str, (usize, &ChainEntry)> = actual
        .iter()
        .enumerate()
        .filter(|(_, e)| e.id != "-")
        .map(|(i, e)| (e.id.as_str(), (i, e)))
        .collect();
    let mut last_index: Option<usize> = None;
    for (pos, exp) in expected.iter().enumerate() {
        let here = actual.get(pos);
        let found = if exp.id == "-" {
            here.filter(|a| a.hash == exp.hash).map(|a| (pos, a))
        } else {
            by_id.get(exp.id.as_str()).copied()
        };
        let finding = |kind, detail: String| Finding {
            kind,
            position: exp.position,
            event_id: exp.id.clone(),
            seq: exp.seq,
            detail,
        };
        match found {
            None => report.findings.push(finding(
                FindingKind::Missing,
                format!(
                    "event {} (stream sequence {}) is not in the stream",
                    exp.id, exp.seq
                ),
            )),
            Some((index, got)) => {
                if got.hash != exp.hash {
                    report.findings.push(finding(
                        FindingKind::Edited,
                        format!(
                            "event {} at stream sequence {} differs from what was checkpointed (sha256 {} , was {})",
                            exp.id, got.seq, got.hash, exp.hash
                        ),
                    ));
                }
                if last_index.is_some_and(|last| index < last) {
                    report.findings.push(finding(
                        FindingKind::Reordered,
                        format!(
                            "event {} was checkpointed at position {} but comes earlier in the stream (position {})",
                            exp.id,
                            exp.position,
                            index + 1
                        ),
                    ));
                }
                last_index = Some(last_index.map_or(index, |l| l.max(index)));
            }
        }
    }
    // Events the checkpoints never listed, inside the checkpointed range.
    let listed: BTreeMap<&str, ()> = expected.iter().map(|e| (e.id.as_str(), ())).collect();
    let covered_seq = expected.iter().map(|e| e.seq).max().unwrap_or(0);
    for a in &actual {
        if a.seq <= covered_seq && a.id != "-" && !listed.contains_key(a.id.as_str()) {
            report.findings.push(Finding {
                kind: FindingKind::Inserted,
                position: a.position,
                event_id: a.id.clone(),
                seq: a.seq,
                detail: format!(
                    "event {} at stream sequence {} is in the checkpointed range but no checkpoint lists it",
                    a.id, a.seq
                ),
            });
        }
    }
    report.unverified_tail = actual.iter().filter(|a| a.seq > covered_seq).count() as u64;
    if report.findings.is_empty() && !expected.is_empty() {
        let mut h = genesis(tenant);
        for a in actual.iter().take(expected.len()) {
            h = link(&h, &a.hash);
        }
        report.head = Some(h);
    }
    report
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
    use crate::events::AuditCheckpoint;

    fn msg(seq: u64, id: &str, body: &str) -> StreamMessage {
        StreamMessage {
            seq,
            raw: format!(r#"{{"id":"{id}","body":"{body}"}}"#).into_bytes(),
        }
    }

    fn checkpoint(
        tenant: &TenantId,
        prev: &[ChainEntry],
        entries: &[ChainEntry],
    ) -> AuditCheckpoint {
        let mut head = genesis(tenant);
        for e in prev {
            head = link(&head, &e.hash);
        }
        let previous_head = head.clone();
        for e in entries {
            head = link(&head, &e.hash);
        }
        AuditCheckpoint {
            from_position: prev.len() as u64 + 1,
            to_position: (prev.len() + entries.len()) as u64,
            previous_head,
            head,
            entries: entries.to_vec(),
        }
    }

    fn setup() -> (TenantId, Vec<StreamMessage>, Vec<AuditCheckpoint>) {
        let t = TenantId::new("acme").unwrap();
        let msgs: Vec<_> = (1..=6).map(|i| msg(i, &format!("e{i}"), "x")).collect();
        let all = entries(&msgs);
        let cps = vec![
            checkpoint(&t, &[], &all[..3]),
            checkpoint(&t, &all[..3], &all[3..]),
        ];
        (t, msgs, cps)
    }

    #[test]
    fn untouched_stream_verifies() {
        let (t, msgs, cps) = setup();
        let r = verify(&t, &msgs, &cps);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.checkpointed, 6);
        assert!(r.head.is_some());
    }

    #[test]
    fn finds_edited_missing_reordered_and_inserted_by_position() {
        let (t, msgs, cps) = setup();
        let mut edited = msgs.clone();
        edited[3] = msg(4, "e4", "y");
        let r = verify(&t, &edited, &cps);
        assert_eq!(r.findings.len(), 1, "{r:?}");
        assert_eq!(
            (r.findings[0].kind.clone(), r.findings[0].position),
            (FindingKind::Edited, 4)
        );

        let mut dropped = msgs.clone();
        dropped.remove(1);
        let r = verify(&t, &dropped, &cps);
        assert_eq!(r.findings.len(), 1, "{r:?}");
        assert_eq!(
            (r.findings[0].kind.clone(), r.findings[0].position),
            (FindingKind::Missing, 2)
        );

        let mut swapped = msgs.clone();
        swapped.swap(2, 4);
        let r = verify(&t, &swapped, &cps);
        assert!(
            r.findings.iter().any(|f| f.kind == FindingKind::Reordered),
            "{r:?}"
        );

        let mut inserted = msgs.clone();
        inserted.insert(2, msg(3, "evil", "z"));
        let r = verify(&t, &inserted, &cps);
        assert!(
            r.findings
                .iter()
                .any(|f| f.kind == FindingKind::Inserted && f.event_id == "evil"),
            "{r:?}"
        );
    }

    #[test]
    fn repeated_ids_take_no_position() {
        let msgs = vec![msg(1, "a", "x"), msg(2, "a", "x"), msg(3, "b", "x")];
        let e = entries(&msgs);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].seq, 3);
        assert_eq!(e[1].position, 2);
    }
}
