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
mod recovery;
mod reopen;

use crate::writes::{Row, WriteSet, merged_scan, scan_start};
pub(crate) use recovery::Plan;

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
    /// The log failed in a way that leaves a batch's outcome unknown until a restart
    /// replays the log, so no further write is taken.
    failed: Option<StoreError>,
    /// The last batch was refused (the log could not grow or be written: a full disk,
    /// an I/O error); cleared by the next batch written, or by the tick's probe.
    refused: Option<StoreError>,
}

/// The flusher's state, shared with the writer.
#[derive(Default)]
struct FlushState {
    /// A frozen layer is being committed.
    running: bool,
    failed: Option<StoreError>,
}

struct Flusher {
    state: Mutex<FlushState>,
    done: Condvar,
    /// The store is being dropped: a flush being retried gives up.
    stop: std::sync::atomic::AtomicBool,
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
    target: Option<(Arc<dyn StoreFile>, u64)>,
    /// Every record up to this sequence number is on disk, and its batch visible.
    durable: u64,
    /// A sync failed: what was written since the last good one may or may not be on disk.
    failed: Option<StoreError>,
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
    /// `state.durable`, for the writer to stamp on each record without the lock.
    durable_seq: AtomicU64,
    /// Tests: a pause before each sync, and a sync made to fail.
    #[cfg(test)]
    pause: Duration,
    #[cfg(test)]
    settle_pause: Duration,
    #[cfg(test)]
    fail_next: std::sync::atomic::AtomicBool,
    /// How to open the log again after a failed sync (see [`reopen`]).
    reopen: Option<reopen::Reopen>,
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
            let result = sync("wal-record", || file.sync_data());
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
                    // Known durable before any caller hears so: a record written after
                    // an acknowledgement must say that its predecessors were durable.
                    self.durable_seq.fetch_max(upto, Ordering::AcqRel);
                    self.finish(upto);
                    st = lock(&self.state);
                    st.durable = st.durable.max(upto);
                }
                Err(e) => {
                    let err = StoreError::Stopped(Box::new(StoreError::io(
                        "syncing the write-ahead log; the outcome of the writes since the \
                         last sync is unknown until a restart",
                        e,
                    )));
                    tracing::error!(error = %crate::store::chain(&err), "store: syncing the write-ahead log failed");
                    // Marked failed while holding `pending`, so no batch is queued after
                    // these are answered and then left waiting.
                    let failed: Vec<Pending> = {
                        let mut pending = lock(&self.pending);
                        lock(&self.state).failed = Some(err.clone());
                        pending.drain(..).collect()
                    };
                    for d in failed.into_iter().flat_map(|p| p.done) {
                        d(Err(err.clone()));
                    }
                    if let Some(r) = &self.reopen {
                        let durable = lock(&self.state).durable;
                        r.run(self, durable);
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
    fn request(&self, file: &Arc<dyn StoreFile>, seq: u64) {
        lock(&self.state).target = Some((file.clone(), seq));
        self.changed.notify_all();
    }

    /// Waits until every batch up to `upto` is durable and visible.
    fn wait(&self, upto: u64) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.durable >= upto {
                return Ok(());
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn failed(&self) -> Option<StoreError> {
        lock(&self.state).failed.clone()
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
    let mut t = txn.open_table(def(META)).map_err(db_err)?;
    t.insert(CHECKPOINT, &seq.to_le_bytes()[..])
        .map_err(db_err)?;
    Ok(())
}

/// The checkpoint and the log key (created, durably, with a new store).
fn read_meta(database: &redb::Database) -> Result<(u64, u64), StoreError> {
    let get = |t: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>, k: &[u8]| {
        t.get(k)
            .map_err(db_err)
            .map(|v| v.and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes)))
    };
    let txn = database.begin_read().map_err(db_err)?;
    let found = match txn.open_table(def(META)) {
        Ok(t) => (get(&t, CHECKPOINT)?, get(&t, LOG_KEY)?),
        Err(redb::TableError::TableDoesNotExist(_)) => (None, None),
        Err(e) => return Err(db_err(e)),
    };
    drop(txn);
    if let (checkpoint, Some(key)) = found {
        return Ok((checkpoint.unwrap_or(0), key));
    }
    let key = rand::random::<u64>() | 1;
    let mut txn = database.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    {
        let mut t = txn.open_table(def(META)).map_err(db_err)?;
        t.insert(LOG_KEY, &key.to_le_bytes()[..]).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    Ok((found.0.unwrap_or(0), key))
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
                e.insert(txn.open_table(def(table)).map_err(db_err)?)
            }
        };
        match value {
            Some(v) => t.insert(key, v).map(|_| ()),
            None => t.remove(key).map(|_| ()),
        }
        .map_err(db_err)?;
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
/// at a time ([`StoreFile::write_back`]); an empty durable commit then makes it all durable, its
/// `fsync` finding little left to write. One durable commit would hand the device all of
/// a flush's pages at once, and every log sync meanwhile (a device cache flush) waited
/// behind them: 24–38 ms syncs and 50–60 ms p99 in the payment row at C=128.
/// A crash before the durable commit leaves redb at the previous checkpoint, and the log
/// still holds everything after it.
fn commit_layer(
    db: &redb::Database,
    layer: &Layer,
    seq: u64,
    file: Option<&dyn StoreFile>,
    before_durable: impl FnOnce(),
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    let staged = file.is_some();
    txn.set_durability(if staged {
        Durability::None
    } else {
        Durability::Immediate
    })
    .map_err(db_err)?;
    apply(&txn, layer_writes(layer))?;
    write_checkpoint(&txn, seq)?;
    txn.commit().map_err(db_err)?;
    let Some(file) = file else { return Ok(()) };
    if let Err(e) = file.write_back() {
        tracing::debug!(error = %e, "store: paced write-back failed; the durable commit writes all");
    }
    before_durable();
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    txn.commit().map_err(db_err)
}

/// The store's files opened, the log read and recovery planned, nothing applied yet.
pub(crate) struct Opened {
    db: redb::Database,
    file: Arc<dyn StoreFile>,
    wals: Vec<Wal>,
    paths: Vec<PathBuf>,
    /// What to do with the log.
    pub plan: Plan,
}

/// Opens the database file and the log segments (syncing their directory when one was
/// created), reads the checkpoint and the log, and plans recovery (see
/// [`recovery`]); with `repair`, damage in the log is planned around instead of
/// refused.
pub(crate) fn open_files(
    fs: &dyn StoreFs,
    path: &Path,
    options: &StoreOptions,
    repair: bool,
) -> Result<Opened, StoreError> {
    let paths = wal_paths(path);
    let use_log = options.wal || paths.iter().any(|p| fs.exists(p));
    let created = !fs.exists(path) || (use_log && paths.iter().any(|p| !fs.exists(p)));
    let file = fs
        .open_exclusive(path)
        .map_err(|e| StoreError::io("opening the database file", e))?;
    let db = redb::Builder::new()
        .set_cache_size(options.redb_cache_bytes)
        .create_with_backend(RedbFile(file.clone()))
        .map_err(db_err)?;
    let (checkpoint, key) = read_meta(&db)?;
    let mut wals = Vec::new();
    let mut scans = Vec::new();
    if use_log {
        for p in &paths {
            let (w, scan) = Wal::open(fs, p, key)
                .map_err(|e| StoreError::io("reading the write-ahead log", e))?;
            wals.push(w);
            scans.push(scan);
        }
    }
    if created && let Some(dir) = path.parent() {
        // A file whose directory entry is not durable may be gone after a power cut,
        // with every write acknowledged through it.
        sync("dir-create", || fs.sync_dir(dir))
            .map_err(|e| StoreError::io("syncing the store's directory", e))?;
    }
    let plan = recovery::plan(scans, checkpoint, repair)?;
    Ok(Opened {
        db,
        file,
        wals,
        paths,
        plan,
    })
}

impl Opened {
    /// Applies the planned log records over the checkpoint in one durable commit, and
    /// records the new checkpoint (past every number found). Returns the new checkpoint.
    pub(crate) fn recover(&self) -> Result<u64, StoreError> {
        let plan = &self.plan;
        if plan.checkpoint > read_meta(&self.db)?.0 {
            let mut txn = self.db.begin_write().map_err(db_err)?;
            txn.set_durability(Durability::Immediate).map_err(db_err)?;
            apply(
                &txn,
                plan.apply.iter().flat_map(|r| {
                    r.ops
                        .iter()
                        .map(|o| (o.table.as_str(), o.key.as_slice(), o.value.as_deref()))
                }),
            )?;
            write_checkpoint(&txn, plan.checkpoint)?;
            txn.commit().map_err(db_err)?;
        }
        if !plan.apply.is_empty() || !plan.torn.is_empty() {
            tracing::info!(
                applied = plan.apply.len(),
                torn = plan.torn.len(),
                checkpoint = plan.checkpoint,
                "store: applied the write-ahead log's batches newer than the checkpoint; \
                 cut away a crash's torn tail (never acknowledged)"
            );
        }
        if let Some(damage) = &plan.damage {
            tracing::error!(
                %damage,
                lost = ?plan.lost,
                "store: REPAIRED the write-ahead log: acknowledged batches were dropped"
            );
        }
        Ok(plan.checkpoint)
    }
}

/// What `aicore store check` or `aicore store repair` found in a store's files.
#[derive(Debug)]
pub struct CheckReport {
    /// redb's checkpoint before (the last batch flushed into it).
    pub checkpoint: u64,
    /// Logged batches newer than it that opening applies (or, repairing, applied).
    pub to_apply: usize,
    /// Batches cut away as a crash's torn tail (never acknowledged).
    pub torn: Vec<u64>,
    /// Damage that loses acknowledged batches: the store refuses to open until
    /// repaired. Repairing drops the batches `lost` lists.
    pub damage: Option<Corruption>,
    /// Batches the damage makes unusable (dropped by a repair).
    pub lost: Vec<u64>,
    /// Whether this was a repair (the files were changed).
    pub repaired: bool,
}

/// Checks the store at `path` (it must not be open elsewhere): reads the log and plans
/// recovery without changing anything but what opening redb itself repairs. With
/// `repair`, applies what provably precedes any damage and moves the checkpoint past
/// the rest, which is then never read again.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport, StoreError> {
    let options = StoreOptions::default();
    let opened = open_files(&crate::fs::RealFs, path, &options, true)?;
    let checkpoint = read_meta(&opened.db)?.0;
    let plan = &opened.plan;
    let mut report = CheckReport {
        checkpoint,
        to_apply: plan.apply.len(),
        torn: plan.torn.clone(),
        damage: plan.damage.clone(),
        lost: plan.lost.clone(),
        repaired: false,
    };
    if repair {
        opened.recover()?;
        report.repaired = true;
    }
    Ok(report)
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
            for p in &paths {
                if fs.exists(p) {
                    fs.remove(p)
                        .map_err(|e| StoreError::io("removing the write-ahead log", e))?;
                }
            }
        }
        let db = Arc::new(db::DbSlot::new(db, file.clone(), options.redb_cache_bytes));
        let layers = Arc::new(RwLock::new(Layers::default()));
        let flusher = Arc::new(Flusher {
            state: Mutex::new(FlushState::default()),
            done: Condvar::new(),
            stop: Default::default(),
        });
        let committing = Arc::new(Mutex::new(()));
        #[cfg(test)]
        let pause = options.flush_pause;
        #[cfg(test)]
        let stage_pause = options.stage_pause;
        let log = Arc::new(Mutex::new(LogState {
            wals,
            current: 0,
            seq,
            oldest: None,
            busy_since_tick: false,
            failed: None,
            refused: None,
        }));
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
        let syncer = Arc::new(Syncer {
            state: Mutex::new(SyncState {
                durable: seq,
                ..SyncState::default()
            }),
            changed: Condvar::new(),
            pending: Mutex::new(VecDeque::new()),
            layers: layers.clone(),
            durable_seq: AtomicU64::new(seq),
            #[cfg(test)]
            pause: options.sync_pause,
            #[cfg(test)]
            settle_pause: options.settle_pause,
            #[cfg(test)]
            fail_next: Default::default(),
            reopen,
        });
        let (jobs, threads) = if options.wal {
            let (tx, rx) = std::sync::mpsc::channel::<FlushJob>();
            let (db, layers, flusher) = (db.clone(), layers.clone(), flusher.clone());
            let committing = committing.clone();
            // The database file, for paced write-back.
            let file = file.clone();
            let thread = std::thread::Builder::new()
                .name("aicore-store-flush".into())
                .spawn(move || {
                    crate::sched::background();
                    for job in rx {
                        #[cfg(test)]
                        std::thread::sleep(pause);
                        let commit = || {
                            let _held = lock(&committing);
                            let db = db.get()?;
                            commit_layer(&db, &job.layer, job.seq, Some(&*file), || {
                                #[cfg(test)]
                                std::thread::sleep(stage_pause);
                            })
                        };
                        // A failed flush (a full disk, an I/O error) is tried again
                        // after each retry period, on the database opened again (redb
                        // refuses everything after an I/O error); meanwhile writes are
                        // refused and reads keep working from the layers and redb.
                        let mut result = commit();
                        while let Err(e) = result {
                            let e = StoreError::Stopped(Box::new(e));
                            tracing::error!(error = %crate::store::chain(&e), "store: flushing to redb failed; writes are refused until a retry succeeds");
                            lock(&flusher.state).failed = Some(e);
                            flusher.done.notify_all();
                            let _ = db.reopen();
                            std::thread::sleep(retry);
                            if flusher.stop.load(Ordering::Acquire) {
                                return;
                            }
                            result = commit();
                        }
                        write(&layers).frozen = None;
                        let mut st = lock(&flusher.state);
                        if st.failed.take().is_some() {
                            tracing::info!("store: a flush succeeded again; writes resume");
                        }
                        st.running = false;
                        flusher.done.notify_all();
                    }
                })
                .map_err(|e| StoreError::io("starting the store's flusher thread", e))?;
            let s = syncer.clone();
            let sync_thread = std::thread::Builder::new()
                .name("aicore-store-sync".into())
                .spawn(move || s.run())
                .map_err(|e| StoreError::io("starting the store's syncer thread", e))?;
            (Some(tx), vec![thread, sync_thread])
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
        .map_err(db_err)?
        .map(|v| Bytes::copy_from_slice(v.value())))
}

/// The rows of redb's table from `start` on, as a scan's base.
fn redb_rows<'t>(
    table: Option<&'t ReadTable>,
    start: &[u8],
) -> Result<Box<dyn Iterator<Item = Result<Row, StoreError>> + 't>, StoreError> {
    Ok(match table {
        Some(t) => Box::new(t.range::<&[u8]>(start..).map_err(db_err)?.map(|item| {
            let (k, v) = item.map_err(db_err)?;
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
        Err(e) => Err(db_err(e)),
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

/// A batch's view: the batches written but not yet durable as of the batch's start
/// (newest first), the live layers (the syncer may move a pending batch into them
/// meanwhile: the same writes, found either way), then the frozen layer and redb as of
/// the batch's start (taken together, a consistent base even if the flusher finishes
/// meanwhile; only the writer thread freezes a layer, and not while a view is held).
/// redb tables are opened once per batch.
struct LayeredView<'a> {
    /// Held while its transaction is (see [`db::DbSlot::reopen`]).
    _db: Arc<redb::Database>,
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
