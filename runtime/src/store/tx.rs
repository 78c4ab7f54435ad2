//! The write transaction a domain's closure gets ([`Tx`]): reads through its own writes
//! and its batch's earlier ones to the committed data, writes buffered until the closure
//! returns `Ok`; and [`decode`], reading a stored protobuf value. Running closures in
//! batches is [`super::writer`]'s.

use aicore_proto::Status;
use bytes::Bytes;

use super::View;
use crate::writes::{Row, WriteSet, scan_start};

/// A write transaction as a domain sees it: reads see committed data plus this batch's
/// earlier writes plus this closure's own writes; writes are buffered until the closure
/// returns `Ok`.
pub struct Tx<'a> {
    pub(super) view: &'a dyn View,
    /// What the batch's earlier closures wrote.
    pub(super) batch: &'a WriteSet,
    pub(super) writes: WriteSet,
    /// The span of the request whose write this is; the events it queues carry it.
    pub(crate) trace: Option<crate::trace::TraceParent>,
}

impl Tx<'_> {
    /// Reads a value.
    pub fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Bytes>, Status> {
        if let Some(v) = self
            .writes
            .get(table, key)
            .or_else(|| self.batch.get(table, key))
        {
            return Ok(v.cloned());
        }
        Ok(self.view.get(table, key)?)
    }

    /// Reads and decodes a protobuf value.
    pub fn get_msg<M: prost::Message + Default>(
        &self,
        table: &'static str,
        key: &[u8],
    ) -> Result<Option<M>, Status> {
        self.get(table, key)?.map(|b| decode(table, b)).transpose()
    }

    /// Keys starting with `prefix`, from `from` (inclusive) on, in key order, at most `limit`.
    pub fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Row>, Status> {
        Ok(self.view.scan(
            table,
            scan_start(from, prefix),
            prefix,
            limit,
            &[self.batch, &self.writes],
        )?)
    }

    /// Writes a value (visible to later reads of this closure, durable at commit).
    pub fn put(&mut self, table: &'static str, key: &[u8], value: impl Into<Bytes>) {
        self.writes.insert(table, key.to_vec(), Some(value.into()));
    }

    /// Encodes and writes a protobuf value.
    pub fn put_msg<M: prost::Message>(&mut self, table: &'static str, key: &[u8], m: &M) {
        self.put(table, key, m.encode_to_vec());
    }

    /// Deletes a key.
    pub fn delete(&mut self, table: &'static str, key: &[u8]) {
        self.writes.insert(table, key.to_vec(), None);
    }
}

/// Decodes a stored protobuf value; a failure is data corruption, answered as Internal.
pub fn decode<M: prost::Message + Default>(table: &str, b: Bytes) -> Result<M, Status> {
    M::decode(b).map_err(|e| {
        tracing::error!(table, error = %e, "undecodable stored value");
        Status::internal("stored data is unreadable")
    })
}
