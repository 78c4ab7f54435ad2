//! knowledge-base: game lore and facts as documents (title, body, tags, metadata) with
//! ranked search. The store is the source of truth; the full-text index ([`index`],
//! tantivy: BM25, English stemming, phrases, prefixes, tag filters, highlighted
//! snippets) is derived from it and rebuilt when missing or stale. When an embedding
//! model is configured (`embedding_model_id`, e.g. `offline` or a registered model),
//! each document is embedded through ai-integration over NATS when written, and Search
//! can rank by cosine similarity (VECTOR) or fuse both rankings by reciprocal rank
//! fusion (HYBRID); each hit says which rankings found it and where.
//!
//! Tables:
//! - `knowledge_base.documents`: id → [`Document`] (body and metadata included).
//! - `knowledge_base.by_updated`: `u64::MAX − updated ms` (big-endian) + id → nothing,
//!   so List reads most recently updated first.
//! - `knowledge_base.vectors`: id → [`StoredVector`], the embedding of the document's
//!   current version (loaded into memory at start: vector search is exact, over all).
//! - `knowledge_base.meta`: `revision`, bumped by every write; the index's commit
//!   payload names the revision it reflects.
//! - `knowledge_base.idempotency`: AddDocument replies by idempotency key.
//!
//! Embedding happens before the write and outside it; a failed embedding leaves the
//! document stored without a vector (`embedded = false`), found by text only.
//!
//! This file holds the tables, the domain type and its handlers; beside it are `config`
//! (the configuration), `check` (input checks), `records` (the revision, the keys and
//! the write of a document), `vectors` (embeddings, stored and in memory), `search`
//! (Search) and [`index`] (the full-text index).

mod check;
mod config;
pub mod index;
mod records;
mod search;
mod vectors;

pub use config::KnowledgeBaseConfig;
pub use vectors::StoredVector;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aicore_proto::aicore::knowledge_base::v1::{
    AddDocumentRequest, AddDocumentResponse, Document, GetRequest, GetResponse,
    KnowledgeBaseHandler, ListRequest, ListResponse, RemoveRequest, RemoveResponse, SearchRequest,
    SearchResponse, UpdateRequest, UpdateResponse,
};
use aicore_proto::{Code, Request, Status};
use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::{Ctx, new_id, paging};

use self::check::{check_content, check_id, check_tags};
use self::index::{Op, TextIndex};
use self::records::{bump, by_updated_key, index_source, revision};
use self::vectors::{VectorMap, load_vectors};

const DOCS: &str = "knowledge_base.documents";
const BY_UPDATED: &str = "knowledge_base.by_updated";
const VECTORS: &str = "knowledge_base.vectors";
const META: &str = "knowledge_base.meta";
const REVISION: &[u8] = b"revision";
const IDEMPOTENCY: Idempotency = Idempotency::new("knowledge_base.idempotency");
const LIST_TOKEN: u8 = b'K';
const SEARCH_TOKEN: u8 = b'S';
/// The most of a write's remaining time kept for its reply's way back to the caller.
const REPLY_MARGIN: std::time::Duration = std::time::Duration::from_millis(250);

/// The knowledge-base domain.
pub struct KnowledgeBase {
    ctx: Ctx,
    config: KnowledgeBaseConfig,
    index: Arc<TextIndex>,
    vectors: Arc<RwLock<VectorMap>>,
}

impl KnowledgeBase {
    /// The domain on a context: opens (or rebuilds) the index and loads the vectors.
    pub fn new(ctx: Ctx, config: KnowledgeBaseConfig) -> Result<Self, Status> {
        let source = index_source(ctx.store.clone());
        let dir = ctx
            .data_dir
            .as_ref()
            .map(|d| d.join("knowledge_base").join("index"));
        let index = TextIndex::open(dir.as_deref(), revision(&ctx.store)?, source)?;
        let vectors = load_vectors(&ctx.store)?;
        Ok(KnowledgeBase {
            ctx,
            config,
            index: Arc::new(index),
            vectors: Arc::new(RwLock::new(vectors)),
        })
    }

    /// Waits until searches see the write, but answers in time: past the caller's deadline
    /// less a margin for the reply's way back, the write stands and is answered, and the
    /// index catches up on its own.
    async fn after_write(&self, rev: u64, meta: &aicore_proto::Metadata) {
        if rev > 0 {
            let answer_by = meta.deadline.map(|d| {
                let left = d.saturating_duration_since(std::time::Instant::now());
                d - (left / 10).min(REPLY_MARGIN)
            });
            self.index.wait_applied(rev, answer_by).await;
        }
    }

    /// Bytes the full-text index takes on disk (benchmarks).
    pub fn index_bytes(&self) -> u64 {
        self.index.size_bytes()
    }
}

impl KnowledgeBaseHandler for KnowledgeBase {
    async fn add_document(
        &self,
        request: Request<AddDocumentRequest>,
    ) -> Result<AddDocumentResponse, Status> {
        let Request { body: req, meta } = request;
        if req.idempotency_key.is_empty() {
            return Err(Status::invalid("idempotency_key", "is required"));
        }
        let keyed = IDEMPOTENCY.prepare(&self.ctx, "add", "", &req)?;
        if !req.document_id.is_empty() {
            check_id(&req.document_id, "document_id")?;
        }
        let tags = check_content(
            &req.title,
            &req.body,
            &req.tags,
            req.metadata.as_ref(),
            self.config.max_body_bytes,
        )?;
        let vector = self
            .vector_of(&req.title, &req.body, meta.remaining())
            .await;
        let now = self.ctx.now_ts();
        let id = if req.document_id.is_empty() {
            new_id("doc")
        } else {
            req.document_id.clone()
        };
        let doc = Document {
            document_id: id,
            title: req.title,
            body: req.body,
            tags,
            metadata: req.metadata,
            embedded: vector.is_some(),
            version: 1,
            created_at: Some(now),
            updated_at: Some(now),
        };
        let rev = Arc::new(AtomicU64::new(0));
        let (index, vectors, rev_out) = (self.index.clone(), self.vectors.clone(), rev.clone());
        let reply = keyed
            .write(move |tx| {
                if tx.get(DOCS, doc.document_id.as_bytes())?.is_some() {
                    return Err(Status::with_field(
                        Code::Conflict,
                        "document_id",
                        format!("document {} exists", doc.document_id),
                    ));
                }
                let r = KnowledgeBase::put(tx, &index, &vectors, None, &doc, vector)?;
                rev_out.store(r, Ordering::SeqCst);
                Ok(AddDocumentResponse {
                    document: Some(doc),
                })
            })
            .await?;
        self.after_write(rev.load(Ordering::SeqCst), &meta).await;
        Ok(reply)
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<UpdateResponse, Status> {
        let Request { body: req, meta } = request;
        check_id(&req.document_id, "document_id")?;
        let tags = check_content(
            &req.title,
            &req.body,
            &req.tags,
            req.metadata.as_ref(),
            self.config.max_body_bytes,
        )?;
        let vector = self
            .vector_of(&req.title, &req.body, meta.remaining())
            .await;
        let now = self.ctx.now_ts();
        let (index, vectors) = (self.index.clone(), self.vectors.clone());
        let (doc, rev) = self
            .ctx
            .store
            .write(move |tx| {
                let old: Document =
                    tx.get_msg(DOCS, req.document_id.as_bytes())?
                        .ok_or_else(|| {
                            Status::with_field(
                                Code::NotFound,
                                "document_id",
                                format!("no document {}", req.document_id),
                            )
                        })?;
                aicore_runtime::validate::expected_version(
                    req.expected_version,
                    old.version,
                    "document",
                )?;
                let doc = Document {
                    document_id: old.document_id.clone(),
                    title: req.title,
                    body: req.body,
                    tags,
                    metadata: req.metadata,
                    embedded: vector.is_some(),
                    version: old.version + 1,
                    created_at: old.created_at,
                    updated_at: Some(now),
                };
                let rev = KnowledgeBase::put(tx, &index, &vectors, Some(&old), &doc, vector)?;
                Ok((doc, rev))
            })
            .await?;
        self.after_write(rev, &meta).await;
        Ok(UpdateResponse {
            document: Some(doc),
        })
    }

    async fn remove(&self, request: Request<RemoveRequest>) -> Result<RemoveResponse, Status> {
        let Request { body: req, meta } = request;
        check_id(&req.document_id, "document_id")?;
        let (index, vectors) = (self.index.clone(), self.vectors.clone());
        let rev = self
            .ctx
            .store
            .write(move |tx| {
                let Some(old) = tx.get_msg::<Document>(DOCS, req.document_id.as_bytes())? else {
                    return Ok(0);
                };
                aicore_runtime::validate::expected_version(
                    req.expected_version,
                    old.version,
                    "document",
                )?;
                let rev = bump(tx)?;
                tx.delete(DOCS, req.document_id.as_bytes());
                tx.delete(BY_UPDATED, &by_updated_key(&old));
                tx.delete(VECTORS, req.document_id.as_bytes());
                vectors
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&req.document_id);
                index.send(Op::Delete(req.document_id.clone()), rev);
                Ok(rev)
            })
            .await?;
        self.after_write(rev, &meta).await;
        Ok(RemoveResponse { removed: rev > 0 })
    }

    async fn search(&self, request: Request<SearchRequest>) -> Result<SearchResponse, Status> {
        self.search_documents(request).await
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<GetResponse, Status> {
        let id = request.body.document_id;
        check_id(&id, "document_id")?;
        let doc = self
            .ctx
            .store
            .get_msg_cached::<Document>(DOCS, id.as_bytes())?
            .ok_or_else(|| {
                Status::with_field(Code::NotFound, "document_id", format!("no document {id}"))
            })?;
        Ok(GetResponse {
            document: Some(doc),
        })
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<ListResponse, Status> {
        let req = request.body;
        check_tags(&req.all_tags, "all_tags")?;
        let limit = paging::page_size(
            req.page_size,
            self.config.default_list_page_size,
            self.config.max_list_page_size,
        )?;
        let mut page = paging::Page::start(
            paging::Listing {
                store: &self.ctx.store,
                table: BY_UPDATED,
                prefix: b"",
                kind: LIST_TOKEN,
                limit,
                max_scan: limit.saturating_mul(20).max(1000),
            },
            &req.page_token,
        )?;
        while let Some((k, _)) = page.next_row()? {
            let Some(id) = k.get(8..) else { continue };
            let Some(mut d) = self.ctx.store.get_msg::<Document>(DOCS, id)? else {
                continue;
            };
            if !req.all_tags.iter().all(|t| d.tags.contains(t)) {
                continue;
            }
            d.body.clear();
            page.keep(d);
        }
        let (documents, next_page_token) = page.finish();
        Ok(ListResponse {
            documents,
            next_page_token,
        })
    }
}

impl aicore_runtime::Domain for KnowledgeBase {
    type Config = KnowledgeBaseConfig;

    fn build(
        ctx: &Ctx,
        config: &KnowledgeBaseConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(Arc::new(
            aicore_proto::aicore::knowledge_base::v1::KnowledgeBaseServer(Arc::new(
                KnowledgeBase::new(ctx.clone(), config.clone())?,
            )),
        ))
    }
}

#[cfg(test)]
mod tests;
