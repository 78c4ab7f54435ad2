//! The transactional outbox: domains queue events with [`Emit::emit`] in the same store
//! transaction as their state change, and the relay moves them onto JetStream, so state
//! and events never disagree. The store knows nothing of it: the relay waits on the
//! outbox table through the store's generic commit hook ([`Store::watch`]).
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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use aicore_proto::{Event, Status};

use crate::store::{self, Store, Tx};
use crate::trace::{self, TraceParent};

/// The W3C trace context header events carry.
const TRACEPARENT: &str = aicore_proto::headers::TRACEPARENT;

/// Queuing events in a store transaction.
pub trait Emit {
    /// Queues `event` for JetStream in this transaction, on the subject its message
    /// declares (`(aicore.common.v1.event)`): it is published (by the outbox relay) if and
    /// only if this closure's writes commit, so state and events never disagree.
    fn emit<E: Event>(&mut self, event: &E) -> Result<(), Status> {
        self.emit_raw(&event.subject(), event.encode_to_vec())
    }

    /// Queues a payload on `subject` (messages published on a subject a caller chose,
    /// or a message type serving more than one subject).
    fn emit_raw(&mut self, subject: &str, payload: impl Into<Bytes>) -> Result<(), Status> {
        self.emit_with_headers(subject, Vec::new(), payload)
    }

    /// Like [`Emit::emit_raw`], with message headers (name, value).
    fn emit_with_headers(
        &mut self,
        subject: &str,
        headers: Vec<(String, String)>,
        payload: impl Into<Bytes>,
    ) -> Result<(), Status>;
}

impl Emit for Tx<'_> {
    fn emit_with_headers(
        &mut self,
        subject: &str,
        headers: Vec<(String, String)>,
        payload: impl Into<Bytes>,
    ) -> Result<(), Status> {
        let mut meta = self
            .get_msg::<OutboxMeta>(OUTBOX_META, b"meta")?
            .unwrap_or_default();
        if meta.epoch == 0 {
            meta.epoch = rand::random::<u64>() | 1;
        }
        let seq = meta.next_seq.max(1);
        meta.next_seq = seq + 1;
        self.put_msg(OUTBOX_META, b"meta", &meta);
        let mut headers = headers;
        if let Some(trace) = self.trace
            && !headers
                .iter()
                .any(|h| h.0.eq_ignore_ascii_case(TRACEPARENT))
        {
            headers.push((TRACEPARENT.to_string(), trace.to_string()));
        }
        let event = OutboxEvent {
            seq,
            msg_id: format!("{:016x}-{seq}", meta.epoch),
            subject: subject.to_string(),
            payload: payload.into().to_vec(),
            header_names: headers.iter().map(|h| h.0.clone()).collect(),
            header_values: headers.into_iter().map(|h| h.1).collect(),
            queued_unix_ms: unix_ms(SystemTime::now()),
        };
        self.put_msg(OUTBOX, &seq.to_be_bytes(), &event);
        Ok(())
    }
}

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

/// Whether JetStream may have forgotten the id of an event queued at `queued_ms`, so that
/// a re-send would be stored twice.
///
/// The stream remembers an id for `window` from when it stored the message, and it stored
/// it (if ever) after the event was queued; so an event younger than the window cannot
/// have been forgotten. Half the window is the line, not the whole: the publish that
/// follows the check reaches the server a little later, and the relay and nats-server
/// read the wall clock at different moments (the same host's clock, but it may be stepped).
/// An unknown age (0: queued before ages were recorded) counts as old.
pub fn may_be_forgotten(queued_ms: u64, now_ms: u64, window: Duration) -> bool {
    let half = u64::try_from(window.as_millis() / 2).unwrap_or(u64::MAX);
    queued_ms == 0 || now_ms.saturating_sub(queued_ms) >= half
}

/// How long a stream's de-duplication window, once read, is used before it is read again
/// (the appliance sets it at start; an operator changing it by hand is seen this late).
const WINDOW_TTL: Duration = Duration::from_secs(60);
/// A search starts this long before the oldest event was queued, in case the wall clock
/// was stepped back between queueing and storing.
const CLOCK_SLACK: Duration = Duration::from_secs(60);
/// Most distinct subjects a search filters on; past that it reads every subject.
const MAX_FILTER_SUBJECTS: usize = 64;
/// Longest wait for the next message of a search that has more pending.
const SEARCH_IDLE: Duration = Duration::from_secs(10);

/// The relay's JetStream destination.
///
/// Re-sends after a crash between "acknowledged" and "deleted from the outbox" are
/// de-duplicated by `Nats-Msg-Id` only within the stream's duplicate window (600 s by
/// default); after a longer stop a plain re-send would store the event twice. So before a
/// round publishes an event old enough that the window may have forgotten it
/// ([`may_be_forgotten`]), the stream is searched for its id, and an event found there is
/// deleted from the outbox instead of being sent.
///
/// Why a search and not the alternatives: JetStream cannot look a message up by
/// `Nats-Msg-Id`; recording the acknowledged stream sequence in the outbox needs a store
/// write between ack and delete, which has the very same crash gap; and widening the
/// window to the oldest entry's age comes too late, since ids already forgotten are not
/// remembered again. The search is an ephemeral ordered consumer, headers only, from
/// shortly before the oldest such event was queued (the message can only have been stored
/// after that), filtered on the events' subjects, ending at the stream's last message at
/// the time of the search (or once every id is found). It runs only for events that sat in
/// the outbox for half a window, i.e. after an outage or a long stop, not in normal
/// operation, where events leave the outbox within milliseconds.
///
/// What it cannot do: a message already removed by the stream's own age or size limits is
/// not found, and the event is sent again (at least once, never lost).
pub struct JetStreamSink {
    js: jetstream::Context,
    windows: tokio::sync::Mutex<HashMap<&'static str, (Duration, tokio::time::Instant)>>,
}

impl JetStreamSink {
    /// A destination publishing through `js`.
    pub fn new(js: jetstream::Context) -> Self {
        JetStreamSink {
            js,
            windows: tokio::sync::Mutex::default(),
        }
    }

    /// The duplicate window of `stream`, read at most every [`WINDOW_TTL`].
    async fn window(&self, stream: &'static str) -> Result<Duration, String> {
        let mut windows = self.windows.lock().await;
        if let Some((window, read)) = windows.get(stream)
            && read.elapsed() < WINDOW_TTL
        {
            return Ok(*window);
        }
        let info = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| format!("cannot read stream {stream}: {e}"))?;
        let window = info.cached_info().config.duplicate_window;
        windows.insert(stream, (window, tokio::time::Instant::now()));
        Ok(window)
    }

    /// The ids of `events` (all bound for `stream`) that `stream` holds.
    async fn search(
        &self,
        stream: &str,
        events: &[&OutboxEvent],
    ) -> Result<HashSet<String>, String> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull};
        use futures::StreamExt;

        let wanted: HashSet<&str> = events.iter().map(|e| e.msg_id.as_str()).collect();
        let oldest = events.iter().map(|e| e.queued_unix_ms).min().unwrap_or(0);
        let slack = u64::try_from(CLOCK_SLACK.as_millis()).unwrap_or(u64::MAX);
        let from = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(oldest.saturating_sub(slack)) * 1_000_000,
        );
        let deliver_policy = match from {
            Ok(start_time) if oldest > 0 => DeliverPolicy::ByStartTime { start_time },
            _ => DeliverPolicy::All,
        };
        let mut subjects: Vec<String> = events.iter().map(|e| e.subject.clone()).collect();
        subjects.sort_unstable();
        subjects.dedup();
        if subjects.len() > MAX_FILTER_SUBJECTS {
            subjects.clear();
        }
        let err = |e: &dyn std::fmt::Display| format!("cannot search stream {stream}: {e}");
        let mut handle = self.js.get_stream(stream).await.map_err(|e| err(&e))?;
        // Messages stored after this were stored after the search began: not ours to read.
        let last = handle
            .info()
            .await
            .map_err(|e| err(&e))?
            .state
            .last_sequence;
        let consumer = handle
            .create_consumer(pull::OrderedConfig {
                deliver_policy,
                filter_subjects: subjects,
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let mut found = HashSet::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(found);
        }
        let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
        loop {
            let next = tokio::time::timeout(SEARCH_IDLE, messages.next())
                .await
                .map_err(|_| err(&"no message within the idle bound"))?;
            let m = next
                .ok_or_else(|| err(&"the consumer ended"))?
                .map_err(|e| err(&e))?;
            if let Some(id) = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                && wanted.contains(id.as_str())
            {
                found.insert(id.to_string());
            }
            let info = m.info().map_err(|e| err(&e))?;
            if info.pending == 0 || info.stream_sequence >= last || found.len() == wanted.len() {
                return Ok(found);
            }
        }
    }
}

impl Sink for JetStreamSink {
    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<(), String>> {
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let sent = self
                .js
                .send_publish(e.subject.clone(), publish_message(e))
                .await
                .map_err(|err| err.to_string());
            acks.push(sent);
        }
        // All acks awaited together: a round waits for the slowest, not for their sum.
        futures::future::join_all(acks.into_iter().map(|ack| async move {
            match ack {
                Ok(fut) => fut.await.map(|_| ()).map_err(|err| err.to_string()),
                Err(err) => Err(err),
            }
        }))
        .await
    }

    async fn check(&self, events: &[OutboxEvent], now: SystemTime) -> Vec<Check> {
        let now_ms = unix_ms(now);
        let mut out = vec![Check::Send; events.len()];
        // Events that may have been forgotten, by stream. An event on a subject no stream
        // of ours captures is sent as before (its publish fails and it stays queued).
        let mut old: HashMap<&'static str, Vec<usize>> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            let Some(def) = crate::streams::for_subject(&e.subject) else {
                continue;
            };
            match self.window(def.name).await {
                Ok(window) if may_be_forgotten(e.queued_unix_ms, now_ms, window) => {
                    old.entry(def.name).or_default().push(i);
                }
                Ok(_) => {}
                Err(why) => out[i] = Check::Hold(why),
            }
        }
        for (stream, idx) in old {
            let evs: Vec<&OutboxEvent> = idx.iter().map(|&i| &events[i]).collect();
            match self.search(stream, &evs).await {
                Ok(found) => {
                    for i in idx {
                        if found.contains(&events[i].msg_id) {
                            out[i] = Check::Stored;
                        }
                    }
                }
                Err(why) => {
                    for i in idx {
                        out[i] = Check::Hold(why.clone());
                    }
                }
            }
        }
        out
    }
}

/// Gives an event carrying a trace context a child span of it to be published in:
/// rewrites its `traceparent` to the child and returns the child and its parent's id.
fn produce_in_span(e: &mut OutboxEvent) -> Option<(TraceParent, u64)> {
    let i = e
        .header_names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(TRACEPARENT))?;
    let parent = TraceParent::parse(e.header_values.get(i)?)?;
    if !parent.recorded() {
        return None;
    }
    let child = parent.child();
    e.header_values[i] = child.to_string();
    Some((child, parent.span_id))
}

/// The JetStream message for an event: its payload, its headers and `Nats-Msg-Id`.
pub fn publish_message(e: &OutboxEvent) -> PublishMessage {
    let mut h = HeaderMap::new();
    for (n, v) in e.header_names.iter().zip(&e.header_values) {
        h.insert(n.as_str(), v.as_str());
    }
    PublishMessage::build()
        .payload(Bytes::from(e.payload.clone()))
        .headers(h)
        .message_id(&e.msg_id)
}

/// How far the relay is behind: read when metrics are scraped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Events queued: from the oldest still in the outbox to the last queued (exact
    /// unless a publish failed while later ones succeeded; then the gap is counted too).
    pub events: u64,
    /// Age of the oldest queued event, in milliseconds (0 when none is queued).
    pub oldest_age_ms: u64,
}

/// The outbox's backlog now.
pub fn backlog(store: &Store, now: SystemTime) -> Result<Backlog, Status> {
    let Some((_, oldest)) = store.scan(OUTBOX, b"", b"", 1)?.into_iter().next() else {
        return Ok(Backlog::default());
    };
    let oldest = store::decode::<OutboxEvent>(OUTBOX, oldest)?;
    let meta = store
        .get_msg::<OutboxMeta>(OUTBOX_META, b"meta")?
        .unwrap_or_default();
    Ok(Backlog {
        events: meta.next_seq.saturating_sub(oldest.seq).max(1),
        oldest_age_ms: unix_ms(now).saturating_sub(oldest.queued_unix_ms),
    })
}

/// The outbox's figures for `/metrics`.
pub struct OutboxMetrics(pub Store);

impl crate::metrics::Collect for OutboxMetrics {
    fn collect(&self, out: &mut crate::metrics::Exposition) {
        use crate::metrics::Kind;
        // A store that cannot be read says so in its own figures; the page goes on.
        let Ok(b) = backlog(&self.0, SystemTime::now()) else {
            return;
        };
        out.scalar(
            "aicore_outbox_backlog_events",
            Kind::Gauge,
            "Events queued in the outbox, not yet published to JetStream.",
            b.events,
        );
        out.scalar(
            "aicore_outbox_oldest_event_age_seconds",
            Kind::Gauge,
            "Age of the oldest event waiting in the outbox (0 when it is empty).",
            b.oldest_age_ms as f64 / 1000.0,
        );
    }
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Events published and removed from the outbox.
    pub relayed: usize,
    /// Events that failed and stay queued.
    pub failed: usize,
}

/// Publishes up to [`BATCH`] queued events from sequence number `from` on and deletes
/// the acknowledged ones; moves `from` to the first event still queued (a failed one) or
/// past the last. Events become visible in sequence order, so none can appear below it
/// later; starting there (not at the outbox's start) keeps a round from stepping over
/// every event relayed since the store last flushed its memory layers, where deleted
/// events are still deletions to skip.
pub async fn relay_once<S: Sink>(
    store: &Store,
    sink: &S,
    from: &mut u64,
) -> Result<Round, aicore_proto::Status> {
    let rows = store.scan(OUTBOX, b"", &from.to_be_bytes(), BATCH)?;
    if rows.is_empty() {
        return Ok(Round::default());
    }
    let mut events = Vec::with_capacity(rows.len());
    for (_, v) in rows {
        events.push(store::decode::<OutboxEvent>(OUTBOX, v)?);
    }
    // Events the stream may have forgotten are looked for first ([`Sink::check`]).
    let checks = sink.check(&events, SystemTime::now()).await;
    let mut results: Vec<Result<(), String>> = Vec::with_capacity(events.len());
    let mut to_send = Vec::new();
    for (e, c) in events.iter().zip(&checks) {
        match c {
            Check::Send => to_send.push(e.clone()),
            Check::Stored => {
                tracing::info!(seq = e.seq, msg_id = %e.msg_id, "outbox event already in its stream; not sent again")
            }
            Check::Hold(_) => {}
        }
    }
    // Each event a request queued is published in a span of its own, a child of that
    // request's, which its consumers continue.
    let started = SystemTime::now();
    let producing: Vec<Option<(TraceParent, u64)>> = to_send
        .iter_mut()
        .map(|e| trace::enabled().then(|| produce_in_span(e)).flatten())
        .collect();
    let sent = sink.publish(&to_send).await;
    for ((e, span), r) in to_send.iter().zip(producing).zip(&sent) {
        if let Some((context, parent)) = span {
            trace::record(trace::Span {
                context,
                parent: Some(parent),
                name: e.subject.clone().into(),
                kind: trace::Kind::Producer,
                start: started,
                end: SystemTime::now(),
                error: r.as_ref().err().map(|err| ("UNAVAILABLE", err.clone())),
                attributes: vec![
                    ("messaging.system", "nats".into()),
                    ("messaging.destination.name", e.subject.clone().into()),
                    ("messaging.message.id", e.msg_id.clone().into()),
                ],
            });
        }
    }
    let mut sent = sent.into_iter();
    for c in checks {
        results.push(match c {
            Check::Send => sent
                .next()
                .unwrap_or_else(|| Err("no publish result".to_string())),
            Check::Stored => Ok(()),
            Check::Hold(why) => Err(why),
        });
    }
    let mut done = Vec::new();
    let mut failed = 0;
    let mut first_failed = None;
    for (e, r) in events.iter().zip(results) {
        match r {
            Ok(()) => done.push(e.seq),
            Err(err) => {
                failed += 1;
                first_failed.get_or_insert(e.seq);
                if failed == 1 {
                    tracing::warn!(seq = e.seq, subject = %e.subject, error = %err, "outbox publish failed; will retry");
                }
            }
        }
    }
    let relayed = done.len();
    let past_last = events.last().map_or(*from, |e| e.seq + 1);
    if !done.is_empty() {
        store
            .write(move |tx| {
                for seq in done {
                    tx.delete(OUTBOX, &seq.to_be_bytes());
                }
                Ok(())
            })
            .await?;
    }
    *from = first_failed.unwrap_or(past_last);
    Ok(Round { relayed, failed })
}

/// Runs the relay until `shutdown`, then drains what it can within [`FINAL_DRAIN`].
pub async fn run_relay(store: Store, js: jetstream::Context, shutdown: CancellationToken) {
    run_relay_with(store, JetStreamSink::new(js), shutdown).await
}

/// [`run_relay`] over any [`Sink`].
pub async fn run_relay_with<S: Sink>(store: Store, sink: S, shutdown: CancellationToken) {
    let queued = store.watch(OUTBOX);
    let mut backoff = MIN_BACKOFF;
    let mut total = 0u64;
    let mut from = 0u64;
    loop {
        // A stop is obeyed while the round waits for acks: the events stay queued.
        let round = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            round = relay_once(&store, &sink, &mut from) => round,
        };
        match round {
            Ok(r) if r.failed == 0 && r.relayed == BATCH => {
                // More may be queued: go again at once.
                total += r.relayed as u64;
                backoff = MIN_BACKOFF;
                continue;
            }
            Ok(r) if r.failed == 0 => {
                total += r.relayed as u64;
                backoff = MIN_BACKOFF;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = queued.notified() => {}
                    _ = tokio::time::sleep(IDLE_TICK) => {}
                }
            }
            other => {
                if let Err(e) = &other {
                    tracing::warn!(error = %e, "outbox read failed; will retry");
                }
                if let Ok(r) = other {
                    total += r.relayed as u64;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // Last best-effort drain: events committed just before shutdown should not wait for
    // the next start (they would not be lost either way: they stay queued).
    let give_up = tokio::time::Instant::now() + FINAL_DRAIN;
    let drained = tokio::time::timeout_at(give_up, async {
        let mut n = 0u64;
        loop {
            match relay_once(&store, &sink, &mut from).await {
                Ok(r) if r.failed == 0 && r.relayed > 0 => n += r.relayed as u64,
                _ => return n,
            }
        }
    })
    .await;
    let left = store
        .scan(OUTBOX, b"", &from.to_be_bytes(), 1)
        .map(|r| r.len())
        .unwrap_or(0);
    tracing::info!(
        relayed = total + drained.as_ref().copied().unwrap_or(0),
        events_left = left > 0,
        "outbox relay stopped"
    );
}

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
