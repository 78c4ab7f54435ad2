//! Documents as stored: the revision every write bumps (the index's commit names the one
//! it reflects), the key of `knowledge_base.by_updated`, a document as the index sees it,
//! the index's source (the documents table, a batch at a time) and the write of one
//! document with its vector.

use std::sync::{Arc, RwLock};

use aicore_proto::Status;
use aicore_proto::aicore::knowledge_base::v1::Document;
use aicore_runtime::store::{Store, Tx, decode};

use super::index::{self, Entry, Op, TextIndex};
use super::vectors::{StoredVector, VectorMap, pack};
use super::{BY_UPDATED, DOCS, KnowledgeBase, META, REVISION, VECTORS};

pub(super) fn revision(store: &Store) -> Result<u64, Status> {
    Ok(store
        .get(META, REVISION)?
        .and_then(|b| b.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

pub(super) fn bump(tx: &mut Tx<'_>) -> Result<u64, Status> {
    let r = tx
        .get(META, REVISION)?
        .and_then(|b| b.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
        + 1;
    tx.put(META, REVISION, r.to_be_bytes().to_vec());
    Ok(r)
}

fn millis(ts: Option<&prost_types::Timestamp>) -> u64 {
    ts.map_or(0, |t| {
        (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000
    })
}

pub(super) fn by_updated_key(doc: &Document) -> Vec<u8> {
    let mut k = (u64::MAX - millis(doc.updated_at.as_ref()))
        .to_be_bytes()
        .to_vec();
    k.extend_from_slice(doc.document_id.as_bytes());
    k
}

fn entry(d: &Document) -> Entry {
    Entry {
        id: d.document_id.clone(),
        title: d.title.clone(),
        body: d.body.clone(),
        tags: d.tags.clone(),
    }
}

/// The index's source: the documents after an id (from the first when none), a batch
/// at a time, with the id to continue after (none at the end).
pub(super) fn index_source(store: Store) -> index::Source {
    Box::new(move |after: Option<String>| {
        let from = after.map(|a| {
            let mut k = a.into_bytes();
            k.push(0);
            k
        });
        let rows = store.scan(DOCS, b"", from.as_deref().unwrap_or_default(), 1024)?;
        let next = (rows.len() == 1024)
            .then(|| {
                rows.last()
                    .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            })
            .flatten();
        let entries = rows
            .into_iter()
            .map(|(_, v)| decode::<Document>(DOCS, v).map(|d| entry(&d)))
            .collect::<Result<Vec<_>, Status>>()?;
        Ok((entries, next))
    })
}

impl KnowledgeBase {
    /// Writes `doc` (new or replacing `old`) with its vector, in one transaction that
    /// also queues the index change; returns the revision.
    pub(super) fn put(
        tx: &mut Tx<'_>,
        index: &TextIndex,
        vectors: &RwLock<VectorMap>,
        old: Option<&Document>,
        doc: &Document,
        vector: Option<Vec<f32>>,
    ) -> Result<u64, Status> {
        let rev = bump(tx)?;
        if let Some(o) = old {
            tx.delete(BY_UPDATED, &by_updated_key(o));
        }
        tx.put_msg(DOCS, doc.document_id.as_bytes(), doc);
        tx.put(BY_UPDATED, &by_updated_key(doc), Vec::new());
        let mut map = vectors.write().unwrap_or_else(|p| p.into_inner());
        match vector {
            Some(v) => {
                tx.put_msg(
                    VECTORS,
                    doc.document_id.as_bytes(),
                    &StoredVector {
                        values: pack(&v),
                        version: doc.version,
                    },
                );
                map.insert(doc.document_id.clone(), (Arc::new(v), doc.tags.clone()));
            }
            None => {
                tx.delete(VECTORS, doc.document_id.as_bytes());
                map.remove(&doc.document_id);
            }
        }
        index.send(Op::Upsert(entry(doc)), rev);
        Ok(rev)
    }
}
