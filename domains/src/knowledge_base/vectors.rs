//! Embeddings: a vector as stored ([`StoredVector`], little-endian f32), the vectors in
//! memory with the tags filters need (loaded at start), and the calls to ai-integration
//! that embed a document's content or a query with the configured model.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::ai_integration::v1 as ai;
use aicore_proto::aicore::knowledge_base::v1::Document;
use aicore_proto::{CallOptions, Status};
use aicore_runtime::store::{Store, decode};

use super::{DOCS, KnowledgeBase, VECTORS};

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

pub(super) fn pack(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn unpack(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Vectors in memory, with the tags filters need.
pub(super) type VectorMap = HashMap<String, (Arc<Vec<f32>>, Vec<String>)>;

/// The stored vectors with their documents' tags, as kept in memory.
pub(super) fn load_vectors(store: &Store) -> Result<VectorMap, Status> {
    let mut vectors = VectorMap::new();
    let mut from = Vec::new();
    loop {
        let rows = store.scan(VECTORS, b"", &from, 1024)?;
        let full = rows.len() == 1024;
        for (k, v) in rows {
            let id = String::from_utf8_lossy(&k).into_owned();
            let sv: StoredVector = decode(VECTORS, v)?;
            let tags = store
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
    Ok(vectors)
}

impl KnowledgeBase {
    pub(super) fn embedding(&self) -> bool {
        !self.config.embedding_model_id.is_empty()
    }

    /// Embeds `texts` with the configured model (None when none is configured).
    pub(super) async fn embed(
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
    pub(super) async fn vector_of(
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
}
