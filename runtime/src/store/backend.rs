//! What the store asks of a backend ([`Backend`]) and of the view a batch's closures read
//! from ([`View`]): the seam between the writer and its two backends, the durable one
//! ([`crate::durable`]) and the in-memory one for unit tests ([`super::memory`]).

use bytes::Bytes;

use super::StoreError;
use crate::durable::Done;
use crate::writes::{Row, WriteSet};

/// A consistent view of the committed data for the closures of one batch. Only the
/// writer thread commits, so what a view reads stays the committed state until the
/// batch's own commit.
pub(crate) trait View {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError>;
    /// The first `limit` live rows of `table` with `prefix` from `start` on, with `over`
    /// (oldest first: the batch's earlier writes, the closure's own) applied on top.
    fn scan(
        &self,
        table: &'static str,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        over: &[&WriteSet],
    ) -> Result<Vec<Row>, StoreError>;
}

pub(crate) trait Backend: Send + Sync + 'static {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError>;
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StoreError>;
    /// The view a batch's closures read from: the committed data and every batch
    /// submitted before.
    fn view(&self) -> Result<Box<dyn View + '_>, StoreError>;
    /// Takes a batch's writes; `done` is called once they are durable and visible to
    /// readers (before this returns, or later on another thread), or with the error
    /// that leaves their outcome unknown. Batches become durable in the order submitted.
    fn submit(&self, writes: WriteSet, done: Done);
    /// Calls `done` once every batch submitted so far is durable and visible (at once if
    /// they are): for closures that wrote nothing but may have read those batches.
    fn after_submitted(&self, done: Done) {
        done(Ok(()))
    }
    /// Waits until every batch submitted so far is durable and visible.
    fn drain(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Writes what the memory layers hold to the database itself (nothing to do for
    /// backends without them). `idle_only`: only if no batch ran since the last call,
    /// and without waiting; otherwise waits until it is durable there (at close).
    fn checkpoint(&self, idle_only: bool) -> Result<(), StoreError> {
        let _ = idle_only;
        Ok(())
    }
    /// Whether memory layers are being written to the database right now.
    /// Why writes fail now, if they do (the store is read-only until then).
    fn write_error(&self) -> Option<StoreError> {
        None
    }
    fn flushing(&self) -> bool {
        false
    }
    /// Bytes written to the write-ahead log and flushes into the database completed
    /// (zero for backends without them).
    fn log_counters(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Runs `f` while no flush is writing to the database file (tests copy crash images).
    #[cfg(test)]
    fn between_flushes(&self, f: &mut dyn FnMut()) {
        f()
    }
    /// Tests: makes the next log sync fail.
    #[cfg(test)]
    fn fail_next_sync(&self) {}
}
