//! The dead-letter task: turns JetStream's give-up advisories (stored in
//! `DLQ_ADVISORIES`) into copies of the original messages on `dlq.<stream>.<consumer>`.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{REASON_MAX_DELIVER, dlq_headers};
use aicore_runtime::streams::{self, ADVISORIES};

/// The durable consumer of `DLQ_ADVISORIES` the dead-letter task reads.
const DEAD_LETTER_CONSUMER: &str = "dead-letters";

/// What a give-up advisory says (the fields both kinds share).
#[derive(Debug, serde::Deserialize)]
struct Advisory {
    stream: String,
    consumer: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
    #[serde(default)]
    reason: String,
}

/// The dead letter for one advisory: where it goes and the message to publish.
async fn dead_letter_for(
    js: &jetstream::Context,
    advisory_subject: &str,
    a: &Advisory,
) -> Result<(String, PublishMessage), String> {
    let terminated = advisory_subject.contains(".MSG_TERMINATED.");
    let reason = if terminated {
        if a.reason.is_empty() {
            "terminated".to_string()
        } else {
            a.reason.clone()
        }
    } else {
        REASON_MAX_DELIVER.to_string()
    };
    let mut h = HeaderMap::new();
    let mut payload = Bytes::new();
    let mut reason = reason;
    let stream = js
        .get_stream_no_info(&a.stream)
        .await
        .map_err(|e| e.to_string())?;
    match stream.get_raw_message(a.stream_seq).await {
        Ok(m) => {
            for (name, values) in m.headers.iter() {
                let n = name.to_string();
                if n.starts_with("Nats-") || n.starts_with("Aicore-Dlq-") {
                    continue;
                }
                for v in values {
                    h.append(n.as_str(), v.as_str());
                }
            }
            payload = m.payload;
            h.insert(dlq_headers::SUBJECT, m.subject.as_str());
            if let Ok(t) = m
                .time
                .format(&time::format_description::well_known::Rfc3339)
            {
                h.insert(dlq_headers::PUBLISHED, t.as_str());
            }
        }
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
            reason.push_str(" (the message is no longer in its stream)");
        }
        Err(e) => return Err(e.to_string()),
    }
    h.insert(dlq_headers::STREAM, a.stream.as_str());
    h.insert(dlq_headers::SEQUENCE, a.stream_seq.to_string().as_str());
    h.insert(dlq_headers::CONSUMER, a.consumer.as_str());
    h.insert(dlq_headers::DELIVERIES, a.deliveries.to_string().as_str());
    let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
    h.insert(dlq_headers::REASON, reason.as_str());
    let msg = PublishMessage::build()
        .payload(payload)
        .headers(h)
        .message_id(format!("dlq:{}:{}:{}", a.stream, a.consumer, a.stream_seq));
    Ok((streams::dlq_subject(&a.stream, &a.consumer), msg))
}

/// Handles one stored advisory; `Err` leaves it unacknowledged for a retry.
async fn handle_advisory(js: &jetstream::Context, m: &jetstream::Message) -> Result<(), String> {
    let a: Advisory = match serde_json::from_slice(&m.payload) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(subject = %m.subject, error = %e, "unreadable advisory skipped");
            return Ok(());
        }
    };
    // Only our message streams; never dead-letter the DLQ itself (no loops).
    let ours = streams::by_name(&a.stream).is_some_and(|s| s.publishable);
    if !ours {
        return Ok(());
    }
    let (subject, msg) = dead_letter_for(js, &m.subject, &a).await?;
    let ack = js
        .send_publish(subject, msg)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(stream = %a.stream, consumer = %a.consumer, seq = a.stream_seq, dlq_seq = ack.sequence, "message moved to DLQ");
    Ok(())
}

async fn dead_letter_round(
    js: &jetstream::Context,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let stream = js
        .get_stream_no_info(ADVISORIES)
        .await
        .map_err(|e| e.to_string())?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            DEAD_LETTER_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(DEAD_LETTER_CONSUMER.to_string()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = messages.next() => n,
        };
        let m = match next {
            None => return Err("the advisory feed ended".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(m)) => m,
        };
        handle_advisory(js, &m).await?;
        m.ack().await.map_err(|e| e.to_string())?;
    }
}

/// Moves messages that consumers gave up on to `DLQ`, until `shutdown`: reads the stored
/// max-deliveries and terminated advisories and publishes a copy of each original message
/// to `dlq.<stream>.<consumer>` with its origin, deliveries and reason. Failures back off
/// and retry; an advisory is acknowledged only once its dead letter is stored.
pub async fn run_dead_letters(js: jetstream::Context, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match dead_letter_round(&js, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter task failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!("dead-letter task stopped");
}
