//! After a failed log sync: the log opened again from disk, and writes resumed.
//!
//! Once an `fdatasync` has failed, what the process holds in memory cannot be taken to
//! match the disk: Linux may have dropped the pages that sync should have written and
//! marked them clean, so a later sync "succeeds" without them (fsyncgate). The batches
//! written since the last good sync were answered with an error (their outcome is
//! unknown); everything acknowledged before it is on disk, in the log or in redb.
//!
//! So the syncer thread, after failing those batches, recovers the store as a restart
//! would, in place, and writes are refused (Unavailable) until it has:
//!
//! 1. it waits for a running flush into redb to end, and asks the disk whether it answers
//!    again (a sync of the current log segment); until it does, nothing is torn down and
//!    reads go on from the memory layers and redb;
//! 2. holding the writer out (the log's lock) and readers (the layers' write lock), it
//!    drops the log segments and redb, opens redb again and reads both segments from
//!    disk, and plans recovery as opening the store does ([`super::recovery`]);
//! 3. every batch up to the last good sync must be there (an acknowledged batch missing
//!    is corruption: writes stay stopped and the error says so); the batches after it,
//!    none of them acknowledged, are dropped — never applied, whatever reading the file
//!    back shows — so readers never see a write no caller heard was durable;
//! 4. the acknowledged batches newer than redb's checkpoint are applied in one durable
//!    commit that also moves the checkpoint past every number found or written (a
//!    dropped number is never read or used again), the memory layers are emptied (redb
//!    now holds what they held) and the log starts a new epoch in its first segment.
//!
//! A step that fails (the disk still failing) is tried again every retry period.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redb::Durability;

use super::{
    Flusher, Layers, LogState, Plan, Syncer, apply, db, lock, read_meta, recovery, write,
    write_checkpoint,
};
use crate::fs::{StoreFs, sync};
use crate::store::{Corruption, StoreError, db_err};
use crate::wal::{Scan, Wal};

/// What the syncer needs to open the log again.
pub(super) struct Reopen {
    pub fs: Arc<dyn StoreFs>,
    pub paths: Vec<PathBuf>,
    pub db: Arc<db::DbSlot>,
    pub log: Arc<Mutex<LogState>>,
    pub flusher: Arc<Flusher>,
    pub layers: Arc<RwLock<Layers>>,
    pub retry: Duration,
}

/// Why an attempt did not end the stop.
enum Failed {
    /// The disk does not answer yet: try again later.
    Again(StoreError),
    /// An acknowledged batch is not on disk: writes stay stopped.
    Lost(StoreError),
}

impl Reopen {
    /// Called by the syncer after a failed sync whose last good sync made every batch up
    /// to `durable` durable: recovers (trying again every retry period) and resumes
    /// writes, unless the store is dropped first or an acknowledged batch is lost.
    pub(super) fn run(&self, syncer: &Syncer, durable: u64) {
        let mut logged = false;
        loop {
            if !self.wait(syncer) {
                return;
            }
            match self.attempt(syncer, durable) {
                Ok(seq) => {
                    tracing::info!(
                        checkpoint = seq,
                        "store: the write-ahead log was opened again from disk after a failed \
                         sync; writes resume"
                    );
                    return;
                }
                Err(Failed::Lost(e)) => {
                    tracing::error!(error = %crate::store::chain(&e), "store: after a failed log sync, an acknowledged write is not on disk; writes stay stopped (run `aicore store check`)");
                    lock(&syncer.state).failed = Some(StoreError::Stopped(Box::new(e)));
                    return;
                }
                Err(Failed::Again(e)) => {
                    if !logged {
                        tracing::warn!(error = %crate::store::chain(&e), "store: the log cannot be opened again yet; writes stay refused, trying again");
                        logged = true;
                    }
                }
            }
            let st = lock(&syncer.state);
            if st.stop {
                return;
            }
            drop(syncer.changed.wait_timeout(st, self.retry));
        }
    }

    /// Waits for a running flush to end; false once the store is being dropped.
    fn wait(&self, syncer: &Syncer) -> bool {
        let mut st = lock(&self.flusher.state);
        while st.running {
            if self.flusher.stop.load(Ordering::Acquire) || lock(&syncer.state).stop {
                return false;
            }
            st = self
                .flusher
                .done
                .wait_timeout(st, self.retry)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        !lock(&syncer.state).stop
    }

    /// One try; the new last sequence number on success.
    fn attempt(&self, syncer: &Syncer, durable: u64) -> Result<u64, Failed> {
        let again = |what, e| Failed::Again(StoreError::io(what, e));
        let mut st = lock(&self.log);
        if let Some(w) = st.wals.get(st.current) {
            // Not a durability sync: whether the disk answers, before anything is
            // dropped.
            sync("reopen-probe", || w.file().sync_data())
                .map_err(|e| again("syncing the write-ahead log again", e))?;
        }
        let mut layers = write(&self.layers);
        lock(&syncer.state).target = None;
        self.db.reopen().map_err(Failed::Again)?;
        let database = self.db.get().map_err(Failed::Again)?;
        let (checkpoint, key) = read_meta(&database).map_err(Failed::Again)?;
        let (wals, scans) = self.read_log(key)?;
        let mut plan =
            recovery::plan(scans, checkpoint, false).map_err(|c| Failed::Lost(c.into()))?;
        self.check_reached(&plan, checkpoint, durable)?;
        let dropped = plan.apply.iter().filter(|r| r.seq > durable).count();
        plan.apply.retain(|r| r.seq <= durable);
        // Past every number found in the log or handed out by the writer.
        let seq = plan.checkpoint.max(st.seq).max(durable);
        commit(&database, &plan, seq).map_err(Failed::Again)?;
        tracing::info!(
            applied = plan.apply.len(),
            dropped,
            "store: applied the acknowledged batches newer than the checkpoint; dropped the \
             unacknowledged ones written since the last good sync"
        );
        *layers = Layers::default();
        st.wals = wals;
        st.current = 0;
        st.seq = seq;
        st.oldest = None;
        st.refused = None;
        st.failed = None;
        lock(&self.flusher.state).failed = None;
        {
            let mut s = lock(&syncer.state);
            s.durable = seq;
            s.failed = None;
        }
        syncer.durable_seq.fetch_max(seq, Ordering::AcqRel);
        drop(layers);
        drop(st);
        syncer.changed.notify_all();
        Ok(seq)
    }

    /// Both log segments read again from disk (`key`: the log's checksum key): the
    /// segments, and what was found in them.
    fn read_log(&self, key: u64) -> Result<(Vec<Wal>, Vec<Scan>), Failed> {
        let again = |what, e| Failed::Again(StoreError::io(what, e));
        let mut wals = Vec::new();
        let mut scans = Vec::new();
        for p in &self.paths {
            let (w, scan) = Wal::open(&*self.fs, p, key)
                .map_err(|e| again("reading the write-ahead log", e))?;
            wals.push(w);
            scans.push(scan);
        }
        Ok((wals, scans))
    }

    /// Every batch up to `durable` (the last good sync) is in `plan` or in redb (at
    /// `checkpoint`); otherwise an acknowledged batch is lost.
    fn check_reached(&self, plan: &Plan, checkpoint: u64, durable: u64) -> Result<(), Failed> {
        let reached = plan
            .apply
            .iter()
            .map(|r| r.seq)
            .take_while(|s| *s <= durable)
            .last()
            .unwrap_or(checkpoint);
        if reached < durable {
            return Err(Failed::Lost(
                Corruption {
                    file: self.paths[0].clone(),
                    offset: None,
                    what: format!(
                        "batches up to {durable} were synced and acknowledged, but reading the \
                         log back after a failed sync finds them only up to {reached}"
                    ),
                }
                .into(),
            ));
        }
        Ok(())
    }
}

/// Applies the batches of `plan` to `database` and moves its checkpoint to `seq`, in one
/// durable commit.
fn commit(database: &redb::Database, plan: &Plan, seq: u64) -> Result<(), StoreError> {
    let mut txn = database.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    apply(
        &txn,
        plan.apply.iter().flat_map(|r| {
            r.ops
                .iter()
                .map(|o| (o.table.as_str(), o.key.as_slice(), o.value.as_deref()))
        }),
    )?;
    write_checkpoint(&txn, seq)?;
    txn.commit().map_err(db_err)
}
