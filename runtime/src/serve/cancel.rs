//! Streams their callers may cancel: this replica's running streams by the id each caller
//! gave ([`Streams`]), and the listeners on every streaming RPC's cancel subject. Every
//! replica hears every cancel; only the one running the stream acts on it.

use std::sync::Arc;

use aicore_proto::{ServiceInfo, Status};
use aicore_sdk::header_names;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::unavailable;

/// The streams running on this replica that their callers may cancel, by the id the
/// caller gave ([`aicore_proto::headers::STREAM_ID`]). A cancel for an id not here (another
/// replica's stream, one already ended) is ignored. The ids are random and travel only in
/// the request's headers, so one caller cannot guess another's.
#[derive(Clone, Default)]
pub(super) struct Streams(
    Arc<std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>>,
);

/// Longest stream id read.
const MAX_STREAM_ID: usize = 64;

impl Streams {
    /// Registers stream `id`; the token is cancelled when its caller cancels, and the
    /// entry goes when the guard drops.
    fn register(&self, id: String) -> Option<(CancellationToken, StreamEntry)> {
        if id.is_empty() || id.len() > MAX_STREAM_ID {
            return None;
        }
        let token = CancellationToken::new();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&id) {
            return None;
        }
        map.insert(id.clone(), token.clone());
        Some((
            token,
            StreamEntry {
                streams: self.clone(),
                id,
            },
        ))
    }

    fn cancel(&self, id: &str) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get(id) {
            t.cancel();
        }
    }

    /// The token a request's work stops on: for a stream its caller can cancel (it gave a
    /// stream id), registered under that id until the entry drops; otherwise one nothing
    /// cancels.
    pub(super) fn for_request(
        &self,
        server_streaming: bool,
        request: &async_nats::Message,
    ) -> (CancellationToken, Option<StreamEntry>) {
        let cancellable = server_streaming
            .then(|| {
                let id = request.headers.as_ref()?.get(header_names::STREAM_ID)?;
                self.register(id.as_str().to_string())
            })
            .flatten();
        match cancellable {
            Some((token, entry)) => (token, Some(entry)),
            None => (CancellationToken::new(), None),
        }
    }
}

/// Removes a stream from [`Streams`] when it ends, however it ends.
pub(super) struct StreamEntry {
    streams: Streams,
    id: String,
}

impl Drop for StreamEntry {
    fn drop(&mut self) {
        let mut map = self.streams.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&self.id);
    }
}

/// Listens on the cancel subject of each of `info`'s streaming RPCs until `shutdown`,
/// cancelling the streams of `streams` their callers went away from.
pub(super) async fn listen_for_cancels(
    nats: &async_nats::Client,
    info: &ServiceInfo,
    streams: &Streams,
    shutdown: &CancellationToken,
) -> Result<(), Status> {
    for m in info.methods.iter().filter(|m| m.server_streaming) {
        let subject = aicore_proto::stream_cancel_subject(m.subject);
        let mut sub = nats
            .subscribe(subject.clone())
            .await
            .map_err(|e| unavailable(format!("cannot subscribe to {subject}: {e}")))?;
        let (streams, stop) = (streams.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    m = sub.next() => match m {
                        Some(m) => {
                            if let Some(id) = m.headers.as_ref().and_then(|h| h.get(header_names::STREAM_ID)) {
                                streams.cancel(id.as_str());
                            }
                        }
                        None => return,
                    },
                }
            }
        });
    }
    Ok(())
}
