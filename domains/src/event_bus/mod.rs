//! event-bus: durable game events on JetStream, as a domain. Publish puts one message in
//! the stream its subject belongs to (`Nats-Msg-Id` = the caller's de-duplication id), Replay
//! streams stored history through an ordered ephemeral consumer, CreateConsumer / Fetch /
//! Ack are durable pull consumers, ListStreams and DeadLetters report. It keeps no redb
//! state: JetStream is the store. A client publish is not a state change of any domain, so
//! it goes straight to JetStream; events of domain state changes go through the outbox
//! ([`aicore_runtime::outbox`]) instead.
//!
//! Ack tokens are the `$JS.ACK.…` reply subjects JetStream gave each delivery: they carry
//! stream, consumer, stream sequence and delivery count, so Ack needs no memory between
//! calls and works from any replica.
//!
//! Dead letters: JetStream emits an advisory when a consumer gives up on a message
//! (`max_deliver` exhausted, or a TERM). [`aicore_runtime::streams`] keeps those advisories in the
//! `DLQ_ADVISORIES` stream, and [`run_dead_letters`] (`dead_letters.rs`, started by the
//! supervisor) turns each into a copy of the original message on `dlq.<stream>.<consumer>`
//! with headers naming its origin, deliveries and reason; the DLQ message id
//! (`dlq:<stream>:<consumer>:<seq>`) makes a repeat harmless. Because the advisories are
//! stored, none is lost while the task is down.
//!
//! Stream and subject layout: see [`aicore_runtime::streams`].

use std::collections::HashMap;
use std::time::Duration;

use aicore_proto::aicore::event_bus::v1::{
    AckKind, AckRequest, AckResponse, ConsumerInfo, CreateConsumerRequest, CreateConsumerResponse,
    DeadLetter, DeadLettersRequest, DeadLettersResponse, DeliverPolicy, EventBusHandler,
    EventMessage, FetchRequest, FetchResponse, ListStreamsRequest, ListStreamsResponse,
    PublishRequest, PublishResponse, ReplayCaughtUp, ReplayRequest, ReplayResponse, StreamInfo,
    replay_request, replay_response,
};
use aicore_proto::{Code, Request, Status, Streaming};
use async_nats::HeaderMap;
use async_nats::jetstream::context::{
    ConsumerInfoError, ConsumerInfoErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::{self, ErrorCode, consumer, stream};
use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt};

use aicore_runtime::streams::{self, DLQ, StreamDef};
use aicore_runtime::streams::{StreamLimits, StreamsConfig};
use aicore_runtime::{Ctx, paging};

mod checks;
mod convert;
mod dead_letters;
mod handlers;
#[cfg(test)]
mod tests;

pub use checks::*;
pub use convert::*;
pub use dead_letters::run_dead_letters;

/// Largest `data` of a Publish (the contract's limit).
const MAX_DATA_BYTES: usize = 1024 * 1024;
/// Longest subject accepted.
const MAX_SUBJECT_BYTES: usize = 256;
/// Longest `dedup_id`, in characters.
const MAX_DEDUP_ID_CHARS: usize = 128;
/// Longest consumer name.
const MAX_CONSUMER_NAME: usize = 64;
/// Most extra headers on one Publish.
const MAX_HEADERS: usize = 32;
/// Highest `max_deliver` a consumer may have (the contract's limit).
const MAX_MAX_DELIVER: u32 = 100;
/// Fetch: default and largest batch, longest wait (the contract's limits).
const DEFAULT_FETCH: u32 = 10;
const MAX_FETCH: u32 = 500;
const DEFAULT_FETCH_WAIT: Duration = Duration::from_secs(5);
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
/// ListStreams page sizes (the contract's limits).
const DEFAULT_STREAMS_PAGE: u32 = 50;
const MAX_STREAMS_PAGE: u32 = 100;

/// Headers a dead letter carries besides the original message's own.
pub mod dlq_headers {
    /// The stream the message came from.
    pub const STREAM: &str = "Aicore-Dlq-Stream";
    /// Its sequence there.
    pub const SEQUENCE: &str = "Aicore-Dlq-Sequence";
    /// Its subject there.
    pub const SUBJECT: &str = "Aicore-Dlq-Subject";
    /// When it was published there, RFC 3339.
    pub const PUBLISHED: &str = "Aicore-Dlq-Published";
    /// The consumer that gave up.
    pub const CONSUMER: &str = "Aicore-Dlq-Consumer";
    /// Deliveries attempted.
    pub const DELIVERIES: &str = "Aicore-Dlq-Deliveries";
    /// Why: `max_deliver exceeded` or the TERM reason.
    pub const REASON: &str = "Aicore-Dlq-Reason";
}

/// The reason recorded when a consumer's `max_deliver` ran out.
pub const REASON_MAX_DELIVER: &str = "max_deliver exceeded";

/// Configuration of event-bus (`[domains.event_bus]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventBusConfig {
    /// Deliveries before a message moves to DLQ, when CreateConsumer sets none (max 100).
    pub default_max_deliver: u32,
    /// How long a fetched message may stay unacknowledged before it is delivered again,
    /// when CreateConsumer sets none, in milliseconds.
    pub default_ack_wait_ms: u64,
    /// Page size of DeadLetters when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of DeadLetters; larger requests are capped to it.
    pub max_page_size: u32,
    /// `EVENTS` (`evt.>`): domain events.
    pub events: StreamLimits,
    /// `TELEMETRY` (`telemetry.>`): game telemetry.
    pub telemetry: StreamLimits,
    /// `AUDIT` (`audit.>`): security and payment audit.
    pub audit: StreamLimits,
    /// `AI` (`ai.>`): AI requests and results.
    pub ai: StreamLimits,
    /// `DLQ` (`dlq.>`): dead letters (also the limits of the advisory stream feeding it).
    pub dlq: StreamLimits,
}

impl Default for EventBusConfig {
    fn default() -> Self {
        let s = StreamsConfig::default();
        EventBusConfig {
            default_max_deliver: 5,
            default_ack_wait_ms: 30_000,
            default_page_size: 50,
            max_page_size: 500,
            events: s.events,
            telemetry: s.telemetry,
            audit: s.audit,
            ai: s.ai,
            dlq: s.dlq,
        }
    }
}

impl EventBusConfig {
    /// The streams' limits, for [`aicore_runtime::streams::ensure_streams`].
    pub fn streams(&self) -> StreamsConfig {
        StreamsConfig {
            events: self.events.clone(),
            telemetry: self.telemetry.clone(),
            audit: self.audit.clone(),
            ai: self.ai.clone(),
            dlq: self.dlq.clone(),
        }
    }
}

/// The event-bus domain.
pub struct EventBus {
    ctx: Ctx,
    config: EventBusConfig,
    js: Option<jetstream::Context>,
}

impl aicore_runtime::Domain for EventBus {
    type Config = EventBusConfig;

    fn build(
        ctx: &Ctx,
        config: &EventBusConfig,
    ) -> Result<std::sync::Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(std::sync::Arc::new(
            aicore_proto::aicore::event_bus::v1::EventBusServer(std::sync::Arc::new(
                EventBus::new(ctx.clone(), config.clone()),
            )),
        ))
    }
}

impl EventBus {
    /// The domain on a context; JetStream is reached through the context's NATS client.
    pub fn new(ctx: Ctx, config: EventBusConfig) -> Self {
        let js = ctx
            .client
            .as_ref()
            .map(|c| jetstream::new(c.nats().clone()));
        EventBus { ctx, config, js }
    }

    fn config(&self) -> &EventBusConfig {
        &self.config
    }

    fn js(&self) -> Result<&jetstream::Context, Status> {
        self.js
            .as_ref()
            .ok_or_else(|| Status::new(Code::Unavailable, "no JetStream in this context"))
    }

    async fn stream(&self, name: &str) -> Result<stream::Stream, Status> {
        self.js()?
            .get_stream(name)
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Status::not_found(format!("stream {name} does not exist"))
                }
                _ => unavailable("reading the stream", e),
            })
    }
}
