//! What the writer and the flusher thread share: whether a flush is running or failing;
//! and the flusher thread itself.

use super::*;

/// The flusher's state, shared with the writer.
#[derive(Default)]
pub(super) struct FlushState {
    /// A frozen layer is being committed.
    pub(super) running: bool,
    pub(super) failed: Option<StoreError>,
}

pub(super) struct Flusher {
    pub(super) state: Mutex<FlushState>,
    pub(super) done: Condvar,
    /// The store is being dropped: a flush being retried gives up.
    pub(super) stop: std::sync::atomic::AtomicBool,
}

pub(super) struct FlushJob {
    pub(super) layer: Arc<Layer>,
    pub(super) seq: u64,
}

/// What the flusher thread owns.
pub(super) struct FlushThread {
    pub(super) db: Arc<db::DbSlot>,
    pub(super) layers: Arc<RwLock<Layers>>,
    pub(super) flusher: Arc<Flusher>,
    pub(super) committing: Arc<Mutex<()>>,
    pub(super) flushes: Arc<AtomicU64>,
    /// The database file, for paced write-back.
    pub(super) file: Arc<dyn StoreFile>,
    /// How long a failed flush waits before it is tried again.
    pub(super) retry: Duration,
    /// Tests: a pause before each flush, and one inside its commit.
    #[cfg(test)]
    pub(super) pause: Duration,
    #[cfg(test)]
    pub(super) stage_pause: Duration,
}

impl FlushThread {
    /// The flusher thread: commits each frozen layer sent (`rx`) into redb, then drops
    /// it; ends when the writer's sender is gone, or when the store is dropped while a
    /// failed flush waits to be tried again.
    pub(super) fn run(self, rx: std::sync::mpsc::Receiver<FlushJob>) {
        let FlushThread {
            db,
            layers,
            flusher,
            committing,
            flushes,
            file,
            retry,
            #[cfg(test)]
            pause,
            #[cfg(test)]
            stage_pause,
        } = self;
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
            flushes.fetch_add(1, Ordering::Relaxed);
            let mut st = lock(&flusher.state);
            if st.failed.take().is_some() {
                tracing::info!("store: a flush succeeded again; writes resume");
            }
            st.running = false;
            flusher.done.notify_all();
        }
    }
}
