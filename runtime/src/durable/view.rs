//! Reads of redb, and the view a batch's closures read through (see [`LayeredView`]).

use super::*;

/// A redb read of one key.
pub(super) fn redb_get(
    txn: &redb::ReadTransaction,
    table: &str,
    key: &[u8],
) -> Result<Option<Bytes>, StoreError> {
    match open_read_table(txn, table)? {
        Some(t) => table_get(&t, key),
        None => Ok(None),
    }
}

pub(super) fn table_get(t: &ReadTable, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
    Ok(t.get(key)
        .map_err(db_err)?
        .map(|v| Bytes::copy_from_slice(v.value())))
}

/// The rows of redb's table from `start` on, as a scan's base.
pub(super) fn redb_rows<'t>(
    table: Option<&'t ReadTable>,
    start: &[u8],
) -> Result<Box<dyn Iterator<Item = Result<Row, StoreError>> + 't>, StoreError> {
    Ok(match table {
        Some(t) => Box::new(t.range::<&[u8]>(start..).map_err(db_err)?.map(|item| {
            let (k, v) = item.map_err(db_err)?;
            Ok((k.value().to_vec(), Bytes::copy_from_slice(v.value())))
        })),
        None => Box::new(std::iter::empty()),
    })
}

pub(super) fn open_read_table(
    txn: &redb::ReadTransaction,
    table: &str,
) -> Result<Option<ReadTable>, StoreError> {
    match txn.open_table(def(table)) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// A batch's view: the batches written but not yet durable as of the batch's start
/// (newest first), the live layers (the syncer may move a pending batch into them
/// meanwhile: the same writes, found either way), then the frozen layer and redb as of
/// the batch's start (taken together, a consistent base even if the flusher finishes
/// meanwhile; only the writer thread freezes a layer, and not while a view is held).
/// redb tables are opened once per batch.
pub(super) struct LayeredView<'a> {
    /// Held while its transaction is (see [`db::DbSlot::reopen`]).
    pub(super) _db: Arc<redb::Database>,
    pub(super) layers: &'a RwLock<Layers>,
    pub(super) frozen: Option<Arc<Layer>>,
    /// Oldest first.
    pub(super) pending: Vec<Arc<Layer>>,
    pub(super) txn: redb::ReadTransaction,
    pub(super) tables: RefCell<foldhash::HashMap<&'static str, Option<Rc<ReadTable>>>>,
}

impl LayeredView<'_> {
    pub(super) fn table(&self, table: &'static str) -> Result<Option<Rc<ReadTable>>, StoreError> {
        if let Some(t) = self.tables.borrow().get(table) {
            return Ok(t.clone());
        }
        let t = open_read_table(&self.txn, table)?.map(Rc::new);
        self.tables.borrow_mut().insert(table, t.clone());
        Ok(t)
    }
}

impl View for LayeredView<'_> {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        if let Some(v) = self.pending.iter().rev().find_map(|p| p.get(table, key)) {
            return Ok(v.cloned());
        }
        // The live layers (a batch pending when the view was made may be in them by now,
        // the same writes); the frozen one as of the view, which matches its redb.
        if let Some(v) = read(self.layers).live_get(table, key) {
            return Ok(v.cloned());
        }
        if let Some(v) = self.frozen.as_ref().and_then(|f| f.get(table, key)) {
            return Ok(v.cloned());
        }
        match self.table(table)? {
            Some(t) => table_get(&t, key),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        table: &'static str,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        over: &[&WriteSet],
    ) -> Result<Vec<Row>, StoreError> {
        let layers = read(self.layers);
        let base = self.table(table)?;
        let sources = self
            .frozen
            .as_deref()
            .into_iter()
            .chain(layers.live())
            .chain(self.pending.iter().map(|p| &**p))
            .chain(over.iter().copied())
            .map(|l| l.range(table, start))
            .collect();
        merged_scan(redb_rows(base.as_deref(), start)?, sources, prefix, limit)
    }
}
