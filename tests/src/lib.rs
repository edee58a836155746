#![doc = include_str!("../README.md")]

pub mod nats_server;

pub use nats_server::{NatsServer, NatsServerError, NatsServerOptions};
