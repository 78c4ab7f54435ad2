//! The domains' durable state: one redb file, tables named `<domain>.<table>` holding
//! byte keys and byte values (domains encode values as protobuf), a moka cache for hot
//! reads, and one writer thread that batches concurrent write transactions into a single
//! durable commit (group commit). A caller's write is acknowledged only after the commit
//! holding it has reached the disk, so one fsync serves every write that queued up while
//! the previous one ran. By default a batch is made durable by appending it to the
//! store's write-ahead log ([`crate::wal`]) and committed to redb without an fsync, with a
//! durable redb commit (a checkpoint) now and then; `wal: false` makes every batch a
//! durable redb commit instead.
//!
//! Each write is a closure over a [`Tx`] whose writes are buffered; if the closure fails
//! (or panics) its buffer is dropped and nothing of it is written, so a refused request
//! never half-writes, even though it shares a redb transaction with others. Reads inside
//! a closure see the batch's earlier writes. An in-memory backend with the same semantics
//! serves unit tests. What this module does not do: schemas, indexes or encoding — those
//! belong to each domain.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aicore_proto::{Code, Status};
use bytes::Bytes;
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::wal::{self, AppendError, Wal};

/// Errors of the store itself (not of a domain's logic).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, ...).
    #[error("storage failure: {0}")]
    Storage(String),
    /// The store is closing and takes no more writes.
    #[error("the store is shutting down")]
    Closed,
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match e {
            StoreError::Storage(m) => {
                tracing::error!(error = %m, "storage failure");
                Status::new(Code::Internal, "storage failure")
            }
            StoreError::Closed => Status::new(Code::Unavailable, "the store is shutting down"),
        }
    }
}

fn storage<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most write closures committed together.
    pub max_batch: usize,
    /// Queued writes before writers wait (backpressure).
    pub queue: usize,
    /// moka cache capacity in bytes of cached values.
    pub cache_bytes: u64,
    /// redb's page cache in bytes.
    pub redb_cache_bytes: usize,
    /// Make batches durable through the write-ahead log (`<file>.wal`) and checkpoint
    /// redb now and then; `false`: one durable redb commit per batch.
    pub wal: bool,
    /// Checkpoint once the log holds this many bytes (it is then reused from its start).
    pub wal_bytes: u64,
    /// How often the writer looks for idleness: a tick with no batch since the previous
    /// one checkpoints what the log holds; under load that never idles, a checkpoint is
    /// made at least every 30 ticks.
    pub checkpoint_tick: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 1024,
            queue: 8192,
            cache_bytes: 64 << 20,
            redb_cache_bytes: 256 << 20,
            wal: true,
            wal_bytes: 16 << 20,
            checkpoint_tick: Duration::from_secs(1),
        }
    }
}

type Key = (&'static str, Vec<u8>);

/// A batch's view during one commit: reads see what earlier closures of the batch wrote.
trait RawTx {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError>;
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError>;
    fn put(&mut self, table: &'static str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, table: &'static str, key: &[u8]) -> Result<(), StoreError>;
}

trait Backend: Send + Sync + 'static {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError>;
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError>;
    /// Runs `body` inside one transaction and commits it durably if `body` says it wrote
    /// anything (a batch of refused or read-only closures costs no fsync).
    fn batch(
        &self,
        body: &mut dyn FnMut(&mut dyn RawTx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError>;
    /// Makes everything committed so far durable in the database itself (nothing to do
    /// for backends without a log). `idle_only`: only if no batch ran since the last call.
    fn checkpoint(&self, idle_only: bool) -> Result<(), StoreError> {
        let _ = idle_only;
        Ok(())
    }
}

// ---------------------------------------------------------------- redb backend

struct Redb {
    db: redb::Database,
    /// Only the writer thread takes it (and `open`).
    log: Mutex<LogState>,
    wal_bytes: u64,
    max_age: Duration,
}

/// The write-ahead log's bookkeeping.
struct LogState {
    /// `None` when batches are durable redb commits.
    wal: Option<Wal>,
    /// Sequence number of the last committed batch (logged or checkpointed).
    seq: u64,
    last_checkpoint: Instant,
    /// A batch ran since the last idle check.
    active: bool,
    /// Set when the log or redb failed after a record may have reached the disk: the
    /// outcome of that batch is unknown until a restart replays the log, so no further
    /// write is taken.
    failed: Option<String>,
}

/// The store's own table: the sequence number of the last checkpointed batch.
const META: &str = "aicore.store";
const CHECKPOINT: &[u8] = b"checkpoint";

fn def(table: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(table)
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

impl Redb {
    /// Opens the database and its log, applying the logged batches newer than the last
    /// checkpoint (what a crash left only in the log) in one durable commit.
    fn open(path: &Path, options: &StoreOptions) -> Result<Redb, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(options.redb_cache_bytes)
            .create(path)
            .map_err(storage)?;
        let mut seq = read_checkpoint(&db)?;
        let wal_path = path.with_extension(match path.extension() {
            Some(e) => format!("{}.wal", e.to_string_lossy()),
            None => "wal".into(),
        });
        let mut wal = None;
        if options.wal || wal_path.exists() {
            let (log, records) = Wal::open(&wal_path, seq).map_err(storage)?;
            if !records.is_empty() {
                let batches = records.len();
                let mut txn = db.begin_write().map_err(storage)?;
                txn.set_durability(Durability::Immediate).map_err(storage)?;
                for (s, ops) in records {
                    for op in ops {
                        let mut t = txn.open_table(def(&op.table)).map_err(storage)?;
                        match op.value {
                            Some(v) => t.insert(&op.key[..], &v[..]).map(|_| ()),
                            None => t.remove(&op.key[..]).map(|_| ()),
                        }
                        .map_err(storage)?;
                    }
                    seq = s;
                }
                write_checkpoint(&txn, seq)?;
                txn.commit().map_err(storage)?;
                tracing::info!(
                    batches,
                    "store: applied the write-ahead log's newer batches"
                );
            }
            if options.wal {
                wal = Some(log);
            } else {
                drop(log);
                std::fs::remove_file(&wal_path).map_err(storage)?;
            }
        }
        Ok(Redb {
            db,
            log: Mutex::new(LogState {
                wal,
                seq,
                last_checkpoint: Instant::now(),
                active: false,
                failed: None,
            }),
            wal_bytes: options.wal_bytes,
            max_age: options.checkpoint_tick * 30,
        })
    }

    /// A durable commit recording `seq` as checkpointed, after which the log restarts.
    fn commit_checkpoint(
        &self,
        st: &mut LogState,
        mut txn: redb::WriteTransaction,
        seq: u64,
    ) -> Result<(), StoreError> {
        let done = (|| {
            if st.wal.is_some() {
                write_checkpoint(&txn, seq)?;
            }
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            txn.commit().map_err(storage)
        })();
        match done {
            Ok(()) => {
                st.seq = seq;
                st.last_checkpoint = Instant::now();
                if let Some(w) = st.wal.as_mut() {
                    w.reset();
                }
                Ok(())
            }
            Err(e) if st.wal.as_ref().is_some_and(|w| w.pending() > 0) => {
                // Logged batches are visible but redb could not make them durable; a
                // restart replays them from the log.
                st.failed = Some(e.to_string());
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

fn scan_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    from: &[u8],
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
    let start = if from > prefix { from } else { prefix };
    let mut out = Vec::new();
    for item in t.range::<&[u8]>(start..).map_err(storage)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.map_err(storage)?;
        let k = k.value();
        if !k.starts_with(prefix) {
            break;
        }
        out.push((k.to_vec(), Bytes::copy_from_slice(v.value())));
    }
    Ok(out)
}

impl Backend for Redb {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = match txn.open_table(def(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        Ok(t.get(key)
            .map_err(storage)?
            .map(|v| Bytes::copy_from_slice(v.value())))
    }

    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        match txn.open_table(def(table)) {
            Ok(t) => scan_table(&t, from, prefix, limit),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(storage(e)),
        }
    }

    fn batch(
        &self,
        body: &mut dyn FnMut(&mut dyn RawTx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut st = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &st.failed {
            return Err(StoreError::Storage(format!(
                "writes stopped after a storage failure ({why}); restart to recover"
            )));
        }
        let mut txn = self.db.begin_write().map_err(storage)?;
        let mut raw = RedbTx {
            txn: &txn,
            tables: RefCell::new(HashMap::new()),
            log: st.wal.as_ref().map(|_| Vec::new()),
        };
        let outcome = body(&mut raw);
        let record = raw.log.take();
        // Tables must be closed before the transaction commits.
        drop(raw);
        match outcome {
            Ok(true) => {}
            Ok(false) => return txn.abort().map_err(storage),
            Err(e) => {
                let _ = txn.abort();
                return Err(e);
            }
        }
        st.active = true;
        let seq = st.seq + 1;
        let (Some(record), Some(w)) = (record, st.wal.as_ref()) else {
            return self.commit_checkpoint(&mut st, txn, seq);
        };
        if w.pending() + record.len() as u64 > self.wal_bytes
            || st.last_checkpoint.elapsed() >= self.max_age
        {
            return self.commit_checkpoint(&mut st, txn, seq);
        }
        txn.set_durability(Durability::None).map_err(storage)?;
        let appended = match st.wal.as_mut() {
            Some(w) => w.append(seq, &record),
            None => return self.commit_checkpoint(&mut st, txn, seq),
        };
        match appended {
            Ok(()) => {}
            Err(AppendError::Reserve(e)) => {
                let _ = txn.abort();
                return Err(storage(e));
            }
            Err(AppendError::Append(e)) => {
                let _ = txn.abort();
                st.failed = Some(e.to_string());
                return Err(storage(e));
            }
        }
        if let Err(e) = txn.commit() {
            st.failed = Some(e.to_string());
            return Err(storage(e));
        }
        st.seq = seq;
        Ok(())
    }

    fn checkpoint(&self, idle_only: bool) -> Result<(), StoreError> {
        let mut st = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let active = std::mem::take(&mut st.active);
        let pending = st.wal.as_ref().is_some_and(|w| w.pending() > 0);
        if (idle_only && active) || !pending || st.failed.is_some() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(storage)?;
        let seq = st.seq;
        self.commit_checkpoint(&mut st, txn, seq)
    }
}

/// A batch's redb transaction, keeping each table open for the whole batch (opening a
/// table costs a lookup in redb's table tree; a batch touches the same few tables over
/// and over).
struct RedbTx<'a> {
    txn: &'a redb::WriteTransaction,
    tables: RefCell<HashMap<&'static str, RedbTable<'a>>>,
    /// The batch's log record being built (when the write-ahead log is on).
    log: Option<Vec<u8>>,
}

type RedbTable<'a> = redb::Table<'a, &'static [u8], &'static [u8]>;

impl<'a> RedbTx<'a> {
    fn with_table<R>(
        &self,
        table: &'static str,
        f: impl FnOnce(&mut RedbTable<'a>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut tables = self.tables.borrow_mut();
        let t = match tables.entry(table) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(self.txn.open_table(def(table)).map_err(storage)?)
            }
        };
        f(t)
    }
}

impl RawTx for RedbTx<'_> {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.with_table(table, |t| {
            Ok(t.get(key)
                .map_err(storage)?
                .map(|v| Bytes::copy_from_slice(v.value())))
        })
    }
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        self.with_table(table, |t| scan_table(t, from, prefix, limit))
    }
    fn put(&mut self, table: &'static str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if let Some(log) = self.log.as_mut() {
            wal::encode_op(log, table, key, Some(value));
        }
        self.with_table(table, |t| {
            t.insert(key, value).map_err(storage)?;
            Ok(())
        })
    }
    fn delete(&mut self, table: &'static str, key: &[u8]) -> Result<(), StoreError> {
        if let Some(log) = self.log.as_mut() {
            wal::encode_op(log, table, key, None);
        }
        self.with_table(table, |t| {
            t.remove(key).map_err(storage)?;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------- memory backend

type Tables = HashMap<&'static str, BTreeMap<Vec<u8>, Bytes>>;

#[derive(Default)]
struct Memory {
    tables: RwLock<Tables>,
}

fn scan_map(
    t: Option<&BTreeMap<Vec<u8>, Bytes>>,
    from: &[u8],
    prefix: &[u8],
    limit: usize,
) -> Vec<(Vec<u8>, Bytes)> {
    let Some(t) = t else { return Vec::new() };
    let start = if from > prefix { from } else { prefix };
    t.range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Backend for Memory {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let t = self.tables.read().map_err(storage)?;
        Ok(t.get(table).and_then(|t| t.get(key)).cloned())
    }
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        let t = self.tables.read().map_err(storage)?;
        Ok(scan_map(t.get(table), from, prefix, limit))
    }
    fn batch(
        &self,
        body: &mut dyn FnMut(&mut dyn RawTx) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        // Work on a copy of the touched tables only at commit time: closures already
        // buffer their writes, so applying them under the write lock is all-or-nothing.
        let mut guard = self.tables.write().map_err(storage)?;
        let mut staged = MemTx {
            base: &guard,
            writes: BTreeMap::new(),
        };
        body(&mut staged)?;
        let writes = std::mem::take(&mut staged.writes);
        for ((table, key), value) in writes {
            let t = guard.entry(table).or_default();
            match value {
                Some(v) => {
                    t.insert(key, v);
                }
                None => {
                    t.remove(&key);
                }
            }
        }
        Ok(())
    }
}

struct MemTx<'a> {
    base: &'a Tables,
    writes: BTreeMap<Key, Option<Bytes>>,
}

impl RawTx for MemTx<'_> {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        if let Some(v) = self.writes.get(&(table, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.base.get(table).and_then(|t| t.get(key)).cloned())
    }
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        let base = scan_map(
            self.base.get(table),
            from,
            prefix,
            limit.saturating_add(self.writes.len()),
        );
        Ok(merge(base, &self.writes, table, from, prefix, limit))
    }
    fn put(&mut self, table: &'static str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writes
            .insert((table, key.to_vec()), Some(Bytes::copy_from_slice(value)));
        Ok(())
    }
    fn delete(&mut self, table: &'static str, key: &[u8]) -> Result<(), StoreError> {
        self.writes.insert((table, key.to_vec()), None);
        Ok(())
    }
}

/// Merges buffered writes over a base scan (which was asked for `limit` + number of
/// buffered writes rows, enough to cover every buffered delete).
fn merge(
    base: Vec<(Vec<u8>, Bytes)>,
    writes: &BTreeMap<Key, Option<Bytes>>,
    table: &'static str,
    from: &[u8],
    prefix: &[u8],
    limit: usize,
) -> Vec<(Vec<u8>, Bytes)> {
    let mut rows: BTreeMap<Vec<u8>, Bytes> = base.into_iter().collect();
    let start = if from > prefix { from } else { prefix };
    for ((t, k), v) in writes.range((Bound::Included((table, start.to_vec())), Bound::Unbounded)) {
        if *t != table || !k.starts_with(prefix) {
            break;
        }
        match v {
            Some(v) => rows.insert(k.clone(), v.clone()),
            None => rows.remove(k),
        };
    }
    rows.into_iter().take(limit).collect()
}

// ---------------------------------------------------------------- Tx

/// A write transaction as a domain sees it: reads see committed data plus this batch's
/// earlier writes plus this closure's own writes; writes are buffered until the closure
/// returns `Ok`.
pub struct Tx<'a> {
    raw: &'a dyn RawTx,
    writes: BTreeMap<Key, Option<Bytes>>,
}

impl Tx<'_> {
    /// Reads a value.
    pub fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, Status> {
        if let Some(v) = self.writes.get(&(table, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.raw.get(table, key)?)
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
    ) -> Result<Vec<(Vec<u8>, Bytes)>, Status> {
        let base = self
            .raw
            .scan(table, from, prefix, limit.saturating_add(self.writes.len()))?;
        Ok(merge(base, &self.writes, table, from, prefix, limit))
    }

    /// Writes a value (visible to later reads of this closure, durable at commit).
    pub fn put(&mut self, table: &'static str, key: &[u8], value: impl Into<Bytes>) {
        self.writes
            .insert((table, key.to_vec()), Some(value.into()));
    }

    /// Encodes and writes a protobuf value.
    pub fn put_msg<M: prost::Message>(&mut self, table: &'static str, key: &[u8], m: &M) {
        self.put(table, key, m.encode_to_vec());
    }

    /// Deletes a key.
    pub fn delete(&mut self, table: &'static str, key: &[u8]) {
        self.writes.insert((table, key.to_vec()), None);
    }

    /// Queues an event for JetStream in this transaction: it is published (by the outbox
    /// relay) if and only if this closure's writes commit, so state and events never
    /// disagree. `subject` is e.g. `evt.world.changed`.
    pub fn emit(&mut self, subject: &str, payload: impl Into<Bytes>) -> Result<(), Status> {
        self.emit_with_headers(subject, Vec::new(), payload)
    }

    /// Like [`Tx::emit`], with message headers (name, value).
    pub fn emit_with_headers(
        &mut self,
        subject: &str,
        headers: Vec<(String, String)>,
        payload: impl Into<Bytes>,
    ) -> Result<(), Status> {
        let mut meta = self
            .get_msg::<OutboxMeta>(OUTBOX_META, b"meta")?
            .unwrap_or_default();
        if meta.epoch == 0 {
            meta.epoch = rand::random::<u64>() | 1;
        }
        let seq = meta.next_seq.max(1);
        meta.next_seq = seq + 1;
        self.put_msg(OUTBOX_META, b"meta", &meta);
        let event = OutboxEvent {
            seq,
            msg_id: format!("{:016x}-{seq}", meta.epoch),
            subject: subject.to_string(),
            payload: payload.into().to_vec(),
            header_names: headers.iter().map(|h| h.0.clone()).collect(),
            header_values: headers.into_iter().map(|h| h.1).collect(),
        };
        self.put_msg(OUTBOX, &seq.to_be_bytes(), &event);
        Ok(())
    }
}

/// The outbox table: events waiting for the relay, keyed by big-endian sequence.
pub const OUTBOX: &str = "outbox.events";
/// The outbox's counters.
const OUTBOX_META: &str = "outbox.meta";

/// Sequence counter and the store's random epoch, which makes message ids unique even if
/// a data directory is recreated while JetStream's de-duplication window remembers ids.
#[derive(Clone, PartialEq, prost::Message)]
struct OutboxMeta {
    #[prost(uint64, tag = "1")]
    next_seq: u64,
    #[prost(uint64, tag = "2")]
    epoch: u64,
}

/// One event waiting in the outbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxEvent {
    /// Its position; events are relayed in this order.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The `Nats-Msg-Id` JetStream de-duplicates on.
    #[prost(string, tag = "2")]
    pub msg_id: String,
    /// Where it is published.
    #[prost(string, tag = "3")]
    pub subject: String,
    /// The message body.
    #[prost(bytes = "vec", tag = "4")]
    pub payload: Vec<u8>,
    /// Header names, parallel to `header_values`.
    #[prost(string, repeated, tag = "5")]
    pub header_names: Vec<String>,
    /// Header values.
    #[prost(string, repeated, tag = "6")]
    pub header_values: Vec<String>,
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

/// What readers and the writer thread share. The writer holds only this (not the
/// sender), so dropping every [`Store`] closes the channel and ends the thread.
struct Inner {
    backend: Arc<dyn Backend>,
    cache: moka::sync::Cache<Key, Option<Bytes>>,
    generation: AtomicU64,
    /// Woken after every commit that queued outbox events.
    outbox: tokio::sync::Notify,
    /// Durable commits made.
    commits: AtomicU64,
    /// Write closures run (committed or refused).
    writes: AtomicU64,
}

/// Counters of the store's writer, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable commits made.
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
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(storage)?;
        }
        let db = Redb::open(path, &options)?;
        Ok(Self::start(Arc::new(db), options))
    }

    /// A store in memory, for unit tests (same semantics, nothing durable).
    pub fn in_memory() -> Store {
        Self::start(Arc::new(Memory::default()), StoreOptions::default())
    }

    fn start(backend: Arc<dyn Backend>, options: StoreOptions) -> Store {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let cache = moka::sync::Cache::builder()
            .weigher(|k: &Key, v: &Option<Bytes>| {
                (k.1.len() + v.as_ref().map_or(0, |v| v.len()) + 32).min(u32::MAX as usize) as u32
            })
            .max_capacity(options.cache_bytes)
            .build();
        let inner = Arc::new(Inner {
            backend,
            cache,
            generation: AtomicU64::new(0),
            outbox: tokio::sync::Notify::new(),
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
        // The generation check closes the race where a read of the old value finishes
        // after a commit's invalidation: such an entry is removed again.
        let before = self.inner.generation.load(Ordering::SeqCst);
        let v = self.inner.backend.get(table, key)?;
        self.inner.cache.insert(k.clone(), v.clone());
        if self.inner.generation.load(Ordering::SeqCst) != before {
            self.inner.cache.invalidate(&k);
        }
        Ok(v)
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
    ) -> Result<Vec<(Vec<u8>, Bytes)>, Status> {
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
                    tx.writes.clear();
                    Box::new(move |_| {
                        let _ = done.send(Err(status));
                    })
                }
                Err(_) => {
                    tx.writes.clear();
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

    /// The writer's counters so far.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            writes: self.inner.writes.load(Ordering::Relaxed),
        }
    }

    /// Waits until a commit queues outbox events (returns at once if one did since the
    /// last call). For the outbox relay.
    pub async fn outbox_signal(&self) {
        self.inner.outbox.notified().await;
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
        match first {
            Msg::Write(j) => jobs.push(j),
            Msg::Tick => tick = true,
            Msg::Close(done) => closing = Some(done),
        }
        while closing.is_none() && jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Write(j)) => jobs.push(j),
                Ok(Msg::Tick) => tick = true,
                Ok(Msg::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if !jobs.is_empty() {
            commit_batch(&inner, jobs);
        } else if tick && let Err(e) = inner.backend.checkpoint(true) {
            tracing::error!(error = %e, "store checkpoint failed");
        }
    }
    rx.close();
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

fn commit_batch(inner: &Inner, jobs: Vec<Job>) {
    let mut jobs: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
    let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
    let mut touched: Vec<Key> = Vec::new();
    let result = inner.backend.batch(&mut |raw: &mut dyn RawTx| {
        for job in jobs.iter_mut() {
            let Some(job) = job.take() else { continue };
            let mut tx = Tx {
                raw: &*raw,
                writes: BTreeMap::new(),
            };
            completions.push(job(&mut tx));
            let writes = std::mem::take(&mut tx.writes);
            for ((table, key), value) in writes {
                match &value {
                    Some(v) => raw.put(table, &key, v)?,
                    None => raw.delete(table, &key)?,
                }
                touched.push((table, key));
            }
        }
        Ok(!touched.is_empty())
    });
    inner
        .writes
        .fetch_add(completions.len() as u64, Ordering::Relaxed);
    if result.is_ok() && !touched.is_empty() {
        inner.commits.fetch_add(1, Ordering::Relaxed);
        inner.generation.fetch_add(1, Ordering::SeqCst);
        let mut events = false;
        for k in &touched {
            events |= k.0 == OUTBOX;
            inner.cache.invalidate(k);
        }
        if events {
            inner.outbox.notify_one();
        }
    }
    let shared = result.map_err(|e| e.to_string());
    for c in completions {
        c(shared.clone().map_err(StoreError::Storage));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        if with_log {
            std::fs::copy(from.join("s.redb.wal"), to.join("s.redb.wal")).unwrap();
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
    async fn the_log_is_checkpointed_when_full_and_when_idle() {
        // Full: 200 writes of ~200 bytes through a 4 KiB log restart it many times; its
        // file stays one chunk and everything is there after a close and reopen.
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
        for round in 0..20u32 {
            write_keys(&s, 200).await;
            let _ = round;
        }
        let wal_len = std::fs::metadata(dir.path().join("s.redb.wal"))
            .unwrap()
            .len();
        assert_eq!(wal_len, 1 << 20);
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

    #[tokio::test]
    async fn without_the_log_every_batch_is_a_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            wal: false,
            ..no_checkpoints()
        };
        let s = Store::open(&dir.path().join("s.redb"), opts.clone()).unwrap();
        write_keys(&s, 100).await;
        assert!(!dir.path().join("s.redb.wal").exists());
        let bare = tempfile::tempdir().unwrap();
        crash_image(dir.path(), bare.path(), false);
        let r = Store::open(&bare.path().join("s.redb"), opts).unwrap();
        expected_keys(&r, 100).unwrap();
    }

    #[tokio::test]
    async fn events_are_queued_only_with_their_commit_in_order() {
        both(async |s: Store| {
            let r: Result<(), Status> = s
                .write(|tx| {
                    tx.emit("evt.test.a", vec![1])?;
                    Err(Status::conflict("refused"))
                })
                .await;
            assert!(r.is_err());
            assert!(s.scan(OUTBOX, b"", b"", 10).unwrap().is_empty());
            for i in 0..3u8 {
                s.write(move |tx| {
                    tx.put(T, &[i], vec![i]);
                    tx.emit("evt.test.b", vec![i])
                })
                .await
                .unwrap();
            }
            // The relay is signalled (the permit is stored even though nobody waited).
            tokio::time::timeout(std::time::Duration::from_secs(5), s.outbox_signal())
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
