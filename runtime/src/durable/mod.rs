//! The store's durable backend: redb under a write-ahead log and an in-memory layer.
//!
//! A durable redb commit writes every page a batch dirtied (copy-on-write leaves and
//! branches, 4 KiB each, plus checksums) and fsyncs; with random keys that cost grows
//! with the batch, so grouping writes bought little. Here, by default:
//!
//! 1. the writer thread runs a batch's closures against a view of the data (the batch's
//!    own writes, the batches written but not yet durable, the in-memory layers, redb),
//!    writes the batch to the write-ahead log as one checksummed record
//!    ([`crate::wal`]) and goes on with the next batch;
//! 2. the syncer thread meanwhile waits for one `fdatasync`, which makes every record
//!    written before it durable; it then makes those batches visible (a short list of
//!    recent batches every reader consults first), answers their callers, and merges
//!    them into the *active* layer, an ordered map every reader consults before redb
//!    (pipelined group commit: measured, the writer waiting for each sync itself and
//!    answering callers after it cost a fifth of the durable Put throughput — see
//!    BENCHMARKS.md);
//! 3. once the log segment holds `wal_bytes` (or the store goes idle, or the oldest
//!    unflushed write is 30 ticks old) the writer waits for the pending syncs, the
//!    active layer is *frozen* and a flusher thread (at a lower priority) applies it to
//!    redb, recording the last batch's sequence number with it (a checkpoint): a
//!    non-durable commit, the file's pages written back a megabyte at a time, then an
//!    empty durable commit (see [`commit_layer`]); new batches go to a fresh active
//!    layer and the other log segment meanwhile. When the durable commit is done the
//!    frozen layer is dropped.
//!
//! Readers never see a batch before it is durable; a later batch's closures do (they
//! must, to decide on current data), and such a batch is answered only after its own
//! sync, which covers the earlier record too. Closures that write nothing are answered
//! once the batches before them are durable, since they may have read them. A failed
//! sync fails every batch written since the last good one (their outcome is unknown) and
//! refuses writes until the syncer has opened the log again from disk, dropped those
//! batches and recovered as a restart would (see [`reopen`]).
//!
//! So each page of redb is written once per flush instead of once per batch, and the
//! writer never waits for redb. After a crash, opening the store applies the logged
//! batches newer than the last checkpoint (both segments, in sequence order) in one
//! durable commit before anything else runs.
//!
//! With `wal: false` the layers stay empty and every batch is a durable redb commit.
//!
//! Readers take the layers' read lock, look in the active then the frozen layer, and
//! begin their redb read transaction before releasing the lock; the flusher drops the
//! frozen layer (under the write lock) only after its commit, so a reader always finds a
//! value in a layer or in redb. Scans merge the layers over a redb range lazily,
//! stopping after `limit` live rows (tombstones of deleted keys are skipped as they come).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Durability, ReadableDatabase, TableDefinition};

use crate::fs::{RedbFile, StoreFile, StoreFs, sync};
use crate::store::{Backend, Corruption, StoreError, StoreOptions, View, db_err};
use crate::wal::{self, AppendError, Wal};

#[cfg(test)]
mod crash_tests;
mod db;
#[cfg(test)]
mod fault_tests;
mod files;
mod flusher;
mod layers;
mod recovery;
mod reopen;
mod syncer;
mod view;

use crate::writes::{Row, WriteSet, merged_scan, scan_start};
pub(crate) use recovery::Plan;

use files::*;
pub use files::{CheckReport, check};
pub(crate) use files::{Opened, open_files};
use flusher::*;
use layers::*;
pub(crate) use syncer::Done;
use syncer::*;
use view::*;

/// Writes not yet in redb: a value, or `None` for a deleted key.
type Layer = WriteSet;
type Table<'a> = redb::Table<'a, &'static [u8], &'static [u8]>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// The store's own table: the sequence number of the last checkpointed batch.
const META: &str = "aicore.store";
const CHECKPOINT: &[u8] = b"checkpoint";
/// A random number mixed into every log record's checksum (see [`crate::wal`]).
const LOG_KEY: &[u8] = b"log-key";

fn def(table: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(table)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Removes the log's segments (`paths`) that exist: the log is off.
fn remove_log(fs: &dyn StoreFs, paths: &[PathBuf]) -> Result<(), StoreError> {
    for p in paths {
        if fs.exists(p) {
            fs.remove(p)
                .map_err(|e| StoreError::io("removing the write-ahead log", e))?;
        }
    }
    Ok(())
}

/// Starts the flusher thread (committing the layers `rx` brings) and the log's syncer
/// thread.
fn spawn_threads(
    flush: FlushThread,
    rx: std::sync::mpsc::Receiver<FlushJob>,
    syncer: &Arc<Syncer>,
) -> Result<Vec<std::thread::JoinHandle<()>>, StoreError> {
    let thread = std::thread::Builder::new()
        .name("aicore-store-flush".into())
        .spawn(move || flush.run(rx))
        .map_err(|e| StoreError::io("starting the store's flusher thread", e))?;
    let s = syncer.clone();
    let sync_thread = std::thread::Builder::new()
        .name("aicore-store-sync".into())
        .spawn(move || s.run())
        .map_err(|e| StoreError::io("starting the store's syncer thread", e))?;
    Ok(vec![thread, sync_thread])
}

/// What the writer thread keeps about the log.
struct LogState {
    /// The two segments (empty when the log is off); batches go to `current`.
    wals: Vec<Wal>,
    current: usize,
    /// Sequence number of the last batch written (to the log, or committed to redb).
    seq: u64,
    /// When the active layer received its first batch.
    oldest: Option<Instant>,
    /// A batch ran since the last idle check.
    busy_since_tick: bool,
    /// The log failed in a way that leaves a batch's outcome unknown until a restart
    /// replays the log, so no further write is taken.
    failed: Option<StoreError>,
    /// The last batch was refused (the log could not grow or be written: a full disk,
    /// an I/O error); cleared by the next batch written, or by the tick's probe.
    refused: Option<StoreError>,
}

impl LogState {
    /// The state of a log of `wals` whose last batch written is `seq`.
    fn new(wals: Vec<Wal>, seq: u64) -> LogState {
        LogState {
            wals,
            current: 0,
            seq,
            oldest: None,
            busy_since_tick: false,
            failed: None,
            refused: None,
        }
    }
}

pub(crate) struct Durable {
    db: Arc<db::DbSlot>,
    /// Held by the flusher while it commits (tests take it to copy a stable crash image).
    #[cfg_attr(not(test), allow(dead_code))]
    committing: Arc<Mutex<()>>,
    layers: Arc<RwLock<Layers>>,
    /// Shared with the syncer, which opens the log again after a failed sync.
    log: Arc<Mutex<LogState>>,
    syncer: Arc<Syncer>,
    flusher: Arc<Flusher>,
    jobs: Mutex<Option<std::sync::mpsc::Sender<FlushJob>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    wal_bytes: u64,
    max_age: Duration,
    /// Bytes written to the log (records as encoded), for metrics.
    log_bytes: AtomicU64,
    /// Flushes into redb completed, for metrics.
    flushes: Arc<AtomicU64>,
}

impl Durable {
    /// Opens the database and its log, applying the logged batches newer than the last
    /// checkpoint (what a crash left only in the log) in one durable commit. Damage in
    /// the log that loses an acknowledged write is refused ([`StoreError::Corrupt`]).
    pub(crate) fn open(
        fs: Arc<dyn StoreFs>,
        path: &Path,
        options: &StoreOptions,
    ) -> Result<Durable, StoreError> {
        let opened = open_files(&*fs, path, options, false)?;
        let seq = opened.recover()?;
        let Opened {
            db,
            file,
            mut wals,
            paths,
            ..
        } = opened;
        if !options.wal && !wals.is_empty() {
            wals.clear();
            remove_log(&*fs, &paths)?;
        }
        let db = Arc::new(db::DbSlot::new(db, file.clone(), options.redb_cache_bytes));
        let layers = Arc::new(RwLock::new(Layers::default()));
        let flusher = Arc::new(Flusher {
            state: Mutex::new(FlushState::default()),
            done: Condvar::new(),
            stop: Default::default(),
        });
        let committing = Arc::new(Mutex::new(()));
        let flushes = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(LogState::new(wals, seq)));
        let retry = options.checkpoint_tick.max(Duration::from_millis(10));
        let reopen = options.wal.then(|| reopen::Reopen {
            fs: fs.clone(),
            paths: paths.clone(),
            db: db.clone(),
            log: log.clone(),
            flusher: flusher.clone(),
            layers: layers.clone(),
            retry,
        });
        // Everything up to the recovered sequence number is durable already.
        let syncer = Arc::new(Syncer::new(seq, layers.clone(), reopen, options));
        let (jobs, threads) = if options.wal {
            let (tx, rx) = std::sync::mpsc::channel::<FlushJob>();
            let flush = FlushThread {
                db: db.clone(),
                layers: layers.clone(),
                flusher: flusher.clone(),
                committing: committing.clone(),
                flushes: flushes.clone(),
                // The database file, for paced write-back.
                file: file.clone(),
                retry,
                #[cfg(test)]
                pause: options.flush_pause,
                #[cfg(test)]
                stage_pause: options.stage_pause,
            };
            (Some(tx), spawn_threads(flush, rx, &syncer)?)
        } else {
            (None, Vec::new())
        };
        Ok(Durable {
            db,
            committing,
            layers,
            log,
            syncer,
            flusher,
            jobs: Mutex::new(jobs),
            threads: Mutex::new(threads),
            wal_bytes: options.wal_bytes,
            max_age: options.checkpoint_tick * 30,
            log_bytes: AtomicU64::new(0),
            flushes,
        })
    }

    /// Waits for the running flush (if any); its error if flushing has failed.
    fn wait_flush(&self) -> Result<(), StoreError> {
        let mut st = lock(&self.flusher.state);
        while st.running && st.failed.is_none() {
            st = self
                .flusher
                .done
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        match &st.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Waits until every batch written is durable and in the active layer.
    fn drain(&self, st: &LogState) -> Result<(), StoreError> {
        if st.wals.is_empty() {
            return Ok(());
        }
        self.syncer.wait(st.seq)
    }

    /// Hands the active layer to the flusher (after the previous flush finished and
    /// every written batch is durable and in it) and switches batches to the other log
    /// segment, whose records that flush made durable.
    fn freeze(&self, st: &mut LogState) -> Result<(), StoreError> {
        self.drain(st)?;
        self.wait_flush()?;
        let layer = {
            let mut layers = write(&self.layers);
            layers.settle();
            if layers.active.is_empty() {
                return Ok(());
            }
            let layer = Arc::new(std::mem::take(&mut layers.active));
            layers.frozen = Some(layer.clone());
            layer
        };
        lock(&self.flusher.state).running = true;
        let sent = lock(&self.jobs)
            .as_ref()
            .is_some_and(|jobs| jobs.send(FlushJob { layer, seq: st.seq }).is_ok());
        if !sent {
            let mut f = lock(&self.flusher.state);
            f.running = false;
            let e = StoreError::Stopped(Box::new(StoreError::Closed));
            f.failed = Some(e.clone());
            return Err(e);
        }
        st.current = 1 - st.current;
        st.wals[st.current].reset(self.wal_bytes * 2);
        st.oldest = None;
        Ok(())
    }

    fn failed(&self, st: &LogState) -> Result<(), StoreError> {
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if let Some(e) = &lock(&self.flusher.state).failed {
            return Err(e.clone());
        }
        match self.syncer.failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The path without the log: the batch is one durable redb commit.
    fn commit_direct(&self, writes: &WriteSet) -> Result<(), StoreError> {
        let result = self.try_commit_direct(writes);
        if result.is_err() {
            // redb refuses everything after an I/O error: open it again, so reads go
            // on and the next batch can try.
            if let Err(e) = self.db.reopen() {
                tracing::error!(error = %crate::store::chain(&e), "store: could not reopen the database");
            }
        }
        result
    }

    fn try_commit_direct(&self, writes: &WriteSet) -> Result<(), StoreError> {
        let db = self.db.get()?;
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        apply(&txn, layer_writes(writes))?;
        txn.commit().map_err(db_err)
    }
}

impl Backend for Durable {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let txn = {
            let layers = read(&self.layers);
            if let Some(v) = layers.get(table, key) {
                return Ok(v);
            }
            let db = self.db.get()?;
            (db.begin_read().map_err(db_err)?, db)
        };
        redb_get(&txn.0, table, key)
    }

    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let start = scan_start(from, prefix);
        let layers = read(&self.layers);
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(db_err)?;
        let base = open_read_table(&txn, table)?;
        let over = layers.sources().map(|l| l.range(table, start)).collect();
        merged_scan(redb_rows(base.as_ref(), start)?, over, prefix, limit)
    }

    fn view(&self) -> Result<Box<dyn View + '_>, StoreError> {
        self.failed(&lock(&self.log))?;
        // Pending batches first: one that becomes durable meanwhile is then found in the
        // active layer too, never in neither.
        let pending = lock(&self.syncer.pending)
            .iter()
            .map(|p| p.writes.clone())
            .collect();
        let db = self.db.get()?;
        let (frozen, txn) = {
            let layers = read(&self.layers);
            (layers.frozen.clone(), db.begin_read().map_err(db_err)?)
        };
        Ok(Box::new(LayeredView {
            _db: db,
            layers: &self.layers,
            frozen,
            pending,
            txn,
            tables: RefCell::default(),
        }))
    }

    fn submit(&self, writes: WriteSet, done: Done) {
        let mut st = lock(&self.log);
        if let Err(e) = self.failed(&st) {
            return done(Err(e));
        }
        if st.wals.is_empty() {
            let result = self.commit_direct(&writes);
            st.seq += u64::from(result.is_ok());
            drop(st);
            return done(result);
        }
        let mut body = Vec::with_capacity(writes.len() * 64);
        for (table, key, value) in writes.iter() {
            wal::encode_op(&mut body, table, key, value.map(|v| v.as_ref()));
        }
        let seq = st.seq + 1;
        let current = st.current;
        let synced = self.syncer.durable_seq.load(Ordering::Acquire);
        if let Err(e) = st.wals[current].write(seq, synced, &body) {
            // Nothing of this batch is durable; its number is used again by the next
            // batch, whose record overwrites whatever of this one reached the file.
            let e = match e {
                AppendError::Reserve(e) => StoreError::io("growing the write-ahead log", e),
                AppendError::Append(e) => StoreError::io("writing the write-ahead log", e),
            };
            tracing::warn!(error = %crate::store::chain(&e), "store: a write was refused; the store is read-only until the log can be written");
            st.refused = Some(e.clone());
            return done(Err(e));
        }
        st.refused = None;
        st.seq = seq;
        self.log_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        {
            let mut pending = lock(&self.syncer.pending);
            if let Some(e) = self.syncer.failed() {
                drop(pending);
                return done(Err(e));
            }
            pending.push_back(Pending {
                seq,
                writes: Arc::new(writes),
                done: vec![done],
            });
        }
        self.syncer.request(st.wals[current].file(), seq);
        st.busy_since_tick = true;
        let oldest = *st.oldest.get_or_insert_with(Instant::now);
        let logged = st.wals[current].pending();
        // While the previous flush still runs, the segment and the active layer keep
        // growing (up to 2 × wal_bytes) rather than every write waiting for the flush.
        let busy = lock(&self.flusher.state).running && logged < self.wal_bytes * 2;
        if (logged >= self.wal_bytes || oldest.elapsed() >= self.max_age) && !busy {
            // The batch is written; a failure to hand over the layer is reported by the
            // next batch (and this one's sync, if that is what failed).
            if let Err(e) = self.freeze(&mut st) {
                tracing::error!(error = %e, "store: could not start a flush");
            }
        }
    }

    fn after_submitted(&self, done: Done) {
        let mut pending = lock(&self.syncer.pending);
        if let Some(e) = self.syncer.failed() {
            drop(pending);
            return done(Err(e));
        }
        match pending.back_mut() {
            Some(last) => last.done.push(done),
            None => {
                drop(pending);
                done(Ok(()))
            }
        }
    }

    fn drain(&self) -> Result<(), StoreError> {
        self.drain(&lock(&self.log))
    }

    #[cfg(test)]
    fn fail_next_sync(&self) {
        self.syncer
            .fail_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    #[cfg(test)]
    fn between_flushes(&self, f: &mut dyn FnMut()) {
        let _held = lock(&self.committing);
        f()
    }

    fn flushing(&self) -> bool {
        lock(&self.flusher.state).running
    }

    fn log_counters(&self) -> (u64, u64) {
        (
            self.log_bytes.load(Ordering::Relaxed),
            self.flushes.load(Ordering::Relaxed),
        )
    }

    fn write_error(&self) -> Option<StoreError> {
        let st = lock(&self.log);
        self.failed(&st).err().or_else(|| st.refused.clone())
    }

    fn checkpoint(&self, idle_only: bool) -> Result<(), StoreError> {
        let mut st = lock(&self.log);
        let busy = std::mem::take(&mut st.busy_since_tick);
        if st.refused.is_some() && !st.wals.is_empty() {
            let current = st.current;
            if st.wals[current].probe().is_ok() {
                tracing::info!("store: the write-ahead log can be written again; writes resume");
                st.refused = None;
            }
        }
        if st.wals.is_empty() || st.failed.is_some() || (idle_only && busy) {
            return Ok(());
        }
        self.freeze(&mut st)?;
        if !idle_only {
            self.wait_flush()?;
        }
        Ok(())
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        // Ends the flusher (it holds the database, which must be released when the last
        // store handle goes) and the syncer, after it synced what was asked.
        lock(&self.jobs).take();
        self.flusher.stop.store(true, Ordering::Release);
        lock(&self.syncer.state).stop = true;
        self.syncer.changed.notify_all();
        // The last handle may be dropped on one of these threads (the syncer runs the
        // callbacks that hold the store): that one ends by itself after this.
        let me = std::thread::current().id();
        for t in lock(&self.threads).drain(..) {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}
