//! Conversions from JetStream's types (messages, deliveries, consumer and stream info) to
//! the contract's messages.

use super::*;

/// The first value of each header, and the content type separately.
pub(super) fn split_headers(h: Option<&HeaderMap>) -> (String, HashMap<String, String>) {
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

pub(super) fn from_stream_message(stream: &str, m: &StreamMessage) -> EventMessage {
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

pub(super) fn from_delivery(
    m: &jetstream::Message,
    with_ack: bool,
) -> Result<EventMessage, Status> {
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

pub(super) fn consumer_info(i: &consumer::Info) -> ConsumerInfo {
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

pub(super) fn stream_info(i: &stream::Info) -> StreamInfo {
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
