//! Request bodies (bounded in size and time) and server-sent event streams.

use super::*;

/// Reads and discards up to `max` bytes of `body` for at most `time`.
pub(super) async fn drain(body: Body, max: usize, time: Duration) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let _ = tokio::time::timeout(time, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > max {
                break;
            }
        }
    })
    .await;
}

/// The request body, within the limit, with a JSON (or absent) content type.
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::too_large(Status::invalid(
            "(body)",
            format!("the request body exceeds {limit} bytes"),
        ))
    };
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if !(essence == "application/json" || essence.ends_with("+json")) {
            return Err(ApiError::with_http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Status::invalid("Content-Type", "must be application/json"),
            ));
        }
    }
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        // Read (and drop) a bounded amount of what the client is still sending, so it
        // sees the 413 instead of a connection reset from closing on unread data.
        drain(body, limit.saturating_mul(4), Duration::from_secs(2)).await;
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if over {
            too_large()
        } else {
            ApiError::new(Status::invalid(
                "(body)",
                format!("the request body could not be read: {e}"),
            ))
        }
    })
}

/// Decrements the open-streams gauge and frees the stream slot when the SSE body is
/// dropped (stream end or client gone), together with the upstream subscription.
pub(super) struct StreamSlot {
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.metrics.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) fn error_event(s: &Status) -> Event {
    Event::default().event("error").data(error::body(s))
}

/// Server-Sent Events from an upstream stream: `message` per item, `end` at the end,
/// `error` on failure or shutdown. Dropping the response (client gone) drops the upstream
/// subscription with it.
pub(super) fn sse(
    gw: &Gateway,
    output: MessageDescriptor,
    upstream: futures::stream::BoxStream<'static, Result<Bytes, Status>>,
    permit: OwnedSemaphorePermit,
) -> Response {
    gw.metrics.open_streams.fetch_add(1, Ordering::Relaxed);
    let slot = StreamSlot {
        metrics: gw.metrics.clone(),
        _permit: permit,
    };
    let stopping = gw.stopping.clone();
    let events = futures::stream::unfold(Some((upstream, slot)), move |state| {
        let output = output.clone();
        let stopping = stopping.clone();
        async move {
            let (mut upstream, slot) = state?;
            let next = tokio::select! {
                _ = stopping.cancelled() => Some(Err(Status::new(
                    Code::Unavailable,
                    "the gateway is shutting down; reconnect",
                ))),
                n = upstream.next() => n,
            };
            let (event, more) = match next {
                None => (Event::default().event("end").data("{}"), false),
                Some(Ok(b)) => match crate::json::from_protobuf(&output, b, false) {
                    Ok(json) => (
                        Event::default()
                            .event("message")
                            .data(String::from_utf8_lossy(&json)),
                        true,
                    ),
                    Err(s) => (error_event(&s), false),
                },
                Some(Err(s)) => (error_event(&s), false),
            };
            Some((Ok::<_, Infallible>(event), more.then_some((upstream, slot))))
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
