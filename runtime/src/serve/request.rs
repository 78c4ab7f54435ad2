//! One request from pick-up to answer: its registration as a stream its caller may
//! cancel, who is calling and whether the RPC's policy lets them, the request's span, the
//! handler run within the deadline (a panic answered as Internal), and the answer sent
//! as the handler's reply calls for.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use aicore_proto::{Code, Dispatch, Metadata, MethodInfo, Reply, Request, Status};
use bytes::Bytes;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ServeOptions;
use super::cancel::Streams;
use super::metadata::metadata;
use super::record::{Finished, Record};
use super::reply::{respond_error, send_unary};
use super::stream::{StreamOut, send_stream};
use super::trust::Trust;
use crate::trace::{self, TraceParent};

/// Serves one request, start to finish, and counts it in `record`.
#[allow(clippy::too_many_arguments)] // one request's whole context, passed down from `serve`
pub(super) async fn handle(
    dispatch: &dyn Dispatch,
    nats: &async_nats::Client,
    record: Record<'_>,
    options: &ServeOptions,
    stop: &CancellationToken,
    streams: &Streams,
    method: usize,
    request: async_nats::Message,
) {
    let info = &dispatch.service().methods[method];
    // A stream its caller can cancel: the work stops when the caller says it went away.
    let (abandoned, _entry) = streams.for_request(info.server_streaming, &request);
    let received = Instant::now();
    let stats = &record;
    // Who is calling, bounded by what its principal may claim, then the RPC's policy:
    // one check for every caller, whatever the transport, before the handler runs.
    let Some(mut meta) = admit(nats, &request, info, &options.trust, stats, received).await else {
        return;
    };
    // This request's own span, a child of the caller's; the handler's calls and the
    // events its writes queue are children of it.
    let (context, parent) = TraceParent::continuing(meta.traceparent.as_deref());
    meta.traceparent = Some(context.to_string());
    let mut finished = Finished::start(context, parent, info.subject);
    let span = tracing::info_span!(
        "rpc",
        subject = info.subject,
        request_id = meta.request_id.as_deref().unwrap_or(""),
        trace_id = %format_args!("{:032x}", context.trace_id),
    );
    let served = async move {
        let body = request.payload.clone();
        let outcome = run_handler(dispatch, method, info.subject, Request { body, meta }).await;
        if abandoned.is_cancelled() {
            tracing::debug!(subject = info.subject, "the caller abandoned the stream");
            finished.abandoned();
            return;
        }
        if let Err(s) = &outcome {
            finished.fail(s);
        }
        match outcome {
            Ok(Reply::Unary(body)) => {
                send_unary(nats, request.reply.as_ref(), body, stats, received).await
            }
            Ok(Reply::Stream(items)) => {
                let Some(reply) = request.reply.clone() else {
                    return;
                };
                let out = StreamOut {
                    nats,
                    reply,
                    stats,
                    received,
                    subject: info.subject,
                };
                let ends = (&abandoned, stop);
                send_stream(out, items, ends, options.stream_heartbeat, &mut finished).await;
            }
            Err(s) => {
                if let Some(reply) = &request.reply {
                    respond_error(nats, reply, stats, received, &s).await;
                }
            }
        }
    };
    trace::scope(context, served.instrument(span)).await
}

/// Who is calling, bounded by what its principal may claim, then the RPC's policy (see
/// [`handle`]); `None` when the request is refused, after answering it so.
async fn admit(
    nats: &async_nats::Client,
    request: &async_nats::Message,
    info: &MethodInfo,
    trust: &Trust,
    stats: &Record<'_>,
    received: Instant,
) -> Option<Metadata> {
    let meta = metadata(request.headers.as_ref(), received, trust)
        .and_then(|meta| info.policy.permits(meta.caller.as_ref()).map(|()| meta));
    match meta {
        Ok(meta) => Some(meta),
        Err(s) => {
            if let Some(reply) = &request.reply {
                respond_error(nats, reply, stats, received, &s).await;
            }
            None
        }
    }
}

/// Runs the handler within the request's deadline (one already past is not started); a
/// panic is answered Internal.
async fn run_handler(
    dispatch: &dyn Dispatch,
    method: usize,
    subject: &'static str,
    request: Request<Bytes>,
) -> Result<Reply, Status> {
    let deadline = request.meta.deadline;
    let call = AssertUnwindSafe(dispatch.call(method, request)).catch_unwind();
    match deadline {
        Some(d) if d <= Instant::now() => Err(Status::new(
            Code::DeadlineExceeded,
            "the request's deadline passed before it was handled",
        )),
        Some(d) => match tokio::time::timeout_at(d.into(), call).await {
            Ok(r) => flatten_panic(r),
            Err(_) => Err(Status::new(
                Code::DeadlineExceeded,
                format!("{subject} did not finish within the request's deadline"),
            )),
        },
        None => flatten_panic(call.await),
    }
}

fn flatten_panic(
    r: Result<Result<Reply, Status>, Box<dyn std::any::Any + Send>>,
) -> Result<Reply, Status> {
    match r {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "handler panicked; answered as Internal");
            Err(Status::internal("internal error"))
        }
    }
}
