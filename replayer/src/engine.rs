//! The engine: every recorded decision re-evaluated against a candidate [`Evaluator`] and
//! compared with what was recorded.
//!
//! Work is spread over worker threads (one per core by default), each fed through its own
//! bounded channel, round robin, in stream order. Workers share the candidate evaluator, which
//! keeps one regorus VM per thread: there is no lock on the hot path. Each worker folds its
//! results into its own [`Tally`]; the tallies are merged when the slice is done. Nothing grows
//! with the slice but counters, a bounded number of examples and fixed-bucket histograms.
//!
//! The engine takes any evaluator and any source of [`Record`]s: a JetStream slice
//! ([`crate::source::SliceReader`]), or an iterator in a test or benchmark.

use crate::histogram::Histogram;
use crate::source::{Record, SkipCause};
use aegis_core::decision::{DecisionKind, Reason};
use aegis_core::decision_log::DecisionEvent;
use aegis_core::eval::Evaluator;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::thread::JoinHandle;
use tokio::sync::mpsc;

/// Reason codes only a gateway produces (limits, kill switch, approvals presented, transport
/// and bundle state): a decision carrying one was not made by the policy alone, so evaluating
/// the policy again cannot reproduce it.
pub const GATEWAY_REASON_CODES: &[&str] = &[
    "bad_request",
    "no_bundle",
    "bundle_expired",
    "decision_log_full",
    "internal_error",
    "agent_blocked",
    "tool_blocked",
    "controls_unavailable",
    "rate_limited",
    "budget_exceeded",
    "budget_param_invalid",
    "limit_unavailable",
    "approval_granted",
    "approval_unknown",
    "approval_pending",
    "approval_denied",
    "approval_used",
    "approval_expired",
    "approval_call_mismatch",
    "approval_unavailable",
];

/// Most distinct numeric parameters (tool, action, name) one run keeps a histogram for.
pub const MAX_HISTOGRAMS: usize = 64;

/// Why a recorded decision is not evaluated again. Never guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotReplayable {
    /// The policy masked parameters in the log (`masked_params`).
    MaskedParams,
    /// The caller's token did not verify: agent and tenant are claims, not facts.
    UnverifiedIdentity,
    /// No agent, tool or action was recorded (a malformed request).
    MissingInput,
    /// Decided by the gateway rather than the policy (rate limit, budget, block, approval
    /// presented, no bundle...): see [`GATEWAY_REASON_CODES`].
    DecidedByGateway,
}

impl NotReplayable {
    pub const ALL: [NotReplayable; 4] = [
        NotReplayable::MaskedParams,
        NotReplayable::UnverifiedIdentity,
        NotReplayable::MissingInput,
        NotReplayable::DecidedByGateway,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotReplayable::MaskedParams => "masked_params",
            NotReplayable::UnverifiedIdentity => "unverified_identity",
            NotReplayable::MissingInput => "missing_input",
            NotReplayable::DecidedByGateway => "decided_by_gateway",
        }
    }

    /// Why `event` cannot be replayed, if it cannot.
    pub fn of(event: &DecisionEvent) -> Option<NotReplayable> {
        if !event.identity_verified {
            Some(NotReplayable::UnverifiedIdentity)
        } else if !event.masked_params.is_empty() {
            Some(NotReplayable::MaskedParams)
        } else if event.agent_id.is_none() || event.tool_id.is_none() || event.action.is_none() {
            Some(NotReplayable::MissingInput)
        } else if event
            .reasons
            .iter()
            .any(|r| GATEWAY_REASON_CODES.contains(&r.code.as_str()))
        {
            Some(NotReplayable::DecidedByGateway)
        } else {
            None
        }
    }
}

/// A recorded and a candidate decision kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Transition {
    pub from: DecisionKind,
    pub to: DecisionKind,
}

impl Transition {
    pub fn is_change(self) -> bool {
        self.from != self.to
    }
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}→{}", self.from, self.to)
    }
}

/// One replayed decision whose outcome changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub decision_id: String,
    pub sequence: u64,
    pub time: String,
    pub agent: String,
    pub tool: String,
    pub action: String,
    pub recorded_reasons: Vec<String>,
    pub candidate_reasons: Vec<String>,
}

/// Counts for one agent or one tool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounts {
    /// Recorded decisions read (replayable or not).
    pub decisions: u64,
    pub replayed: u64,
    pub not_replayable: u64,
    /// Replayed decisions whose decision changed.
    pub changed: u64,
    /// Replayed decisions the candidate denies.
    pub candidate_denies: u64,
}

impl GroupCounts {
    fn merge(&mut self, o: &GroupCounts) {
        self.decisions += o.decisions;
        self.replayed += o.replayed;
        self.not_replayable += o.not_replayable;
        self.changed += o.changed;
        self.candidate_denies += o.candidate_denies;
    }
}

/// `(tool, action, parameter)`.
pub type ParamKey = (String, String, String);

/// The result of replaying records: counters, examples and histograms. Tallies of disjoint
/// record sets merge by [`Tally::merge`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Decision events that passed the filter.
    pub decisions: u64,
    pub replayed: u64,
    pub not_replayable: BTreeMap<NotReplayable, u64>,
    pub skipped: BTreeMap<SkipCause, u64>,
    /// Every replayed decision, by recorded → candidate decision (unchanged ones included).
    pub transitions: BTreeMap<Transition, u64>,
    /// Replayed decisions with the same decision but other reason codes.
    pub reasons_changed: u64,
    pub candidate_denies: u64,
    pub by_agent: BTreeMap<String, GroupCounts>,
    pub by_tool: BTreeMap<String, GroupCounts>,
    /// The first examples (by stream sequence) of each changed transition.
    pub examples: BTreeMap<Transition, Vec<Example>>,
    /// Numeric parameters of replayed calls.
    pub histograms: BTreeMap<ParamKey, Histogram>,
    /// Numeric parameters of the calls whose decision changed.
    pub changed_params: BTreeSet<ParamKey>,
    /// Recorded bundle versions of the replayed decisions, by `policy_version`/`bundle_digest`.
    pub recorded_versions: BTreeMap<(Option<u64>, Option<String>), u64>,
    /// How many examples to keep per transition.
    pub examples_limit: usize,
}

fn codes(reasons: &[Reason]) -> Vec<String> {
    reasons.iter().map(|r| r.code.clone()).collect()
}

impl Tally {
    pub fn new(examples_limit: usize) -> Tally {
        Tally {
            examples_limit,
            ..Tally::default()
        }
    }

    /// Counts a skipped record.
    pub fn skip(&mut self, cause: SkipCause) {
        *self.skipped.entry(cause).or_default() += 1;
    }

    /// Replays one recorded decision against `candidate` and counts it.
    pub fn replay(&mut self, sequence: u64, event: &DecisionEvent, candidate: &Evaluator) {
        self.decisions += 1;
        let agent = event
            .agent_id
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), |a| a.as_str().to_owned());
        let tool = event
            .tool_id
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), |t| t.as_str().to_owned());
        let input = NotReplayable::of(event).map_or_else(
            || event.replay_input().ok_or(NotReplayable::MissingInput),
            Err,
        );
        let input = match input {
            Ok(input) => input,
            Err(cause) => {
                *self.not_replayable.entry(cause).or_default() += 1;
                for group in [
                    self.by_agent.entry(agent).or_default(),
                    self.by_tool.entry(tool).or_default(),
                ] {
                    group.decisions += 1;
                    group.not_replayable += 1;
                }
                return;
            }
        };
        let decision = candidate.decide(&input);
        let transition = Transition {
            from: event.decision,
            to: decision.decision,
        };
        self.replayed += 1;
        *self.transitions.entry(transition).or_default() += 1;
        *self
            .recorded_versions
            .entry((event.policy_version, event.bundle_digest.clone()))
            .or_default() += 1;
        let recorded_codes = codes(&event.reasons);
        let candidate_codes = codes(&decision.reasons);
        let changed = transition.is_change();
        if !changed && recorded_codes != candidate_codes {
            self.reasons_changed += 1;
        }
        let denies = decision.decision == DecisionKind::Deny;
        if denies {
            self.candidate_denies += 1;
        }
        for group in [
            self.by_agent.entry(agent.clone()).or_default(),
            self.by_tool.entry(tool.clone()).or_default(),
        ] {
            group.decisions += 1;
            group.replayed += 1;
            group.changed += u64::from(changed);
            group.candidate_denies += u64::from(denies);
        }
        for (name, value) in &input.params {
            let Some(number) = value.as_f64() else {
                continue;
            };
            let key = (tool.clone(), input.action.clone(), name.clone());
            if changed {
                self.changed_params.insert(key.clone());
            }
            if !self.histograms.contains_key(&key) && self.histograms.len() >= MAX_HISTOGRAMS {
                continue;
            }
            self.histograms
                .entry(key)
                .or_default()
                .add(number, transition.from, transition.to);
        }
        if changed {
            let examples = self.examples.entry(transition).or_default();
            if examples.len() < self.examples_limit {
                examples.push(Example {
                    decision_id: event.id.clone(),
                    sequence,
                    time: event.time.clone(),
                    agent,
                    tool,
                    action: input.action,
                    recorded_reasons: recorded_codes,
                    candidate_reasons: candidate_codes,
                });
            }
        }
    }

    /// Adds `other` (a tally of other records) to this one.
    pub fn merge(&mut self, other: Tally) {
        self.decisions += other.decisions;
        self.replayed += other.replayed;
        for (k, n) in other.not_replayable {
            *self.not_replayable.entry(k).or_default() += n;
        }
        for (k, n) in other.skipped {
            *self.skipped.entry(k).or_default() += n;
        }
        for (k, n) in other.transitions {
            *self.transitions.entry(k).or_default() += n;
        }
        self.reasons_changed += other.reasons_changed;
        self.candidate_denies += other.candidate_denies;
        for (k, g) in &other.by_agent {
            self.by_agent.entry(k.clone()).or_default().merge(g);
        }
        for (k, g) in &other.by_tool {
            self.by_tool.entry(k.clone()).or_default().merge(g);
        }
        let limit = self.examples_limit.max(other.examples_limit);
        self.examples_limit = limit;
        for (t, mut list) in other.examples {
            let mine = self.examples.entry(t).or_default();
            mine.append(&mut list);
            mine.sort_by_key(|e| e.sequence);
            mine.truncate(limit);
        }
        for (k, h) in other.histograms {
            if !self.histograms.contains_key(&k) && self.histograms.len() >= MAX_HISTOGRAMS {
                continue;
            }
            self.histograms.entry(k).or_default().merge(h);
        }
        self.changed_params.extend(other.changed_params);
        for (k, n) in other.recorded_versions {
            *self.recorded_versions.entry(k).or_default() += n;
        }
    }
}

/// Why a replay could not finish.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start a replay worker: {0}")]
    Spawn(std::io::Error),
    #[error("a replay worker stopped early")]
    WorkerGone,
    #[error("a replay worker panicked")]
    WorkerPanicked,
}

/// How the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Records queued per worker before the reader waits.
    pub queue: usize,
    /// Examples kept per changed transition.
    pub examples: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            workers: 0,
            queue: 256,
            examples: 10,
        }
    }
}

/// Replays records against one candidate.
#[derive(Debug, Clone)]
pub struct Engine {
    candidate: Evaluator,
    options: EngineOptions,
}

impl Engine {
    pub fn new(candidate: Evaluator, options: EngineOptions) -> Engine {
        Engine { candidate, options }
    }

    /// The number of workers a session starts.
    pub fn workers(&self) -> usize {
        if self.options.workers > 0 {
            self.options.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Starts the workers.
    pub fn start(&self) -> Result<Session, EngineError> {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for i in 0..self.workers() {
            let (tx, mut rx) =
                mpsc::channel::<(u64, Box<DecisionEvent>)>(self.options.queue.max(1));
            let candidate = self.candidate.clone();
            let limit = self.options.examples;
            let handle = std::thread::Builder::new()
                .name(format!("aegis-replay-{i}"))
                .spawn(move || {
                    let mut tally = Tally::new(limit);
                    while let Some((sequence, event)) = rx.blocking_recv() {
                        tally.replay(sequence, &event, &candidate);
                    }
                    tally
                })
                .map_err(EngineError::Spawn)?;
            senders.push(tx);
            handles.push(handle);
        }
        Ok(Session {
            senders,
            handles,
            next: 0,
            local: Tally::new(self.options.examples),
        })
    }

    /// Replays every record of `records` (on the calling thread feeding the workers) and
    /// returns the merged tally. For sources that are not async: a test's or benchmark's
    /// iterator. Must not be called from inside an async runtime.
    pub fn replay_iter(
        &self,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Tally, EngineError> {
        let mut session = self.start()?;
        for record in records {
            session.push_blocking(record)?;
        }
        session.finish()
    }
}

/// A replay in progress: push records in stream order, then [`Session::finish`].
#[derive(Debug)]
pub struct Session {
    senders: Vec<mpsc::Sender<(u64, Box<DecisionEvent>)>>,
    handles: Vec<JoinHandle<Tally>>,
    next: usize,
    /// Skipped records are counted here, without a trip to a worker.
    local: Tally,
}

impl Session {
    fn route(&mut self, record: Record) -> Option<(usize, (u64, Box<DecisionEvent>))> {
        match record {
            Record::Skipped { cause, .. } => {
                self.local.skip(cause);
                None
            }
            Record::Decision { sequence, event } => {
                let worker = self.next;
                self.next = (self.next + 1) % self.senders.len().max(1);
                Some((worker, (sequence, event)))
            }
        }
    }

    /// Queues one record, waiting while its worker's queue is full.
    pub async fn push(&mut self, record: Record) -> Result<(), EngineError> {
        if let Some((worker, item)) = self.route(record) {
            let tx = self.senders.get(worker).ok_or(EngineError::WorkerGone)?;
            tx.send(item).await.map_err(|_| EngineError::WorkerGone)?;
        }
        Ok(())
    }

    /// [`Session::push`] from a thread outside any async runtime.
    pub fn push_blocking(&mut self, record: Record) -> Result<(), EngineError> {
        if let Some((worker, item)) = self.route(record) {
            let tx = self.senders.get(worker).ok_or(EngineError::WorkerGone)?;
            tx.blocking_send(item)
                .map_err(|_| EngineError::WorkerGone)?;
        }
        Ok(())
    }

    /// Closes the queues, waits for the workers and merges their tallies.
    pub fn finish(self) -> Result<Tally, EngineError> {
        drop(self.senders);
        let mut tally = self.local;
        for handle in self.handles {
            let part = handle.join().map_err(|_| EngineError::WorkerPanicked)?;
            tally.merge(part);
        }
        Ok(tally)
    }
}
