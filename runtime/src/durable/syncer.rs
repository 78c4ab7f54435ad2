//! The log's syncer thread: one `fdatasync` for every record written since the previous
//! one, then the batches it made durable visible and their callers answered.

use super::*;

/// Called once a batch is durable and visible to readers (or with the error that
/// leaves its outcome unknown).
pub(crate) type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A batch written to the log, not yet known durable.
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) writes: Arc<Layer>,
    pub(super) done: Vec<Done>,
}

/// What the writer and the log's syncer thread share about syncing.
#[derive(Default)]
pub(super) struct SyncState {
    /// The segment last written to and the sequence number of its last record.
    pub(super) target: Option<(Arc<dyn StoreFile>, u64)>,
    /// Every record up to this sequence number is on disk, and its batch visible.
    pub(super) durable: u64,
    /// A sync failed: what was written since the last good one may or may not be on disk.
    pub(super) failed: Option<StoreError>,
    pub(super) stop: bool,
}

/// The log's syncer: while it waits for one `fdatasync`, the writer thread goes on
/// running the next batches' closures and writing their records (pipelined group
/// commit); the next sync covers every record written meanwhile. After a sync it makes
/// the batches it made durable visible and answers their callers itself, so an
/// acknowledgement does not wait for the writer thread (see [`Syncer::finish`]).
pub(super) struct Syncer {
    pub(super) state: Mutex<SyncState>,
    pub(super) changed: Condvar,
    /// Batches written and not yet durable, oldest first: later batches' closures read
    /// them, readers do not see them until they are durable. Locked before `layers`.
    pub(super) pending: Mutex<VecDeque<Pending>>,
    pub(super) layers: Arc<RwLock<Layers>>,
    /// `state.durable`, for the writer to stamp on each record without the lock.
    pub(super) durable_seq: AtomicU64,
    /// Tests: a pause before each sync, and a sync made to fail.
    #[cfg(test)]
    pub(super) pause: Duration,
    #[cfg(test)]
    pub(super) settle_pause: Duration,
    #[cfg(test)]
    pub(super) fail_next: std::sync::atomic::AtomicBool,
    /// How to open the log again after a failed sync (see [`reopen`]).
    pub(super) reopen: Option<reopen::Reopen>,
}

impl Syncer {
    /// A syncer for a log whose batches up to `seq` are durable already.
    pub(super) fn new(
        seq: u64,
        layers: Arc<RwLock<Layers>>,
        reopen: Option<reopen::Reopen>,
        #[cfg_attr(not(test), allow(unused_variables))] options: &StoreOptions,
    ) -> Syncer {
        Syncer {
            state: Mutex::new(SyncState {
                durable: seq,
                ..SyncState::default()
            }),
            changed: Condvar::new(),
            pending: Mutex::new(VecDeque::new()),
            layers,
            durable_seq: AtomicU64::new(seq),
            #[cfg(test)]
            pause: options.sync_pause,
            #[cfg(test)]
            settle_pause: options.settle_pause,
            #[cfg(test)]
            fail_next: Default::default(),
            reopen,
        }
    }

    pub(super) fn run(&self) {
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
                    // The writer may be waiting for a sync (holding the log's lock,
                    // which opening the log again takes): it hears of the failure now.
                    self.changed.notify_all();
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
    pub(super) fn finish(&self, durable: u64) {
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
    pub(super) fn request(&self, file: &Arc<dyn StoreFile>, seq: u64) {
        lock(&self.state).target = Some((file.clone(), seq));
        self.changed.notify_all();
    }

    /// Waits until every batch up to `upto` is durable and visible.
    pub(super) fn wait(&self, upto: u64) -> Result<(), StoreError> {
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

    pub(super) fn failed(&self) -> Option<StoreError> {
        lock(&self.state).failed.clone()
    }
}
