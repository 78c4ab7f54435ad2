//! What the writer and the flusher thread share: whether a flush is running or failing.

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
