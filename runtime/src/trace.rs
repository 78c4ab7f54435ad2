//! Distributed traces: one span per RPC (and per event the outbox relays), parented
//! through W3C `traceparent` headers across domains, hosts and the event stream.
//!
//! Every served request gets a span of its own: a child of the `traceparent` it arrived
//! with, or the root of a new trace when it has none (or an invalid one). The handler
//! sees its own span as [`aicore_proto::Metadata::traceparent`], so the calls it makes
//! with `CallOptions::from_meta` are children of it, and [`current`] names it inside the
//! request's task, so the events its writes queue carry it to the relay, whose publish
//! span is their child: a quest completion is one trace, quest → payment → outbox.
//!
//! Finished spans go to the sink [`install`]ed by the appliance (its OTLP exporter), when
//! an endpoint is configured. Without one nothing is recorded: a request pays for a span
//! id and a formatted header, nothing more. The sink is a bounded queue; when the
//! exporter falls behind, spans are dropped and counted ([`dropped`]), never waited for.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::mpsc;

/// A W3C trace context: `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace (never zero).
    pub trace_id: u128,
    /// The span this context names (never zero).
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header (version 00, or a later one read as 00); `None` when
    /// it is malformed or has an all-zero id, as the W3C rules say.
    pub fn parse(s: &str) -> Option<TraceParent> {
        let mut parts = s.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let hex = |p: &str, len: usize| {
            p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let tp = TraceParent {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (tp.trace_id != 0 && tp.span_id != 0).then_some(tp)
    }

    /// A new trace's root context, sampled at the root sampling ratio
    /// ([`set_root_sample_ratio`]; all by default).
    pub fn root() -> TraceParent {
        let per_million = ROOT_SAMPLE_PER_MILLION.load(Ordering::Relaxed);
        TraceParent {
            trace_id: rand::random::<u128>().max(1),
            span_id: new_span_id(),
            flags: u8::from(rand::random::<u32>() % 1_000_000 < per_million),
        }
    }

    /// Whether this trace is sampled (flag bit 0) and spans are being recorded: what a
    /// span is recorded for. A caller that did not sample its trace is followed.
    pub fn recorded(&self) -> bool {
        self.flags & 1 == 1 && enabled()
    }

    /// A child context: same trace and flags, a new span id.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// The context for a span continuing `incoming` (a header value): its child, or a new
    /// root when there is none or it is invalid. Also the parent span id, when there is one.
    pub fn continuing(incoming: Option<&str>) -> (TraceParent, Option<u64>) {
        match incoming.and_then(TraceParent::parse) {
            Some(parent) => (parent.child(), Some(parent.span_id)),
            None => (TraceParent::root(), None),
        }
    }

    /// The trace id as 32 hex digits (what logs and trace viewers show).
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

fn new_span_id() -> u64 {
    rand::random::<u64>().max(1)
}

tokio::task_local! {
    static CURRENT: TraceParent;
}

/// Runs `f` with `span` as the current trace context of its task (see [`current`]).
pub async fn scope<F: std::future::Future>(span: TraceParent, f: F) -> F::Output {
    CURRENT.scope(span, f).await
}

/// The trace context of the request this task serves, if any.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|c| *c).ok()
}

/// What a span was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Serving a request.
    Server,
    /// Handing a message to JetStream.
    Producer,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its context (trace and span id).
    pub context: TraceParent,
    /// The span it is a child of, if any.
    pub parent: Option<u64>,
    /// `svc.<domain>.v1.<rpc>`, or the subject an event was published on.
    pub name: Cow<'static, str>,
    /// What it was.
    pub kind: Kind,
    /// When it began and ended.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// The outcome: `None` for success, else the error code's name and message.
    pub error: Option<(&'static str, String)>,
    /// Attributes (`rpc.service`, `rpc.method`, `rpc.status`, …).
    pub attributes: Vec<(&'static str, Cow<'static, str>)>,
}

static SINK: OnceLock<mpsc::Sender<Span>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Whether an installed sink gets spans (`aicore bench` turns it off and on to measure
/// what recording costs).
static RECORDING: AtomicBool = AtomicBool::new(true);
/// The share of new traces that are sampled, in millionths.
static ROOT_SAMPLE_PER_MILLION: AtomicU32 = AtomicU32::new(1_000_000);

/// Samples `ratio` (0.0 to 1.0) of the traces this process starts; a trace that arrives
/// from a caller keeps the caller's decision.
pub fn set_root_sample_ratio(ratio: f64) {
    let per_million = (ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
    ROOT_SAMPLE_PER_MILLION.store(per_million, Ordering::Relaxed);
}

/// Sends every finished span of this process to `sink` from now on (once; a second sink
/// is refused and returned).
pub fn install(sink: mpsc::Sender<Span>) -> Result<(), mpsc::Sender<Span>> {
    SINK.set(sink)
}

/// Whether spans are recorded (a sink is installed and recording is on).
pub fn enabled() -> bool {
    SINK.get().is_some() && RECORDING.load(Ordering::Relaxed)
}

/// Turns recording off or on (on by default, once a sink is installed).
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// Hands a finished span to the sink; dropped (and counted) when its queue is full.
pub fn record(span: Span) {
    if let Some(sink) = SINK.get()
        && sink.try_send(span).is_err()
    {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Spans dropped because the exporter's queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_w3c_forms_and_refuses_the_invalid_ones() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.span_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(
            tp.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        // A later version may append fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_span_continues_its_parent_or_starts_a_trace() {
        let parent = TraceParent::root();
        let (child, of) = TraceParent::continuing(Some(&parent.to_string()));
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(of, Some(parent.span_id));
        let (root, of) = TraceParent::continuing(Some("garbage"));
        assert_eq!(of, None);
        assert_ne!(root.trace_id, parent.trace_id);
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio_and_callers_decisions_are_kept() {
        set_root_sample_ratio(0.0);
        let unsampled = TraceParent::root();
        set_root_sample_ratio(1.0);
        assert_eq!(unsampled.flags, 0);
        assert_eq!(TraceParent::root().flags, 1);
        // A caller's "not sampled" is inherited by the child.
        let (child, _) = TraceParent::continuing(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert_eq!(child.flags, 0);
        assert!(!child.recorded());
    }

    #[tokio::test]
    async fn the_current_context_is_the_tasks_own() {
        assert_eq!(current(), None);
        let span = TraceParent::root();
        let seen = scope(span, async { current() }).await;
        assert_eq!(seen, Some(span));
        assert_eq!(current(), None);
    }
}
