//! The store's read caches: committed rows ([`Store::get_cached`]) and values domains
//! derive from them ([`Store::get_derived`]), sharing one byte budget, each entry dropped
//! when a commit writes its key. A read that raced such a commit re-checks the store's
//! generation and drops what it cached, so a cache never serves a replaced value.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use aicore_proto::Status;
use bytes::Bytes;

use super::{Inner, Key, Store, decode};

/// What a domain derived from a committed value ([`Store::get_derived`]), and the bytes
/// it holds (it may keep other rows alive, e.g. a reply holding an object's data).
#[derive(Clone)]
pub(super) struct Derived {
    value: Arc<dyn std::any::Any + Send + Sync>,
    weight: usize,
}

pub(super) type Cache<V> = moka::sync::Cache<Key, V, foldhash::quality::RandomState>;

/// Caches `v`, read from the backend after the generation was `before`. The check closes
/// the race where a read of the old value finishes after a commit's invalidation: such an
/// entry is removed again.
fn insert_checked<V: Clone + Send + Sync + 'static>(
    inner: &Inner,
    cache: &Cache<V>,
    k: Key,
    v: V,
    before: u64,
) {
    cache.insert(k.clone(), v);
    if inner.generation.load(Ordering::SeqCst) != before {
        cache.invalidate(&k);
    }
}

fn weight(key: &Key, bytes: usize) -> u32 {
    (key.1.len() + bytes + 48).min(u32::MAX as usize) as u32
}

/// The row cache and the derived-value cache, sharing `cache_bytes`.
pub(super) fn caches(cache_bytes: u64) -> (Cache<Option<Bytes>>, Cache<Derived>) {
    // Rows get three quarters of the budget, derived values the rest.
    let derived_bytes = cache_bytes / 4;
    let cache = moka::sync::Cache::builder()
        .weigher(|k: &Key, v: &Option<Bytes>| weight(k, v.as_ref().map_or(0, Bytes::len)))
        .max_capacity(cache_bytes - derived_bytes)
        .build_with_hasher(foldhash::quality::RandomState::default());
    let derived = moka::sync::Cache::builder()
        .weigher(|k: &Key, v: &Derived| weight(k, v.weight))
        .max_capacity(derived_bytes)
        .build_with_hasher(foldhash::quality::RandomState::default());
    (cache, derived)
}

impl Store {
    /// Reads a committed value through the cache (for hot keys; invalidated on write).
    pub fn get_cached(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, Status> {
        let k: Key = (table, key.to_vec());
        if let Some(v) = self.inner.cache.get(&k) {
            self.inner.count(&self.inner.cache_hits);
            return Ok(v);
        }
        self.inner.count(&self.inner.cache_misses);
        let before = self.inner.generation.load(Ordering::SeqCst);
        let v = self.inner.backend.get(table, key)?;
        insert_checked(&self.inner, &self.inner.cache, k, v.clone(), before);
        Ok(v)
    }

    /// A value `derive`d from the committed value of `key` (e.g. a decoded reply built
    /// from it and the rows it points to), cached under the key and dropped when `key` is
    /// written: one cache lookup for a hot read. `derive` must depend only on that value
    /// and on rows that cannot change while it stays the same; it returns the value and
    /// the bytes it holds (what it is weighed as in the cache), or `None` when it cannot
    /// tell (nothing is cached then). `None` too when the key does not exist.
    pub fn get_derived<T: Send + Sync + 'static>(
        &self,
        table: &'static str,
        key: &[u8],
        derive: impl FnOnce(&Bytes) -> Result<Option<(T, usize)>, Status>,
    ) -> Result<Option<Arc<T>>, Status> {
        let k: Key = (table, key.to_vec());
        if let Some(d) = self.inner.derived.get(&k) {
            self.inner.count(&self.inner.cache_hits);
            return Ok(d.value.downcast::<T>().ok());
        }
        self.inner.count(&self.inner.cache_misses);
        // From the backend, not the row cache (which may still hold a value a commit
        // just replaced), under the same generation check as `get_cached`.
        let before = self.inner.generation.load(Ordering::SeqCst);
        let Some(raw) = self.inner.backend.get(table, key)? else {
            return Ok(None);
        };
        let Some((value, weight)) = derive(&raw)? else {
            return Ok(None);
        };
        let value = Arc::new(value);
        let entry = Derived {
            value: value.clone(),
            weight,
        };
        insert_checked(&self.inner, &self.inner.derived, k, entry, before);
        Ok(Some(value))
    }

    /// The derived values cached now, after the cache's pending evictions.
    #[cfg(test)]
    pub(super) fn derived_cached(&self) -> u64 {
        self.inner.derived.run_pending_tasks();
        self.inner.derived.entry_count()
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
}
