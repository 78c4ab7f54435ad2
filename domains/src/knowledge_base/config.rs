//! knowledge-base's configuration (`[domains.knowledge_base]`): the embedding model, the
//! largest body, and the bounds of Search (pages, depth, fusion) and of List.

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
