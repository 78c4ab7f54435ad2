//! The appliance's Prometheus metrics: one [`Registry`] that every part registers with,
//! and one rendering of the text exposition format (`/metrics` on the gateway), so every
//! family appears once whatever registered it.
//!
//! Recording sits on the hot path of every domain call, so it is hand-written on
//! atomics: every (domain, rpc) is known when a domain starts, so each gets a
//! preallocated row of counters (one per [`Code`] and `ok`) and histogram buckets, and
//! recording a call is a handful of relaxed atomic adds — no label hashing, no lock.
//! Label cardinality is bounded by construction: labels come from the contracts and the
//! fixed code list, never from a request. `prometheus-client` was the alternative; its
//! `Family` looks a series up by hashing its labels under a lock and its `Histogram`
//! observes under a lock of its own, where a row here is a few uncontended atomic adds
//! (the on/off cost of this module is measured by `aicore bench --only metrics`, see
//! BENCHMARKS.md). What the crate would add — the exposition format — is the small part
//! kept here in [`Exposition`].
//!
//! Everything that is not a per-request figure (store, outbox, nats-server, certificates)
//! is read when `/metrics` is scraped: [`Collect`] for figures read in memory,
//! [`Scrape`] for ones fetched (nats-server's monitoring endpoint), each bounded so a
//! failing source never fails the page.
//!
//! [`Switch`] turns recording off (`metrics.enabled = false`, and the benchmark's
//! metrics-off rows); the exposition then shows what was recorded before.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aicore_proto::{Code, ServiceInfo};
use futures::future::BoxFuture;

/// Whether per-request figures are recorded; cheap to clone, shared by every recorder.
#[derive(Debug, Clone)]
pub struct Switch(Arc<AtomicBool>);

impl Default for Switch {
    fn default() -> Self {
        Switch::new(true)
    }
}

impl Switch {
    /// A switch, on or off.
    pub fn new(on: bool) -> Self {
        Switch(Arc::new(AtomicBool::new(on)))
    }

    /// Whether recording is on.
    #[inline]
    pub fn on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Turns recording on or off.
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed)
    }
}

/// Upper bounds of every latency histogram, in nanoseconds (0.5 ms to 10 s).
pub const LATENCY_BOUNDS_NS: &[u64] = &[
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A histogram on atomics with fixed integer bounds; `scale` turns its unit into the
/// exposed one (1e-9 for nanoseconds shown as seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    scale: f64,
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram of values with upper bounds `bounds` (ascending), shown times `scale`.
    pub fn new(bounds: &'static [u64], scale: f64) -> Self {
        Histogram {
            bounds,
            scale,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// A latency histogram ([`LATENCY_BOUNDS_NS`], shown in seconds).
    pub fn latency() -> Self {
        Self::new(LATENCY_BOUNDS_NS, 1e-9)
    }

    /// Records one value.
    #[inline]
    pub fn observe(&self, v: u64) {
        // Bounds are few and ascending: a linear scan beats a binary search here.
        if let Some(b) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records one duration (for histograms in nanoseconds).
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Values recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The kind of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets with the process).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The text exposition format being written: a family's `HELP`/`TYPE` once, then its
/// samples (label values escaped).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts family `name`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with a single unlabelled sample.
    pub fn scalar(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The samples of histogram `h` labelled `labels` (the family started before); none
    /// while it is empty, to keep the page short.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let count = h.count.load(Ordering::Relaxed);
        if count == 0 {
            return;
        }
        let mut cumulative = 0;
        for (i, b) in h.bounds.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            let le = format!("{}", *b as f64 * h.scale);
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {}", cumulative.min(count));
        }
        let _ = write!(self.out, "{name}_bucket");
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.out, " {count}");
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(
            self.out,
            " {}",
            h.sum.load(Ordering::Relaxed) as f64 * h.scale
        );
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {count}");
    }

    /// Text already in the exposition format (a part that wrote its own).
    pub fn raw(&mut self, text: &str) {
        self.out.push_str(text);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }
}

/// Figures read in memory when the page is rendered.
pub trait Collect: Send + Sync {
    /// Writes this part's families.
    fn collect(&self, out: &mut Exposition);
}

/// Figures fetched when the page is rendered (another process's); must bound its own
/// time and report a failure as a figure, never fail the page.
pub trait Scrape: Send + Sync {
    /// This part's families, as exposition text.
    fn scrape(&self) -> BoxFuture<'_, Exposition>;
}

/// The `status` label of a call: `ok` or the error code's name.
const STATUSES: [&str; 11] = [
    "ok",
    "invalid_argument",
    "not_found",
    "conflict",
    "unauthenticated",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "unavailable",
    "deadline_exceeded",
    "internal",
];

fn status_index(outcome: Result<(), Code>) -> usize {
    match outcome {
        Ok(()) => 0,
        Err(Code::InvalidArgument) => 1,
        Err(Code::NotFound) => 2,
        Err(Code::Conflict) => 3,
        Err(Code::Unauthenticated) => 4,
        Err(Code::PermissionDenied) => 5,
        Err(Code::ResourceExhausted) => 6,
        Err(Code::FailedPrecondition) => 7,
        Err(Code::Unavailable) => 8,
        Err(Code::DeadlineExceeded) => 9,
        Err(Code::Internal | Code::Unspecified) => 10,
    }
}

struct RpcRow {
    by_status: [AtomicU64; STATUSES.len()],
    latency: Histogram,
}

/// Calls of one domain's RPCs, however they arrived (gateway, SDK, any NATS client): a
/// preallocated row per RPC.
pub struct RpcMetrics {
    service: &'static ServiceInfo,
    rows: Box<[RpcRow]>,
    switch: Switch,
}

impl RpcMetrics {
    /// Rows for every RPC of `service`, recording while `switch` is on.
    pub fn new(service: &'static ServiceInfo, switch: Switch) -> Self {
        RpcMetrics {
            service,
            rows: service
                .methods
                .iter()
                .map(|_| RpcRow {
                    by_status: Default::default(),
                    latency: Histogram::latency(),
                })
                .collect(),
            switch,
        }
    }

    /// Records one finished call of RPC number `method` (its index in the service).
    #[inline]
    pub fn record(&self, method: usize, outcome: Result<(), Code>, elapsed: Duration) {
        if !self.switch.on() {
            return;
        }
        let Some(row) = self.rows.get(method) else {
            return;
        };
        row.by_status[status_index(outcome)].fetch_add(1, Ordering::Relaxed);
        row.latency.observe_duration(elapsed);
    }
}

/// Requests counted by the domain runtime, by domain, rpc and status.
pub const RPC_REQUESTS: &str = "aicore_rpc_requests_total";
/// Time from pick-up to the reply (streams: until the handler started the stream; a
/// watch may then run for hours), by domain and rpc.
pub const RPC_DURATION: &str = "aicore_rpc_duration_seconds";

/// Where every part registers; renders the one exposition.
pub struct Registry {
    switch: Switch,
    /// When this process started, seconds since the epoch (restarts show as changes).
    started: f64,
    rpcs: Mutex<Vec<Arc<RpcMetrics>>>,
    collectors: Mutex<Vec<Arc<dyn Collect>>>,
    scrapers: Mutex<Vec<Arc<dyn Scrape>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("enabled", &self.switch.on())
            .finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(true)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// An empty registry, recording per-request figures when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Registry {
            switch: Switch::new(enabled),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            rpcs: Default::default(),
            collectors: Default::default(),
            scrapers: Default::default(),
        }
    }

    /// The switch of per-request recording.
    pub fn switch(&self) -> Switch {
        self.switch.clone()
    }

    /// The rows of `service`'s RPCs (one set per domain; a domain served again gets the
    /// rows it had, so its counters never go back).
    pub fn rpc(&self, service: &'static ServiceInfo) -> Arc<RpcMetrics> {
        let mut rpcs = lock(&self.rpcs);
        if let Some(r) = rpcs.iter().find(|r| r.service.domain == service.domain) {
            return r.clone();
        }
        let r = Arc::new(RpcMetrics::new(service, self.switch.clone()));
        rpcs.push(r.clone());
        r
    }

    /// Adds a part read in memory.
    pub fn register(&self, c: Arc<dyn Collect>) {
        lock(&self.collectors).push(c);
    }

    /// Adds a part fetched from elsewhere.
    pub fn register_scrape(&self, s: Arc<dyn Scrape>) {
        lock(&self.scrapers).push(s);
    }

    /// The whole page: the RPC families, every collector's, then every scraper's
    /// (fetched concurrently).
    pub async fn render(&self) -> String {
        let scrapers: Vec<_> = lock(&self.scrapers).clone();
        let scraped = futures::future::join_all(scrapers.iter().map(|s| s.scrape())).await;
        let mut out = Exposition::default();
        out.scalar(
            "aicore_start_time_seconds",
            Kind::Gauge,
            "When this aicore process started, seconds since the epoch.",
            self.started,
        );
        out.scalar(
            "aicore_metrics_enabled",
            Kind::Gauge,
            "1 while per-request figures are recorded (metrics.enabled).",
            u8::from(self.switch.on()),
        );
        self.collect_rpcs(&mut out);
        let collectors: Vec<_> = lock(&self.collectors).clone();
        for c in collectors {
            c.collect(&mut out);
        }
        for s in scraped {
            out.raw(&s.finish());
        }
        out.finish()
    }

    fn collect_rpcs(&self, out: &mut Exposition) {
        let rpcs: Vec<_> = lock(&self.rpcs).clone();
        out.family(
            RPC_REQUESTS,
            Kind::Counter,
            "Domain calls answered, by domain, rpc and status (whatever the transport).",
        );
        for r in &rpcs {
            for (m, row) in r.service.methods.iter().zip(r.rows.iter()) {
                for (i, status) in STATUSES.iter().enumerate() {
                    let n = row.by_status[i].load(Ordering::Relaxed);
                    if n > 0 {
                        out.sample(
                            RPC_REQUESTS,
                            &[
                                ("domain", r.service.domain),
                                ("rpc", m.rpc),
                                ("status", status),
                            ],
                            n,
                        );
                    }
                }
            }
        }
        out.family(
            RPC_DURATION,
            Kind::Histogram,
            "Domain call time from pick-up to the reply (streams: to their start), by domain and rpc.",
        );
        for r in &rpcs {
            for (m, row) in r.service.methods.iter().zip(r.rows.iter()) {
                out.histogram(
                    RPC_DURATION,
                    &[("domain", r.service.domain), ("rpc", m.rpc)],
                    &row.latency,
                );
            }
        }
    }
}

/// The store's figures: commits, batch sizes, log bytes, flushes, cache hits and
/// whether it takes writes.
pub struct StoreMetrics(pub crate::Store);

impl Collect for StoreMetrics {
    fn collect(&self, out: &mut Exposition) {
        let st = self.0.stats();
        let (latency, batch) = self.0.histograms();
        let counters = [
            (
                "aicore_store_commits_total",
                "Durable commits (group-commit batches that wrote something).",
                st.commits,
            ),
            (
                "aicore_store_writes_total",
                "Write closures run (committed or refused).",
                st.writes,
            ),
            (
                "aicore_store_log_bytes_total",
                "Bytes written to the write-ahead log.",
                st.log_bytes,
            ),
            (
                "aicore_store_flushes_total",
                "Flushes of the memory layers into the database file completed.",
                st.flushes,
            ),
            (
                "aicore_store_cache_hits_total",
                "Cached reads answered from the cache.",
                st.cache_hits,
            ),
            (
                "aicore_store_cache_misses_total",
                "Cached reads the cache could not answer.",
                st.cache_misses,
            ),
        ];
        for (name, help, v) in counters {
            out.scalar(name, Kind::Counter, help, v);
        }
        out.family(
            "aicore_store_commit_duration_seconds",
            Kind::Histogram,
            "Time from a batch handed to the log to its being durable (group commit).",
        );
        out.histogram("aicore_store_commit_duration_seconds", &[], latency);
        out.family(
            "aicore_store_commit_batch_size",
            Kind::Histogram,
            "Write closures per durable commit.",
        );
        out.histogram("aicore_store_commit_batch_size", &[], batch);
        out.scalar(
            "aicore_store_read_only",
            Kind::Gauge,
            "1 while the store refuses writes (a full disk, an I/O error); reads go on.",
            u8::from(self.0.write_error().is_some()),
        );
        out.scalar(
            "aicore_store_flushing",
            Kind::Gauge,
            "1 while memory layers are being written to the database file.",
            u8::from(self.0.flushing()),
        );
    }
}

#[cfg(test)]
mod tests;
