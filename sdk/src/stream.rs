//! Server-streaming calls: the start (sent again while nobody serves the subject), the
//! items up to the end marker, and telling the server when the caller goes away.

use std::time::Instant;

use aicore_proto::{CallOptions, Code, MethodInfo, Status};
use async_nats::{HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::breaker::{Health, silence_health};
use crate::{Client, header_names, reply_result, request_headers};

/// A stream being opened: where its replies arrive and its id.
struct Opening<'a> {
    method: &'static MethodInfo,
    body: &'a Bytes,
    options: &'a CallOptions,
    deadline: Instant,
    inbox: String,
    stream_id: &'a str,
}

impl Client {
    /// Opens a server stream: the first message must come within the deadline; after
    /// that the stream lives as long as the caller keeps it (dropping it unsubscribes
    /// and tells the server).
    pub(crate) async fn open_stream(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: &CallOptions,
    ) -> Result<BoxStream<'static, Result<Bytes, Status>>, Status> {
        self.breaker_check(method.subject)?;
        let deadline = self.deadline(method, options);
        let inbox = self.nats.new_inbox();
        let mut sub = self.nats.subscribe(inbox.clone()).await.map_err(|e| {
            Status::new(Code::Unavailable, format!("cannot open a reply inbox: {e}"))
        })?;
        let stream_id = format!("{:032x}", rand::random::<u128>());
        // From here on, a caller that goes away (drops the stream, or gives up waiting
        // for its start) tells the server, which stops the work behind the stream.
        let mut cancel = CancelOnDrop(Some((
            self.nats.clone(),
            aicore_proto::stream_cancel_subject(method.subject),
            stream_id.clone(),
        )));
        let opening = Opening {
            method,
            body: &body,
            options,
            deadline,
            inbox,
            stream_id: &stream_id,
        };
        let first = match self.start_stream(&opening, &mut sub).await {
            Ok(first) => first,
            Err((status, reached)) => {
                if !reached {
                    cancel.disarm();
                }
                return Err(status);
            }
        };
        let first_result = reply_result(&first);
        if first_result.is_err() {
            // The server ended the stream itself.
            cancel.disarm();
        }
        self.breaker_record(method.subject, Health::Answered);
        first_result.as_ref().map_err(Clone::clone)?;
        Ok(Cancellable {
            inner: items(first, sub),
            cancel,
        }
        .boxed())
    }

    /// Sends the stream's start and waits for its first message. A start that found no
    /// responders reached no one and is sent again, as for unary calls. An error comes
    /// with whether the start may have reached a server (then it is told to cancel).
    async fn start_stream(
        &self,
        o: &Opening<'_>,
        sub: &mut Subscriber,
    ) -> Result<Message, (Status, bool)> {
        let subject = o.method.subject;
        let mut unserved_since: Option<Instant> = None;
        let mut retries = 0;
        loop {
            let remaining = o.deadline.saturating_duration_since(Instant::now());
            let mut headers = request_headers(o.options, remaining);
            headers.insert(header_names::STREAM_ID, o.stream_id);
            self.nats
                .publish_with_reply_and_headers(subject, o.inbox.clone(), headers, o.body.clone())
                .await
                .map_err(|e| {
                    let s = Status::new(Code::Unavailable, format!("cannot send request: {e}"));
                    (s, true)
                })?;
            let first = match tokio::time::timeout(remaining, sub.next()).await {
                Err(_) => {
                    self.breaker_record(subject, silence_health(&self.config, remaining));
                    let s = Status::new(
                        Code::DeadlineExceeded,
                        format!("{subject} did not start streaming in time"),
                    );
                    return Err((s, true));
                }
                Ok(None) => {
                    return Err((Status::new(Code::Unavailable, "connection closed"), true));
                }
                Ok(Some(m)) => m,
            };
            if first.status != Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Ok(first);
            }
            self.breaker_record(subject, Health::Failed);
            let since = *unserved_since.get_or_insert_with(Instant::now);
            let pause = self.backoff(retries);
            retries += 1;
            if since.elapsed() >= self.config.outage_grace || Instant::now() + pause >= o.deadline {
                let s = Status::new(
                    Code::Unavailable,
                    format!("no service is answering {subject}"),
                );
                return Err((s, false));
            }
            tokio::time::sleep(pause).await;
            self.breaker_check(subject).map_err(|s| (s, true))?;
        }
    }
}

/// The stream's items, from its `first` message on, until the end marker; an error item
/// ends the stream too; heartbeats (a quiet stream saying it is alive) are skipped.
fn items(first: Message, sub: Subscriber) -> BoxStream<'static, Result<Bytes, Status>> {
    futures::stream::unfold(Some((Some(first), sub)), |state| async move {
        let (mut pending, mut sub) = state?;
        loop {
            let msg = match pending.take() {
                Some(m) => m,
                None => sub.next().await?,
            };
            let marker = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(header_names::STREAM))
                .map(|v| v.as_str().to_string());
            match marker.as_deref() {
                Some("end") => return None,
                Some("heartbeat") => continue,
                _ => {}
            }
            return match reply_result(&msg) {
                Ok(b) => Some((Ok(b), Some((None, sub)))),
                Err(e) => Some((Err(e), None)),
            };
        }
    })
    .boxed()
}

/// Tells the server that the caller abandoned a stream, when dropped armed: an empty
/// message with the stream's id on the RPC's cancel subject. Disarmed once the server
/// ended the stream (the end marker or an error).
struct CancelOnDrop(Option<(async_nats::Client, String, String)>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some((nats, subject, id)) = self.0.take() else {
            return;
        };
        // Publishing only queues the message on the connection; a task is needed because
        // `drop` cannot wait. Without a runtime (the process is ending) nothing is sent and
        // the server stops at the stream's own bounds.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut h = HeaderMap::new();
                h.insert(header_names::STREAM_ID, id.as_str());
                let _ = nats.publish_with_headers(subject, h, Bytes::new()).await;
            });
        }
    }
}

/// A server stream as the caller sees it, telling the server when it is dropped early.
struct Cancellable {
    inner: BoxStream<'static, Result<Bytes, Status>>,
    cancel: CancelOnDrop,
}

impl futures::Stream for Cancellable {
    type Item = Result<Bytes, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.poll_next_unpin(cx));
        if matches!(item, None | Some(Err(_))) {
            self.cancel.disarm();
        }
        std::task::Poll::Ready(item)
    }
}
