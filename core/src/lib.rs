#![doc = include_str!("../README.md")]

pub mod bundle;
pub mod canonical;
pub mod decision;
pub mod decision_log;
pub mod diff;
pub mod eval;
pub mod events;
pub mod heartbeat;
pub mod ids;
pub mod keys;
pub mod policy;
pub mod query;
pub mod schemas;
pub mod token;
pub mod vectors;
