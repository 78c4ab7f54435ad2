//! The gateway's Prometheus metrics, hand-written on atomics: every route is known when
//! the gateway starts, so each gets a preallocated row of counters and histogram buckets
//! and recording a request is a handful of relaxed atomic adds — no label hashing, no
//! lock on the hot path. `/metrics` renders the text exposition format (only rows that
//! saw traffic, to keep the page short).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// HTTP statuses the gateway answers; anything else is counted as `other`.
const STATUSES: [u16; 15] = [
    200, 400, 401, 403, 404, 405, 409, 412, 413, 415, 429, 500, 503, 504, 0,
];

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Row {
    by_status: [AtomicU64; STATUSES.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// All of the gateway's figures.
pub struct Metrics {
    routes: Vec<String>,
    rows: Vec<Row>,
    /// Requests being handled now (streams included while they are set up).
    pub in_flight: AtomicI64,
    /// SSE streams open now.
    pub open_streams: AtomicI64,
    /// Requests refused by the per-client rate limit.
    pub rate_limited: AtomicU64,
    /// Requests refused by the in-flight bound.
    pub overloaded: AtomicU64,
    /// Bearer tokens answered from the Validate cache.
    pub validate_hits: AtomicU64,
    /// Bearer tokens sent to auth.Validate.
    pub validate_misses: AtomicU64,
    /// Revocation notices received from auth.
    pub revocations: AtomicU64,
}

/// The label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

impl Metrics {
    /// Metrics for `routes` (their labels); one more row counts unmatched requests.
    pub fn new(mut routes: Vec<String>) -> Self {
        routes.push(UNMATCHED.to_string());
        let rows = routes.iter().map(|_| Row::default()).collect();
        Metrics {
            routes,
            rows,
            in_flight: AtomicI64::new(0),
            open_streams: AtomicI64::new(0),
            rate_limited: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            validate_hits: AtomicU64::new(0),
            validate_misses: AtomicU64::new(0),
            revocations: AtomicU64::new(0),
        }
    }

    /// The row index of unmatched requests.
    pub fn unmatched(&self) -> usize {
        self.routes.len() - 1
    }

    /// Records one finished request of route `route`.
    pub fn record(&self, route: usize, status: u16, elapsed: Duration) {
        let Some(row) = self.rows.get(route) else {
            return;
        };
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        row.by_status[i].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|b| secs <= *b) {
            row.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        row.count.fetch_add(1, Ordering::Relaxed);
        row.sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let r = Ordering::Relaxed;
        out.push_str(
            "# HELP aicore_gateway_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE aicore_gateway_requests_total counter\n");
        for (route, row) in self.routes.iter().zip(&self.rows) {
            for (i, s) in STATUSES.iter().enumerate() {
                let n = row.by_status[i].load(r);
                if n > 0 {
                    let status = if *s == 0 {
                        "other".to_string()
                    } else {
                        s.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "aicore_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        out.push_str("# HELP aicore_gateway_request_duration_seconds Time from request to response headers (streams: to the first item).\n");
        out.push_str("# TYPE aicore_gateway_request_duration_seconds histogram\n");
        for (route, row) in self.routes.iter().zip(&self.rows) {
            let count = row.count.load(r);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += row.buckets[i].load(r);
                let _ = writeln!(
                    out,
                    "aicore_gateway_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "aicore_gateway_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "aicore_gateway_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                row.sum_ns.load(r) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "aicore_gateway_request_duration_seconds_count{{route=\"{route}\"}} {count}"
            );
        }
        let mut scalar = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        scalar(
            "aicore_gateway_in_flight",
            "gauge",
            "Requests being handled now.",
            self.in_flight.load(r).to_string(),
        );
        scalar(
            "aicore_gateway_open_streams",
            "gauge",
            "SSE streams open now.",
            self.open_streams.load(r).to_string(),
        );
        scalar(
            "aicore_gateway_rate_limited_total",
            "counter",
            "Requests refused by the per-client rate limit (429).",
            self.rate_limited.load(r).to_string(),
        );
        scalar(
            "aicore_gateway_overloaded_total",
            "counter",
            "Requests refused by the in-flight bound (503).",
            self.overloaded.load(r).to_string(),
        );
        scalar(
            "aicore_gateway_validate_cache_hits_total",
            "counter",
            "Bearer tokens answered from the Validate cache.",
            self.validate_hits.load(r).to_string(),
        );
        scalar(
            "aicore_gateway_validate_cache_misses_total",
            "counter",
            "Bearer tokens checked with auth.Validate.",
            self.validate_misses.load(r).to_string(),
        );
        scalar(
            "aicore_gateway_revocations_total",
            "counter",
            "Revocation notices received from auth.",
            self.revocations.load(r).to_string(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counts_buckets_and_gauges() {
        let m = Metrics::new(vec!["/v1/auth/login".into()]);
        m.record(0, 200, Duration::from_millis(3));
        m.record(0, 401, Duration::from_millis(30));
        m.record(m.unmatched(), 404, Duration::from_micros(10));
        m.rate_limited.fetch_add(2, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains(
                r#"aicore_gateway_requests_total{route="/v1/auth/login",status="200"} 1"#
            )
        );
        assert!(
            text.contains(r#"aicore_gateway_requests_total{route="unmatched",status="404"} 1"#)
        );
        assert!(text.contains(
            r#"aicore_gateway_request_duration_seconds_bucket{route="/v1/auth/login",le="0.005"} 1"#
        ));
        assert!(text.contains(
            r#"aicore_gateway_request_duration_seconds_bucket{route="/v1/auth/login",le="+Inf"} 2"#
        ));
        assert!(text.contains("aicore_gateway_rate_limited_total 2"));
    }
}
