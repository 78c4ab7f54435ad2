//! What a served request leaves behind, whichever way it ends: its server span
//! ([`Finished`], recorded when dropped; nothing when no trace sink is installed) and its
//! counts in the micro protocol's endpoint stats and the Prometheus rows ([`Record`]).

use std::time::{Duration, SystemTime};

use aicore_proto::Status;

use crate::micro;
use crate::trace::{self, TraceParent};

/// A served request's span, recorded when the request is done (whichever way it ends);
/// nothing when no trace sink is installed.
pub(super) struct Finished {
    span: Option<trace::Span>,
}

impl Finished {
    pub(super) fn start(
        context: TraceParent,
        parent: Option<u64>,
        subject: &'static str,
    ) -> Finished {
        let span = context.recorded().then(|| {
            let mut parts = subject.split('.');
            let domain = parts.nth(1).unwrap_or_default();
            let rpc = parts.nth(1).unwrap_or_default();
            let now = SystemTime::now();
            trace::Span {
                context,
                parent,
                name: subject.into(),
                kind: trace::Kind::Server,
                start: now,
                end: now,
                error: None,
                attributes: vec![
                    ("rpc.system", "nats".into()),
                    ("rpc.service", domain.into()),
                    ("rpc.method", rpc.into()),
                ],
            }
        });
        Finished { span }
    }

    pub(super) fn fail(&mut self, status: &Status) {
        if let Some(span) = &mut self.span {
            span.error = Some((status.code.as_str_name(), status.message.clone()));
        }
    }

    pub(super) fn abandoned(&mut self) {
        if let Some(span) = &mut self.span {
            span.error = Some(("CANCELLED", "the caller went away".into()));
        }
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.end = SystemTime::now();
            let code = span.error.as_ref().map_or("OK", |e| e.0);
            span.attributes.push(("rpc.status", code.into()));
            trace::record(span);
        }
    }
}

/// Where one request's outcome is counted: the micro protocol's endpoint stats
/// (`$SRV.STATS`) and the Prometheus rows ([`crate::metrics`]).
pub(super) struct Record<'a> {
    pub(super) stats: &'a micro::EndpointStats,
    pub(super) rpc: Option<&'a crate::metrics::RpcMetrics>,
    pub(super) method: usize,
}

impl Record<'_> {
    pub(super) fn ok(&self, elapsed: Duration) {
        self.stream_ended(elapsed, elapsed)
    }

    /// A call answered in full after `elapsed`; its latency is `started` (the time a
    /// stream took to start, the whole call for a unary one).
    pub(super) fn stream_ended(&self, elapsed: Duration, started: Duration) {
        self.stats.record(elapsed);
        if let Some(rpc) = self.rpc {
            rpc.record(self.method, Ok(()), started);
        }
    }

    pub(super) fn error(&self, elapsed: Duration, status: &Status) {
        self.stats.error(elapsed, status.to_string());
        if let Some(rpc) = self.rpc {
            rpc.record(self.method, Err(status.code), elapsed);
        }
    }
}
