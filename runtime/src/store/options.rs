//! The store's tunables ([`StoreOptions`]): batching and backpressure of the writer, the
//! caches' budgets, the write-ahead log and its checkpoints, and the pauses unit tests use
//! to hold the durable backend between its steps.

use std::time::Duration;

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most write closures committed together.
    pub max_batch: usize,
    /// Queued writes before writers wait (backpressure).
    pub queue: usize,
    /// Bytes the caches may hold: three quarters for rows, a quarter for derived values
    /// (each weighed by what it holds).
    pub cache_bytes: u64,
    /// redb's page cache in bytes.
    pub redb_cache_bytes: usize,
    /// Make batches durable through the write-ahead log (`<file>.wal0`/`.wal1`) and
    /// write them to redb in bulk from memory layers; `false`: one durable redb commit
    /// per batch.
    pub wal: bool,
    /// Flush the memory layer to redb (and switch log segments) once a segment holds
    /// this many bytes.
    pub wal_bytes: u64,
    /// How often the writer looks for idleness: a tick with no batch since the previous
    /// one flushes what the memory layer holds; under load that never idles, a flush
    /// starts at least every 30 ticks.
    pub checkpoint_tick: Duration,
    /// Whether the cache's hit and miss counters and the commit histograms are kept
    /// ([`crate::metrics`]; the appliance passes its one switch).
    pub metrics: crate::metrics::Switch,
    /// Tests: how long the flusher waits before each flush (keeps frozen layers around).
    #[cfg(test)]
    pub flush_pause: Duration,
    /// Tests: how long the log's syncer waits before each sync (keeps batches pending).
    #[cfg(test)]
    pub sync_pause: Duration,
    /// Tests: how long the syncer waits after answering a sync's callers before merging
    /// their batches into the active layer (keeps them in the recent list).
    #[cfg(test)]
    pub settle_pause: Duration,
    /// Tests: how long the flusher waits between its non-durable commit (and write-back)
    /// and the durable commit that completes a flush.
    #[cfg(test)]
    pub stage_pause: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 1024,
            queue: 8192,
            cache_bytes: 64 << 20,
            redb_cache_bytes: 256 << 20,
            wal: true,
            wal_bytes: 64 << 20,
            checkpoint_tick: Duration::from_secs(1),
            metrics: Default::default(),
            #[cfg(test)]
            flush_pause: Duration::ZERO,
            #[cfg(test)]
            sync_pause: Duration::ZERO,
            #[cfg(test)]
            settle_pause: Duration::ZERO,
            #[cfg(test)]
            stage_pause: Duration::ZERO,
        }
    }
}
