#![doc = include_str!("../README.md")]

pub mod bundles;
pub mod cli;
pub mod controlplane;
pub mod flow;
pub mod gateway;
pub mod load;
pub mod nats_cluster;
pub mod nats_server;
pub mod process;
pub mod stack;
pub mod webhook;
pub mod workload;

pub use nats_cluster::NatsCluster;
pub use nats_server::{NatsServer, NatsServerError, NatsServerOptions};
