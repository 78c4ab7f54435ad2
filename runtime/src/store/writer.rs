//! The writer thread and group commit: [`Store::write`] queues a closure, the writer
//! runs every closure queued meanwhile (up to `max_batch`) as one batch, each over a
//! [`Tx`] whose writes are dropped if it fails or panics, hands the batch's writes to the
//! backend as one commit and answers each caller once that commit is durable. It also
//! checkpoints when idle and drains at close.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aicore_proto::Status;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Inner, Key, Store, StoreError, Tx, View};
use crate::durable::Done;
use crate::writes::{Row, WriteSet};

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn for<'a> FnOnce(&mut Tx<'a>) -> Completion + Send>;

pub(super) enum Msg {
    Write(Job),
    /// Sent every `checkpoint_tick`: checkpoint if no batch ran since the last one.
    Tick,
    Close(oneshot::Sender<()>),
}

impl Store {
    /// Runs `f` in a write transaction and returns its result once the commit holding it
    /// is durable. If `f` returns an error or panics, none of its writes happen.
    pub async fn write<R, F>(&self, f: F) -> Result<R, Status>
    where
        R: Send + 'static,
        F: for<'a> FnOnce(&mut Tx<'a>) -> Result<R, Status> + Send + 'static,
    {
        let (done, wait) = oneshot::channel::<Result<R, Status>>();
        let trace = crate::trace::current();
        let job: Job = Box::new(move |tx: &mut Tx<'_>| -> Completion {
            tx.trace = trace;
            match std::panic::catch_unwind(AssertUnwindSafe(|| f(tx))) {
                Ok(Ok(r)) => Box::new(move |commit: Result<(), StoreError>| {
                    let _ = done.send(commit.map(|()| r).map_err(Status::from));
                }),
                Ok(Err(status)) => {
                    tx.writes = WriteSet::default();
                    Box::new(move |_| {
                        let _ = done.send(Err(status));
                    })
                }
                Err(_) => {
                    tx.writes = WriteSet::default();
                    tracing::error!("a write transaction panicked; its writes were dropped");
                    Box::new(move |_| {
                        let _ = done.send(Err(Status::internal("internal error")));
                    })
                }
            }
        });
        self.tx
            .send(Msg::Write(job))
            .await
            .map_err(|_| Status::from(StoreError::Closed))?;
        wait.await.map_err(|_| Status::from(StoreError::Closed))?
    }

    /// Finishes queued writes, then stops the writer; later writes fail as Unavailable.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Starts the writer thread; it ends once every [`Store`] is dropped or after a close.
pub(super) fn spawn_writer(inner: Arc<Inner>, rx: mpsc::Receiver<Msg>, max_batch: usize) {
    std::thread::Builder::new()
        .name("aicore-store-writer".into())
        .spawn(move || writer_loop(inner, rx, max_batch))
        .expect("spawning the store writer thread");
}

/// Starts the thread that sends the writer [`Msg::Tick`] every `period` (10 ms at least).
pub(super) fn spawn_ticker(tx: &mpsc::Sender<Msg>, period: Duration) {
    // The ticker holds a weak sender, so it neither keeps the store open nor outlives it.
    let ticks = tx.downgrade();
    let period = period.max(Duration::from_millis(10));
    std::thread::Builder::new()
        .name("aicore-store-tick".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                let Some(tx) = ticks.upgrade() else { return };
                if tx.is_closed() {
                    return;
                }
                let _ = tx.try_send(Msg::Tick);
            }
        })
        .expect("spawning the store ticker thread");
}

fn writer_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Msg>, max_batch: usize) {
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut jobs = Vec::new();
        let mut tick = false;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Write(j) => jobs.push(j),
                Msg::Tick => tick = true,
                Msg::Close(done) => closing = Some(done),
            }
            if closing.is_none() && jobs.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !jobs.is_empty() {
            run_batch(&inner, jobs);
        } else if tick && let Err(e) = inner.backend.checkpoint(true) {
            tracing::error!(error = %e, "store checkpoint failed");
        }
    }
    rx.close();
    if let Err(e) = inner.backend.drain() {
        tracing::error!(error = %e, "store: the last writes did not become durable");
    }
    if let Err(e) = inner.backend.checkpoint(false) {
        tracing::error!(error = %e, "store checkpoint at close failed");
    }
    // Writes that raced the close are refused rather than left waiting.
    while let Ok(m) = rx.try_recv() {
        if let Msg::Close(done) = m {
            let _ = done.send(());
        }
    }
    // Release the database before confirming, so that once every `Store` handle is gone
    // after `close` the file can be opened again at once.
    drop(inner);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Runs one batch's closures and submits their writes; its callers are answered when
/// it is durable (by whichever thread learns that), or now if it fails.
fn run_batch(inner: &Arc<Inner>, jobs: Vec<Job>) {
    let n = jobs.len() as u64;
    // Without a view nothing can be read or committed: closures run against one whose
    // reads fail, and every caller gets the storage failure.
    let (view, unreadable): (Box<dyn View + '_>, _) = match inner.backend.view() {
        Ok(v) => (v, None),
        Err(e) => (Box::new(Unreadable(e.clone())), Some(e)),
    };
    let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
    let mut batch = WriteSet::default();
    for job in jobs {
        let mut tx = Tx {
            view: &*view,
            batch: &batch,
            writes: WriteSet::default(),
            trace: None,
        };
        completions.push(job(&mut tx));
        let writes = std::mem::take(&mut tx.writes);
        batch.absorb(writes);
    }
    drop(view);
    inner.writes.fetch_add(n, Ordering::Relaxed);
    if let Some(e) = unreadable {
        return complete(completions, Err(e));
    }
    let touched: Vec<Key> = batch.iter().map(|(t, k, _)| (t, k.to_vec())).collect();
    let store = inner.clone();
    let submitted = std::time::Instant::now();
    let done: Done = Box::new(move |result| {
        if result.is_ok() && !touched.is_empty() && store.metrics.on() {
            store.commit_latency.observe_duration(submitted.elapsed());
            store.batch_size.observe(n);
        }
        if result.is_ok() && !touched.is_empty() {
            // The writes are visible now: a reader that raced them re-checks the
            // generation and drops what it cached.
            store.generation.fetch_add(1, Ordering::SeqCst);
            for k in &touched {
                store.cache.invalidate(k);
                store.derived.invalidate(k);
            }
            let watches = store.watches.read().unwrap_or_else(|p| p.into_inner());
            for (table, wake) in watches.iter() {
                if touched.iter().any(|k| k.0 == *table) {
                    wake.notify_one();
                }
            }
        }
        complete(completions, result)
    });
    if batch.is_empty() {
        // Closures that wrote nothing may have read batches not durable yet.
        inner.backend.after_submitted(done);
    } else {
        inner.commits.fetch_add(1, Ordering::Relaxed);
        inner.backend.submit(batch, done);
    }
}

fn complete(completions: Vec<Completion>, result: Result<(), StoreError>) {
    for c in completions {
        c(result.clone());
    }
}

/// What closures read when the backend could not give a view: every read fails.
struct Unreadable(StoreError);

impl View for Unreadable {
    fn get(&self, _: &'static str, _: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Err(self.0.clone())
    }
    fn scan(
        &self,
        _: &'static str,
        _: &[u8],
        _: &[u8],
        _: usize,
        _: &[&WriteSet],
    ) -> Result<Vec<Row>, StoreError> {
        Err(self.0.clone())
    }
}
