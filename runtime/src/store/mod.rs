//! The domains' durable state: one redb file, tables named `<domain>.<table>` holding
//! byte keys and byte values (domains encode values as protobuf), a moka cache for hot
//! reads, and one writer thread that batches concurrent write transactions into a single
//! durable commit (group commit). A caller's write is acknowledged only after the commit
//! holding it has reached the disk, so one fsync serves every write that queued up while
//! the previous one ran. By default a batch is made durable by appending it to the
//! store's write-ahead log and held in memory layers over redb, which a background
//! thread writes to redb in bulk ([`crate::durable`]); `wal: false` makes every batch a
//! durable redb commit instead.
//!
//! Each write is a closure over a [`Tx`] whose writes are buffered; if the closure fails
//! (or panics) its buffer is dropped and nothing of it is written, so a refused request
//! never half-writes, even though it shares a redb transaction with others. Reads inside
//! a closure see the batch's earlier writes. An in-memory backend with the same semantics
//! serves unit tests. What this module does not do: schemas, indexes or encoding — those
//! belong to each domain.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aicore_proto::Status;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::durable::Done;
use crate::writes::{Row, WriteSet, scan_start};

mod error;

pub use crate::durable::{CheckReport, check};
pub use error::{Corruption, StoreError};
pub(crate) use error::{chain, db_err};

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most write closures committed together.
    pub max_batch: usize,
    /// Queued writes before writers wait (backpressure).
    pub queue: usize,
    /// Bytes the caches may hold: three quarters for rows, a quarter for derived values
    /// (each weighed by what it holds).
    pub cache_bytes: u64,
    /// redb's page cache in bytes.
    pub redb_cache_bytes: usize,
    /// Make batches durable through the write-ahead log (`<file>.wal0`/`.wal1`) and
    /// write them to redb in bulk from memory layers; `false`: one durable redb commit
    /// per batch.
    pub wal: bool,
    /// Flush the memory layer to redb (and switch log segments) once a segment holds
    /// this many bytes.
    pub wal_bytes: u64,
    /// How often the writer looks for idleness: a tick with no batch since the previous
    /// one flushes what the memory layer holds; under load that never idles, a flush
    /// starts at least every 30 ticks.
    pub checkpoint_tick: Duration,
    /// Whether the cache's hit and miss counters and the commit histograms are kept
    /// ([`crate::metrics`]; the appliance passes its one switch).
    pub metrics: crate::metrics::Switch,
    /// Tests: how long the flusher waits before each flush (keeps frozen layers around).
    #[cfg(test)]
    pub flush_pause: Duration,
    /// Tests: how long the log's syncer waits before each sync (keeps batches pending).
    #[cfg(test)]
    pub sync_pause: Duration,
    /// Tests: how long the syncer waits after answering a sync's callers before merging
    /// their batches into the active layer (keeps them in the recent list).
    #[cfg(test)]
    pub settle_pause: Duration,
    /// Tests: how long the flusher waits between its non-durable commit (and write-back)
    /// and the durable commit that completes a flush.
    #[cfg(test)]
    pub stage_pause: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 1024,
            queue: 8192,
            cache_bytes: 64 << 20,
            redb_cache_bytes: 256 << 20,
            wal: true,
            wal_bytes: 64 << 20,
            checkpoint_tick: Duration::from_secs(1),
            metrics: Default::default(),
            #[cfg(test)]
            flush_pause: Duration::ZERO,
            #[cfg(test)]
            sync_pause: Duration::ZERO,
            #[cfg(test)]
            settle_pause: Duration::ZERO,
            #[cfg(test)]
            stage_pause: Duration::ZERO,
        }
    }
}

pub(crate) type Key = (&'static str, Vec<u8>);

/// A consistent view of the committed data for the closures of one batch. Only the
/// writer thread commits, so what a view reads stays the committed state until the
/// batch's own commit.
pub(crate) trait View {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError>;
    /// The first `limit` live rows of `table` with `prefix` from `start` on, with `over`
    /// (oldest first: the batch's earlier writes, the closure's own) applied on top.
    fn scan(
        &self,
        table: &'static str,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        over: &[&WriteSet],
    ) -> Result<Vec<Row>, StoreError>;
}

pub(crate) trait Backend: Send + Sync + 'static {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError>;
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StoreError>;
    /// The view a batch's closures read from: the committed data and every batch
    /// submitted before.
    fn view(&self) -> Result<Box<dyn View + '_>, StoreError>;
    /// Takes a batch's writes; `done` is called once they are durable and visible to
    /// readers (before this returns, or later on another thread), or with the error
    /// that leaves their outcome unknown. Batches become durable in the order submitted.
    fn submit(&self, writes: WriteSet, done: Done);
    /// Calls `done` once every batch submitted so far is durable and visible (at once if
    /// they are): for closures that wrote nothing but may have read those batches.
    fn after_submitted(&self, done: Done) {
        done(Ok(()))
    }
    /// Waits until every batch submitted so far is durable and visible.
    fn drain(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Writes what the memory layers hold to the database itself (nothing to do for
    /// backends without them). `idle_only`: only if no batch ran since the last call,
    /// and without waiting; otherwise waits until it is durable there (at close).
    fn checkpoint(&self, idle_only: bool) -> Result<(), StoreError> {
        let _ = idle_only;
        Ok(())
    }
    /// Whether memory layers are being written to the database right now.
    /// Why writes fail now, if they do (the store is read-only until then).
    fn write_error(&self) -> Option<StoreError> {
        None
    }
    fn flushing(&self) -> bool {
        false
    }
    /// Bytes written to the write-ahead log and flushes into the database completed
    /// (zero for backends without them).
    fn log_counters(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Runs `f` while no flush is writing to the database file (tests copy crash images).
    #[cfg(test)]
    fn between_flushes(&self, f: &mut dyn FnMut()) {
        f()
    }
    /// Tests: makes the next log sync fail.
    #[cfg(test)]
    fn fail_next_sync(&self) {}
}

// ---------------------------------------------------------------- memory backend

mod memory;
use memory::Memory;

// ---------------------------------------------------------------- Tx

/// A write transaction as a domain sees it: reads see committed data plus this batch's
/// earlier writes plus this closure's own writes; writes are buffered until the closure
/// returns `Ok`.
pub struct Tx<'a> {
    view: &'a dyn View,
    /// What the batch's earlier closures wrote.
    batch: &'a WriteSet,
    writes: WriteSet,
    /// The span of the request whose write this is; the events it queues carry it.
    pub(crate) trace: Option<crate::trace::TraceParent>,
}

impl Tx<'_> {
    /// Reads a value.
    pub fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, Status> {
        if let Some(v) = self
            .writes
            .get(table, key)
            .or_else(|| self.batch.get(table, key))
        {
            return Ok(v.cloned());
        }
        Ok(self.view.get(table, key)?)
    }

    /// Reads and decodes a protobuf value.
    pub fn get_msg<M: prost::Message + Default>(
        &self,
        table: &'static str,
        key: &[u8],
    ) -> Result<Option<M>, Status> {
        self.get(table, key)?.map(|b| decode(table, b)).transpose()
    }

    /// Keys starting with `prefix`, from `from` (inclusive) on, in key order, at most `limit`.
    pub fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, Status> {
        Ok(self.view.scan(
            table,
            scan_start(from, prefix),
            prefix,
            limit,
            &[self.batch, &self.writes],
        )?)
    }

    /// Writes a value (visible to later reads of this closure, durable at commit).
    pub fn put(&mut self, table: &'static str, key: &[u8], value: impl Into<Bytes>) {
        self.writes.insert(table, key.to_vec(), Some(value.into()));
    }

    /// Encodes and writes a protobuf value.
    pub fn put_msg<M: prost::Message>(&mut self, table: &'static str, key: &[u8], m: &M) {
        self.put(table, key, m.encode_to_vec());
    }

    /// Deletes a key.
    pub fn delete(&mut self, table: &'static str, key: &[u8]) {
        self.writes.insert(table, key.to_vec(), None);
    }
}

/// Decodes a stored protobuf value; a failure is data corruption, answered as Internal.
pub fn decode<M: prost::Message + Default>(table: &str, b: Bytes) -> Result<M, Status> {
    M::decode(b).map_err(|e| {
        tracing::error!(table, error = %e, "undecodable stored value");
        Status::internal("stored data is unreadable")
    })
}

// ---------------------------------------------------------------- Store

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn for<'a> FnOnce(&mut Tx<'a>) -> Completion + Send>;

enum Msg {
    Write(Job),
    /// Sent every `checkpoint_tick`: checkpoint if no batch ran since the last one.
    Tick,
    Close(oneshot::Sender<()>),
}

/// What a domain derived from a committed value ([`Store::get_derived`]), and the bytes
/// it holds (it may keep other rows alive, e.g. a reply holding an object's data).
#[derive(Clone)]
struct Derived {
    value: Arc<dyn std::any::Any + Send + Sync>,
    weight: usize,
}

type Cache<V> = moka::sync::Cache<Key, V, foldhash::quality::RandomState>;

/// Caches `v`, read from the backend after the generation was `before`. The check closes
/// the race where a read of the old value finishes after a commit's invalidation: such an
/// entry is removed again.
fn insert_checked<V: Clone + Send + Sync + 'static>(
    inner: &Inner,
    cache: &Cache<V>,
    k: Key,
    v: V,
    before: u64,
) {
    cache.insert(k.clone(), v);
    if inner.generation.load(Ordering::SeqCst) != before {
        cache.invalidate(&k);
    }
}

fn weight(key: &Key, bytes: usize) -> u32 {
    (key.1.len() + bytes + 48).min(u32::MAX as usize) as u32
}

/// What readers and the writer thread share. The writer holds only this (not the
/// sender), so dropping every [`Store`] closes the channel and ends the thread.
struct Inner {
    backend: Arc<dyn Backend>,
    cache: Cache<Option<Bytes>>,
    /// Derived values, weighed by what they hold, in their own share of `cache_bytes`;
    /// dropped with the key's row.
    derived: Cache<Derived>,
    generation: AtomicU64,
    /// Tables someone waits on ([`Store::watch`]): woken after every commit writing to
    /// them.
    watches: std::sync::RwLock<Vec<(&'static str, Arc<tokio::sync::Notify>)>>,
    /// Durable commits made.
    commits: AtomicU64,
    /// Write closures run (committed or refused).
    writes: AtomicU64,
    /// Whether the counters below are kept.
    metrics: crate::metrics::Switch,
    /// Reads answered from the caches ([`Store::get_cached`], [`Store::get_derived`]).
    cache_hits: AtomicU64,
    /// Reads the caches could not answer.
    cache_misses: AtomicU64,
    /// Time from handing a batch to the backend to its being durable (nanoseconds).
    commit_latency: crate::metrics::Histogram,
    /// Write closures per durable commit.
    batch_size: crate::metrics::Histogram,
}

impl Inner {
    /// Counts one read in `counter`, while metrics are on.
    #[inline]
    fn count(&self, counter: &AtomicU64) {
        if self.metrics.on() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Upper bounds of the batch size histogram (write closures per commit).
const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// Counters of the store's writer, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Batches that wrote something (each one log record, or one redb commit without
    /// the log; durable before their callers hear back).
    pub commits: u64,
    /// Write closures run; `writes / commits` is the mean group-commit batch size.
    pub writes: u64,
    /// Bytes written to the write-ahead log.
    pub log_bytes: u64,
    /// Flushes of the memory layers into the database file completed.
    pub flushes: u64,
    /// Reads answered from the caches.
    pub cache_hits: u64,
    /// Reads the caches could not answer (read from the layers or redb).
    pub cache_misses: u64,
}

/// The domains' store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("write_error", &self.write_error())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the redb file at `path` and starts its writer thread.
    /// The file and its log segments are `0600`, a directory created for them `0700`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            // Private when new (it will hold the store); an existing one keeps its mode.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| StoreError::io("creating the store's directory", e))?;
        }
        let db = crate::durable::Durable::open(Arc::new(crate::fs::RealFs), path, &options)?;
        Ok(Self::start(Arc::new(db), options))
    }

    /// Opens the store on another file system (tests: one that can lose power).
    #[cfg(test)]
    pub(crate) fn open_on(
        fs: Arc<dyn crate::fs::StoreFs>,
        path: &Path,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let db = crate::durable::Durable::open(fs, path, &options)?;
        Ok(Self::start(Arc::new(db), options))
    }

    /// A store in memory, for unit tests (same semantics, nothing durable).
    pub fn in_memory() -> Store {
        Self::start(Arc::new(Memory::default()), StoreOptions::default())
    }

    fn start(backend: Arc<dyn Backend>, options: StoreOptions) -> Store {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        // Rows get three quarters of the budget, derived values the rest.
        let derived_bytes = options.cache_bytes / 4;
        let cache = moka::sync::Cache::builder()
            .weigher(|k: &Key, v: &Option<Bytes>| weight(k, v.as_ref().map_or(0, Bytes::len)))
            .max_capacity(options.cache_bytes - derived_bytes)
            .build_with_hasher(foldhash::quality::RandomState::default());
        let derived = moka::sync::Cache::builder()
            .weigher(|k: &Key, v: &Derived| weight(k, v.weight))
            .max_capacity(derived_bytes)
            .build_with_hasher(foldhash::quality::RandomState::default());
        let inner = Arc::new(Inner {
            backend,
            cache,
            derived,
            generation: AtomicU64::new(0),
            watches: Default::default(),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            metrics: options.metrics.clone(),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            commit_latency: crate::metrics::Histogram::latency(),
            batch_size: crate::metrics::Histogram::new(BATCH_BOUNDS, 1.0),
        });
        let writer = inner.clone();
        let max_batch = options.max_batch.max(1);
        std::thread::Builder::new()
            .name("aicore-store-writer".into())
            .spawn(move || writer_loop(writer, rx, max_batch))
            .expect("spawning the store writer thread");
        // The ticker holds a weak sender, so it neither keeps the store open nor outlives it.
        let ticks = tx.downgrade();
        let period = options.checkpoint_tick.max(Duration::from_millis(10));
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
        Store { inner, tx }
    }

    /// Reads a committed value.
    pub fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, Status> {
        Ok(self.inner.backend.get(table, key)?)
    }

    /// Reads a committed value through the cache (for hot keys; invalidated on write).
    pub fn get_cached(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, Status> {
        let k: Key = (table, key.to_vec());
        if let Some(v) = self.inner.cache.get(&k) {
            self.inner.count(&self.inner.cache_hits);
            return Ok(v);
        }
        self.inner.count(&self.inner.cache_misses);
        let before = self.inner.generation.load(Ordering::SeqCst);
        let v = self.inner.backend.get(table, key)?;
        insert_checked(&self.inner, &self.inner.cache, k, v.clone(), before);
        Ok(v)
    }

    /// A value `derive`d from the committed value of `key` (e.g. a decoded reply built
    /// from it and the rows it points to), cached under the key and dropped when `key` is
    /// written: one cache lookup for a hot read. `derive` must depend only on that value
    /// and on rows that cannot change while it stays the same; it returns the value and
    /// the bytes it holds (what it is weighed as in the cache), or `None` when it cannot
    /// tell (nothing is cached then). `None` too when the key does not exist.
    pub fn get_derived<T: Send + Sync + 'static>(
        &self,
        table: &'static str,
        key: &[u8],
        derive: impl FnOnce(&Bytes) -> Result<Option<(T, usize)>, Status>,
    ) -> Result<Option<Arc<T>>, Status> {
        let k: Key = (table, key.to_vec());
        if let Some(d) = self.inner.derived.get(&k) {
            self.inner.count(&self.inner.cache_hits);
            return Ok(d.value.downcast::<T>().ok());
        }
        self.inner.count(&self.inner.cache_misses);
        // From the backend, not the row cache (which may still hold a value a commit
        // just replaced), under the same generation check as `get_cached`.
        let before = self.inner.generation.load(Ordering::SeqCst);
        let Some(raw) = self.inner.backend.get(table, key)? else {
            return Ok(None);
        };
        let Some((value, weight)) = derive(&raw)? else {
            return Ok(None);
        };
        let value = Arc::new(value);
        let entry = Derived {
            value: value.clone(),
            weight,
        };
        insert_checked(&self.inner, &self.inner.derived, k, entry, before);
        Ok(Some(value))
    }

    /// The derived values cached now, after the cache's pending evictions.
    #[cfg(test)]
    fn derived_cached(&self) -> u64 {
        self.inner.derived.run_pending_tasks();
        self.inner.derived.entry_count()
    }

    /// Reads and decodes a committed protobuf value.
    pub fn get_msg<M: prost::Message + Default>(
        &self,
        table: &'static str,
        key: &[u8],
    ) -> Result<Option<M>, Status> {
        self.get(table, key)?.map(|b| decode(table, b)).transpose()
    }

    /// Like [`Store::get_msg`], through the cache.
    pub fn get_msg_cached<M: prost::Message + Default>(
        &self,
        table: &'static str,
        key: &[u8],
    ) -> Result<Option<M>, Status> {
        self.get_cached(table, key)?
            .map(|b| decode(table, b))
            .transpose()
    }

    /// Committed keys starting with `prefix`, from `from` (inclusive), at most `limit`.
    pub fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, Status> {
        Ok(self.inner.backend.scan(table, from, prefix, limit)?)
    }

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

    /// Runs `f` while no flush is writing to the database file.
    #[cfg(test)]
    pub(crate) fn between_flushes(&self, mut f: impl FnMut()) {
        self.inner.backend.between_flushes(&mut f)
    }

    /// Makes the store's next log sync fail, as a failing disk would.
    #[cfg(test)]
    pub(crate) fn fail_next_sync(&self) {
        self.inner.backend.fail_next_sync()
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> StoreStats {
        let (log_bytes, flushes) = self.inner.backend.log_counters();
        StoreStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            writes: self.inner.writes.load(Ordering::Relaxed),
            log_bytes,
            flushes,
            cache_hits: self.inner.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.inner.cache_misses.load(Ordering::Relaxed),
        }
    }

    /// The commit latency and batch size histograms, for [`crate::metrics`].
    pub(crate) fn histograms(&self) -> (&crate::metrics::Histogram, &crate::metrics::Histogram) {
        (&self.inner.commit_latency, &self.inner.batch_size)
    }

    /// Whether a flush of the memory layers to the database file is running (work left
    /// behind by writes already answered; `aicore bench` charges it to the row whose
    /// writes left it).
    pub fn flushing(&self) -> bool {
        self.inner.backend.flushing()
    }

    /// Why writes fail at the moment, if they do: the store is then read-only (reads
    /// keep working). A full disk or an I/O error while growing or writing the log
    /// clears on its own once the log can be written again (a write, or the idle
    /// tick's probe, finds out), one during a flush into redb once a retry of the flush
    /// succeeds; a failed log sync once the log has been opened again from disk.
    pub fn write_error(&self) -> Option<StoreError> {
        self.inner.backend.write_error()
    }

    /// A signal woken after every commit that writes to `table` (a commit hook: the
    /// outbox relay waits on its table with it). One waiter per table: the same signal
    /// is returned to every caller, and a wake-up with nobody waiting is kept for the
    /// next wait.
    pub fn watch(&self, table: &'static str) -> Arc<tokio::sync::Notify> {
        let mut watches = self
            .inner
            .watches
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, w)) = watches.iter().find(|(t, _)| *t == table) {
            return w.clone();
        }
        let w = Arc::new(tokio::sync::Notify::new());
        watches.push((table, w.clone()));
        w
    }

    /// Finishes queued writes, then stops the writer; later writes fail as Unavailable.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
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

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
