#![doc = include_str!("../README.md")]

pub mod audit;
pub mod candidate;
pub mod coverage;
pub mod decision_report;
pub mod engine;
pub mod histogram;
pub mod html;
pub mod markdown;
pub mod readiness;
pub mod report;
pub mod run;
mod schema_check;
pub mod slice;
pub mod source;
pub mod thresholds;

pub use audit::{AuditError, AuditOptions, AuditReport, Verdict, audit_replay};
pub use candidate::{Candidate, CandidateError, CandidateInfo, CandidateKind};
pub use coverage::{CoverageReport, coverage};
pub use decision_report::DecisionReport;
pub use engine::{Engine, EngineError, EngineOptions, NotReplayable, Session, Tally, Transition};
pub use report::Report;
pub use run::{ReplayError, mark_thresholds, replay};
pub use slice::{Bounds, Filter, SliceSpec};
pub use source::{Record, SkipCause, SliceReader, SourceError};
