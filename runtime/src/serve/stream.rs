//! Sending a streamed reply: each item as a message to the caller's reply inbox,
//! heartbeats while the stream is quiet, then the end marker; an error instead when the
//! stream fails or the service stops mid-stream (so shutdown never waits on a long
//! stream), and nothing at all once the caller abandoned it.

use std::time::{Duration, Instant};

use aicore_proto::{Code, Status};
use aicore_sdk::header_names;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::record::{Finished, Record};
use super::reply::respond_error;

/// Where a stream's messages go, and what they are counted in.
pub(super) struct StreamOut<'a> {
    pub(super) nats: &'a async_nats::Client,
    pub(super) reply: async_nats::Subject,
    pub(super) stats: &'a Record<'a>,
    pub(super) received: Instant,
    pub(super) subject: &'static str,
}

/// Sends a stream's items, heartbeats while it is quiet, then the end marker. It stops
/// when the caller abandons it (`ends.0`: nobody is left to tell; dropping `items` stops
/// the work behind it) and at shutdown (`ends.1`), which must not wait for a stream that
/// may run for hours: that ends it with Unavailable, not the end marker, so the client
/// can tell it was cut and resume. Its latency is how long it took to start.
pub(super) async fn send_stream(
    out: StreamOut<'_>,
    mut items: futures::stream::BoxStream<'static, Result<Bytes, Status>>,
    (abandoned, stop): (&CancellationToken, &CancellationToken),
    heartbeat: Duration,
    finished: &mut Finished,
) {
    let StreamOut {
        nats,
        reply,
        stats,
        received,
        subject,
    } = out;
    let started = received.elapsed();
    let every = heartbeat.max(Duration::from_millis(10));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let item = tokio::select! {
            biased;
            _ = abandoned.cancelled() => {
                tracing::debug!(subject, "the caller abandoned the stream");
                finished.abandoned();
                return;
            }
            _ = stop.cancelled() => {
                let s = Status::new(Code::Unavailable, "the service is shutting down; resume the stream");
                finished.fail(&s);
                respond_error(nats, &reply, stats, received, &s).await;
                return;
            }
            item = items.next() => match item { Some(i) => i, None => break },
            _ = beat.tick() => {
                let mut h = HeaderMap::new();
                h.insert(header_names::STREAM, "heartbeat");
                if nats.publish_with_headers(reply.clone(), h, Bytes::new()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        beat.reset();
        match item {
            Ok(b) => {
                if nats.publish(reply.clone(), b).await.is_err() {
                    return;
                }
            }
            Err(s) => {
                finished.fail(&s);
                respond_error(nats, &reply, stats, received, &s).await;
                return;
            }
        }
    }
    let mut h = HeaderMap::new();
    h.insert(header_names::STREAM, "end");
    let _ = nats.publish_with_headers(reply, h, Bytes::new()).await;
    stats.stream_ended(received.elapsed(), started);
}
