//! Input checks of event-bus requests, each naming its field: subjects and filters
//! against the configured streams, consumer names, deduplication ids, headers, durations and
//! start positions, and the ack token a Fetch hands out.

use super::*;

pub(super) fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    Status::new(Code::Unavailable, format!("JetStream failed {what}: {e}"))
}

pub(super) fn consumer_missing(e: &ConsumerInfoError) -> bool {
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
pub(super) fn check_stream(field: &str, name: &str) -> Result<&'static StreamDef, Status> {
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

pub(super) fn check_dedup_id(id: &str) -> Result<(), Status> {
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

pub(super) fn duration_from_proto(
    field: &str,
    d: &prost_types::Duration,
) -> Result<Duration, Status> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Status::invalid(field, "must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

pub(super) fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as JetStream's time type.
pub(super) fn time_from_proto(
    field: &str,
    t: &prost_types::Timestamp,
) -> Result<time::OffsetDateTime, Status> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|_| Status::invalid(field, "is out of range"))
}

/// JetStream's time type as a protobuf timestamp (`None` for the zero time of "never").
pub(super) fn time_to_proto(t: time::OffsetDateTime) -> Option<prost_types::Timestamp> {
    if t.unix_timestamp() <= 0 {
        return None;
    }
    Some(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

/// The consumer's delivery start, from the request.
pub(super) fn deliver_policy(
    req: &CreateConsumerRequest,
) -> Result<consumer::DeliverPolicy, Status> {
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
pub(super) fn ack_payload(req: &AckRequest) -> Result<Bytes, Status> {
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
