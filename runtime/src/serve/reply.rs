//! Answering a request: a unary reply as the handler gave it, or an error as the micro
//! protocol's error headers plus a `common.Error` body; either counted in the request's
//! [`Record`]. Streamed replies are [`super::stream`]'s.

use std::time::Instant;

use aicore_proto::{Code, Status};
use aicore_sdk::header_names;
use async_nats::HeaderMap;
use bytes::Bytes;
use prost::Message;

use super::record::Record;

/// Sends a unary reply (when the caller wants one) and counts the call as answered.
pub(super) async fn send_unary(
    nats: &async_nats::Client,
    reply: Option<&async_nats::Subject>,
    body: Bytes,
    stats: &Record<'_>,
    received: Instant,
) {
    if let Some(reply) = reply
        && let Err(e) = nats.publish(reply.clone(), body).await
    {
        tracing::warn!(error = %e, "reply not sent");
    }
    stats.ok(received.elapsed());
}

/// Answers with `status` (logged as a failure when Internal, else as a refusal) and counts
/// the call as failed.
pub(super) async fn respond_error(
    nats: &async_nats::Client,
    reply: &async_nats::Subject,
    stats: &Record<'_>,
    received: Instant,
    status: &Status,
) {
    if status.code == Code::Internal {
        tracing::error!(error = %status, "request failed");
    } else {
        tracing::debug!(error = %status, "request refused");
    }
    stats.error(received.elapsed(), status);
    let mut h = HeaderMap::new();
    // Header values must stay on one line.
    let msg: String = status
        .message
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    h.insert(header_names::SERVICE_ERROR, msg.as_str());
    h.insert(
        header_names::SERVICE_ERROR_CODE,
        status.http_status().to_string().as_str(),
    );
    let body = Bytes::from(status.to_proto().encode_to_vec());
    if let Err(e) = nats.publish_with_headers(reply.clone(), h, body).await {
        tracing::warn!(error = %e, "error reply not sent");
    }
}
