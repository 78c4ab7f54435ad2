//! A call as a client makes it: per-call options ([`CallOptions`], [`IdempotencyKey`]), the
//! [`Transport`] the SDK implements on NATS, and the encode/send/decode helpers the
//! generated clients use.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use prost::Message;

use crate::{Caller, Code, Metadata, MethodInfo, Status, Streaming};

/// Per-call options of a client.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// How long to wait; `None` = the RPC's default deadline, else the client's.
    pub timeout: Option<Duration>,
    /// The end user the call is made for, forwarded in headers.
    pub caller: Option<Caller>,
    /// W3C trace context to continue.
    pub traceparent: Option<String>,
    /// Request id to carry.
    pub request_id: Option<String>,
    /// The end client's IP address, forwarded in [`headers::CLIENT_ADDR`].
    pub client_addr: Option<String>,
    /// The caller's session, forwarded in [`headers::CALLER_SESSION`] (only with a
    /// caller).
    pub caller_session: Option<String>,
    /// Whether the transport gives a write an idempotency key, making it safe to retry.
    pub idempotency_key: IdempotencyKey,
}

/// Whether the transport gives a write's request an idempotency key of its own (see
/// [`MethodInfo::retry_safe`]); only for RPCs whose request has an `idempotency_key`
/// field and a request that carries none. The key is the same for every attempt of the
/// call, so a retry after a lost reply returns the first result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IdempotencyKey {
    /// The request goes as it is: retried automatically only if it carries a key.
    #[default]
    AsIs,
    /// A fresh random key, made by the transport for this call.
    Fresh,
    /// This key (e.g. one the caller keeps, to repeat the call itself later).
    Use(String),
}

impl CallOptions {
    /// Options carrying a handler's metadata onward (deadline, caller, trace, client
    /// address), for cross-domain calls made while serving a request.
    pub fn from_meta(meta: &Metadata) -> Self {
        CallOptions {
            timeout: meta.remaining(),
            caller: meta.caller.clone(),
            traceparent: meta.traceparent.clone(),
            request_id: meta.request_id.clone(),
            client_addr: meta.client_addr.clone(),
            caller_session: meta.caller_session.clone(),
            idempotency_key: IdempotencyKey::AsIs,
        }
    }

    /// The same options, with the transport adding a fresh idempotency key to a write
    /// that has none, so it is retried safely.
    pub fn with_fresh_idempotency_key(mut self) -> Self {
        self.idempotency_key = IdempotencyKey::Fresh;
        self
    }

    /// Options with a timeout.
    pub fn timeout(t: Duration) -> Self {
        CallOptions {
            timeout: Some(t),
            ..Default::default()
        }
    }
}

/// Moves encoded requests to a service and replies back; the SDK implements it on NATS.
pub trait Transport: Send + Sync {
    /// One request, one reply.
    fn unary(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: &CallOptions,
    ) -> impl std::future::Future<Output = Result<Bytes, Status>> + Send;

    /// One request, a stream of replies.
    fn server_stream(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: &CallOptions,
    ) -> impl std::future::Future<Output = Result<BoxStream<'static, Result<Bytes, Status>>, Status>>
    + Send;
}

/// Encodes, sends and decodes one unary call (used by the generated clients).
pub async fn client_unary<T: Transport, Req: Message, Resp: Message + Default>(
    transport: &T,
    method: &'static MethodInfo,
    request: &Req,
    options: &CallOptions,
) -> Result<Resp, Status> {
    let body = transport
        .unary(method, Bytes::from(request.encode_to_vec()), options)
        .await?;
    Resp::decode(body).map_err(|e| {
        Status::new(
            Code::Internal,
            format!(
                "{} replied with an undecodable message: {e}",
                method.subject
            ),
        )
    })
}

/// Encodes and sends a streaming call; decodes each item (used by the generated clients).
pub async fn client_stream<T: Transport, Req: Message, Resp: Message + Default + 'static>(
    transport: &T,
    method: &'static MethodInfo,
    request: &Req,
    options: &CallOptions,
) -> Result<Streaming<Resp>, Status> {
    use futures::StreamExt;
    let s = transport
        .server_stream(method, Bytes::from(request.encode_to_vec()), options)
        .await?;
    Ok(Box::pin(s.map(move |item| {
        item.and_then(|b| {
            Resp::decode(b).map_err(|e| {
                Status::new(
                    Code::Internal,
                    format!("{} streamed an undecodable message: {e}", method.subject),
                )
            })
        })
    })))
}
