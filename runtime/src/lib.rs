//! What every AI Core domain runs on, and nothing domain-specific: the store (a
//! write-ahead log with group commit in front of redb, memory layers, caches), the
//! transactional outbox and its relay, idempotency records, paging and validation
//! helpers, the JetStream streams' shapes, the NATS micro-protocol serving with its
//! central policy check, and the handler context. Domains (the `aicore-domains` crate)
//! build on it; it imports none of them.
//!
//! A domain is a type implementing [`Domain`]: its configuration section and how to build
//! its server from a [`Ctx`] and that section. The domains crate lists them in one place,
//! from which the registry and the configuration struct are generated.

pub mod calendar;
mod ctx;
mod durable;
pub mod facts;
mod fs;
pub mod idempotency;
pub mod metrics;
mod micro;
pub mod outbox;
pub mod paging;
mod sched;
pub mod serve;
pub mod store;
pub mod streams;
pub mod template;
pub mod trace;
pub mod validate;
mod wal;
mod writes;

use std::sync::Arc;

use aicore_proto::{Dispatch, Status};

pub use ctx::{Clock, Ctx, ManualClock, SystemClock, millis, new_id, timestamp, timestamp_ms};
pub use store::Store;

/// A domain: its `[domains.<name>]` configuration section and how to build its server.
/// The domains crate registers each one by one line.
pub trait Domain {
    /// Its configuration section; every field has a default.
    type Config: Default
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static;

    /// Builds the domain's server (its generated `XxxServer` around the domain) on a
    /// context with its configuration, starting whatever background work it owns (which
    /// ends with `ctx.shutdown`).
    fn build(ctx: &Ctx, config: &Self::Config) -> Result<Arc<dyn Dispatch>, Status>;
}
