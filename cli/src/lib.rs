#![doc = include_str!("../README.md")]
//!
//! Every command is a library function taking its options and a writer for its output and
//! returning an [`exit::Exit`] code (or an [`exit::CliError`] carrying one); `main.rs` only
//! parses arguments.

pub mod bundle;
pub mod diff;
pub mod duration;
pub mod eval;
pub mod exit;
pub mod init;
pub mod keys;
pub mod lint;
pub mod online;
pub mod output;
pub mod test;
pub mod token;
pub mod up;
