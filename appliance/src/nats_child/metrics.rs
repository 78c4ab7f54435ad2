//! nats-server's figures on `/metrics`: the child's life as the supervisor sees it
//! (restarts, crash loop), and what nats-server's own monitoring endpoint says at scrape
//! time — connections, slow consumers, JetStream streams (messages, bytes) and durable
//! consumers (lag, pending acks, redeliveries) from `/varz`, `/connz` and `/jsz`.
//!
//! A scrape waits at most the configured timeout for the monitoring endpoint; when it
//! fails the page goes on without those figures and `aicore_nats_monitor_up` says 0. Label
//! cardinality stays bounded: streams are the operator's, and consumers are listed only
//! when durable (ephemeral ones come and go with random names) and at most
//! [`MAX_CONSUMERS`] of them (the rest are counted, not listed).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aicore_runtime::metrics::{Collect, Exposition, Kind, Scrape};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;

use super::{NatsStatus, Shared};

/// Most consumers listed with their own labels.
pub const MAX_CONSUMERS: usize = 200;

/// The child's state and restarts, from the supervisor's side.
pub(super) struct ChildMetrics {
    pub(super) status: watch::Receiver<NatsStatus>,
    pub(super) shared: Arc<Shared>,
}

impl Collect for ChildMetrics {
    fn collect(&self, out: &mut Exposition) {
        let status = self.status.borrow().clone();
        out.scalar(
            "aicore_nats_child_restarts_total",
            Kind::Counter,
            "Restarts of the nats-server child since the appliance started.",
            self.shared.restarts.load(Ordering::SeqCst),
        );
        const STATE: &str = "aicore_nats_child_state";
        out.family(
            STATE,
            Kind::Gauge,
            "The nats-server child's state: 1 for the current one.",
        );
        let current = match status {
            NatsStatus::Starting => "starting",
            NatsStatus::Running { .. } => "running",
            NatsStatus::Restarting { .. } => "restarting",
            NatsStatus::Failed(_) => "failed",
            NatsStatus::Stopped => "stopped",
        };
        for s in ["starting", "running", "restarting", "failed", "stopped"] {
            out.sample(STATE, &[("state", s)], u8::from(s == current));
        }
        out.scalar(
            "aicore_nats_child_crash_loop",
            Kind::Gauge,
            "1 once the nats-server child was given up after a crash loop (the appliance then exits).",
            u8::from(current == "failed"),
        );
        let attempt = match status {
            NatsStatus::Restarting { attempt } => attempt,
            _ => 0,
        };
        out.scalar(
            "aicore_nats_child_restart_attempt",
            Kind::Gauge,
            "Restarts within the current crash-loop window while restarting (0 when running).",
            attempt,
        );
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<Bytes>,
>;

/// Reads nats-server's monitoring endpoint at scrape time.
pub struct NatsMonitor {
    base: String,
    timeout: Duration,
    client: HttpClient,
}

impl NatsMonitor {
    /// Scrapes the monitoring endpoint at `base` (`http://127.0.0.1:8222`), waiting at
    /// most `timeout` for all of it.
    pub fn new(base: String, timeout: Duration) -> Self {
        NatsMonitor {
            base,
            timeout,
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
        }
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        use http_body_util::BodyExt;
        let uri: axum::http::Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| format!("{e}"))?;
        let r = self.client.get(uri).await.map_err(|e| format!("{e}"))?;
        if !r.status().is_success() {
            return Err(format!("{path}: HTTP {}", r.status()));
        }
        let body = r
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("{path}: {e}"))
    }

    async fn fetch(&self) -> Result<(Value, Value, Value), String> {
        let (varz, connz, jsz) = tokio::join!(
            self.get("/varz"),
            // Only the busiest connections by pending bytes: enough for the largest.
            self.get("/connz?sort=pending&limit=1"),
            self.get("/jsz?accounts=true&streams=true&consumers=true&config=true"),
        );
        Ok((varz?, connz?, jsz?))
    }
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        match v.get(p) {
            Some(x) => v = x,
            None => return 0,
        }
    }
    v.as_u64().unwrap_or(0)
}

impl Scrape for NatsMonitor {
    fn scrape(&self) -> BoxFuture<'_, Exposition> {
        Box::pin(async move {
            let mut out = Exposition::default();
            let fetched = match tokio::time::timeout(self.timeout, self.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
            out.scalar(
                "aicore_nats_monitor_up",
                Kind::Gauge,
                "1 when nats-server's monitoring endpoint answered this scrape.",
                u8::from(fetched.is_ok()),
            );
            match fetched {
                Ok((varz, connz, jsz)) => render(&mut out, &varz, &connz, &jsz),
                Err(e) => tracing::debug!(error = %e, "nats-server monitoring not scraped"),
            }
            out
        })
    }
}

/// The figures of one answer of `/varz`, `/connz` and `/jsz`.
fn render(out: &mut Exposition, varz: &Value, connz: &Value, jsz: &Value) {
    render_gauges(out, varz, connz, jsz);
    render_counters(out, varz, jsz);
    let streams = account_streams(jsz);
    render_streams(out, &streams);
    render_consumers(out, &streams);
}

/// The server-wide gauges, unlabelled.
fn render_gauges(out: &mut Exposition, varz: &Value, connz: &Value, jsz: &Value) {
    let gauges = [
        (
            "aicore_nats_connections",
            "Client connections open on nats-server.",
            u(varz, &["connections"]),
        ),
        (
            "aicore_nats_subscriptions",
            "Subscriptions on nats-server.",
            u(varz, &["subscriptions"]),
        ),
        (
            "aicore_nats_memory_bytes",
            "nats-server's resident memory.",
            u(varz, &["mem"]),
        ),
        (
            "aicore_nats_connection_pending_bytes_max",
            "Bytes waiting to be sent to the connection that has the most.",
            connz
                .get("connections")
                .and_then(Value::as_array)
                .and_then(|c| c.first())
                .map_or(0, |c| u(c, &["pending_bytes"])),
        ),
        (
            "aicore_nats_jetstream_memory_bytes",
            "JetStream memory storage in use.",
            u(jsz, &["memory"]),
        ),
        (
            "aicore_nats_jetstream_storage_bytes",
            "JetStream file storage in use.",
            u(jsz, &["storage"]),
        ),
        (
            "aicore_nats_jetstream_max_storage_bytes",
            "JetStream file storage limit.",
            u(jsz, &["config", "max_storage"]),
        ),
    ];
    for (name, help, v) in gauges {
        out.scalar(name, Kind::Gauge, help, v);
    }
}

/// The server-wide counters, unlabelled.
fn render_counters(out: &mut Exposition, varz: &Value, jsz: &Value) {
    let counters = [
        (
            "aicore_nats_slow_consumers_total",
            "Clients nats-server cut off or dropped messages for as slow consumers.",
            u(varz, &["slow_consumers"]),
        ),
        (
            "aicore_nats_in_msgs_total",
            "Messages nats-server received.",
            u(varz, &["in_msgs"]),
        ),
        (
            "aicore_nats_out_msgs_total",
            "Messages nats-server sent.",
            u(varz, &["out_msgs"]),
        ),
        (
            "aicore_nats_jetstream_api_errors_total",
            "JetStream API requests that failed.",
            u(jsz, &["api", "errors"]),
        ),
    ];
    for (name, help, v) in counters {
        out.scalar(name, Kind::Counter, help, v);
    }
}

/// Every stream of every account, with its account's name.
fn account_streams(jsz: &Value) -> Vec<(&str, &Value)> {
    jsz.get("account_details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|a| {
            let account = a.get("name").and_then(Value::as_str).unwrap_or("");
            a.get("stream_detail")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |s| (account, s))
        })
        .collect()
}

/// A stream's or consumer's name ("" when it has none).
fn name(v: &Value) -> String {
    v.get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// One figure of a stream or consumer.
type Figure = fn(&Value) -> u64;

/// The figures of each stream, labelled by account and stream.
fn render_streams(out: &mut Exposition, streams: &[(&str, &Value)]) {
    let stream_figures: [(&str, Kind, &str, Figure); 3] = [
        (
            "aicore_nats_stream_messages",
            Kind::Gauge,
            "Messages stored in a JetStream stream.",
            |s| u(s, &["state", "messages"]),
        ),
        (
            "aicore_nats_stream_bytes",
            Kind::Gauge,
            "Bytes stored in a JetStream stream.",
            |s| u(s, &["state", "bytes"]),
        ),
        (
            "aicore_nats_stream_consumers",
            Kind::Gauge,
            "Consumers of a JetStream stream.",
            |s| u(s, &["state", "consumer_count"]),
        ),
    ];
    for (metric, kind, help, f) in stream_figures {
        out.family(metric, kind, help);
        for (account, s) in streams {
            out.sample(metric, &[("account", account), ("stream", &name(s))], f(s));
        }
    }
}

/// The durable consumers listed (at most [`MAX_CONSUMERS`]), each with its account and
/// stream, and how many consumers are not listed.
fn listed_consumers<'a>(
    streams: &[(&'a str, &'a Value)],
) -> (Vec<(&'a str, String, &'a Value)>, u64) {
    let mut consumers = Vec::new();
    let mut unlisted = 0u64;
    for (account, s) in streams {
        for c in s
            .get("consumer_detail")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let durable = c
                .get("config")
                .and_then(|c| c.get("durable_name"))
                .and_then(Value::as_str)
                .is_some_and(|d| !d.is_empty());
            if durable && consumers.len() < MAX_CONSUMERS {
                consumers.push((*account, name(s), c));
            } else {
                unlisted += 1;
            }
        }
    }
    (consumers, unlisted)
}

/// The figures of each durable consumer listed, labelled by account, stream and consumer,
/// and the count of those not listed.
fn render_consumers(out: &mut Exposition, streams: &[(&str, &Value)]) {
    let (consumers, unlisted) = listed_consumers(streams);
    let consumer_figures: [(&str, &str, Figure); 3] = [
        (
            "aicore_nats_consumer_pending_messages",
            "Messages of its stream a durable consumer has not been delivered yet (its lag).",
            |c| u(c, &["num_pending"]),
        ),
        (
            "aicore_nats_consumer_ack_pending_messages",
            "Messages delivered to a durable consumer and not acknowledged yet.",
            |c| u(c, &["num_ack_pending"]),
        ),
        (
            "aicore_nats_consumer_redelivered_messages",
            "Messages redelivered to a durable consumer and not acknowledged yet.",
            |c| u(c, &["num_redelivered"]),
        ),
    ];
    for (metric, help, f) in consumer_figures {
        out.family(metric, Kind::Gauge, help);
        for (account, stream, c) in &consumers {
            out.sample(
                metric,
                &[
                    ("account", account),
                    ("stream", stream),
                    ("consumer", &name(c)),
                ],
                f(c),
            );
        }
    }
    out.scalar(
        "aicore_nats_consumers_unlisted",
        Kind::Gauge,
        "Consumers not listed above: ephemeral ones, and durable ones past the listing bound.",
        unlisted,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_durable_consumers_are_listed_ephemeral_ones_counted() {
        let jsz = serde_json::json!({
            "memory": 0, "storage": 2048, "config": {"max_storage": 1_000_000},
            "api": {"total": 9, "errors": 1},
            "account_details": [{"name": "AICORE", "stream_detail": [{
                "name": "EVENTS",
                "state": {"messages": 7, "bytes": 900, "consumer_count": 2},
                "consumer_detail": [
                    {"name": "audit", "config": {"durable_name": "audit"}, "num_pending": 3, "num_ack_pending": 1, "num_redelivered": 0},
                    {"name": "eph1", "config": {}, "num_pending": 99}
                ]
            }]}]
        });
        let varz = serde_json::json!({"connections": 4, "slow_consumers": 2, "in_msgs": 10});
        let connz = serde_json::json!({"connections": [{"pending_bytes": 123}]});
        let mut out = Exposition::default();
        render(&mut out, &varz, &connz, &jsz);
        let text = out.finish();
        for line in [
            "aicore_nats_connections 4",
            "aicore_nats_slow_consumers_total 2",
            "aicore_nats_connection_pending_bytes_max 123",
            "aicore_nats_jetstream_storage_bytes 2048",
            r#"aicore_nats_stream_messages{account="AICORE",stream="EVENTS"} 7"#,
            r#"aicore_nats_stream_bytes{account="AICORE",stream="EVENTS"} 900"#,
            r#"aicore_nats_consumer_pending_messages{account="AICORE",stream="EVENTS",consumer="audit"} 3"#,
            r#"aicore_nats_consumer_ack_pending_messages{account="AICORE",stream="EVENTS",consumer="audit"} 1"#,
            "aicore_nats_consumers_unlisted 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("eph1"));
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_down_gauge_not_a_failure() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let m = NatsMonitor::new(
            format!("http://127.0.0.1:{port}"),
            Duration::from_millis(500),
        );
        let text = m.scrape().await.finish();
        assert!(text.contains("aicore_nats_monitor_up 0"), "{text}");
        assert!(!text.contains("aicore_nats_connections"));
    }
}
