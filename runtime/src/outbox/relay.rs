//! The relay: a round reads a batch of queued events in sequence order, asks the [`Sink`]
//! which to send, publishes those (each in a span of its own when its request was
//! traced) and deletes the acknowledged ones in one store write; [`run_relay_with`] runs
//! rounds until shutdown, backing off after failures, then drains for at most
//! [`FINAL_DRAIN`].

use std::time::SystemTime;

use aicore_proto::Status;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use super::{
    BATCH, Check, FINAL_DRAIN, IDLE_TICK, JetStreamSink, MAX_BACKOFF, MIN_BACKOFF, OUTBOX,
    OutboxEvent, Sink, TRACEPARENT,
};
use crate::store::{self, Store};
use crate::trace::{self, TraceParent};

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
    let events = queued_from(store, *from)?;
    if events.is_empty() {
        return Ok(Round::default());
    }
    // Events the stream may have forgotten are looked for first ([`Sink::check`]).
    let checks = sink.check(&events, SystemTime::now()).await;
    let results = publish_checked(sink, &events, checks).await;
    settle(store, &events, results, from).await
}

/// Up to [`BATCH`] queued events from sequence number `from` on.
fn queued_from(store: &Store, from: u64) -> Result<Vec<OutboxEvent>, Status> {
    let rows = store.scan(OUTBOX, b"", &from.to_be_bytes(), BATCH)?;
    let mut events = Vec::with_capacity(rows.len());
    for (_, v) in rows {
        events.push(store::decode::<OutboxEvent>(OUTBOX, v)?);
    }
    Ok(events)
}

/// Publishes the events `checks` says to send; each event's outcome, in order: its
/// publish's result, `Ok` when its stream already holds it, the reason it was held back.
async fn publish_checked<S: Sink>(
    sink: &S,
    events: &[OutboxEvent],
    checks: Vec<Check>,
) -> Vec<Result<(), String>> {
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
    let mut sent = publish_traced(sink, to_send).await.into_iter();
    let mut results: Vec<Result<(), String>> = Vec::with_capacity(events.len());
    for c in checks {
        results.push(match c {
            Check::Send => sent
                .next()
                .unwrap_or_else(|| Err("no publish result".to_string())),
            Check::Stored => Ok(()),
            Check::Hold(why) => Err(why),
        });
    }
    results
}

/// Publishes `to_send` and records each traced event's producer span.
async fn publish_traced<S: Sink>(
    sink: &S,
    mut to_send: Vec<OutboxEvent>,
) -> Vec<Result<(), String>> {
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
    sent
}

/// Deletes the events whose outcome is `Ok` from the outbox in one write and moves `from`
/// to the first event still queued (a failed one) or past the last.
async fn settle(
    store: &Store,
    events: &[OutboxEvent],
    results: Vec<Result<(), String>>,
    from: &mut u64,
) -> Result<Round, Status> {
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
