//! The memory layers every reader consults before redb: the active layer, the batches
//! the last sync made durable, and the layer a flush is writing into redb.

use super::*;

#[derive(Default)]
pub(super) struct Layers {
    pub(super) active: Layer,
    /// Batches made durable by the last sync, oldest first, newer than `active`: their
    /// callers are answered before they are merged into `active` (see [`Syncer::finish`]).
    pub(super) recent: Vec<Arc<Layer>>,
    pub(super) frozen: Option<Arc<Layer>>,
}

impl Layers {
    /// The newest layered write of a key: `Some(None)` if it was deleted.
    pub(super) fn get(&self, table: &str, key: &[u8]) -> Option<Option<Bytes>> {
        self.live_get(table, key)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.get(table, key)))
            .map(|v| v.cloned())
    }

    /// The newest write of a key in the layers not yet frozen.
    pub(super) fn live_get(&self, table: &str, key: &[u8]) -> Option<Option<&Bytes>> {
        self.live().rev().find_map(|l| l.get(table, key))
    }

    /// The layers not yet frozen, oldest first: the active one, then the recent batches.
    pub(super) fn live(&self) -> impl DoubleEndedIterator<Item = &Layer> {
        std::iter::once(&self.active).chain(self.recent.iter().map(|r| &**r))
    }

    /// The layers a scan merges over redb, oldest first.
    pub(super) fn sources(&self) -> impl Iterator<Item = &Layer> {
        self.frozen.as_deref().into_iter().chain(self.live())
    }

    /// Merges the recent batches into the active layer.
    pub(super) fn settle(&mut self) {
        for r in std::mem::take(&mut self.recent) {
            self.active
                .absorb(Arc::try_unwrap(r).unwrap_or_else(|w| (*w).clone()));
        }
    }
}
