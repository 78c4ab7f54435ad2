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
//! sync fails every batch written since the last good one (their outcome is unknown
//! until a restart replays the log) and stops all further writes.
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
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Durability, ReadableDatabase, TableDefinition};

use crate::store::{Backend, StoreError, StoreOptions, View, storage};
use crate::wal::{self, AppendError, Wal};
use crate::writes::{Row, WriteSet, merged_scan, scan_start};

/// Writes not yet in redb: a value, or `None` for a deleted key.
type Layer = WriteSet;
type Table<'a> = redb::Table<'a, &'static [u8], &'static [u8]>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// The store's own table: the sequence number of the last checkpointed batch.
const META: &str = "aicore.store";
const CHECKPOINT: &[u8] = b"checkpoint";

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

#[derive(Default)]
struct Layers {
    active: Layer,
    /// Batches made durable by the last sync, oldest first, newer than `active`: their
    /// callers are answered before they are merged into `active` (see [`Syncer::finish`]).
    recent: Vec<Arc<Layer>>,
    frozen: Option<Arc<Layer>>,
}

impl Layers {
    /// The newest layered write of a key: `Some(None)` if it was deleted.
    fn get(&self, table: &str, key: &[u8]) -> Option<Option<Bytes>> {
        self.live_get(table, key)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.get(table, key)))
            .map(|v| v.cloned())
    }

    /// The newest write of a key in the layers not yet frozen.
    fn live_get(&self, table: &str, key: &[u8]) -> Option<Option<&Bytes>> {
        self.live().rev().find_map(|l| l.get(table, key))
    }

    /// The layers not yet frozen, oldest first: the active one, then the recent batches.
    fn live(&self) -> impl DoubleEndedIterator<Item = &Layer> {
        std::iter::once(&self.active).chain(self.recent.iter().map(|r| &**r))
    }

    /// The layers a scan merges over redb, oldest first.
    fn sources(&self) -> impl Iterator<Item = &Layer> {
        self.frozen.as_deref().into_iter().chain(self.live())
    }

    /// Merges the recent batches into the active layer.
    fn settle(&mut self) {
        for r in std::mem::take(&mut self.recent) {
            self.active
                .absorb(Arc::try_unwrap(r).unwrap_or_else(|w| (*w).clone()));
        }
    }
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
    /// The log failed after a record may have reached the disk: the outcome of that
    /// batch is unknown until a restart replays the log, so no further write is taken.
    failed: Option<String>,
}

/// The flusher's state, shared with the writer.
#[derive(Default)]
struct FlushState {
    /// A frozen layer is being committed.
    running: bool,
    failed: Option<String>,
}

struct Flusher {
    state: Mutex<FlushState>,
    done: Condvar,
}

struct FlushJob {
    layer: Arc<Layer>,
    seq: u64,
}

/// Called once a batch is durable and visible to readers (or with the error that
/// leaves its outcome unknown).
pub(crate) type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A batch written to the log, not yet known durable.
struct Pending {
    seq: u64,
    writes: Arc<Layer>,
    done: Vec<Done>,
}

/// What the writer and the log's syncer thread share about syncing.
#[derive(Default)]
struct SyncState {
    /// The segment last written to and the sequence number of its last record.
    target: Option<(Arc<std::fs::File>, u64)>,
    /// Every record up to this sequence number is on disk, and its batch visible.
    durable: u64,
    /// A sync failed: what was written since the last good one may or may not be on disk.
    failed: Option<String>,
    stop: bool,
}

/// The log's syncer: while it waits for one `fdatasync`, the writer thread goes on
/// running the next batches' closures and writing their records (pipelined group
/// commit); the next sync covers every record written meanwhile. After a sync it makes
/// the batches it made durable visible and answers their callers itself, so an
/// acknowledgement does not wait for the writer thread (see [`Syncer::finish`]).
struct Syncer {
    state: Mutex<SyncState>,
    changed: Condvar,
    /// Batches written and not yet durable, oldest first: later batches' closures read
    /// them, readers do not see them until they are durable. Locked before `layers`.
    pending: Mutex<VecDeque<Pending>>,
    layers: Arc<RwLock<Layers>>,
    /// Tests: a pause before each sync, and a sync made to fail.
    #[cfg(test)]
    pause: Duration,
    #[cfg(test)]
    settle_pause: Duration,
    #[cfg(test)]
    fail_next: std::sync::atomic::AtomicBool,
}

impl Syncer {
    fn run(&self) {
        let mut st = lock(&self.state);
        loop {
            let work = st
                .target
                .as_ref()
                .filter(|(_, upto)| *upto > st.durable && st.failed.is_none())
                .cloned();
            let Some((file, upto)) = work else {
                if st.stop {
                    return;
                }
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            drop(st);
            #[cfg(test)]
            std::thread::sleep(self.pause);
            let result = file.sync_data();
            #[cfg(test)]
            let result = match self
                .fail_next
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                true => Err(std::io::Error::other("injected sync failure")),
                false => result,
            };
            match result {
                Ok(()) => {
                    self.finish(upto);
                    st = lock(&self.state);
                    st.durable = st.durable.max(upto);
                }
                Err(e) => {
                    tracing::error!(error = %e, "store: syncing the write-ahead log failed");
                    // Marked failed while holding `pending`, so no batch is queued after
                    // these are answered and then left waiting.
                    let failed: Vec<Pending> = {
                        let mut pending = lock(&self.pending);
                        lock(&self.state).failed = Some(e.to_string());
                        pending.drain(..).collect()
                    };
                    let why =
                        format!("syncing the write-ahead log failed ({e}); restart to recover");
                    for d in failed.into_iter().flat_map(|p| p.done) {
                        d(Err(StoreError::Storage(why.clone())));
                    }
                    st = lock(&self.state);
                }
            }
            self.changed.notify_all();
        }
    }

    /// Makes the pending batches up to `durable` visible and answers their callers.
    /// They become visible as they are (a list readers look through before the active
    /// layer), and are merged into the active layer's ordered map only after their
    /// callers are answered: that merge is a third of the syncer's time (a profile of
    /// the durable Put path), which the acknowledgements no longer wait for.
    fn finish(&self, durable: u64) {
        let mut done = Vec::new();
        {
            let mut pending = lock(&self.pending);
            if pending.front().is_some_and(|p| p.seq <= durable) {
                let mut layers = write(&self.layers);
                while pending.front().is_some_and(|p| p.seq <= durable) {
                    if let Some(p) = pending.pop_front() {
                        layers.recent.push(p.writes);
                        done.extend(p.done);
                    }
                }
            }
        }
        if done.is_empty() {
            return;
        }
        for d in done {
            d(Ok(()));
        }
        #[cfg(test)]
        std::thread::sleep(self.settle_pause);
        write(&self.layers).settle();
    }

    /// Asks for everything up to record `seq` of `file` to be synced.
    fn request(&self, file: &Arc<std::fs::File>, seq: u64) {
        lock(&self.state).target = Some((file.clone(), seq));
        self.changed.notify_all();
    }

    /// Waits until every batch up to `upto` is durable and visible.
    fn wait(&self, upto: u64) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(why) = &st.failed {
                return Err(StoreError::Storage(format!(
                    "syncing the write-ahead log failed ({why}); restart to recover"
                )));
            }
            if st.durable >= upto {
                return Ok(());
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn failed(&self) -> Option<String> {
        lock(&self.state).failed.clone()
    }
}

pub(crate) struct Durable {
    db: Arc<redb::Database>,
    /// Held by the flusher while it commits (tests take it to copy a stable crash image).
    #[cfg_attr(not(test), allow(dead_code))]
    committing: Arc<Mutex<()>>,
    layers: Arc<RwLock<Layers>>,
    log: Mutex<LogState>,
    syncer: Arc<Syncer>,
    flusher: Arc<Flusher>,
    jobs: Mutex<Option<std::sync::mpsc::Sender<FlushJob>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    wal_bytes: u64,
    max_age: Duration,
}

fn wal_paths(path: &Path) -> Vec<PathBuf> {
    let name = path
        .file_name()
        .map_or_else(|| "store".to_string(), |n| n.to_string_lossy().into_owned());
    (0..2)
        .map(|i| path.with_file_name(format!("{name}.wal{i}")))
        .collect()
}

fn write_checkpoint(txn: &redb::WriteTransaction, seq: u64) -> Result<(), StoreError> {
    let mut t = txn.open_table(def(META)).map_err(storage)?;
    t.insert(CHECKPOINT, &seq.to_le_bytes()[..])
        .map_err(storage)?;
    Ok(())
}

fn read_checkpoint(db: &redb::Database) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let t = match txn.open_table(def(META)) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(storage(e)),
    };
    Ok(t.get(CHECKPOINT)
        .map_err(storage)?
        .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(0))
}

/// Applies writes to a redb write transaction, opening each table once.
fn apply<'n>(
    txn: &redb::WriteTransaction,
    writes: impl Iterator<Item = (&'n str, &'n [u8], Option<&'n [u8]>)>,
) -> Result<(), StoreError> {
    let mut open: HashMap<&'n str, Table<'_>> = HashMap::new();
    for (table, key, value) in writes {
        let t = match open.entry(table) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(txn.open_table(def(table)).map_err(storage)?)
            }
        };
        match value {
            Some(v) => t.insert(key, v).map(|_| ()),
            None => t.remove(key).map(|_| ()),
        }
        .map_err(storage)?;
    }
    Ok(())
}

/// A layer's writes, for [`apply`].
fn layer_writes(layer: &Layer) -> impl Iterator<Item = (&str, &[u8], Option<&[u8]>)> {
    layer.iter().map(|(t, k, v)| (t, k, v.map(|v| v.as_ref())))
}

/// Commits `layer` to redb durably with `seq` as the checkpoint.
///
/// With `file` (the database file, opened for its page cache), in three steps: a
/// non-durable commit puts the pages into the page cache; they are written back a chunk
/// at a time ([`write_back`]); an empty durable commit then makes it all durable, its
/// `fsync` finding little left to write. One durable commit would hand the device all of
/// a flush's pages at once, and every log sync meanwhile (a device cache flush) waited
/// behind them: 24–38 ms syncs and 50–60 ms p99 in the payment row at C=128.
/// A crash before the durable commit leaves redb at the previous checkpoint, and the log
/// still holds everything after it.
fn commit_layer(
    db: &redb::Database,
    layer: &Layer,
    seq: u64,
    file: Option<&std::fs::File>,
    before_durable: impl FnOnce(),
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    let staged = file.is_some();
    txn.set_durability(if staged {
        Durability::None
    } else {
        Durability::Immediate
    })
    .map_err(storage)?;
    apply(&txn, layer_writes(layer))?;
    write_checkpoint(&txn, seq)?;
    txn.commit().map_err(storage)?;
    let Some(file) = file else { return Ok(()) };
    if let Err(e) = write_back(file) {
        tracing::debug!(error = %e, "store: paced write-back failed; the durable commit writes all");
    }
    before_durable();
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    txn.commit().map_err(storage)
}

/// Writes the file's dirty pages back to the device a chunk at a time, waiting for each
/// (no device cache flush: the log's syncs get the device between chunks).
fn write_back(file: &std::fs::File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        const CHUNK: u64 = 1 << 20;
        let len = file.metadata()?.len();
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let mut at = 0;
        while at < len {
            let n = CHUNK.min(len - at);
            // SAFETY: a plain syscall on an open descriptor with in-range offsets.
            let r = unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    at as libc::off64_t,
                    n as libc::off64_t,
                    flags,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            at += n;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

impl Durable {
    /// Opens the database and its log, applying the logged batches newer than the last
    /// checkpoint (what a crash left only in the log) in one durable commit.
    pub(crate) fn open(path: &Path, options: &StoreOptions) -> Result<Durable, StoreError> {
        // The file is opened here rather than by redb (`Builder::create` would create it
        // with the umask's mode): private from its creation on.
        let file = crate::wal::open_private(path).map_err(storage)?;
        let db = redb::Builder::new()
            .set_cache_size(options.redb_cache_bytes)
            .create_file(file)
            .map_err(storage)?;
        let checkpointed = read_checkpoint(&db)?;
        let paths = wal_paths(path);
        let mut seq = checkpointed;
        let mut wals = Vec::new();
        if options.wal || paths.iter().any(|p| p.exists()) {
            let mut records = Vec::new();
            for p in &paths {
                let (w, r) = Wal::open(p).map_err(storage)?;
                wals.push(w);
                records.extend(r.into_iter().filter(|(s, _)| *s > checkpointed));
            }
            records.sort_by_key(|(s, _)| *s);
            let contiguous = records
                .iter()
                .enumerate()
                .take_while(|(i, (s, _))| *s == checkpointed + 1 + *i as u64)
                .count();
            records.truncate(contiguous);
            if let Some((last, _)) = records.last() {
                seq = *last;
                let mut txn = db.begin_write().map_err(storage)?;
                txn.set_durability(Durability::Immediate).map_err(storage)?;
                apply(
                    &txn,
                    records.iter().flat_map(|(_, ops)| {
                        ops.iter()
                            .map(|o| (o.table.as_str(), o.key.as_slice(), o.value.as_deref()))
                    }),
                )?;
                write_checkpoint(&txn, seq)?;
                txn.commit().map_err(storage)?;
                tracing::info!(
                    batches = records.len(),
                    "store: applied the write-ahead log's batches newer than the checkpoint"
                );
            }
            if !options.wal {
                wals.clear();
                for p in &paths {
                    if p.exists() {
                        std::fs::remove_file(p).map_err(storage)?;
                    }
                }
            }
        }
        let db = Arc::new(db);
        let layers = Arc::new(RwLock::new(Layers::default()));
        let flusher = Arc::new(Flusher {
            state: Mutex::new(FlushState::default()),
            done: Condvar::new(),
        });
        let committing = Arc::new(Mutex::new(()));
        #[cfg(test)]
        let pause = options.flush_pause;
        #[cfg(test)]
        let stage_pause = options.stage_pause;
        // Everything up to the recovered sequence number is durable already.
        let syncer = Arc::new(Syncer {
            state: Mutex::new(SyncState {
                durable: seq,
                ..SyncState::default()
            }),
            changed: Condvar::new(),
            pending: Mutex::new(VecDeque::new()),
            layers: layers.clone(),
            #[cfg(test)]
            pause: options.sync_pause,
            #[cfg(test)]
            settle_pause: options.settle_pause,
            #[cfg(test)]
            fail_next: Default::default(),
        });
        let (jobs, threads) = if options.wal {
            let (tx, rx) = std::sync::mpsc::channel::<FlushJob>();
            let (db, layers, flusher) = (db.clone(), layers.clone(), flusher.clone());
            let committing = committing.clone();
            // The database file again, for paced write-back; without it (not expected)
            // each flush is one durable commit.
            let file = std::fs::File::open(path)
                .inspect_err(|e| tracing::warn!(error = %e, "store: cannot open the database file for paced write-back"))
                .ok();
            let thread = std::thread::Builder::new()
                .name("aicore-store-flush".into())
                .spawn(move || {
                    crate::sched::background();
                    for job in rx {
                        #[cfg(test)]
                        std::thread::sleep(pause);
                        let result = {
                            let _held = lock(&committing);
                            commit_layer(&db, &job.layer, job.seq, file.as_ref(), || {
                                #[cfg(test)]
                                std::thread::sleep(stage_pause);
                            })
                        };
                        if result.is_ok() {
                            write(&layers).frozen = None;
                        }
                        let mut st = lock(&flusher.state);
                        st.running = false;
                        match result {
                            Ok(()) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "store: flushing to redb failed");
                                st.failed = Some(e.to_string());
                            }
                        }
                        flusher.done.notify_all();
                    }
                })
                .map_err(storage)?;
            let s = syncer.clone();
            let sync_thread = std::thread::Builder::new()
                .name("aicore-store-sync".into())
                .spawn(move || s.run())
                .map_err(storage)?;
            (Some(tx), vec![thread, sync_thread])
        } else {
            (None, Vec::new())
        };
        Ok(Durable {
            db,
            committing,
            layers,
            log: Mutex::new(LogState {
                wals,
                current: 0,
                seq,
                oldest: None,
                busy_since_tick: false,
                failed: None,
            }),
            syncer,
            flusher,
            jobs: Mutex::new(jobs),
            threads: Mutex::new(threads),
            wal_bytes: options.wal_bytes,
            max_age: options.checkpoint_tick * 30,
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
            Some(why) => Err(StoreError::Storage(format!(
                "flushing to redb failed ({why}); restart to recover from the log"
            ))),
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
            f.failed = Some("the flusher thread is gone".into());
            return Err(StoreError::Storage("the flusher thread is gone".into()));
        }
        st.current = 1 - st.current;
        st.wals[st.current].reset(self.wal_bytes * 2);
        st.oldest = None;
        Ok(())
    }

    fn failed(&self, st: &LogState) -> Result<(), StoreError> {
        if let Some(why) = &st.failed {
            return Err(StoreError::Storage(format!(
                "writes stopped after a storage failure ({why}); restart to recover"
            )));
        }
        if let Some(why) = &lock(&self.flusher.state).failed {
            return Err(StoreError::Storage(format!(
                "writes stopped after a failed flush ({why}); restart to recover"
            )));
        }
        match self.syncer.failed() {
            Some(why) => Err(StoreError::Storage(format!(
                "writes stopped after a failed log sync ({why}); restart to recover"
            ))),
            None => Ok(()),
        }
    }

    /// The path without the log: the batch is one durable redb commit.
    fn commit_direct(&self, writes: &WriteSet) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        apply(&txn, layer_writes(writes))?;
        txn.commit().map_err(storage)
    }
}

/// A redb read of one key.
fn redb_get(
    txn: &redb::ReadTransaction,
    table: &str,
    key: &[u8],
) -> Result<Option<Bytes>, StoreError> {
    match open_read_table(txn, table)? {
        Some(t) => table_get(&t, key),
        None => Ok(None),
    }
}

fn table_get(t: &ReadTable, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
    Ok(t.get(key)
        .map_err(storage)?
        .map(|v| Bytes::copy_from_slice(v.value())))
}

/// The rows of redb's table from `start` on, as a scan's base.
fn redb_rows<'t>(
    table: Option<&'t ReadTable>,
    start: &[u8],
) -> Result<Box<dyn Iterator<Item = Result<Row, StoreError>> + 't>, StoreError> {
    Ok(match table {
        Some(t) => Box::new(t.range::<&[u8]>(start..).map_err(storage)?.map(|item| {
            let (k, v) = item.map_err(storage)?;
            Ok((k.value().to_vec(), Bytes::copy_from_slice(v.value())))
        })),
        None => Box::new(std::iter::empty()),
    })
}

fn open_read_table(
    txn: &redb::ReadTransaction,
    table: &str,
) -> Result<Option<ReadTable>, StoreError> {
    match txn.open_table(def(table)) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(storage(e)),
    }
}

impl Backend for Durable {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let txn = {
            let layers = read(&self.layers);
            if let Some(v) = layers.get(table, key) {
                return Ok(v);
            }
            self.db.begin_read().map_err(storage)?
        };
        redb_get(&txn, table, key)
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
        let txn = self.db.begin_read().map_err(storage)?;
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
        let (frozen, txn) = {
            let layers = read(&self.layers);
            (
                layers.frozen.clone(),
                self.db.begin_read().map_err(storage)?,
            )
        };
        Ok(Box::new(LayeredView {
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
        match st.wals[current].write(seq, &body) {
            Ok(()) => {}
            Err(AppendError::Reserve(e)) => return done(Err(storage(e))),
            Err(AppendError::Append(e)) => {
                st.failed = Some(e.to_string());
                return done(Err(storage(e)));
            }
        }
        st.seq = seq;
        {
            let mut pending = lock(&self.syncer.pending);
            if let Some(why) = self.syncer.failed() {
                drop(pending);
                return done(Err(StoreError::Storage(why)));
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
        if let Some(why) = self.syncer.failed() {
            drop(pending);
            return done(Err(StoreError::Storage(why)));
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

    fn checkpoint(&self, idle_only: bool) -> Result<(), StoreError> {
        let mut st = lock(&self.log);
        let busy = std::mem::take(&mut st.busy_since_tick);
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
        lock(&self.syncer.state).stop = true;
        self.syncer.changed.notify_all();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

/// A batch's view: the batches written but not yet durable as of the batch's start
/// (newest first), the live layers (the syncer may move a pending batch into them
/// meanwhile: the same writes, found either way), then the frozen layer and redb as of
/// the batch's start (taken together, a consistent base even if the flusher finishes
/// meanwhile; only the writer thread freezes a layer, and not while a view is held).
/// redb tables are opened once per batch.
struct LayeredView<'a> {
    layers: &'a RwLock<Layers>,
    frozen: Option<Arc<Layer>>,
    /// Oldest first.
    pending: Vec<Arc<Layer>>,
    txn: redb::ReadTransaction,
    tables: RefCell<foldhash::HashMap<&'static str, Option<Rc<ReadTable>>>>,
}

impl LayeredView<'_> {
    fn table(&self, table: &'static str) -> Result<Option<Rc<ReadTable>>, StoreError> {
        if let Some(t) = self.tables.borrow().get(table) {
            return Ok(t.clone());
        }
        let t = open_read_table(&self.txn, table)?.map(Rc::new);
        self.tables.borrow_mut().insert(table, t.clone());
        Ok(t)
    }
}

impl View for LayeredView<'_> {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        if let Some(v) = self.pending.iter().rev().find_map(|p| p.get(table, key)) {
            return Ok(v.cloned());
        }
        // The live layers (a batch pending when the view was made may be in them by now,
        // the same writes); the frozen one as of the view, which matches its redb.
        if let Some(v) = read(self.layers).live_get(table, key) {
            return Ok(v.cloned());
        }
        if let Some(v) = self.frozen.as_ref().and_then(|f| f.get(table, key)) {
            return Ok(v.cloned());
        }
        match self.table(table)? {
            Some(t) => table_get(&t, key),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        table: &'static str,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        over: &[&WriteSet],
    ) -> Result<Vec<Row>, StoreError> {
        let layers = read(self.layers);
        let base = self.table(table)?;
        let sources = self
            .frozen
            .as_deref()
            .into_iter()
            .chain(layers.live())
            .chain(self.pending.iter().map(|p| &**p))
            .chain(over.iter().copied())
            .map(|l| l.range(table, start))
            .collect();
        merged_scan(redb_rows(base.as_deref(), start)?, sources, prefix, limit)
    }
}
