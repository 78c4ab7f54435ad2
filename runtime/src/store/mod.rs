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

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aicore_proto::Status;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::writes::Row;
use cache::{Cache, Derived};
use memory::Memory;
use writer::Msg;

mod backend;
mod cache;
mod error;
mod memory;
mod options;
mod tx;
mod writer;

pub use crate::durable::{CheckReport, check};
pub(crate) use backend::{Backend, View};
pub use error::{Corruption, StoreError};
pub(crate) use error::{chain, db_err};
pub use options::StoreOptions;
pub use tx::{Tx, decode};

pub(crate) type Key = (&'static str, Vec<u8>);

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
        let (cache, derived) = cache::caches(options.cache_bytes);
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
        writer::spawn_writer(inner.clone(), rx, options.max_batch.max(1));
        writer::spawn_ticker(&tx, options.checkpoint_tick);
        Store { inner, tx }
    }

    /// Reads a committed value.
    pub fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, Status> {
        Ok(self.inner.backend.get(table, key)?)
    }

    /// Reads and decodes a committed protobuf value.
    pub fn get_msg<M: prost::Message + Default>(
        &self,
        table: &'static str,
        key: &[u8],
    ) -> Result<Option<M>, Status> {
        self.get(table, key)?.map(|b| decode(table, b)).transpose()
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
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
