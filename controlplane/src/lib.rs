#![doc = include_str!("../README.md")]

pub mod bundles;
pub mod checks;
pub mod fold;
pub mod queries;
pub mod readiness;
pub mod records;
pub mod runtime;
pub mod store;

pub use fold::{Applied, FoldConfig, Folder, InMessage};
pub use runtime::{RunConfig, RunError, RunSummary, run};
pub use store::{StateDigest, Store};
