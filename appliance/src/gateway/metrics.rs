//! The gateway's Prometheus metrics, on the runtime's atomics
//! ([`aicore_runtime::metrics`]): every route is known when the gateway starts, so each
//! gets a preallocated row of counters and histogram buckets and recording a request is
//! a handful of relaxed atomic adds — no label hashing, no lock on the hot path. The
//! gateway registers them with the appliance's one [`Registry`], which `/metrics`
//! renders (only rows that saw traffic, to keep the page short).
//!
//! [`Registry`]: aicore_runtime::metrics::Registry

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use aicore_runtime::metrics::{Collect, Exposition, Histogram, Kind, Switch};

/// HTTP statuses the gateway answers; anything else is counted as `other`.
const STATUSES: [u16; 15] = [
    200, 400, 401, 403, 404, 405, 409, 412, 413, 415, 429, 500, 503, 504, 0,
];

struct Row {
    by_status: [AtomicU64; STATUSES.len()],
    latency: Histogram,
}

/// All of the gateway's figures.
pub struct Metrics {
    routes: Vec<String>,
    rows: Vec<Row>,
    switch: Switch,
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
    /// Metrics for `routes` (their labels), recording while `switch` is on; one more row
    /// counts unmatched requests.
    pub fn new(mut routes: Vec<String>, switch: Switch) -> Self {
        routes.push(UNMATCHED.to_string());
        let rows = routes
            .iter()
            .map(|_| Row {
                by_status: Default::default(),
                latency: Histogram::latency(),
            })
            .collect();
        Metrics {
            routes,
            rows,
            switch,
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
        if !self.switch.on() {
            return;
        }
        let Some(row) = self.rows.get(route) else {
            return;
        };
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        row.by_status[i].fetch_add(1, Ordering::Relaxed);
        row.latency.observe_duration(elapsed);
    }
}

impl Collect for Metrics {
    fn collect(&self, out: &mut Exposition) {
        let r = Ordering::Relaxed;
        const REQUESTS: &str = "aicore_gateway_requests_total";
        const DURATION: &str = "aicore_gateway_request_duration_seconds";
        out.family(
            REQUESTS,
            Kind::Counter,
            "HTTP requests answered, by route and status.",
        );
        for (route, row) in self.routes.iter().zip(&self.rows) {
            for (i, s) in STATUSES.iter().enumerate() {
                let n = row.by_status[i].load(r);
                if n > 0 {
                    let status = match s {
                        0 => "other".to_string(),
                        s => s.to_string(),
                    };
                    out.sample(REQUESTS, &[("route", route), ("status", &status)], n);
                }
            }
        }
        out.family(
            DURATION,
            Kind::Histogram,
            "Time from request to response headers (streams: to the first item).",
        );
        for (route, row) in self.routes.iter().zip(&self.rows) {
            out.histogram(DURATION, &[("route", route)], &row.latency);
        }
        let scalars = [
            (
                "aicore_gateway_in_flight",
                Kind::Gauge,
                "Requests being handled now.",
                self.in_flight.load(r),
            ),
            (
                "aicore_gateway_open_streams",
                Kind::Gauge,
                "SSE streams open now.",
                self.open_streams.load(r),
            ),
        ];
        for (name, kind, help, v) in scalars {
            out.scalar(name, kind, help, v);
        }
        let counters = [
            (
                "aicore_gateway_rate_limited_total",
                "Requests refused by the per-client rate limit (429).",
                &self.rate_limited,
            ),
            (
                "aicore_gateway_overloaded_total",
                "Requests refused by the in-flight bound (503).",
                &self.overloaded,
            ),
            (
                "aicore_gateway_validate_cache_hits_total",
                "Bearer tokens answered from the Validate cache.",
                &self.validate_hits,
            ),
            (
                "aicore_gateway_validate_cache_misses_total",
                "Bearer tokens checked with auth.Validate.",
                &self.validate_misses,
            ),
            (
                "aicore_gateway_revocations_total",
                "Revocation notices received from auth.",
                &self.revocations,
            ),
        ];
        for (name, help, v) in counters {
            out.scalar(name, Kind::Counter, help, v.load(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counts_buckets_and_gauges() {
        let m = Metrics::new(vec!["/v1/auth/login".into()], Switch::default());
        m.record(0, 200, Duration::from_millis(3));
        m.record(0, 401, Duration::from_millis(30));
        m.record(m.unmatched(), 404, Duration::from_micros(10));
        m.rate_limited.fetch_add(2, Ordering::Relaxed);
        let mut out = Exposition::default();
        m.collect(&mut out);
        let text = out.finish();
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
