#![doc = include_str!("../README.md")]

pub mod approvals;
pub mod bundles;
pub mod config;
pub mod decide;
pub mod heartbeat;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod runtime;
pub mod shipper;
pub mod telemetry;
pub mod tenants;
