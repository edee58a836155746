#![doc = include_str!("../README.md")]

pub mod conf;
pub mod connect;
pub mod ordered;
pub mod provision;
pub mod publish;
pub mod topology;

pub use connect::{ConnectError, ConnectOptions, connect, connect_with_events, jetstream};
pub use provision::{
    Outcome, ProvisionError, ProvisionOptions, ProvisionReport, ResourceKind, provision,
    provision_with,
};
pub use publish::{
    LastMessage, Publish, PublishAck, PublishError, ReadError, last_message, last_subject_sequence,
    publish,
};
pub use topology::{Topology, TopologyError};
