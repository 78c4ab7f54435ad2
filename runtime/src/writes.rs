//! Buffered writes, grouped by table and ordered by key: what one write closure wrote,
//! what a group-commit batch wrote, what the store's memory layers hold. Reads look a
//! key up without allocating and without comparing table names at every step of the
//! search (a profile of the durable Put path showed a fifth of the store writer's time
//! in comparing `(table, key)` tuples and copying keys for lookups).
//!
//! [`merged_scan`] merges such sets over a base range (redb's, or the in-memory
//! backend's) lazily, stopping after `limit` live rows.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

use bytes::Bytes;

use crate::store::StoreError;

/// One table's writes: key → value, `None` for a deleted key.
type TableWrites = BTreeMap<Vec<u8>, Option<Bytes>>;

/// A scanned row.
pub(crate) type Row = (Vec<u8>, Bytes);

/// A set's rows of one table in key order: key and value (`None`: deleted).
pub(crate) type LayerRows<'a> = Box<dyn Iterator<Item = (&'a [u8], Option<&'a Bytes>)> + 'a>;

/// Writes per table; a later write of a key replaces an earlier one.
#[derive(Default, Debug, Clone)]
pub(crate) struct WriteSet {
    tables: foldhash::HashMap<&'static str, TableWrites>,
    len: usize,
}

impl WriteSet {
    /// Number of keys written.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The write of `key`, if this set has one: `Some(None)` is a deletion.
    pub(crate) fn get(&self, table: &str, key: &[u8]) -> Option<Option<&Bytes>> {
        self.tables.get(table)?.get(key).map(Option::as_ref)
    }

    /// Records a put (`Some`) or a deletion (`None`).
    pub(crate) fn insert(&mut self, table: &'static str, key: Vec<u8>, value: Option<Bytes>) {
        if self
            .tables
            .entry(table)
            .or_default()
            .insert(key, value)
            .is_none()
        {
            self.len += 1;
        }
    }

    /// This set's rows of `table` from `start` (inclusive) on, in key order.
    pub(crate) fn range<'a>(&'a self, table: &str, start: &[u8]) -> LayerRows<'a> {
        match self.tables.get(table) {
            Some(t) => Box::new(
                t.range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
                    .map(|(k, v)| (k.as_slice(), v.as_ref())),
            ),
            None => Box::new(std::iter::empty()),
        }
    }

    /// Takes in `newer`'s writes, which win over this set's.
    pub(crate) fn absorb(&mut self, newer: WriteSet) {
        if self.is_empty() {
            *self = newer;
            return;
        }
        for (table, rows) in newer.tables {
            let mine = self.tables.entry(table).or_default();
            if mine.is_empty() {
                self.len += rows.len();
                *mine = rows;
                continue;
            }
            for (k, v) in rows {
                if mine.insert(k, v).is_none() {
                    self.len += 1;
                }
            }
        }
    }

    /// Every write, table by table, each table's in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &[u8], Option<&Bytes>)> {
        self.tables.iter().flat_map(|(table, rows)| {
            rows.iter()
                .map(move |(k, v)| (*table, k.as_slice(), v.as_ref()))
        })
    }
}

/// The first `limit` live rows with `prefix` of `base` (a range in key order starting at
/// or after the scan's start) merged under `layers` (oldest first; a later layer's row,
/// value or deletion, wins over earlier ones and over the base's). Layers' ranges must
/// start where the base's does.
pub(crate) fn merged_scan<'a>(
    mut base: impl Iterator<Item = Result<Row, StoreError>>,
    layers: Vec<LayerRows<'a>>,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    let mut base_next = base.next().transpose()?;
    let mut layers: Vec<Peekable<LayerRows<'a>>> =
        layers.into_iter().map(Iterator::peekable).collect();
    while out.len() < limit {
        // The smallest key any source has next.
        let mut min: Option<&[u8]> = base_next.as_ref().map(|(k, _)| k.as_slice());
        for l in layers.iter_mut() {
            if let Some((k, _)) = l.peek()
                && min.is_none_or(|m| *k < m)
            {
                min = Some(k);
            }
        }
        let Some(key) = min else { break };
        if !key.starts_with(prefix) {
            break;
        }
        let key = key.to_vec();
        // Its value: the newest layer that has it, else the base's.
        let mut value: Option<Option<Bytes>> = None;
        if base_next.as_ref().is_some_and(|(k, _)| *k == key) {
            value = base_next.take().map(|(_, v)| Some(v));
            base_next = base.next().transpose()?;
        }
        for l in layers.iter_mut() {
            if l.peek().is_some_and(|(k, _)| *k == key.as_slice()) {
                value = l.next().map(|(_, v)| v.cloned());
            }
        }
        if let Some(Some(v)) = value {
            out.push((key, v));
        }
    }
    Ok(out)
}

/// Where a scan with `prefix` from `from` starts.
pub(crate) fn scan_start<'k>(from: &'k [u8], prefix: &'k [u8]) -> &'k [u8] {
    if from > prefix { from } else { prefix }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn later_writes_win_and_len_counts_keys() {
        let mut w = WriteSet::default();
        w.insert("t", b"a".to_vec(), Some(b("1")));
        w.insert("t", b"a".to_vec(), Some(b("2")));
        w.insert("u", b"a".to_vec(), None);
        assert_eq!(w.len(), 2);
        assert_eq!(w.get("t", b"a"), Some(Some(&b("2"))));
        assert_eq!(w.get("u", b"a"), Some(None));
        assert_eq!(w.get("t", b"b"), None);
        let mut newer = WriteSet::default();
        newer.insert("t", b"a".to_vec(), None);
        newer.insert("t", b"c".to_vec(), Some(b("3")));
        newer.insert("v", b"x".to_vec(), Some(b("4")));
        w.absorb(newer);
        assert_eq!(w.len(), 4);
        assert_eq!(w.get("t", b"a"), Some(None));
        let all: Vec<_> = w.iter().map(|(t, k, _)| (t, k.to_vec())).collect();
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn merged_scan_applies_layers_in_order_and_skips_deletions() {
        let base = vec![
            (b"p1".to_vec(), b("base1")),
            (b"p2".to_vec(), b("base2")),
            (b"p4".to_vec(), b("base4")),
            (b"q1".to_vec(), b("other")),
        ];
        let mut older = WriteSet::default();
        older.insert("t", b"p2".to_vec(), None);
        older.insert("t", b"p3".to_vec(), Some(b("old3")));
        let mut newer = WriteSet::default();
        newer.insert("t", b"p2".to_vec(), Some(b("new2")));
        newer.insert("t", b"p4".to_vec(), None);
        let rows = merged_scan(
            base.clone().into_iter().map(Ok),
            vec![older.range("t", b"p"), newer.range("t", b"p")],
            b"p",
            10,
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                (b"p1".to_vec(), b("base1")),
                (b"p2".to_vec(), b("new2")),
                (b"p3".to_vec(), b("old3")),
            ]
        );
        let two = merged_scan(
            base.into_iter().map(Ok),
            vec![older.range("t", b"p"), newer.range("t", b"p")],
            b"p",
            2,
        )
        .unwrap();
        assert_eq!(two.len(), 2);
    }
}
