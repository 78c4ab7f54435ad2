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

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aicore_proto::Status;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::durable::Done;
use crate::writes::{Row, WriteSet, merged_scan, scan_start};

mod error;

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

type Tables = HashMap<&'static str, BTreeMap<Vec<u8>, Bytes>>;

#[derive(Default)]
struct Memory {
    tables: RwLock<Tables>,
}

impl Memory {
    fn tables(&self) -> Result<std::sync::RwLockReadGuard<'_, Tables>, StoreError> {
        Ok(self.tables.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn scan_over(
        &self,
        table: &'static str,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        over: &[&WriteSet],
    ) -> Result<Vec<Row>, StoreError> {
        let tables = self.tables()?;
        let base = tables
            .get(table)
            .into_iter()
            .flat_map(|t| t.range::<[u8], _>((Bound::Included(start), Bound::Unbounded)))
            .map(|(k, v)| Ok((k.clone(), v.clone())));
        let layers = over.iter().map(|w| w.range(table, start)).collect();
        merged_scan(base, layers, prefix, limit)
    }
}

impl Backend for Memory {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self.tables()?.get(table).and_then(|t| t.get(key)).cloned())
    }
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        self.scan_over(table, scan_start(from, prefix), prefix, limit, &[])
    }
    fn view(&self) -> Result<Box<dyn View + '_>, StoreError> {
        Ok(Box::new(self))
    }
    fn submit(&self, writes: WriteSet, done: Done) {
        done(self.apply(writes))
    }
}

impl Memory {
    fn apply(&self, writes: WriteSet) -> Result<(), StoreError> {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        for (table, key, value) in writes.iter() {
            let t = tables.entry(table).or_default();
            match value {
                Some(v) => {
                    t.insert(key.to_vec(), v.clone());
                }
                None => {
                    t.remove(key);
                }
            }
        }
        Ok(())
    }
}

/// Only the writer thread commits, so reading the maps as they are is a consistent view.
impl View for &Memory {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Backend::get(*self, table, key)
    }
    fn scan(
        &self,
        table: &'static str,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        over: &[&WriteSet],
    ) -> Result<Vec<Row>, StoreError> {
        self.scan_over(table, start, prefix, limit, over)
    }
}

// ---------------------------------------------------------------- Tx

/// A write transaction as a domain sees it: reads see committed data plus this batch's
/// earlier writes plus this closure's own writes; writes are buffered until the closure
/// returns `Ok`.
pub struct Tx<'a> {
    view: &'a dyn View,
    /// What the batch's earlier closures wrote.
    batch: &'a WriteSet,
    writes: WriteSet,
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
}

/// Counters of the store's writer, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Batches that wrote something (each one log record, or one redb commit without
    /// the log; durable before their callers hear back).
    pub commits: u64,
    /// Write closures run; `writes / commits` is the mean group-commit batch size.
    pub writes: u64,
}

/// The domains' store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Msg>,
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
            return Ok(v);
        }
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
            return Ok(d.value.downcast::<T>().ok());
        }
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
        let job: Job = Box::new(move |tx: &mut Tx<'_>| -> Completion {
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
        StoreStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            writes: self.inner.writes.load(Ordering::Relaxed),
        }
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
    /// tick's probe, finds out); a failed sync or flush stays until a restart.
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
    let done: Done = Box::new(move |result| {
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
mod tests {
    use super::*;
    use aicore_proto::Code;
    use std::time::Instant;

    const T: &str = "test.items";

    async fn both(test: impl AsyncFn(Store)) {
        test(Store::in_memory()).await;
        let dir = tempfile::tempdir().unwrap();
        test(Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap()).await;
    }

    #[tokio::test]
    async fn failed_closure_writes_nothing_and_others_in_batch_commit() {
        both(async |s: Store| {
            let mut handles = Vec::new();
            for i in 0..50u32 {
                let s = s.clone();
                handles.push(tokio::spawn(async move {
                    s.write(move |tx| {
                        tx.put(T, &i.to_be_bytes(), vec![1]);
                        if i % 2 == 0 {
                            Err(Status::conflict("even"))
                        } else {
                            Ok(i)
                        }
                    })
                    .await
                }));
            }
            for (i, h) in handles.into_iter().enumerate() {
                let r = h.await.unwrap();
                assert_eq!(r.is_ok(), i % 2 == 1);
            }
            let rows = s.scan(T, b"", b"", 1000).unwrap();
            assert_eq!(rows.len(), 25);
            assert!(
                rows.iter()
                    .all(|(k, _)| u32::from_be_bytes(k[..4].try_into().unwrap()) % 2 == 1)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn panic_in_closure_is_internal_and_writes_nothing() {
        both(async |s: Store| {
            let r: Result<(), Status> = s
                .write(|tx| {
                    tx.put(T, b"k", vec![1]);
                    panic!("boom")
                })
                .await;
            assert_eq!(r.unwrap_err().code, Code::Internal);
            assert_eq!(s.get(T, b"k").unwrap(), None);
            // The writer survives.
            s.write(|tx| {
                tx.put(T, b"k", vec![2]);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(s.get(T, b"k").unwrap().unwrap().as_ref(), &[2]);
        })
        .await;
    }

    #[tokio::test]
    async fn reads_in_tx_see_own_and_earlier_writes_and_scan_merges() {
        both(async |s: Store| {
            s.write(|tx| {
                tx.put(T, b"a1", vec![1]);
                tx.put(T, b"a2", vec![2]);
                tx.put(T, b"b1", vec![3]);
                Ok(())
            })
            .await
            .unwrap();
            let seen = s
                .write(|tx| {
                    tx.delete(T, b"a1");
                    tx.put(T, b"a3", vec![4]);
                    let got = tx.get(T, b"a3")?;
                    let rows = tx.scan(T, b"a", b"", 10)?;
                    Ok((got, rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>()))
                })
                .await
                .unwrap();
            assert_eq!(seen.0.unwrap().as_ref(), &[4]);
            assert_eq!(seen.1, vec![b"a2".to_vec(), b"a3".to_vec()]);
            let page = s.scan(T, b"a", b"a3", 10).unwrap();
            assert_eq!(page.len(), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn cache_is_invalidated_on_write() {
        both(async |s: Store| {
            assert_eq!(s.get_cached(T, b"x").unwrap(), None);
            s.write(|tx| {
                tx.put(T, b"x", vec![7]);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(s.get_cached(T, b"x").unwrap().unwrap().as_ref(), &[7]);
            s.write(|tx| {
                tx.delete(T, b"x");
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(s.get_cached(T, b"x").unwrap(), None);
        })
        .await;
    }

    #[tokio::test]
    async fn derived_values_are_weighed_by_what_they_hold() {
        // 1 MiB of cache: a quarter for derived values.
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            cache_bytes: 1 << 20,
            ..StoreOptions::default()
        };
        let s = Store::open(&dir.path().join("s.redb"), opts).unwrap();
        let write_all = async || {
            s.write(|tx| {
                for i in 0u8..64 {
                    tx.put(T, &[i], vec![i]);
                }
                Ok(())
            })
            .await
            .unwrap()
        };
        write_all().await;
        let derive_all = |held: usize| {
            for i in 0u8..64 {
                let v = s
                    .get_derived(T, &[i], |raw| Ok(Some((raw[0], held))))
                    .unwrap();
                assert_eq!(*v.unwrap(), i);
            }
        };
        // Small values: all of them stay.
        derive_all(100);
        assert_eq!(s.derived_cached(), 64);
        // Values that hold 64 KiB each (say, an object's data): at most 4 fit in 256 KiB.
        write_all().await;
        assert_eq!(s.derived_cached(), 0, "dropped with their rows");
        derive_all(64 << 10);
        let n = s.derived_cached();
        assert!(n <= 4, "{n} derived values of 64 KiB in a 256 KiB share");
    }

    #[tokio::test]
    async fn a_derived_value_is_cached_with_its_key_and_dropped_when_it_is_written() {
        both(async |s: Store| {
            let derived = std::sync::atomic::AtomicUsize::new(0);
            let read = |s: &Store| {
                s.get_derived(T, b"d", |raw| {
                    derived.fetch_add(1, Ordering::SeqCst);
                    Ok(Some((raw.len(), 8)))
                })
                .unwrap()
                .map(|v| *v)
            };
            assert_eq!(read(&s), None, "no value, nothing derived");
            s.write(|tx| {
                tx.put(T, b"d", vec![1, 2]);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!((read(&s), read(&s)), (Some(2), Some(2)));
            assert_eq!(derived.load(Ordering::SeqCst), 1, "derived once");
            s.write(|tx| {
                tx.put(T, b"d", vec![1, 2, 3]);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(read(&s), Some(3));
            assert_eq!(derived.load(Ordering::SeqCst), 2);
            // A derivation that cannot tell caches nothing.
            let none = s.get_derived(T, b"d", |_| Ok(None::<(u8, usize)>)).unwrap();
            assert!(none.is_none());
            s.write(|tx| {
                tx.delete(T, b"d");
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(read(&s), None);
        })
        .await;
    }

    #[tokio::test]
    async fn committed_writes_survive_reopen_and_close_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = Store::open(&path, StoreOptions::default()).unwrap();
            s.write(|tx| {
                tx.put(T, b"durable", vec![9]);
                Ok(())
            })
            .await
            .unwrap();
            s.close().await;
            let r = s.write(|_| Ok(())).await;
            assert_eq!(r.unwrap_err().code, Code::Unavailable);
        }
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(s.get(T, b"durable").unwrap().unwrap().as_ref(), &[9]);
    }

    #[tokio::test]
    async fn the_store_and_its_log_are_private_in_an_open_directory() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let files = ["s.redb", "s.redb.wal0", "s.redb.wal1"].map(|f| root.path().join(f));
        let s = Store::open(&files[0], StoreOptions::default()).unwrap();
        s.write(|tx| {
            tx.put(T, b"hash", vec![1]);
            Ok(())
        })
        .await
        .unwrap();
        s.close().await;
        drop(s);
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        // Files an older version left readable by others are narrowed when opened.
        for f in &files {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let s = Store::open(&files[0], StoreOptions::default()).unwrap();
        assert_eq!(s.get(T, b"hash").unwrap().unwrap().as_ref(), &[1]);
        s.close().await;
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        // A directory the store creates is private; an existing one keeps its mode.
        let nested = root.path().join("new/s.redb");
        Store::open(&nested, StoreOptions::default())
            .unwrap()
            .close()
            .await;
        assert_eq!(mode(&root.path().join("new")), 0o700);
        assert_eq!(mode(root.path()), 0o755);
    }

    /// Writes `n` keys (and deletes every third one written before) as separate
    /// acknowledged writes, 25 at a time, so that they land in several batches.
    async fn write_keys(s: &Store, n: u32) {
        for group in (0..n).collect::<Vec<_>>().chunks(25) {
            let mut handles = Vec::new();
            for &i in group {
                let s = s.clone();
                handles.push(tokio::spawn(async move {
                    s.write(move |tx| {
                        tx.put(T, &i.to_be_bytes(), vec![i as u8; 200]);
                        if i % 3 == 0 && i > 0 {
                            tx.delete(T, &(i - 3).to_be_bytes());
                        }
                        Ok(())
                    })
                    .await
                }));
            }
            for h in handles {
                h.await.unwrap().unwrap();
            }
        }
    }

    fn expected_keys(s: &Store, n: u32) -> Result<(), String> {
        for i in 0..n {
            let deleted = i % 3 == 0 && i + 3 < n;
            let got = s.get(T, &i.to_be_bytes()).unwrap();
            match (deleted, got) {
                (true, None) => {}
                (false, Some(v)) if v.as_ref() == vec![i as u8; 200].as_slice() => {}
                (d, g) => return Err(format!("key {i}: deleted {d}, got {g:?}")),
            }
        }
        Ok(())
    }

    fn no_checkpoints() -> StoreOptions {
        StoreOptions {
            checkpoint_tick: Duration::from_secs(3600),
            ..StoreOptions::default()
        }
    }

    /// Copies the store's files as a crash would leave them: the writer is idle, the
    /// logged batches are durable only in the log.
    fn crash_image(from: &Path, to: &Path, with_log: bool) {
        std::fs::copy(from.join("s.redb"), to.join("s.redb")).unwrap();
        for segment in ["s.redb.wal0", "s.redb.wal1"] {
            if with_log && from.join(segment).exists() {
                std::fs::copy(from.join(segment), to.join(segment)).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_a_crash_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), no_checkpoints()).unwrap();
        write_keys(&s, 200).await;
        expected_keys(&s, 200).unwrap();
        assert!(s.stats().commits > 1, "{:?}", s.stats());
        // Without its log the crash image lacks the writes: the log is what made them
        // durable, not a durable redb commit.
        let bare = tempfile::tempdir().unwrap();
        crash_image(dir.path(), bare.path(), false);
        let opts = StoreOptions {
            wal: false,
            ..no_checkpoints()
        };
        let r = Store::open(&bare.path().join("s.redb"), opts).unwrap();
        assert_eq!(r.get(T, &1u32.to_be_bytes()).unwrap(), None);
        // With it, every acknowledged write is back, and again after a second reopen.
        let image = tempfile::tempdir().unwrap();
        crash_image(dir.path(), image.path(), true);
        let path = image.path().join("s.redb");
        let r = Store::open(&path, no_checkpoints()).unwrap();
        expected_keys(&r, 200).unwrap();
        // Writes after recovery continue the sequence; they survive another crash too.
        r.write(|tx| {
            tx.put(T, b"after", vec![1]);
            Ok(())
        })
        .await
        .unwrap();
        let again = tempfile::tempdir().unwrap();
        crash_image(image.path(), again.path(), true);
        let r = Store::open(&again.path().join("s.redb"), no_checkpoints()).unwrap();
        expected_keys(&r, 200).unwrap();
        assert_eq!(r.get(T, b"after").unwrap().unwrap().as_ref(), &[1]);
    }

    #[tokio::test]
    async fn a_crash_between_a_flushs_two_commits_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            stage_pause: Duration::from_millis(1500),
            ..no_checkpoints()
        };
        let s = Store::open(&dir.path().join("s.redb"), opts).unwrap();
        write_keys(&s, 200).await;
        // Closing flushes the layer; the flusher then waits between its non-durable
        // commit (pages and checkpoint written, not durable) and the durable one.
        let closing = tokio::spawn({
            let s = s.clone();
            async move { s.close().await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let image = tempfile::tempdir().unwrap();
        crash_image(dir.path(), image.path(), true);
        closing.await.unwrap();
        // The database alone is still at the previous (empty) durable state: the
        // non-durable commit's checkpoint is not what a restart reads.
        let bare = tempfile::tempdir().unwrap();
        crash_image(image.path(), bare.path(), false);
        let plain = StoreOptions {
            wal: false,
            ..no_checkpoints()
        };
        let r = Store::open(&bare.path().join("s.redb"), plain).unwrap();
        assert_eq!(r.get(T, &1u32.to_be_bytes()).unwrap(), None);
        r.close().await;
        drop(r);
        // With the log, every acknowledged write is back.
        let r = Store::open(&image.path().join("s.redb"), no_checkpoints()).unwrap();
        expected_keys(&r, 200).unwrap();
    }

    #[tokio::test]
    async fn the_log_is_checkpointed_when_full_and_when_idle() {
        // Full: 20 × 200 writes of ~200 bytes through 4 KiB log segments flush the layer
        // to redb many times; each segment file stays one chunk and everything is there
        // after a crash image and after a close and reopen.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = Store::open(
            &path,
            StoreOptions {
                wal_bytes: 4096,
                ..no_checkpoints()
            },
        )
        .unwrap();
        for _ in 0..20 {
            write_keys(&s, 200).await;
            // Readers see every acknowledged write wherever it is: a layer or redb.
            expected_keys(&s, 200).unwrap();
        }
        for segment in ["s.redb.wal0", "s.redb.wal1"] {
            let len = std::fs::metadata(dir.path().join(segment)).unwrap().len();
            assert_eq!(len, 1 << 20, "{segment}");
        }
        // A crash image now (flushes done and in flight, both segments in use) recovers.
        let image = tempfile::tempdir().unwrap();
        crash_image(dir.path(), image.path(), true);
        let r = Store::open(&image.path().join("s.redb"), no_checkpoints()).unwrap();
        expected_keys(&r, 200).unwrap();
        drop(r);
        s.close().await;
        drop(s);
        let s = Store::open(&path, no_checkpoints()).unwrap();
        expected_keys(&s, 200).unwrap();
        drop(s);
        // Idle: with a short tick, a quiet store checkpoints on its own, so even a crash
        // image without the log has the writes.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            &dir.path().join("s.redb"),
            StoreOptions {
                checkpoint_tick: Duration::from_millis(20),
                ..StoreOptions::default()
            },
        )
        .unwrap();
        write_keys(&s, 50).await;
        let bare = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            crash_image(dir.path(), bare.path(), false);
            let r = Store::open(
                &bare.path().join("s.redb"),
                StoreOptions {
                    wal: false,
                    ..StoreOptions::default()
                },
            )
            .unwrap();
            let found = expected_keys(&r, 50);
            drop(r);
            if found.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "no idle checkpoint: {found:?}");
            let _ = std::fs::remove_file(bare.path().join("s.redb"));
        }
    }

    fn slow_sync() -> StoreOptions {
        StoreOptions {
            sync_pause: Duration::from_millis(300),
            ..no_checkpoints()
        }
    }

    /// A write of `key` = `value` running on its own task.
    fn spawn_put(
        s: &Store,
        key: &'static [u8],
        value: u8,
    ) -> tokio::task::JoinHandle<Result<(), Status>> {
        let s = s.clone();
        tokio::spawn(async move {
            s.write(move |tx| {
                tx.put(T, key, vec![value]);
                Ok(())
            })
            .await
        })
    }

    #[tokio::test]
    async fn a_batch_is_read_by_the_next_before_it_is_durable_but_not_by_readers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), slow_sync()).unwrap();
        let first = spawn_put(&s, b"k", 1);
        // The first batch is written and waits for its sync; the next batch's closure
        // already reads it (it runs meanwhile, as its own batch) while readers do not.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            s.get(T, b"k").unwrap(),
            None,
            "readers see only durable writes"
        );
        let reader = s.clone();
        let (in_tx, for_readers) = s
            .write(move |tx| {
                let v = tx.get(T, b"k")?;
                tx.put(T, b"j", vec![2]);
                Ok((v, reader.get(T, b"k")?))
            })
            .await
            .unwrap();
        assert_eq!(in_tx.unwrap().as_ref(), &[1]);
        assert_eq!(for_readers, None);
        // Answered once both are durable, when readers see both.
        first.await.unwrap().unwrap();
        assert_eq!(s.get(T, b"k").unwrap().unwrap().as_ref(), &[1]);
        assert_eq!(s.get(T, b"j").unwrap().unwrap().as_ref(), &[2]);
    }

    #[tokio::test]
    async fn an_answered_batch_is_read_before_it_is_merged_into_the_active_layer() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            settle_pause: Duration::from_millis(300),
            ..no_checkpoints()
        };
        let s = Store::open(&dir.path().join("s.redb"), opts).unwrap();
        spawn_put(&s, b"k1", 1).await.unwrap().unwrap();
        // Answered; the syncer is still holding the batch in its recent list. Readers,
        // scans and the next batch's closures all see it.
        assert_eq!(s.get(T, b"k1").unwrap().unwrap().as_ref(), &[1]);
        let rows = s.scan(T, b"k", b"", 10).unwrap();
        assert_eq!(rows, vec![(b"k1".to_vec(), Bytes::from_static(&[1]))]);
        let (seen, scanned) = s
            .write(|tx| {
                let v = tx.get(T, b"k1")?;
                tx.put(T, b"k2", vec![2]);
                Ok((v, tx.scan(T, b"k", b"", 10)?.len()))
            })
            .await
            .unwrap();
        assert_eq!((seen.unwrap().as_ref(), scanned), (&[1u8][..], 2));
        // Merged later, the same to readers.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(s.scan(T, b"k", b"", 10).unwrap().len(), 2);
        assert_eq!(s.get(T, b"k2").unwrap().unwrap().as_ref(), &[2]);
    }

    #[tokio::test]
    async fn what_a_read_only_closure_saw_is_durable_before_it_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), slow_sync()).unwrap();
        let writer = spawn_put(&s, b"k", 7);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = s.write(|tx| tx.get(T, b"k")).await.unwrap();
        assert_eq!(seen.unwrap().as_ref(), &[7]);
        // Its reply may say what it read only because that is durable now.
        assert_eq!(s.get(T, b"k").unwrap().unwrap().as_ref(), &[7]);
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failed_sync_fails_its_batches_and_stops_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = Store::open(&path, slow_sync()).unwrap();
        s.write(|tx| {
            tx.put(T, b"before", vec![1]);
            Ok(())
        })
        .await
        .unwrap();
        s.fail_next_sync();
        let mut pending = Vec::new();
        for key in [b"0", b"1", b"2"] {
            pending.push(spawn_put(&s, key, 1));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for p in pending {
            assert_eq!(p.await.unwrap().unwrap_err().code, Code::Unavailable);
        }
        // Not one of them became visible, and nothing more is taken.
        for key in [b"0", b"1", b"2"] {
            assert_eq!(s.get(T, key).unwrap(), None);
        }
        let later = s
            .write(|tx| {
                tx.put(T, b"later", vec![1]);
                Ok(())
            })
            .await;
        assert_eq!(later.unwrap_err().code, Code::Unavailable);
        assert_eq!(s.get(T, b"before").unwrap().unwrap().as_ref(), &[1]);
        s.close().await;
        drop(s);
        // A restart recovers from the log whatever of it is whole: at least what was
        // acknowledged, and it takes writes again.
        let s = Store::open(&path, no_checkpoints()).unwrap();
        assert_eq!(s.get(T, b"before").unwrap().unwrap().as_ref(), &[1]);
        s.write(|tx| {
            tx.put(T, b"after", vec![1]);
            Ok(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn without_the_log_every_batch_is_a_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            wal: false,
            ..no_checkpoints()
        };
        let s = Store::open(&dir.path().join("s.redb"), opts.clone()).unwrap();
        write_keys(&s, 100).await;
        assert!(!dir.path().join("s.redb.wal0").exists());
        let bare = tempfile::tempdir().unwrap();
        crash_image(dir.path(), bare.path(), false);
        let r = Store::open(&bare.path().join("s.redb"), opts).unwrap();
        expected_keys(&r, 100).unwrap();
    }

    #[tokio::test]
    async fn events_are_queued_only_with_their_commit_in_order() {
        use crate::outbox::{Emit, OUTBOX, OutboxEvent};
        both(async |s: Store| {
            let queued = s.watch(OUTBOX);
            let r: Result<(), Status> = s
                .write(|tx| {
                    tx.emit_raw("evt.test.a", vec![1])?;
                    Err(Status::conflict("refused"))
                })
                .await;
            assert!(r.is_err());
            assert!(s.scan(OUTBOX, b"", b"", 10).unwrap().is_empty());
            for i in 0..3u8 {
                s.write(move |tx| {
                    tx.put(T, &[i], vec![i]);
                    tx.emit_raw("evt.test.b", vec![i])
                })
                .await
                .unwrap();
            }
            // The relay is signalled (the permit is stored even though nobody waited).
            tokio::time::timeout(std::time::Duration::from_secs(5), queued.notified())
                .await
                .expect("signalled");
            let rows = s.scan(OUTBOX, b"", b"", 10).unwrap();
            let events: Vec<OutboxEvent> = rows
                .into_iter()
                .map(|(_, v)| decode(OUTBOX, v).unwrap())
                .collect();
            assert_eq!(
                events.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
                vec![0, 1, 2]
            );
            let ids: std::collections::HashSet<_> =
                events.iter().map(|e| e.msg_id.clone()).collect();
            assert_eq!(ids.len(), 3);
        })
        .await;
    }

    #[tokio::test]
    async fn batches_that_write_nothing_make_no_commit() {
        both(async |s: Store| {
            let before = s.stats();
            let _ = s.write(|_| Err::<(), _>(Status::conflict("no"))).await;
            s.write(|tx| tx.get(T, b"nothing").map(|_| ()))
                .await
                .unwrap();
            let after = s.stats();
            assert_eq!(after.writes, before.writes + 2);
            assert_eq!(after.commits, before.commits);
            s.write(|tx| {
                tx.put(T, b"one", vec![1]);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(s.stats().commits, before.commits + 1);
        })
        .await;
    }
}

/// The durable backend against the in-memory one as a model: random sessions of writes
/// (puts, deletes, reads inside the transaction, refusals), reads and scans from outside,
/// crash images and clean reopens, with log segments small enough that layers freeze and
/// flush to redb all through the session, must read the same at every step.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;

    const TABLES: [&str; 2] = ["model.a", "model.b"];

    #[derive(Debug, Clone)]
    enum Step {
        /// A write closure: ops of (table, key, value or delete); refused if `refuse`.
        Write {
            ops: Vec<(usize, u8, Option<u8>)>,
            refuse: bool,
        },
        /// Several write closures at once (one or more batches).
        Concurrent(Vec<Vec<(usize, u8, Option<u8>)>>),
        Get(usize, u8),
        Scan {
            table: usize,
            prefix: u8,
            from: u8,
            limit: usize,
        },
        Crash,
        Reopen,
        Idle,
    }

    fn key(k: u8) -> Vec<u8> {
        // Two-byte keys with a shared first byte for some, so prefixes select ranges.
        vec![k / 8, k % 8]
    }

    fn ops() -> impl Strategy<Value = Vec<(usize, u8, Option<u8>)>> {
        proptest::collection::vec(
            (0..2usize, 0..40u8, proptest::option::of(any::<u8>())),
            1..6,
        )
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (ops(), proptest::bool::weighted(0.15))
                .prop_map(|(ops, refuse)| Step::Write { ops, refuse }),
            2 => proptest::collection::vec(ops(), 2..8).prop_map(Step::Concurrent),
            3 => (0..2usize, 0..40u8).prop_map(|(t, k)| Step::Get(t, k)),
            3 => (0..2usize, 0..6u8, 0..8u8, 1..12usize).prop_map(|(table, prefix, from, limit)| {
                Step::Scan { table, prefix, from, limit }
            }),
            1 => Just(Step::Crash),
            1 => Just(Step::Reopen),
            1 => Just(Step::Idle),
        ]
    }

    /// Runs one closure's ops on `tx` and returns what its reads saw.
    fn apply(tx: &mut Tx<'_>, ops: &[(usize, u8, Option<u8>)]) -> Result<Vec<String>, Status> {
        let mut seen = Vec::new();
        for (t, k, v) in ops {
            let table = TABLES[*t];
            seen.push(format!("{:?}", tx.get(table, &key(*k))?));
            match v {
                Some(v) => tx.put(table, &key(*k), vec![*v; 1 + *v as usize % 50]),
                None => tx.delete(table, &key(*k)),
            }
            seen.push(format!("{:?}", tx.scan(table, &[k / 8], &[], 5)?));
        }
        Ok(seen)
    }

    async fn write(s: &Store, ops: Vec<(usize, u8, Option<u8>)>, refuse: bool) -> String {
        let r = s
            .write(move |tx| {
                let seen = apply(tx, &ops)?;
                if refuse {
                    return Err(Status::conflict("refused"));
                }
                Ok(seen)
            })
            .await;
        format!("{r:?}")
    }

    fn options() -> StoreOptions {
        StoreOptions {
            wal_bytes: 2048,
            checkpoint_tick: Duration::from_millis(5),
            flush_pause: Duration::from_millis(25),
            sync_pause: Duration::from_millis(2),
            ..StoreOptions::default()
        }
    }

    async fn session(steps: Vec<Step>) {
        let model = Store::in_memory();
        let mut dir = tempfile::tempdir().unwrap();
        let mut real = Store::open(&dir.path().join("s.redb"), options()).unwrap();
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Write { ops, refuse } => {
                    let a = write(&model, ops.clone(), refuse).await;
                    let b = write(&real, ops, refuse).await;
                    assert_eq!(a, b, "step {i}: write");
                }
                Step::Concurrent(groups) => {
                    // Each closure writes its own keys (k mod the number of closures), so
                    // any commit order gives the same end state; both stores must reach it.
                    let n = groups.len();
                    let mut handles = Vec::new();
                    for (g, ops) in groups.into_iter().enumerate() {
                        let ops: Vec<_> = ops
                            .into_iter()
                            .filter(|(_, k, _)| *k as usize % n == g)
                            .collect();
                        for s in [model.clone(), real.clone()] {
                            let ops = ops.clone();
                            handles.push(tokio::spawn(async move {
                                s.write(move |tx| {
                                    for (t, k, v) in &ops {
                                        match v {
                                            Some(v) => tx.put(TABLES[*t], &key(*k), vec![*v]),
                                            None => tx.delete(TABLES[*t], &key(*k)),
                                        }
                                    }
                                    Ok(())
                                })
                                .await
                            }));
                        }
                    }
                    for h in handles {
                        h.await.unwrap().unwrap();
                    }
                    for table in TABLES {
                        assert_eq!(
                            model.scan(table, &[], &[], 1000).unwrap(),
                            real.scan(table, &[], &[], 1000).unwrap(),
                            "step {i}: after concurrent writes to {table}"
                        );
                    }
                }
                Step::Get(t, k) => {
                    let a = model.get(TABLES[t], &key(k)).unwrap();
                    let b = real.get(TABLES[t], &key(k)).unwrap();
                    assert_eq!(a, b, "step {i}: get");
                }
                Step::Scan {
                    table,
                    prefix,
                    from,
                    limit,
                } => {
                    let (p, f) = ([prefix], [prefix, from]);
                    let a = model.scan(TABLES[table], &p, &f, limit).unwrap();
                    let b = real.scan(TABLES[table], &p, &f, limit).unwrap();
                    assert_eq!(a, b, "step {i}: scan");
                    let a = model.scan(TABLES[table], &[], &[prefix], limit).unwrap();
                    let b = real.scan(TABLES[table], &[], &[prefix], limit).unwrap();
                    assert_eq!(a, b, "step {i}: scan from");
                }
                Step::Crash | Step::Reopen => {
                    let next = tempfile::tempdir().unwrap();
                    if matches!(step, Step::Crash) {
                        // What a kill at this instant leaves: the files as they are, a
                        // flush pending or not, layers lost.
                        real.between_flushes(|| {
                            for f in ["s.redb", "s.redb.wal0", "s.redb.wal1"] {
                                if dir.path().join(f).exists() {
                                    std::fs::copy(dir.path().join(f), next.path().join(f)).unwrap();
                                }
                            }
                        });
                    }
                    real.close().await;
                    drop(real);
                    if matches!(step, Step::Reopen) {
                        for f in ["s.redb", "s.redb.wal0", "s.redb.wal1"] {
                            if dir.path().join(f).exists() {
                                std::fs::copy(dir.path().join(f), next.path().join(f)).unwrap();
                            }
                        }
                    }
                    dir = next;
                    real = Store::open(&dir.path().join("s.redb"), options()).unwrap();
                }
                Step::Idle => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        for t in TABLES {
            assert_eq!(
                model.scan(t, &[], &[], 1000).unwrap(),
                real.scan(t, &[], &[], 1000).unwrap(),
                "end state of {t}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn the_durable_store_reads_like_the_model(steps in proptest::collection::vec(step(), 1..60)) {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(session(steps));
        }
    }
}
