//! The store's in-memory backend, for unit tests: the same semantics as the durable one
//! (batches, views, scans merged over buffered writes), nothing durable.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::RwLock;

use bytes::Bytes;

use super::{Backend, StoreError, View};
use crate::durable::Done;
use crate::writes::{Row, WriteSet, merged_scan, scan_start};

type Tables = HashMap<&'static str, BTreeMap<Vec<u8>, Bytes>>;

#[derive(Default)]
pub(super) struct Memory {
    tables: RwLock<Tables>,
}

impl Memory {
    fn tables(&self) -> Result<std::sync::RwLockReadGuard<'_, Tables>, StoreError> {
        Ok(self.tables.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn scan_over(
        &self,
        table: &'static str,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        over: &[&WriteSet],
    ) -> Result<Vec<Row>, StoreError> {
        let tables = self.tables()?;
        let base = tables
            .get(table)
            .into_iter()
            .flat_map(|t| t.range::<[u8], _>((Bound::Included(start), Bound::Unbounded)))
            .map(|(k, v)| Ok((k.clone(), v.clone())));
        let layers = over.iter().map(|w| w.range(table, start)).collect();
        merged_scan(base, layers, prefix, limit)
    }
}

impl Backend for Memory {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self.tables()?.get(table).and_then(|t| t.get(key)).cloned())
    }
    fn scan(
        &self,
        table: &'static str,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        self.scan_over(table, scan_start(from, prefix), prefix, limit, &[])
    }
    fn view(&self) -> Result<Box<dyn View + '_>, StoreError> {
        Ok(Box::new(self))
    }
    fn submit(&self, writes: WriteSet, done: Done) {
        done(self.apply(writes))
    }
}

impl Memory {
    fn apply(&self, writes: WriteSet) -> Result<(), StoreError> {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        for (table, key, value) in writes.iter() {
            let t = tables.entry(table).or_default();
            match value {
                Some(v) => {
                    t.insert(key.to_vec(), v.clone());
                }
                None => {
                    t.remove(key);
                }
            }
        }
        Ok(())
    }
}

/// Only the writer thread commits, so reading the maps as they are is a consistent view.
impl View for &Memory {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Backend::get(*self, table, key)
    }
    fn scan(
        &self,
        table: &'static str,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        over: &[&WriteSet],
    ) -> Result<Vec<Row>, StoreError> {
        self.scan_over(table, start, prefix, limit, over)
    }
}
