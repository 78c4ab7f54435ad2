//! The JetStream streams AI Core owns, and the one place that says which subject lands in
//! which stream. The appliance calls [`ensure_streams`] at start (create, or update to the
//! configured limits — idempotent, so a restart or a changed limit is just another call).
//! Layout, fixed by convention:
//!
//! | stream      | subjects                                   | what                                 |
//! |-------------|--------------------------------------------|--------------------------------------|
//! | `EVENTS`    | `evt.<domain>.<name>`                      | domain events (outbox relay, Publish) |
//! | `TELEMETRY` | `telemetry.<…>`                            | game telemetry                       |
//! | `AUDIT`     | `audit.<domain>.<name>`                    | security and payment audit           |
//! | `AI`        | `ai.<…>`                                   | AI requests and results              |
//! | `DLQ`       | `dlq.<stream>.<consumer>`                  | dead letters (see `event_bus`)       |
//! | `DLQ_ADVISORIES` | `$JS.EVENT.ADVISORY.CONSUMER.{MAX_DELIVERIES,MSG_TERMINATED}.>` | JetStream's give-up advisories, kept so none is lost while the dead-letter task is down |
//!
//! Every stream is file-backed with a de-duplication window (so a re-send with the same
//! `Nats-Msg-Id` stores nothing) and age/size limits, discarding the oldest messages past
//! them. This module does not publish or consume; it only shapes the streams.

use std::time::Duration;

use aicore_proto::{Code, Status};
use async_nats::jetstream::{self, stream};

/// Age, size and de-duplication limits of one stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamLimits {
    /// Messages older than this are removed, in seconds; 0 = kept until the size limit.
    pub max_age_secs: u64,
    /// Stream size past which the oldest messages are removed, in bytes. JetStream reserves
    /// it in its file store, so the sum over streams must fit `nats.max_file_store`.
    pub max_bytes: u64,
    /// How long a `Nats-Msg-Id` is remembered for de-duplication, in seconds (at least 120).
    pub duplicate_window_secs: u64,
}

impl StreamLimits {
    /// `days` of age, `mib` MiB, a 10-minute de-duplication window.
    pub const fn new(days: u64, mib: u64) -> Self {
        StreamLimits {
            max_age_secs: days * 24 * 3600,
            max_bytes: mib << 20,
            duplicate_window_secs: 600,
        }
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits::new(7, 1024)
    }
}

/// The limits of every stream (event-bus's configuration section holds them).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamsConfig {
    /// `EVENTS` (`evt.>`).
    pub events: StreamLimits,
    /// `TELEMETRY` (`telemetry.>`).
    pub telemetry: StreamLimits,
    /// `AUDIT` (`audit.>`).
    pub audit: StreamLimits,
    /// `AI` (`ai.>`).
    pub ai: StreamLimits,
    /// `DLQ` (`dlq.>`), and the advisory stream feeding it.
    pub dlq: StreamLimits,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            events: StreamLimits::new(7, 1024),
            telemetry: StreamLimits::new(1, 1024),
            audit: StreamLimits::new(90, 1024),
            ai: StreamLimits::new(7, 512),
            dlq: StreamLimits::new(30, 256),
        }
    }
}

/// The dead-letter stream.
pub const DLQ: &str = "DLQ";
/// The stream keeping JetStream's max-deliveries and terminated advisories.
pub const ADVISORIES: &str = "DLQ_ADVISORIES";
/// Subjects of the advisories the dead-letter task turns into dead letters.
pub const ADVISORY_SUBJECTS: [&str; 2] = [
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
];
/// The shortest de-duplication window any stream gets, whatever the config says: long
/// enough to cover a relay's retries and a crash-restart of the appliance.
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A stream of ours: its name and the subject prefix (first token) it captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDef {
    /// Stream name, e.g. `EVENTS`.
    pub name: &'static str,
    /// First subject token, e.g. `evt` (the stream captures `evt.>`).
    pub prefix: &'static str,
    /// Fewest subject tokens a message needs (`evt.<domain>.<name>` = 3).
    pub min_tokens: usize,
    /// Whether clients may publish to it through the event-bus domain.
    pub publishable: bool,
}

/// Every stream holding messages, in listing order.
pub const STREAMS: [StreamDef; 5] = [
    StreamDef {
        name: "EVENTS",
        prefix: "evt",
        min_tokens: 3,
        publishable: true,
    },
    StreamDef {
        name: "TELEMETRY",
        prefix: "telemetry",
        min_tokens: 2,
        publishable: true,
    },
    StreamDef {
        name: "AUDIT",
        prefix: "audit",
        min_tokens: 3,
        publishable: true,
    },
    StreamDef {
        name: "AI",
        prefix: "ai",
        min_tokens: 2,
        publishable: true,
    },
    StreamDef {
        name: DLQ,
        prefix: "dlq",
        min_tokens: 3,
        publishable: false,
    },
];

/// The stream named `name` (exactly, e.g. `EVENTS`).
pub fn by_name(name: &str) -> Option<&'static StreamDef> {
    STREAMS.iter().find(|s| s.name == name)
}

/// The stream a concrete subject lands in, if any.
pub fn for_subject(subject: &str) -> Option<&'static StreamDef> {
    let first = subject.split('.').next()?;
    STREAMS.iter().find(|s| s.prefix == first)
}

/// The dead-letter subject for a message `consumer` of `stream` gave up on.
pub fn dlq_subject(stream: &str, consumer: &str) -> String {
    format!("dlq.{stream}.{consumer}")
}

fn limits<'a>(cfg: &'a StreamsConfig, name: &str) -> &'a StreamLimits {
    match name {
        "EVENTS" => &cfg.events,
        "TELEMETRY" => &cfg.telemetry,
        "AUDIT" => &cfg.audit,
        "AI" => &cfg.ai,
        _ => &cfg.dlq,
    }
}

fn config(
    name: &str,
    subjects: Vec<String>,
    l: &StreamLimits,
    description: &str,
) -> stream::Config {
    let max_age = Duration::from_secs(l.max_age_secs);
    let mut window = Duration::from_secs(l.duplicate_window_secs).max(MIN_DUPLICATE_WINDOW);
    // JetStream refuses a de-duplication window longer than the age limit.
    if !max_age.is_zero() {
        window = window.min(max_age);
    }
    stream::Config {
        name: name.to_string(),
        description: Some(description.to_string()),
        subjects,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age,
        max_bytes: i64::try_from(l.max_bytes).unwrap_or(i64::MAX).max(-1),
        max_messages: -1,
        max_messages_per_subject: -1,
        max_message_size: -1,
        max_consumers: -1,
        duplicate_window: window,
        num_replicas: 1,
        allow_direct: true,
        ..Default::default()
    }
}

/// The configuration [`ensure_streams`] gives each stream (the message streams, then the
/// advisory stream).
pub fn stream_configs(cfg: &StreamsConfig) -> Vec<stream::Config> {
    let mut out: Vec<stream::Config> = STREAMS
        .iter()
        .map(|s| {
            config(
                s.name,
                vec![format!("{}.>", s.prefix)],
                limits(cfg, s.name),
                match s.name {
                    "EVENTS" => "AI Core domain events (evt.<domain>.<name>)",
                    "TELEMETRY" => "AI Core game telemetry",
                    "AUDIT" => "AI Core security and payment audit",
                    "AI" => "AI Core AI requests and results",
                    _ => "AI Core dead letters (dlq.<stream>.<consumer>)",
                },
            )
        })
        .collect();
    out.push(config(
        ADVISORIES,
        ADVISORY_SUBJECTS.iter().map(|s| s.to_string()).collect(),
        &cfg.dlq,
        "JetStream give-up advisories awaiting the dead-letter task",
    ));
    out
}

/// Creates every stream, or updates it to the configured limits; safe to call at every
/// start. Unavailable if JetStream cannot be reached or refuses a configuration.
pub async fn ensure_streams(js: &jetstream::Context, cfg: &StreamsConfig) -> Result<(), Status> {
    for sc in stream_configs(cfg) {
        let name = sc.name.clone();
        js.create_or_update_stream(sc).await.map_err(|e| {
            Status::new(
                Code::Unavailable,
                format!("cannot create or update stream {name}: {e}"),
            )
        })?;
        tracing::debug!(stream = %name, "stream ready");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_to_their_stream() {
        assert_eq!(for_subject("evt.world.changed").unwrap().name, "EVENTS");
        assert_eq!(for_subject("telemetry.fps").unwrap().name, "TELEMETRY");
        assert_eq!(for_subject("audit.payment.debit").unwrap().name, "AUDIT");
        assert_eq!(for_subject("ai.request").unwrap().name, "AI");
        assert_eq!(for_subject("dlq.EVENTS.c").unwrap().name, DLQ);
        assert!(for_subject("evtx.world").is_none());
        assert!(for_subject("svc.auth.v1.login").is_none());
        assert_eq!(by_name("AUDIT").unwrap().prefix, "audit");
        assert!(by_name("audit").is_none());
    }

    #[test]
    fn configs_honour_limits_and_keep_a_minimum_dedup_window() {
        let mut cfg = StreamsConfig::default();
        cfg.events.duplicate_window_secs = 1;
        cfg.events.max_bytes = 12345;
        cfg.audit.duplicate_window_secs = 3600;
        cfg.audit.max_age_secs = 600;
        let all = stream_configs(&cfg);
        let names: Vec<_> = all.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "EVENTS",
                "TELEMETRY",
                "AUDIT",
                "AI",
                "DLQ",
                "DLQ_ADVISORIES"
            ]
        );
        let events = &all[0];
        assert_eq!(events.subjects, ["evt.>"]);
        assert_eq!(events.max_bytes, 12345);
        assert_eq!(events.duplicate_window, MIN_DUPLICATE_WINDOW);
        assert_eq!(events.storage, stream::StorageType::File);
        // Capped at the age limit, which JetStream requires.
        assert_eq!(all[2].duplicate_window, Duration::from_secs(600));
        assert!(
            all.iter()
                .all(|c| c.duplicate_window >= MIN_DUPLICATE_WINDOW)
        );
    }
}
