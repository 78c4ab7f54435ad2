//! The relay's real destination, [`JetStreamSink`]: publishes events as JetStream
//! messages carrying `Nats-Msg-Id` ([`publish_message`]), and before an event old enough
//! that the stream's de-duplication window may have forgotten its id is sent again,
//! searches the stream for it. It does not create streams or pick subjects
//! ([`crate::streams`] does).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;

use super::{Check, OutboxEvent, Sink, unix_ms};

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
