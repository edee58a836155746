#![doc = include_str!("../README.md")]

pub mod config;
pub mod decide;
pub mod http;
pub mod metrics;
pub mod telemetry_glue;
pub mod tenants;
