//! How a load is measured: a call is an [`Op`]; loads take turns slice by slice
//! ([`interleaved`]) so each row is compared with the raw baseline of the same seconds;
//! [`Samples`] turn calls into a [`Cell`] of the table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use futures::future::BoxFuture;

use aicore_runtime::store::Store;

use super::env::ECHO_SUBJECT;

/// Retries `call` while it fails, for up to 10 s: a service just started on one
/// connection is not always reachable from another at once.
pub(super) async fn ready<F, Fut>(what: &str, mut call: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
    Fut::Output: Outcome,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await.error() {
            None => return Ok(()),
            Some(e) if Instant::now() >= deadline => anyhow::bail!("{what}: {e}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One measured cell.
pub(super) struct Cell {
    pub(super) name: &'static str,
    pub(super) concurrency: usize,
    pub(super) rps: f64,
    pub(super) p50: Duration,
    pub(super) p99: Duration,
    pub(super) errors: u64,
    /// The first error seen, printed under the table.
    pub(super) first_error: Option<String>,
    /// The raw baseline's req/s in the slices interleaved with this cell's (none for the
    /// raw rows themselves).
    pub(super) raw_rps: Option<f64>,
}

/// What one measured call came to: `None` if it succeeded, else what went wrong.
pub(super) trait Outcome {
    fn error(self) -> Option<String>;
}

impl Outcome for bool {
    fn error(self) -> Option<String> {
        (!self).then(|| "failed".to_string())
    }
}

impl Outcome for Option<String> {
    fn error(self) -> Option<String> {
        self
    }
}

impl<T, E: std::fmt::Display> Outcome for Result<T, E> {
    fn error(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// A load: one call by worker `w`, its `i`-th (counted over all of a cell's slices, so
/// keys derived from `i`, such as idempotency keys, never repeat within a cell).
pub(super) type Op = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, Option<String>> + Send + Sync>;

pub(super) fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Outcome,
{
    Arc::new(move |w, i| {
        let call = f(w, i);
        Box::pin(async move { call.await.error() })
    })
}

/// The raw request/reply echo every other row is interleaved with.
#[derive(Clone)]
pub(super) struct Baseline {
    pub(super) nats: async_nats::Client,
    pub(super) payload: Bytes,
}

impl Baseline {
    pub(super) fn op(&self) -> Op {
        request_op(&self.nats, ECHO_SUBJECT, &self.payload)
    }
}

/// A load of plain NATS requests of `payload` to `subject`.
pub(super) fn request_op(nats: &async_nats::Client, subject: &'static str, payload: &Bytes) -> Op {
    let (nats, payload) = (nats.clone(), payload.clone());
    op(move |_, _| {
        let (nats, p) = (nats.clone(), payload.clone());
        async move { nats.request(subject, p).await.map(|_| ()) }
    })
}

/// The calls of one load over one or more slices of time.
#[derive(Default)]
pub(super) struct Samples {
    /// Latency of each successful call.
    pub(super) lat: Vec<Duration>,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    /// Measured time (warm-ups excluded).
    pub(super) seconds: f64,
}

impl Samples {
    pub(super) fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            // Successful calls only: a failing path must not look fast.
            self.lat.len() as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub(super) fn into_cell(
        mut self,
        name: &'static str,
        concurrency: usize,
        raw_rps: Option<f64>,
    ) -> Cell {
        self.lat.sort_unstable();
        let pct = |p: f64| {
            self.lat
                .get(((self.lat.len() as f64 * p) as usize).min(self.lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Cell {
            name,
            concurrency,
            rps: self.rps(),
            p50: pct(0.50),
            p99: pct(0.99),
            errors: self.errors,
            first_error: self.first_error,
            raw_rps,
        }
    }
}

/// Runs `op` from `concurrency` tasks for a warm-up of a tenth of `seconds` (not
/// counted) and then `seconds`, adding each call to `into`. `next` holds each worker's
/// next call number. With `store`, a flush the slice's writes left running is waited
/// for and its time counted as the slice's: work a load deferred must not land in the
/// next load's slice.
pub(super) async fn slice(
    concurrency: usize,
    seconds: f64,
    op: &Op,
    next: &Arc<Vec<AtomicU64>>,
    store: Option<&Store>,
    into: &mut Samples,
) {
    let warm = Instant::now() + Duration::from_secs_f64(seconds / 10.0);
    let end = warm + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut part = Samples::default();
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let i = next[worker].fetch_add(1, Ordering::Relaxed);
                let outcome = op(worker, i).await;
                if start >= warm {
                    match outcome {
                        None => part.lat.push(start.elapsed()),
                        Some(e) => {
                            part.errors += 1;
                            part.first_error.get_or_insert(e);
                        }
                    }
                }
            }
            part
        }));
    }
    for t in tasks {
        if let Ok(part) = t.await {
            into.lat.extend(part.lat);
            into.errors += part.errors;
            into.first_error = into.first_error.take().or(part.first_error);
        }
    }
    into.seconds += seconds;
    if let Some(store) = store {
        let flushing = Instant::now();
        while store.flushing() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        into.seconds += flushing.elapsed().as_secs_f64();
    }
}

/// Slices a cell's time is cut into: about one a second. The loads of a cell take
/// turns, slice by slice, so they see the same machine: on a shared machine the raw
/// baseline alone moved by a factor of two between cells of one run (BENCHMARKS.md),
/// and a ratio to a raw row measured minutes earlier moved with it.
pub(super) fn slices(seconds: f64) -> usize {
    (seconds.round() as usize).max(1)
}

/// Measures `loads` at `concurrency` for `seconds` each in `n` slices, taking turns
/// slice by slice; the loads after the first are charged for the flushes of `store`
/// they leave running.
pub(super) async fn interleaved(
    concurrency: usize,
    seconds: f64,
    n: usize,
    loads: &[Op],
    store: Option<&Store>,
) -> Vec<Samples> {
    let n = n.max(1);
    let next: Vec<Arc<Vec<AtomicU64>>> = loads
        .iter()
        .map(|_| Arc::new((0..concurrency).map(|_| AtomicU64::new(0)).collect()))
        .collect();
    let mut out: Vec<Samples> = loads.iter().map(|_| Samples::default()).collect();
    for _ in 0..n {
        let turns = loads.iter().zip(&next).zip(out.iter_mut());
        for (i, ((load, next), into)) in turns.enumerate() {
            let store = store.filter(|_| i > 0);
            slice(concurrency, seconds / n as f64, load, next, store, into).await;
        }
    }
    out
}

/// Measures the paths `rows` interleaved with the raw baseline (slice by slice, raw
/// first); each cell's ratio is to the raw slices between its own. `store`: the store
/// the rows write to, if any.
pub(super) async fn measure_rows(
    base: &Baseline,
    store: Option<&Store>,
    concurrency: usize,
    seconds: f64,
    rows: Vec<(&'static str, Op)>,
) -> Vec<Cell> {
    let mut loads = vec![base.op()];
    loads.extend(rows.iter().map(|(_, o)| o.clone()));
    let mut samples = interleaved(concurrency, seconds, slices(seconds), &loads, store)
        .await
        .into_iter();
    let raw = samples.next().map(|s| s.rps());
    rows.iter()
        .zip(samples)
        .map(|((name, _), s)| s.into_cell(name, concurrency, raw))
        .collect()
}

/// Measures one path interleaved with the raw baseline.
pub(super) async fn measure<F, Fut>(
    base: &Baseline,
    store: Option<&Store>,
    name: &'static str,
    concurrency: usize,
    seconds: f64,
    f: F,
) -> Cell
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Outcome,
{
    let mut cells = measure_rows(base, store, concurrency, seconds, vec![(name, op(f))]).await;
    cells.remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Each call of a [`recorder`]: its load's tag, worker, call number and when it ran.
    type Calls = Arc<Mutex<Vec<(u8, usize, u64, Instant)>>>;

    /// A load that records each call.
    pub(super) fn recorder(tag: u8, log: Calls) -> Op {
        op(move |w, i| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push((tag, w, i, Instant::now()));
                tokio::time::sleep(Duration::from_millis(1)).await;
                true
            }
        })
    }

    #[tokio::test]
    pub(super) async fn loads_take_turns_and_call_numbers_never_repeat_within_a_cell() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let loads = [recorder(0, log.clone()), recorder(1, log.clone())];
        let samples = interleaved(2, 0.3, 3, &loads, None).await;
        assert_eq!(samples.len(), 2);
        for s in &samples {
            assert!(s.lat.len() > 10, "{} calls", s.lat.len());
            assert!((s.seconds - 0.3).abs() < 1e-9, "{}", s.seconds);
            assert_eq!(s.errors, 0);
        }
        let mut log = log.lock().unwrap().clone();
        // Per load and worker, the call numbers run on across slices (keys derived from
        // them, idempotency keys among them, must not repeat).
        for tag in 0..2 {
            for w in 0..2 {
                let is: Vec<u64> = log
                    .iter()
                    .filter(|(t, x, ..)| *t == tag && *x == w)
                    .map(|e| e.2)
                    .collect();
                assert_eq!(is, (0..is.len() as u64).collect::<Vec<_>>());
            }
        }
        // Six turns in order: 0, 1, 0, 1, 0, 1.
        log.sort_by_key(|e| e.3);
        let mut turns: Vec<u8> = log.iter().map(|e| e.0).collect();
        turns.dedup();
        assert_eq!(turns, vec![0, 1, 0, 1, 0, 1]);
    }

    #[tokio::test]
    pub(super) async fn failed_calls_are_counted_not_timed() {
        let calls = op(|_, i| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if i % 2 == 0 { Ok(()) } else { Err("refused") }
        });
        let s = interleaved(1, 0.2, 1, &[calls], None).await.remove(0);
        assert!(s.errors > 0);
        assert_eq!(s.first_error.as_deref(), Some("refused"));
        // Successful calls only count toward req/s.
        let ok = s.lat.len() as u64;
        assert!(ok.abs_diff(s.errors) <= 2, "{ok} ok, {} failed", s.errors);
        assert!((s.rps() - ok as f64 / 0.2).abs() < 1e-6);
    }

    #[test]
    pub(super) fn a_cell_is_cut_into_about_one_slice_a_second() {
        assert_eq!(slices(0.2), 1);
        assert_eq!(slices(3.0), 3);
        assert_eq!(slices(5.4), 5);
    }
}
