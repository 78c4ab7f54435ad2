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

pub mod index;
mod search;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aicore_proto::aicore::ai_integration::v1 as ai;
use aicore_proto::aicore::knowledge_base::v1::{
    AddDocumentRequest, AddDocumentResponse, Document, GetRequest, GetResponse,
    KnowledgeBaseHandler, ListRequest, ListResponse, RemoveRequest, RemoveResponse, SearchRequest,
    SearchResponse, UpdateRequest, UpdateResponse,
};
use aicore_proto::{CallOptions, Code, Request, Status};
use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::store::{Store, Tx, decode};
use aicore_runtime::{Ctx, new_id, paging};

use self::index::{Entry, Op, TextIndex};

const DOCS: &str = "knowledge_base.documents";
const BY_UPDATED: &str = "knowledge_base.by_updated";
const VECTORS: &str = "knowledge_base.vectors";
const META: &str = "knowledge_base.meta";
const REVISION: &[u8] = b"revision";
const IDEMPOTENCY: Idempotency = Idempotency::new("knowledge_base.idempotency");
const LIST_TOKEN: u8 = b'K';
const SEARCH_TOKEN: u8 = b'S';
/// Longest title, query and tag, in characters; most tags.
/// The most of a write's remaining time kept for its reply's way back to the caller.
const REPLY_MARGIN: std::time::Duration = std::time::Duration::from_millis(250);
const MAX_TITLE: usize = 512;
const MAX_QUERY: usize = 1024;
const MAX_TAG: usize = 64;
const MAX_TAGS: usize = 32;
const MAX_ID: usize = 128;
/// Largest metadata, encoded.
const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Configuration of knowledge-base (`[domains.knowledge_base]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnowledgeBaseConfig {
    /// The ai-integration model that embeds documents and queries (`offline` for the
    /// built-in one); empty: no vectors, text search only.
    pub embedding_model_id: String,
    /// Largest body, in bytes; more is ResourceExhausted.
    pub max_body_bytes: usize,
    /// Characters of title and body that are embedded.
    pub embed_chars: usize,
    /// Page size of Search when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of Search.
    pub max_page_size: u32,
    /// Deepest result Search pages to.
    pub max_results: usize,
    /// Hits each ranking contributes to a HYBRID fusion.
    pub fusion_candidates: usize,
    /// The `k` of reciprocal rank fusion (score = Σ 1/(k + rank)).
    pub rrf_k: u32,
    /// Page size of List when the request asks for none.
    pub default_list_page_size: u32,
    /// Largest page of List.
    pub max_list_page_size: u32,
}

impl Default for KnowledgeBaseConfig {
    fn default() -> Self {
        KnowledgeBaseConfig {
            embedding_model_id: String::new(),
            max_body_bytes: 1 << 20,
            embed_chars: 8_000,
            default_page_size: 10,
            max_page_size: 100,
            max_results: 1_000,
            fusion_candidates: 100,
            rrf_k: 60,
            default_list_page_size: 50,
            max_list_page_size: 500,
        }
    }
}

/// An embedding as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredVector {
    /// The values, little-endian f32.
    #[prost(bytes = "vec", tag = "1")]
    pub values: Vec<u8>,
    /// The document version it embeds.
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

fn pack(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn unpack(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Vectors in memory, with the tags filters need.
type VectorMap = HashMap<String, (Arc<Vec<f32>>, Vec<String>)>;

/// The knowledge-base domain.
pub struct KnowledgeBase {
    ctx: Ctx,
    config: KnowledgeBaseConfig,
    index: Arc<TextIndex>,
    vectors: Arc<RwLock<VectorMap>>,
}

fn revision(store: &Store) -> Result<u64, Status> {
    Ok(store
        .get(META, REVISION)?
        .and_then(|b| b.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

fn bump(tx: &mut Tx<'_>) -> Result<u64, Status> {
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

fn by_updated_key(doc: &Document) -> Vec<u8> {
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

fn check_id(id: &str, field: &str) -> Result<(), Status> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid(
            field,
            format!("must be 1 to {MAX_ID} characters of [A-Za-z0-9_.:-]"),
        ))
    }
}

fn check_tags(tags: &[String], field: &str) -> Result<(), Status> {
    if tags.len() > MAX_TAGS {
        return Err(Status::invalid(field, format!("at most {MAX_TAGS} tags")));
    }
    for (i, t) in tags.iter().enumerate() {
        let ok = !t.is_empty()
            && t.chars().count() <= MAX_TAG
            && !t
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c.is_uppercase());
        if !ok {
            return Err(Status::invalid(
                &format!("{field}[{i}]"),
                format!("1 to {MAX_TAG} lowercase characters without spaces"),
            ));
        }
    }
    Ok(())
}

/// Checks a document's content; returns its tags sorted and deduplicated.
fn check_content(
    title: &str,
    body: &str,
    tags: &[String],
    metadata: Option<&prost_types::Struct>,
    max_body: usize,
) -> Result<Vec<String>, Status> {
    if title.is_empty() || title.chars().count() > MAX_TITLE || title.chars().any(char::is_control)
    {
        return Err(Status::invalid(
            "title",
            format!("1 to {MAX_TITLE} characters without control characters"),
        ));
    }
    aicore_runtime::validate::max_bytes(body.len(), max_body, "body", "per-document")?;
    check_tags(tags, "tags")?;
    if let Some(m) = metadata {
        aicore_runtime::validate::max_bytes(
            prost::Message::encoded_len(m),
            MAX_METADATA_BYTES,
            "metadata",
            "metadata",
        )?;
    }
    let mut t = tags.to_vec();
    t.sort();
    t.dedup();
    Ok(t)
}

impl KnowledgeBase {
    /// The domain on a context: opens (or rebuilds) the index and loads the vectors.
    pub fn new(ctx: Ctx, config: KnowledgeBaseConfig) -> Result<Self, Status> {
        let store = ctx.store.clone();
        let source: index::Source = Box::new(move |after: Option<String>| {
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
        });
        let dir = ctx
            .data_dir
            .as_ref()
            .map(|d| d.join("knowledge_base").join("index"));
        let index = TextIndex::open(dir.as_deref(), revision(&ctx.store)?, source)?;
        let mut vectors = VectorMap::new();
        let mut from = Vec::new();
        loop {
            let rows = ctx.store.scan(VECTORS, b"", &from, 1024)?;
            let full = rows.len() == 1024;
            for (k, v) in rows {
                let id = String::from_utf8_lossy(&k).into_owned();
                let sv: StoredVector = decode(VECTORS, v)?;
                let tags = ctx
                    .store
                    .get_msg::<Document>(DOCS, &k)?
                    .map(|d| d.tags)
                    .unwrap_or_default();
                vectors.insert(id, (Arc::new(unpack(&sv.values)), tags));
                from = k;
                from.push(0);
            }
            if !full {
                break;
            }
        }
        Ok(KnowledgeBase {
            ctx,
            config,
            index: Arc::new(index),
            vectors: Arc::new(RwLock::new(vectors)),
        })
    }

    fn embedding(&self) -> bool {
        !self.config.embedding_model_id.is_empty()
    }

    /// Embeds `texts` with the configured model (None when none is configured).
    async fn embed(
        &self,
        texts: Vec<String>,
        deadline: Option<Duration>,
    ) -> Result<Vec<Vec<f32>>, Status> {
        let client = ai::AiIntegrationClient::new(self.ctx.client()?.clone());
        let r = client
            .embed(
                ai::EmbedRequest {
                    inputs: texts,
                    model_id: self.config.embedding_model_id.clone(),
                    player_id: String::new(),
                },
                &CallOptions::timeout(
                    deadline
                        .unwrap_or(Duration::from_secs(10))
                        .min(Duration::from_secs(30)),
                ),
            )
            .await?;
        Ok(r.embeddings.into_iter().map(|e| e.values).collect())
    }

    /// The vector of a document's content, or `None` (no model, or it failed: logged).
    async fn vector_of(
        &self,
        title: &str,
        body: &str,
        deadline: Option<Duration>,
    ) -> Option<Vec<f32>> {
        if !self.embedding() {
            return None;
        }
        let text: String = format!("{title}\n{body}")
            .chars()
            .take(self.config.embed_chars)
            .collect();
        // Half the write's time at most: the rest is the store's and the index's, so a
        // slow model costs the document its vector (it is still found by text), not the
        // write its reply.
        match self.embed(vec![text], deadline.map(|d| d / 2)).await {
            Ok(mut v) if v.len() == 1 => v.pop(),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "document not embedded; it is found by text only");
                None
            }
        }
    }

    /// Writes `doc` (new or replacing `old`) with its vector, in one transaction that
    /// also queues the index change; returns the revision.
    fn put(
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
