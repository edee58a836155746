#![doc = include_str!("../README.md")]

pub mod candidate;
pub mod engine;
pub mod histogram;
pub mod html;
pub mod markdown;
pub mod report;
pub mod run;
pub mod slice;
pub mod source;
pub mod thresholds;

pub use candidate::{Candidate, CandidateError, CandidateInfo, CandidateKind};
pub use engine::{Engine, EngineError, EngineOptions, NotReplayable, Session, Tally, Transition};
pub use report::Report;
pub use run::{ReplayError, mark_thresholds, replay};
pub use slice::{Bounds, Filter, SliceSpec};
pub use source::{Record, SkipCause, SliceReader, SourceError};
