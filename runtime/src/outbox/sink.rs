//! Where the relay sends events ([`Sink`]) and what it asks first about each one
//! ([`Check`]): the seam between the relay and JetStream, so unit tests relay to a fake.
//! The JetStream side is [`super::JetStreamSink`].

use std::future::Future;
use std::time::SystemTime;

use super::OutboxEvent;

/// Where relayed events go: JetStream in production, a fake in unit tests.
pub trait Sink: Send + Sync {
    /// Publishes `events` (pipelined) and reports, per event, whether it is stored.
    fn publish(
        &self,
        events: &[OutboxEvent],
    ) -> impl Future<Output = Vec<Result<(), String>>> + Send;

    /// Before a round publishes `events`, says per event (same order) whether to send it,
    /// drop it because the destination already holds it, or hold it back this round.
    /// `now` is the relay's wall clock.
    fn check(
        &self,
        events: &[OutboxEvent],
        now: SystemTime,
    ) -> impl Future<Output = Vec<Check>> + Send;
}

/// What a round does with one queued event ([`Sink::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Publish it (its id is still within the stream's de-duplication window, or the
    /// stream was searched and does not hold it).
    Send,
    /// The stream already holds a message with its id: delete it from the outbox unsent.
    Stored,
    /// Could not tell (the stream could not be read): it stays queued for a later round.
    Hold(String),
}
