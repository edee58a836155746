//! The event model: every change to a tenant's policies, actors, approvals, bundles and rollout
//! is one signed [`Envelope`] on NATS JetStream, and the control plane's state is a fold over them.
//!
//! - [`kinds`]: one struct per event and the [`Event`] enum that tags them (`type` + `payload`).
//! - [`envelope`]: the signed envelope, how it is signed and how a received one is checked.
//! - [`roles`]: the per-tenant roles and what each may do.
//! - [`chain`]: the SHA-256 hash chain over a tenant's events, and audit checkpoints.

pub mod chain;
pub mod envelope;
pub mod kinds;
pub mod roles;
pub mod schema;

pub use chain::{ChainEntry, ChainHead};
pub use envelope::{Envelope, EnvelopeError, ReceivedEnvelope, SCHEMA_VERSION};
pub use kinds::*;
pub use roles::{Role, RoleSet};
