//! The transactional outbox: domains queue events with [`Emit::emit`] in the same store
//! transaction as their state change, and the relay moves them onto JetStream, so state
//! and events never disagree. The store knows nothing of it: the relay waits on the
//! outbox table through the store's generic commit hook ([`Store::watch`](crate::Store::watch)).
//! It reads the outbox in sequence order a batch at a time, publishes the whole batch
//! pipelined (every publish sent, then every ack awaited, all at once: JetStream with fsync
//! per message does not batch by itself, and each ack is bounded by the JetStream
//! context's ack timeout, so a round with NATS unreachable ends after one such timeout,
//! not one per event), and deletes the acknowledged events in one store write.
//! A stop is obeyed while a round waits: the round is abandoned and its events stay
//! queued for the next start (an event JetStream stored but the outbox still holds is
//! re-sent then and de-duplicated by its id); then a last drain of at most
//! [`FINAL_DRAIN`]. So stopping with NATS unreachable takes at most that long and loses
//! nothing.
//! Each message carries `Nats-Msg-Id` = the event's outbox id, so a batch re-sent after a
//! crash between "acked" and "deleted" is de-duplicated by the stream, as long as the
//! stream's duplicate window still remembers the id; an event queued longer than about
//! half that window is first looked for in the stream and not sent again if it is there
//! ([`JetStreamSink`] says why that way), so a re-send is safe whatever the downtime. A failed publish
//! leaves its event queued and the relay backs off and retries; nothing is dropped.
//!
//! Ordering: within a batch publishes are pipelined, so if one fails and a later one
//! succeeds, the retry lands after it. Consumers needing a strict order should order by
//! the event's own data (e.g. a version), which domains include anyway.
//!
//! It does not decide subjects or create streams ([`crate::streams`] does).

mod backlog;
mod emit;
mod jetstream;
mod relay;
mod sink;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use backlog::{Backlog, OutboxMetrics, backlog};
pub use emit::Emit;
pub use jetstream::{JetStreamSink, may_be_forgotten, publish_message};
pub use relay::{Round, relay_once, run_relay, run_relay_with};
pub use sink::{Check, Sink};

/// The W3C trace context header events carry.
const TRACEPARENT: &str = aicore_proto::headers::TRACEPARENT;

/// The outbox table: events waiting for the relay, keyed by big-endian sequence.
pub const OUTBOX: &str = "outbox.events";
/// The outbox's counters.
const OUTBOX_META: &str = "outbox.meta";

/// Sequence counter and epoch; one queued event (`proto/internal/runtime.proto`).
pub use aicore_proto::internal::runtime::{OutboxEvent, OutboxMeta};

/// Milliseconds since the Unix epoch (0 before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Events read and published per round.
pub const BATCH: usize = 256;
/// How often an idle relay looks at the outbox even without a commit signal.
pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// First pause after a failed round; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the relay keeps draining after shutdown is requested.
pub const FINAL_DRAIN: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests;

#[cfg(test)]
mod layout {
    use super::*;
    use prost::Message;

    /// The stored bytes of the outbox's records do not change (data files hold them).
    #[test]
    fn outbox_records_keep_their_stored_bytes() {
        let meta = OutboxMeta {
            next_seq: 3,
            epoch: 5,
        };
        assert_eq!(meta.encode_to_vec(), [0x08, 3, 0x10, 5]);
        let event = OutboxEvent {
            seq: 1,
            msg_id: "a".into(),
            subject: "s".into(),
            payload: vec![9],
            header_names: vec!["h".into()],
            header_values: vec!["v".into()],
            queued_unix_ms: 2,
        };
        assert_eq!(
            event.encode_to_vec(),
            [
                0x08, 1, 0x12, 1, b'a', 0x1a, 1, b's', 0x22, 1, 9, 0x2a, 1, b'h', 0x32, 1, b'v',
                0x38, 2
            ]
        );
    }
}
