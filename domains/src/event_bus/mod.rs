//! event-bus: durable game events on JetStream, as a domain. Publish puts one message in
//! the stream its subject belongs to (`Nats-Msg-Id` = the caller's de-duplication id), Replay
//! streams stored history through an ordered ephemeral consumer, CreateConsumer / Fetch /
//! Ack are durable pull consumers, ListStreams and DeadLetters report. It keeps no redb
//! state: JetStream is the store. A client publish is not a state change of any domain, so
//! it goes straight to JetStream; events of domain state changes go through the outbox
//! ([`aicore_runtime::outbox`]) instead.
//!
//! Ack tokens are the `$JS.ACK.…` reply subjects JetStream gave each delivery: they carry
//! stream, consumer, stream sequence and delivery count, so Ack needs no memory between
//! calls and works from any replica.
//!
//! Dead letters: JetStream emits an advisory when a consumer gives up on a message
//! (`max_deliver` exhausted, or a TERM). [`aicore_runtime::streams`] keeps those advisories in the
//! `DLQ_ADVISORIES` stream, and [`run_dead_letters`] (`dead_letters.rs`, started by the
//! supervisor) turns each into a copy of the original message on `dlq.<stream>.<consumer>`
//! with headers naming its origin, deliveries and reason; the DLQ message id
//! (`dlq:<stream>:<consumer>:<seq>`) makes a repeat harmless. Because the advisories are
//! stored, none is lost while the task is down.
//!
//! Stream and subject layout: see [`aicore_runtime::streams`].

use std::collections::HashMap;
use std::time::Duration;

use aicore_proto::aicore::event_bus::v1::{
    AckKind, AckRequest, AckResponse, ConsumerInfo, CreateConsumerRequest, CreateConsumerResponse,
    DeadLetter, DeadLettersRequest, DeadLettersResponse, DeliverPolicy, EventBusHandler,
    EventMessage, FetchRequest, FetchResponse, ListStreamsRequest, ListStreamsResponse,
    PublishRequest, PublishResponse, ReplayCaughtUp, ReplayRequest, ReplayResponse, StreamInfo,
    replay_request, replay_response,
};
use aicore_proto::{Code, Request, Status, Streaming};
use async_nats::HeaderMap;
use async_nats::jetstream::context::{
    ConsumerInfoError, ConsumerInfoErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::{self, ErrorCode, consumer, stream};
use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt};

use aicore_runtime::streams::{self, DLQ, StreamDef};
use aicore_runtime::streams::{StreamLimits, StreamsConfig};
use aicore_runtime::{Ctx, paging};

mod dead_letters;
#[cfg(test)]
mod tests;

pub use dead_letters::run_dead_letters;

/// Largest `data` of a Publish (the contract's limit).
const MAX_DATA_BYTES: usize = 1024 * 1024;
/// Longest subject accepted.
const MAX_SUBJECT_BYTES: usize = 256;
/// Longest `dedup_id`, in characters.
const MAX_DEDUP_ID_CHARS: usize = 128;
/// Longest consumer name.
const MAX_CONSUMER_NAME: usize = 64;
/// Most extra headers on one Publish.
const MAX_HEADERS: usize = 32;
/// Highest `max_deliver` a consumer may have (the contract's limit).
const MAX_MAX_DELIVER: u32 = 100;
/// Fetch: default and largest batch, longest wait (the contract's limits).
const DEFAULT_FETCH: u32 = 10;
const MAX_FETCH: u32 = 500;
const DEFAULT_FETCH_WAIT: Duration = Duration::from_secs(5);
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
/// ListStreams page sizes (the contract's limits).
const DEFAULT_STREAMS_PAGE: u32 = 50;
const MAX_STREAMS_PAGE: u32 = 100;

/// Headers a dead letter carries besides the original message's own.
pub mod dlq_headers {
    /// The stream the message came from.
    pub const STREAM: &str = "Aicore-Dlq-Stream";
    /// Its sequence there.
    pub const SEQUENCE: &str = "Aicore-Dlq-Sequence";
    /// Its subject there.
    pub const SUBJECT: &str = "Aicore-Dlq-Subject";
    /// When it was published there, RFC 3339.
    pub const PUBLISHED: &str = "Aicore-Dlq-Published";
    /// The consumer that gave up.
    pub const CONSUMER: &str = "Aicore-Dlq-Consumer";
    /// Deliveries attempted.
    pub const DELIVERIES: &str = "Aicore-Dlq-Deliveries";
    /// Why: `max_deliver exceeded` or the TERM reason.
    pub const REASON: &str = "Aicore-Dlq-Reason";
}

/// The reason recorded when a consumer's `max_deliver` ran out.
pub const REASON_MAX_DELIVER: &str = "max_deliver exceeded";

/// Configuration of event-bus (`[domains.event_bus]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventBusConfig {
    /// Deliveries before a message moves to DLQ, when CreateConsumer sets none (max 100).
    pub default_max_deliver: u32,
    /// How long a fetched message may stay unacknowledged before it is delivered again,
    /// when CreateConsumer sets none, in milliseconds.
    pub default_ack_wait_ms: u64,
    /// Page size of DeadLetters when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of DeadLetters; larger requests are capped to it.
    pub max_page_size: u32,
    /// `EVENTS` (`evt.>`): domain events.
    pub events: StreamLimits,
    /// `TELEMETRY` (`telemetry.>`): game telemetry.
    pub telemetry: StreamLimits,
    /// `AUDIT` (`audit.>`): security and payment audit.
    pub audit: StreamLimits,
    /// `AI` (`ai.>`): AI requests and results.
    pub ai: StreamLimits,
    /// `DLQ` (`dlq.>`): dead letters (also the limits of the advisory stream feeding it).
    pub dlq: StreamLimits,
}

impl Default for EventBusConfig {
    fn default() -> Self {
        let s = StreamsConfig::default();
        EventBusConfig {
            default_max_deliver: 5,
            default_ack_wait_ms: 30_000,
            default_page_size: 50,
            max_page_size: 500,
            events: s.events,
            telemetry: s.telemetry,
            audit: s.audit,
            ai: s.ai,
            dlq: s.dlq,
        }
    }
}

impl EventBusConfig {
    /// The streams' limits, for [`aicore_runtime::streams::ensure_streams`].
    pub fn streams(&self) -> StreamsConfig {
        StreamsConfig {
            events: self.events.clone(),
            telemetry: self.telemetry.clone(),
            audit: self.audit.clone(),
            ai: self.ai.clone(),
            dlq: self.dlq.clone(),
        }
    }
}

/// The event-bus domain.
pub struct EventBus {
    ctx: Ctx,
    config: EventBusConfig,
    js: Option<jetstream::Context>,
}

impl aicore_runtime::Domain for EventBus {
    type Config = EventBusConfig;

    fn build(
        ctx: &Ctx,
        config: &EventBusConfig,
    ) -> Result<std::sync::Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(std::sync::Arc::new(
            aicore_proto::aicore::event_bus::v1::EventBusServer(std::sync::Arc::new(
                EventBus::new(ctx.clone(), config.clone()),
            )),
        ))
    }
}

impl EventBus {
    /// The domain on a context; JetStream is reached through the context's NATS client.
    pub fn new(ctx: Ctx, config: EventBusConfig) -> Self {
        let js = ctx
            .client
            .as_ref()
            .map(|c| jetstream::new(c.nats().clone()));
        EventBus { ctx, config, js }
    }

    fn config(&self) -> &EventBusConfig {
        &self.config
    }

    fn js(&self) -> Result<&jetstream::Context, Status> {
        self.js
            .as_ref()
            .ok_or_else(|| Status::new(Code::Unavailable, "no JetStream in this context"))
    }

    async fn stream(&self, name: &str) -> Result<stream::Stream, Status> {
        self.js()?
            .get_stream(name)
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Status::not_found(format!("stream {name} does not exist"))
                }
                _ => unavailable("reading the stream", e),
            })
    }
}

// ---------------------------------------------------------------- validation

fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    Status::new(Code::Unavailable, format!("JetStream failed {what}: {e}"))
}

fn consumer_missing(e: &ConsumerInfoError) -> bool {
    matches!(
        e.kind(),
        ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
    ) || matches!(e.kind(), ConsumerInfoErrorKind::JetStream(j)
        if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND
            || j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Checks a concrete subject (no wildcards) and returns the stream it lands in.
pub fn check_subject(field: &str, subject: &str) -> Result<&'static StreamDef, Status> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES {
        return Err(Status::invalid(
            field,
            format!("must be 1 to {MAX_SUBJECT_BYTES} bytes"),
        ));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.iter().any(|t| {
        t.is_empty()
            || *t == "*"
            || *t == ">"
            || t.chars().any(|c| c.is_whitespace() || c.is_control())
    }) {
        return Err(Status::invalid(
            field,
            "must be dot-separated non-empty tokens without wildcards or whitespace",
        ));
    }
    let def = streams::for_subject(subject).ok_or_else(|| {
        Status::invalid(
            field,
            "must start with evt., telemetry., audit. or ai. (the streams' subjects)",
        )
    })?;
    if !def.publishable {
        return Err(Status::invalid(
            field,
            "the dead-letter stream is not publishable",
        ));
    }
    if tokens.len() < def.min_tokens {
        return Err(Status::invalid(
            field,
            format!(
                "{} subjects need at least {} tokens (e.g. `{}.<domain>.<name>`)",
                def.name, def.min_tokens, def.prefix
            ),
        ));
    }
    Ok(def)
}

/// Checks a subject filter (wildcards allowed) against a stream; empty is "all".
pub fn check_filter(field: &str, filter: &str, def: &StreamDef) -> Result<(), Status> {
    if filter.is_empty() {
        return Ok(());
    }
    let tokens: Vec<&str> = filter.split('.').collect();
    let bad = filter.len() > MAX_SUBJECT_BYTES
        || tokens
            .iter()
            .any(|t| t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        || tokens[..tokens.len() - 1].contains(&">")
        || tokens
            .iter()
            .any(|t| t.len() > 1 && (t.contains('*') || t.contains('>')));
    if bad {
        return Err(Status::invalid(field, "must be a NATS subject filter"));
    }
    if tokens[0] != def.prefix && tokens[0] != "*" && tokens[0] != ">" {
        return Err(Status::invalid(
            field,
            format!("must be within the stream's subjects `{}.>`", def.prefix),
        ));
    }
    Ok(())
}

/// The stream named in a request (one of ours, DLQ included).
fn check_stream(field: &str, name: &str) -> Result<&'static StreamDef, Status> {
    streams::by_name(name)
        .ok_or_else(|| Status::invalid(field, "must be one of EVENTS, TELEMETRY, AUDIT, AI, DLQ"))
}

/// Checks a durable consumer name: 1–64 of `[A-Za-z0-9_-]`.
pub fn check_consumer_name(field: &str, name: &str) -> Result<(), Status> {
    if name.is_empty()
        || name.len() > MAX_CONSUMER_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Status::invalid(
            field,
            format!("must be 1 to {MAX_CONSUMER_NAME} characters of [A-Za-z0-9_-]"),
        ));
    }
    Ok(())
}

fn check_dedup_id(id: &str) -> Result<(), Status> {
    let n = id.chars().count();
    if n == 0 || n > MAX_DEDUP_ID_CHARS || id.chars().any(|c| c.is_control()) {
        return Err(Status::invalid(
            "dedup_id",
            format!("must be 1 to {MAX_DEDUP_ID_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// Builds a Publish's headers: `Content-Type` plus the caller's, refusing `Nats-*` names
/// and anything that would not survive as a NATS header.
pub fn publish_headers(
    content_type: &str,
    extra: &HashMap<String, String>,
) -> Result<HeaderMap, Status> {
    let mut h = HeaderMap::new();
    if content_type.len() > 255 || content_type.chars().any(|c| c.is_control()) {
        return Err(Status::invalid(
            "content_type",
            "must be at most 255 bytes without control characters",
        ));
    }
    if !content_type.is_empty() {
        h.insert("Content-Type", content_type);
    }
    if extra.len() > MAX_HEADERS {
        return Err(Status::invalid(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in extra {
        let token = |c: char| c.is_ascii_graphic() && c != ':';
        if name.is_empty() || name.len() > 128 || !name.chars().all(token) {
            return Err(Status::invalid(
                "headers",
                format!(
                    "header name {name:?} must be 1 to 128 printable ASCII characters without `:`"
                ),
            ));
        }
        if name.to_ascii_lowercase().starts_with("nats-") {
            return Err(Status::invalid(
                "headers",
                format!("header name {name:?}: names starting with `Nats-` are reserved"),
            ));
        }
        if name.eq_ignore_ascii_case("content-type") {
            return Err(Status::invalid(
                "headers",
                "set the content type with `content_type`",
            ));
        }
        if value.len() > 4096 || value.chars().any(|c| c.is_control()) {
            return Err(Status::invalid(
                "headers",
                format!("header {name:?}: value must be at most 4096 bytes on one line"),
            ));
        }
        h.insert(name.as_str(), value.as_str());
    }
    Ok(h)
}

fn duration_from_proto(field: &str, d: &prost_types::Duration) -> Result<Duration, Status> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Status::invalid(field, "must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as JetStream's time type.
fn time_from_proto(
    field: &str,
    t: &prost_types::Timestamp,
) -> Result<time::OffsetDateTime, Status> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|_| Status::invalid(field, "is out of range"))
}

/// JetStream's time type as a protobuf timestamp (`None` for the zero time of "never").
fn time_to_proto(t: time::OffsetDateTime) -> Option<prost_types::Timestamp> {
    if t.unix_timestamp() <= 0 {
        return None;
    }
    Some(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

/// The consumer's delivery start, from the request.
fn deliver_policy(req: &CreateConsumerRequest) -> Result<consumer::DeliverPolicy, Status> {
    Ok(match DeliverPolicy::try_from(req.deliver_policy) {
        Ok(DeliverPolicy::Unspecified | DeliverPolicy::All) => consumer::DeliverPolicy::All,
        Ok(DeliverPolicy::New) => consumer::DeliverPolicy::New,
        Ok(DeliverPolicy::BySequence) => {
            if req.start_sequence == 0 {
                return Err(Status::invalid(
                    "start_sequence",
                    "is required (from 1) with DELIVER_POLICY_BY_SEQUENCE",
                ));
            }
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: req.start_sequence,
            }
        }
        Ok(DeliverPolicy::ByTime) => {
            let t = req.start_time.as_ref().ok_or_else(|| {
                Status::invalid("start_time", "is required with DELIVER_POLICY_BY_TIME")
            })?;
            consumer::DeliverPolicy::ByStartTime {
                start_time: time_from_proto("start_time", t)?,
            }
        }
        Err(_) => return Err(Status::invalid("deliver_policy", "is not a known policy")),
    })
}

/// What an ack token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckToken {
    /// The stream.
    pub stream: String,
    /// The consumer.
    pub consumer: String,
    /// The message's stream sequence.
    pub stream_sequence: u64,
    /// Which delivery this token belongs to, from 1.
    pub delivered: u64,
}

/// Parses an ack token (a JetStream `$JS.ACK` reply subject, v1 or v2 layout).
pub fn parse_ack_token(token: &str) -> Result<AckToken, Status> {
    let bad = || Status::invalid("ack_token", "is not a token Fetch returned");
    if token.len() > 512 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let t: Vec<&str> = token.split('.').collect();
    if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" || t.iter().any(|s| s.is_empty()) {
        return Err(bad());
    }
    // v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
    // v2: $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    let base = match t.len() {
        9 => 2,
        11 | 12 => 4,
        _ => return Err(bad()),
    };
    let num = |i: usize| t[base + i].parse::<u64>().map_err(|_| bad());
    let parsed = AckToken {
        stream: t[base].to_string(),
        consumer: t[base + 1].to_string(),
        delivered: num(2)?,
        stream_sequence: num(3)?,
    };
    num(4)?;
    num(5)?;
    Ok(parsed)
}

/// The ack protocol payload for a kind.
fn ack_payload(req: &AckRequest) -> Result<Bytes, Status> {
    Ok(match AckKind::try_from(req.kind) {
        Ok(AckKind::Unspecified | AckKind::Ack) => Bytes::from_static(b"+ACK"),
        Ok(AckKind::Nak) => match &req.delay {
            Some(d) => {
                let d = duration_from_proto("delay", d)?;
                format!("-NAK {{\"delay\":{}}}", d.as_nanos()).into()
            }
            None => Bytes::from_static(b"-NAK"),
        },
        Ok(AckKind::Term) => {
            let reason: String = req
                .reason
                .chars()
                .filter(|c| !c.is_control())
                .take(256)
                .collect();
            if reason.is_empty() {
                Bytes::from_static(b"+TERM")
            } else {
                format!("+TERM {reason}").into()
            }
        }
        Err(_) => return Err(Status::invalid("kind", "is not a known ack kind")),
    })
}

// ---------------------------------------------------------------- conversions

/// The first value of each header, and the content type separately.
fn split_headers(h: Option<&HeaderMap>) -> (String, HashMap<String, String>) {
    let mut content_type = String::new();
    let mut out = HashMap::new();
    if let Some(h) = h {
        for (name, values) in h.iter() {
            let Some(v) = values.first() else { continue };
            let name = name.to_string();
            if name.eq_ignore_ascii_case("content-type") {
                content_type = v.to_string();
            } else {
                out.insert(name, v.to_string());
            }
        }
    }
    (content_type, out)
}

fn from_stream_message(stream: &str, m: &StreamMessage) -> EventMessage {
    let (content_type, headers) = split_headers(Some(&m.headers));
    EventMessage {
        stream: stream.to_string(),
        sequence: m.sequence,
        subject: m.subject.to_string(),
        data: m.payload.clone(),
        content_type,
        headers,
        published_at: time_to_proto(m.time),
        ack_token: String::new(),
        delivery_count: 0,
    }
}

fn from_delivery(m: &jetstream::Message, with_ack: bool) -> Result<EventMessage, Status> {
    let info = m
        .info()
        .map_err(|e| Status::internal(format!("JetStream delivered an unreadable message: {e}")))?;
    let (content_type, headers) = split_headers(m.headers.as_ref());
    Ok(EventMessage {
        stream: info.stream.to_string(),
        sequence: info.stream_sequence,
        subject: m.subject.to_string(),
        data: m.payload.clone(),
        content_type,
        headers,
        published_at: time_to_proto(info.published),
        ack_token: if with_ack {
            m.reply.as_ref().map(|r| r.to_string()).unwrap_or_default()
        } else {
            String::new()
        },
        delivery_count: if with_ack {
            u32::try_from(info.delivered).unwrap_or(u32::MAX)
        } else {
            0
        },
    })
}

fn consumer_info(i: &consumer::Info) -> ConsumerInfo {
    let (policy, start_sequence, start_time) = match &i.config.deliver_policy {
        consumer::DeliverPolicy::All => (DeliverPolicy::All, 0, None),
        consumer::DeliverPolicy::New => (DeliverPolicy::New, 0, None),
        consumer::DeliverPolicy::ByStartSequence { start_sequence } => {
            (DeliverPolicy::BySequence, *start_sequence, None)
        }
        consumer::DeliverPolicy::ByStartTime { start_time } => {
            (DeliverPolicy::ByTime, 0, time_to_proto(*start_time))
        }
        _ => (DeliverPolicy::Unspecified, 0, None),
    };
    ConsumerInfo {
        stream: i.stream_name.clone(),
        name: i.name.clone(),
        filter_subject: i.config.filter_subject.clone(),
        deliver_policy: policy as i32,
        start_sequence,
        start_time,
        ack_wait: Some(duration_to_proto(i.config.ack_wait)),
        max_deliver: u32::try_from(i.config.max_deliver).unwrap_or(0),
        pending: i.num_pending,
        ack_pending: i.num_ack_pending as u64,
        created_at: time_to_proto(i.created),
    }
}

fn stream_info(i: &stream::Info) -> StreamInfo {
    let s = &i.state;
    StreamInfo {
        name: i.config.name.clone(),
        subjects: i.config.subjects.clone(),
        messages: s.messages,
        bytes: s.bytes,
        first_sequence: if s.messages == 0 { 0 } else { s.first_sequence },
        last_sequence: s.last_sequence,
        first_time: if s.messages == 0 {
            None
        } else {
            time_to_proto(s.first_timestamp)
        },
        last_time: time_to_proto(s.last_timestamp),
        consumer_count: u32::try_from(s.consumer_count).unwrap_or(u32::MAX),
    }
}

/// A dead letter from a message of the DLQ stream (as [`run_dead_letters`] wrote it).
pub fn dead_letter(m: &StreamMessage) -> DeadLetter {
    let get = |n: &str| m.headers.get(n).map(|v| v.to_string()).unwrap_or_default();
    let mut original = from_stream_message(&get(dlq_headers::STREAM), m);
    original.sequence = get(dlq_headers::SEQUENCE).parse().unwrap_or(0);
    original.subject = get(dlq_headers::SUBJECT);
    original.published_at = time::OffsetDateTime::parse(
        &get(dlq_headers::PUBLISHED),
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
    .and_then(time_to_proto);
    original
        .headers
        .retain(|k, _| !k.starts_with("Aicore-Dlq-") && !k.starts_with("Nats-"));
    DeadLetter {
        dlq_sequence: m.sequence,
        message: Some(original),
        consumer: get(dlq_headers::CONSUMER),
        deliveries: get(dlq_headers::DELIVERIES).parse().unwrap_or(0),
        reason: get(dlq_headers::REASON),
        dead_at: time_to_proto(m.time),
    }
}

// ---------------------------------------------------------------- handlers

impl EventBusHandler for EventBus {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<PublishResponse, Status> {
        let b = request.body;
        check_subject("subject", &b.subject)?;
        check_dedup_id(&b.dedup_id)?;
        if b.data.len() > MAX_DATA_BYTES {
            let mut e = Status::invalid("data", format!("must be at most {MAX_DATA_BYTES} bytes"));
            e.code = Code::ResourceExhausted;
            return Err(e);
        }
        let headers = publish_headers(&b.content_type, &b.headers)?;
        let js = self.js()?;
        let ack = js
            .send_publish(
                b.subject,
                PublishMessage::build()
                    .payload(b.data)
                    .headers(headers)
                    .message_id(&b.dedup_id),
            )
            .await
            .map_err(|e| unavailable("publishing", e))?
            .await
            .map_err(|e| unavailable("storing the message", e))?;
        Ok(PublishResponse {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Streaming<ReplayResponse>, Status> {
        let deadline = request.meta.deadline;
        let b = request.body;
        let def = check_stream("stream", &b.stream)?;
        check_filter("filter_subject", &b.filter_subject, def)?;
        let deliver_policy = match &b.start {
            None => consumer::DeliverPolicy::All,
            Some(replay_request::Start::FromSequence(s)) => {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: (*s).max(1),
                }
            }
            Some(replay_request::Start::FromTime(t)) => consumer::DeliverPolicy::ByStartTime {
                start_time: time_from_proto("from_time", t)?,
            },
        };
        let mut stream = self.stream(def.name).await?;
        let last_at_start = stream
            .info()
            .await
            .map_err(|e| unavailable("reading the stream", e))?
            .state
            .last_sequence;
        let ordered = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                filter_subject: b.filter_subject.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("creating a replay consumer", e))?;
        let pending_at_start = ordered.cached_info().num_pending;
        let mut messages = ordered
            .messages()
            .await
            .map_err(|e| unavailable("starting the replay", e))?;
        let limit = if b.max_messages == 0 {
            u64::MAX
        } else {
            u64::from(b.max_messages)
        };
        let follow = b.follow;
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<ReplayResponse, Status>>(64);
        let stop = self.ctx.shutdown.clone();
        self.ctx.spawn(async move {
            let mut sent = 0u64;
            let mut caught_up = pending_at_start == 0 || last_at_start == 0;
            let marker = |last| ReplayResponse {
                item: Some(replay_response::Item::CaughtUp(ReplayCaughtUp {
                    last_sequence: last,
                })),
            };
            if caught_up {
                if !follow {
                    return;
                }
                if tx.send(Ok(marker(last_at_start))).await.is_err() {
                    return;
                }
            }
            while sent < limit {
                let wait = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d.into(), messages.next())
                            .await
                            .ok(),
                        None => Some(messages.next().await),
                    }
                };
                // The appliance stopping ends a replay (the runtime ends the caller's
                // stream with Unavailable, so it can resume).
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    n = wait => match n { Some(n) => n, None => return },
                };
                let item = match next {
                    None => return,
                    Some(Err(e)) => Err(unavailable("replaying", e)),
                    Some(Ok(m)) => from_delivery(&m, false).map(|msg| {
                        let pending = m.info().map(|i| i.pending).unwrap_or(1);
                        (msg, pending)
                    }),
                };
                let (msg, pending) = match item {
                    Ok(x) => x,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                let seq = msg.sequence;
                sent += 1;
                let out = ReplayResponse {
                    item: Some(replay_response::Item::Message(msg)),
                };
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
                if !caught_up && (pending == 0 || seq >= last_at_start) {
                    caught_up = true;
                    if !follow {
                        return;
                    }
                    if tx.send(Ok(marker(seq.max(last_at_start)))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(rx))
    }

    async fn create_consumer(
        &self,
        request: Request<CreateConsumerRequest>,
    ) -> Result<CreateConsumerResponse, Status> {
        let b = request.body;
        let def = check_stream("stream", &b.stream)?;
        check_consumer_name("name", &b.name)?;
        check_filter("filter_subject", &b.filter_subject, def)?;
        let deliver_policy = deliver_policy(&b)?;
        let ack_wait = match &b.ack_wait {
            Some(d) => duration_from_proto("ack_wait", d)?,
            None => Duration::from_millis(self.config().default_ack_wait_ms),
        };
        if ack_wait < Duration::from_millis(100) {
            return Err(Status::invalid("ack_wait", "must be at least 100 ms"));
        }
        let max_deliver = match b.max_deliver {
            0 => self.config().default_max_deliver.clamp(1, MAX_MAX_DELIVER),
            n if n > MAX_MAX_DELIVER => {
                return Err(Status::invalid(
                    "max_deliver",
                    format!("must be at most {MAX_MAX_DELIVER}"),
                ));
            }
            n => n,
        };
        let wanted = consumer::pull::Config {
            durable_name: Some(b.name.clone()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: i64::from(max_deliver),
            filter_subject: b.filter_subject.clone(),
            ..Default::default()
        };
        let stream = self.stream(def.name).await?;
        let same = |i: &consumer::Info| {
            i.config.filter_subject == wanted.filter_subject
                && i.config.deliver_policy == wanted.deliver_policy
                && i.config.ack_wait == wanted.ack_wait
                && i.config.max_deliver == wanted.max_deliver
                && i.config.ack_policy == consumer::AckPolicy::Explicit
        };
        let existing = |i: consumer::Info| {
            if same(&i) {
                Ok(CreateConsumerResponse {
                    consumer: Some(consumer_info(&i)),
                    created: false,
                })
            } else {
                Err(Status::conflict(format!(
                    "consumer {} exists on {} with a different configuration",
                    b.name, def.name
                )))
            }
        };
        if let Ok(i) = stream.consumer_info(&b.name).await {
            return existing(i);
        }
        match stream.create_consumer_strict(wanted.clone()).await {
            Ok(mut c) => {
                let info = c
                    .info()
                    .await
                    .map_err(|e| unavailable("reading the consumer", e))?;
                Ok(CreateConsumerResponse {
                    consumer: Some(consumer_info(info)),
                    created: true,
                })
            }
            Err(e) => match stream.consumer_info(&b.name).await {
                // Lost a race with an identical (or different) creation.
                Ok(i) => existing(i),
                Err(_) => Err(unavailable("creating the consumer", e)),
            },
        }
    }

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<FetchResponse, Status> {
        let remaining = request.meta.remaining();
        let b = request.body;
        let def = check_stream("stream", &b.stream)?;
        check_consumer_name("consumer", &b.consumer)?;
        let max = match b.max_messages {
            0 => DEFAULT_FETCH,
            n => n.min(MAX_FETCH),
        } as usize;
        let mut wait = match &b.wait {
            Some(d) => duration_from_proto("wait", d)?.min(MAX_FETCH_WAIT),
            None => DEFAULT_FETCH_WAIT,
        };
        // Leave time to answer before the caller's deadline.
        if let Some(r) = remaining {
            wait = wait.min(r.saturating_sub(Duration::from_millis(500)));
        }
        let stream = self.stream(def.name).await?;
        let consumer: consumer::PullConsumer =
            stream.get_consumer(&b.consumer).await.map_err(|e| {
                if e.downcast_ref::<ConsumerInfoError>()
                    .is_some_and(consumer_missing)
                {
                    Status::not_found(format!(
                        "consumer {} does not exist on {}",
                        b.consumer, def.name
                    ))
                } else {
                    unavailable("reading the consumer", e)
                }
            })?;
        // First what is there now; only if nothing, wait for one message, then take what
        // else is ready. A pull never asks for more than this call returns, so no message
        // is delivered into a dropped inbox (which would cost it a delivery attempt).
        let mut out = pull(&consumer, max, None).await?;
        if out.is_empty() && wait >= Duration::from_millis(10) {
            out = pull(&consumer, 1, Some(wait)).await?;
            if !out.is_empty() && max > 1 {
                out.extend(pull(&consumer, max - 1, None).await?);
            }
        }
        Ok(FetchResponse { messages: out })
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<AckResponse, Status> {
        let b = request.body;
        let token = parse_ack_token(&b.ack_token)?;
        let payload = ack_payload(&b)?;
        let js = self.js()?;
        let stream = match js.get_stream_no_info(&token.stream).await {
            Ok(s) => s,
            Err(_) => return Ok(AckResponse { applied: false }),
        };
        let info = match stream.consumer_info(&token.consumer).await {
            Ok(i) => i,
            Err(e) if consumer_missing(&e) => return Ok(AckResponse { applied: false }),
            Err(e) => return Err(unavailable("reading the consumer", e)),
        };
        // Already acknowledged (at or below the floor): nothing to do. JetStream answers
        // any ack alike, so this is how a second Ack learns it was not applied.
        if token.stream_sequence <= info.ack_floor.stream_sequence {
            return Ok(AckResponse { applied: false });
        }
        // Request (not publish) so the server has processed it before we answer.
        let nats = js.client();
        match tokio::time::timeout(
            Duration::from_secs(2),
            nats.request(b.ack_token.clone(), payload),
        )
        .await
        {
            Ok(Ok(_)) => Ok(AckResponse { applied: true }),
            Ok(Err(e)) => Err(unavailable("acknowledging", e)),
            Err(_) => Err(Status::new(
                Code::Unavailable,
                "JetStream did not confirm the ack in time",
            )),
        }
    }

    async fn list_streams(
        &self,
        request: Request<ListStreamsRequest>,
    ) -> Result<ListStreamsResponse, Status> {
        let b = request.body;
        let size = paging::page_size(b.page_size, DEFAULT_STREAMS_PAGE, MAX_STREAMS_PAGE)?;
        let after = if b.page_token.is_empty() {
            None
        } else {
            Some(
                String::from_utf8(paging::decode_token(b'S', &b.page_token)?)
                    .map_err(|_| paging::bad_token())?,
            )
        };
        let mut all: Vec<stream::Info> = self
            .js()?
            .streams()
            .try_collect()
            .await
            .map_err(|e| unavailable("listing streams", e))?;
        all.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        let rest: Vec<&stream::Info> = all
            .iter()
            .filter(|i| {
                after
                    .as_ref()
                    .is_none_or(|a| i.config.name.as_str() > a.as_str())
            })
            .collect();
        let page: Vec<StreamInfo> = rest.iter().take(size).map(|i| stream_info(i)).collect();
        let next_page_token = if rest.len() > size {
            paging::encode_token(b'S', page.last().map(|s| s.name.as_bytes()).unwrap_or(b""))
        } else {
            String::new()
        };
        Ok(ListStreamsResponse {
            streams: page,
            next_page_token,
        })
    }

    async fn dead_letters(
        &self,
        request: Request<DeadLettersRequest>,
    ) -> Result<DeadLettersResponse, Status> {
        let b = request.body;
        let c = self.config();
        let size = paging::page_size(b.page_size, c.default_page_size, c.max_page_size)?;
        if !b.stream.is_empty() {
            check_stream("stream", &b.stream)?;
        }
        if !b.consumer.is_empty() {
            check_consumer_name("consumer", &b.consumer)?;
        }
        let filter = format!(
            "dlq.{}.{}",
            if b.stream.is_empty() { "*" } else { &b.stream },
            if b.consumer.is_empty() {
                "*"
            } else {
                &b.consumer
            },
        );
        let mut from = if b.page_token.is_empty() {
            1
        } else {
            let raw = paging::decode_token(b'D', &b.page_token)?;
            u64::from_be_bytes(raw.try_into().map_err(|_| paging::bad_token())?)
        };
        let dlq = self
            .js()?
            .get_stream_no_info(DLQ)
            .await
            .map_err(|e| unavailable("reading DLQ", e))?;
        let mut out = Vec::with_capacity(size);
        let mut more = false;
        loop {
            let got = dlq
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(filter.clone())
                .send()
                .await;
            let m = match got {
                Ok(m) => m,
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(unavailable("reading DLQ", e)),
            };
            if out.len() == size {
                more = true;
                break;
            }
            from = m.sequence + 1;
            out.push(dead_letter(&m));
        }
        Ok(DeadLettersResponse {
            dead_letters: out,
            next_page_token: if more {
                paging::encode_token(b'D', &from.to_be_bytes())
            } else {
                String::new()
            },
        })
    }
}

/// One pull: up to `max` messages, waiting up to `wait` (`None`: only what is ready now).
async fn pull(
    consumer: &consumer::PullConsumer,
    max: usize,
    wait: Option<Duration>,
) -> Result<Vec<EventMessage>, Status> {
    let batch = match wait {
        None => consumer.fetch().max_messages(max).messages().await,
        Some(w) => {
            consumer
                .batch()
                .max_messages(max)
                .expires(w)
                .messages()
                .await
        }
    }
    .map_err(|e| unavailable("pulling messages", e))?;
    let msgs: Vec<jetstream::Message> = batch
        .try_collect()
        .await
        .map_err(|e| unavailable("pulling messages", e))?;
    msgs.iter().map(|m| from_delivery(m, true)).collect()
}
