//! Exports the process's spans ([`aicore_runtime::trace`]) to an OpenTelemetry collector
//! over OTLP/HTTP with the JSON encoding (`POST <endpoint>/v1/traces`), in batches, when
//! `[traces] otlp_endpoint` is set; without it nothing is recorded or sent.
//!
//! The exporter never slows a request: spans wait in a bounded queue (full: dropped and
//! counted), a batch goes when it is full or every `export_interval_ms`, and a collector
//! that is down costs one failed POST per batch (the batch is dropped, with one warning
//! per minute). At shutdown what is queued is sent within a short bound.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aicore_runtime::trace::{self, Kind, Span};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `[traces]`: where spans go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConfig {
    /// The OTLP/HTTP endpoint of a collector (`http://127.0.0.1:4318`; `/v1/traces` is
    /// added unless given). Unset: no spans are recorded.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The share of the traces this process starts that are recorded (0.0 to 1.0); a
    /// trace arriving with a `traceparent` follows its caller's sampled flag.
    pub sample_ratio: f64,
    /// Spans waiting for export at most; past it new spans are dropped (and counted).
    pub queue: usize,
    /// Spans per request to the collector at most.
    pub batch: usize,
    /// How often a partial batch is sent, in milliseconds.
    pub export_interval_ms: u64,
    /// How long one export may take, in milliseconds.
    pub export_timeout_ms: u64,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            otlp_endpoint: None,
            service_name: "aicore".into(),
            sample_ratio: 1.0,
            queue: 8192,
            batch: 512,
            export_interval_ms: 1000,
            export_timeout_ms: 5000,
        }
    }
}

impl TracesConfig {
    /// Refuses settings the exporter cannot run with, naming the field.
    pub fn validate(&self) -> Result<()> {
        if let Some(e) = &self.otlp_endpoint {
            let url = reqwest::Url::parse(e)
                .with_context(|| format!("traces.otlp_endpoint {e:?} is not a URL"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                bail!("traces.otlp_endpoint {e:?} must be an http:// or https:// URL with a host");
            }
        }
        if self.service_name.is_empty() || self.service_name.len() > 128 {
            bail!("traces.service_name must be 1 to 128 characters");
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            bail!("traces.sample_ratio must be 0.0 to 1.0");
        }
        if !(1..=1_000_000).contains(&self.queue) {
            bail!("traces.queue must be 1 to 1000000");
        }
        if !(1..=10_000).contains(&self.batch) {
            bail!("traces.batch must be 1 to 10000");
        }
        if !(10..=60_000).contains(&self.export_interval_ms) {
            bail!("traces.export_interval_ms must be 10 to 60000");
        }
        if !(100..=60_000).contains(&self.export_timeout_ms) {
            bail!("traces.export_timeout_ms must be 100 to 60000");
        }
        Ok(())
    }

    /// The URL batches are posted to.
    fn traces_url(&self) -> Option<String> {
        let e = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if e.ends_with("/v1/traces") {
            e.to_string()
        } else {
            format!("{e}/v1/traces")
        })
    }
}

/// How long the last export at shutdown may take.
const FINAL_EXPORT: Duration = Duration::from_secs(2);

/// Starts the exporter when an endpoint is configured: installs the span sink and runs
/// until `stop`, then sends what is queued (bounded). `None` when traces are off.
pub fn start(
    config: &TracesConfig,
    stop: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(url) = config.traces_url() else {
        return Ok(None);
    };
    let (tx, rx) = mpsc::channel(config.queue);
    trace::set_root_sample_ratio(config.sample_ratio);
    if trace::install(tx).is_err() {
        bail!("a trace exporter is already running in this process");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.export_timeout_ms))
        .build()
        .context("building the OTLP HTTP client")?;
    tracing::info!(%url, "exporting traces over OTLP/HTTP");
    let exporter = Exporter {
        http,
        url,
        resource: resource(&config.service_name),
        batch: config.batch,
        every: Duration::from_millis(config.export_interval_ms),
        warned: None,
    };
    Ok(Some(tokio::spawn(exporter.run(rx, stop))))
}

struct Exporter {
    http: reqwest::Client,
    url: String,
    /// The resource's JSON, rendered once.
    resource: String,
    batch: usize,
    every: Duration,
    warned: Option<Instant>,
}

impl Exporter {
    async fn run(mut self, mut rx: mpsc::Receiver<Span>, stop: CancellationToken) {
        let mut spans = Vec::with_capacity(self.batch);
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = self.batch.saturating_sub(spans.len()).max(1);
            tokio::select! {
                _ = stop.cancelled() => break,
                n = rx.recv_many(&mut spans, room) => {
                    if n == 0 {
                        break;
                    }
                    if spans.len() < self.batch {
                        continue;
                    }
                }
                _ = tick.tick() => {}
            }
            if !spans.is_empty() {
                self.export(std::mem::take(&mut spans)).await;
            }
        }
        // What is still queued goes in one last bounded round.
        let _ = tokio::time::timeout(FINAL_EXPORT, async {
            while let Ok(s) = rx.try_recv() {
                spans.push(s);
            }
            for chunk in spans.chunks(self.batch) {
                self.export(chunk.to_vec()).await;
            }
        })
        .await;
    }

    async fn export(&mut self, spans: Vec<Span>) {
        let n = spans.len();
        let body = encode(&self.resource, &spans);
        let sent = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the collector answered {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failure
            && self
                .warned
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            self.warned = Some(Instant::now());
            tracing::warn!(url = %self.url, spans = n, error = %why, dropped_so_far = trace::dropped(), "trace export failed; spans dropped");
        }
    }
}

fn resource(service_name: &str) -> String {
    json!({
        "attributes": [
            attribute("service.name", service_name),
            attribute("service.version", env!("CARGO_PKG_VERSION")),
            attribute("service.instance.id", &format!("{}", std::process::id())),
        ]
    })
    .to_string()
}

fn attribute(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

fn unix_nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

/// One OTLP `ExportTraceServiceRequest` in its JSON form: ids as lowercase hex, times as
/// decimal strings of Unix nanoseconds, enums as numbers. Written straight into one
/// buffer (no JSON tree per span): the exporter shares the cores with the requests.
pub fn encode(resource: &str, spans: &[Span]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(256 + spans.len() * 400);
    out.push_str(r#"{"resourceSpans":[{"resource":"#);
    out.push_str(resource);
    out.push_str(r#","scopeSpans":[{"scope":{"name":"aicore","version":""#);
    out.push_str(env!("CARGO_PKG_VERSION"));
    out.push_str(r#""},"spans":["#);
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"traceId":"{:032x}","spanId":"{:016x}","#,
            s.context.trace_id, s.context.span_id
        );
        if let Some(p) = s.parent {
            let _ = write!(out, r#""parentSpanId":"{p:016x}","#);
        }
        out.push_str(r#""name":"#);
        json_str(&mut out, &s.name);
        // SPAN_KIND_SERVER = 2, SPAN_KIND_PRODUCER = 4.
        let kind = match s.kind {
            Kind::Server => 2,
            Kind::Producer => 4,
        };
        let _ = write!(
            out,
            r#","kind":{kind},"startTimeUnixNano":"{}","endTimeUnixNano":"{}","attributes":["#,
            unix_nanos(s.start),
            unix_nanos(s.end)
        );
        for (j, (k, v)) in s.attributes.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(r#"{"key":"#);
            json_str(&mut out, k);
            out.push_str(r#","value":{"stringValue":"#);
            json_str(&mut out, v);
            out.push_str("}}");
        }
        // STATUS_CODE_UNSET = 0, STATUS_CODE_ERROR = 2.
        out.push_str(r#"],"status":{"#);
        if let Some((code, message)) = &s.error {
            out.push_str(r#""code":2,"message":"#);
            json_str(&mut out, &format!("{code}: {message}"));
        }
        out.push_str("}}");
    }
    out.push_str("]}]}]}");
    out
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use aicore_runtime::trace::TraceParent;

    #[test]
    fn spans_encode_as_otlp_json() {
        let parent = TraceParent::root();
        let context = parent.child();
        let t0 = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let span = Span {
            context,
            parent: Some(parent.span_id),
            name: "svc.payment.v1.Credit".into(),
            kind: Kind::Server,
            start: t0,
            end: t0 + Duration::from_micros(250),
            error: Some(("CODE_NOT_FOUND", "no \"wallet\"\n\u{1}".into())),
            attributes: vec![("rpc.service", "payment".into())],
        };
        let v: Value = serde_json::from_str(&encode(&resource("aicore"), &[span.clone(), span]))
            .expect("valid JSON");
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], format!("{:032x}", parent.trace_id));
        assert_eq!(s["parentSpanId"], format!("{:016x}", parent.span_id));
        assert_eq!(s["spanId"].as_str().unwrap().len(), 16);
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(s["endTimeUnixNano"], "1700000000123706789");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(
            s["status"]["message"],
            "CODE_NOT_FOUND: no \"wallet\"\n\u{1}"
        );
        assert_eq!(
            v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(s["attributes"][0]["value"]["stringValue"], "payment");
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "aicore"
        );
    }

    #[test]
    fn endpoints_are_checked_and_get_the_traces_path() {
        let mut c = TracesConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.traces_url(), None);
        c.otlp_endpoint = Some("http://127.0.0.1:4318/".into());
        assert!(c.validate().is_ok());
        assert_eq!(c.traces_url().unwrap(), "http://127.0.0.1:4318/v1/traces");
        c.otlp_endpoint = Some("https://collector.lan/v1/traces".into());
        assert_eq!(c.traces_url().unwrap(), "https://collector.lan/v1/traces");
        for bad in ["", "collector:4318", "ftp://x/", "file:///tmp/x"] {
            c.otlp_endpoint = Some(bad.into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("traces.otlp_endpoint"), "{bad}: {e}");
        }
        c.otlp_endpoint = None;
        c.batch = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("traces.batch")
        );
    }
}
