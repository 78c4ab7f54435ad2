//! Search: the text ranking from the index, the vector ranking by exact cosine over the
//! vectors in memory (filtered by the same tags), their reciprocal rank fusion in HYBRID
//! mode, pages by offset, and hits read from the store with highlighted snippets.

use std::collections::HashMap;
use std::time::Duration;

use aicore_proto::aicore::knowledge_base::v1::{
    Document, RankSignal, SearchHit, SearchMode, SearchRequest, SearchResponse,
};
use aicore_proto::{Code, Request, Status};
use aicore_runtime::paging;
use tantivy::snippet::SnippetGenerator;

use super::check::{MAX_QUERY, check_tags};
use super::index;
use super::{DOCS, KnowledgeBase, SEARCH_TOKEN};

impl KnowledgeBase {
    /// Search (the handler).
    pub(super) async fn search_documents(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<SearchResponse, Status> {
        let Request { body: req, meta } = request;
        let n = req.query.chars().count();
        if n == 0 || n > MAX_QUERY || req.query.chars().any(char::is_control) {
            return Err(Status::invalid(
                "query",
                format!("1 to {MAX_QUERY} characters without control characters"),
            ));
        }
        check_tags(&req.all_tags, "all_tags")?;
        check_tags(&req.any_tags, "any_tags")?;
        let mode = self.search_mode(req.mode)?;
        let size = paging::page_size(
            req.page_size,
            self.config.default_page_size,
            self.config.max_page_size,
        )?;
        let offset = self.offset(&req.page_token, size)?;
        self.index.wait_ready(meta.deadline).await?;
        let want = offset + size + 1;
        let depth = match mode {
            SearchMode::Hybrid => want.max(self.config.fusion_candidates),
            _ => want,
        };
        let query = match mode {
            SearchMode::Vector => None,
            _ => Some(self.index.query(&req.query, &req.all_tags, &req.any_tags)?),
        };
        let text = match &query {
            Some(q) => self.index.search(q.as_ref(), depth)?,
            None => Vec::new(),
        };
        let vector = if mode == SearchMode::FullText {
            Vec::new()
        } else {
            self.vector_ranking(&req, depth, meta.remaining()).await?
        };
        let ranked = fuse(mode, &text, &vector, self.config.rrf_k);
        let more = ranked.len() > offset + size;
        let page: Vec<Ranked> = ranked.into_iter().skip(offset).take(size).collect();
        let snippets = match &query {
            Some(q) => Some(self.index.snippets(q.as_ref())?),
            None => None,
        };
        Ok(SearchResponse {
            hits: self.hits(page, snippets.as_ref())?,
            next_page_token: if more {
                paging::encode_token(SEARCH_TOKEN, &((offset + size) as u32).to_be_bytes())
            } else {
                String::new()
            },
            mode: mode as i32,
        })
    }

    /// The mode Search runs in: FULL_TEXT when none is asked; HYBRID falls back to
    /// FULL_TEXT without an embedding model, and VECTOR without one is
    /// FailedPrecondition.
    fn search_mode(&self, mode: Option<i32>) -> Result<SearchMode, Status> {
        let mode = match mode {
            None => SearchMode::FullText,
            Some(m) => match SearchMode::try_from(m) {
                Ok(SearchMode::Unspecified) | Err(_) => {
                    return Err(Status::invalid(
                        "mode",
                        "SEARCH_MODE_FULL_TEXT, SEARCH_MODE_VECTOR or SEARCH_MODE_HYBRID",
                    ));
                }
                Ok(m) => m,
            },
        };
        let mode = match mode {
            SearchMode::Vector if !self.embedding() => {
                return Err(Status::with_field(
                    Code::FailedPrecondition,
                    "mode",
                    "no embedding model is configured ([domains.knowledge_base] embedding_model_id)",
                ));
            }
            SearchMode::Hybrid if !self.embedding() => SearchMode::FullText,
            m => m,
        };
        Ok(mode)
    }

    /// Where the page of `page_token` starts (0 without one), refused past the deepest
    /// result Search pages to.
    fn offset(&self, page_token: &str, size: usize) -> Result<usize, Status> {
        let offset = if page_token.is_empty() {
            0
        } else {
            let raw = paging::decode_token(SEARCH_TOKEN, page_token)?;
            u32::from_be_bytes(raw.try_into().map_err(|_| paging::bad_token())?) as usize
        };
        if offset + size > self.config.max_results {
            return Err(Status::invalid(
                "page_token",
                format!("results go at most {} deep", self.config.max_results),
            ));
        }
        Ok(offset)
    }

    /// The vector ranking: the `depth` documents (with the request's tags) whose vectors
    /// are nearest the query's embedding by cosine.
    async fn vector_ranking(
        &self,
        req: &SearchRequest,
        depth: usize,
        deadline: Option<Duration>,
    ) -> Result<Vec<(String, f32)>, Status> {
        let q = self
            .embed(vec![req.query.clone()], deadline)
            .await?
            .pop()
            .ok_or_else(|| Status::internal("the embedding model returned no vector"))?;
        let map = self.vectors.read().unwrap_or_else(|p| p.into_inner());
        let mut scored: Vec<(String, f32)> = map
            .iter()
            .filter(|(_, (_, tags))| {
                req.all_tags.iter().all(|t| tags.contains(t))
                    && (req.any_tags.is_empty() || req.any_tags.iter().any(|t| tags.contains(t)))
            })
            .map(|(id, (v, _))| (id.clone(), cosine(&q, v)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        scored.truncate(depth);
        Ok(scored)
    }

    /// The hits of a page, each document read from the store with its snippet.
    fn hits(
        &self,
        page: Vec<Ranked>,
        snippets: Option<&SnippetGenerator>,
    ) -> Result<Vec<SearchHit>, Status> {
        let mut hits = Vec::with_capacity(page.len());
        for r in page {
            // A document removed since the index answered is left out.
            let Some(d) = self.ctx.store.get_msg::<Document>(DOCS, r.id.as_bytes())? else {
                continue;
            };
            let snippet = snippets
                .map(|g| g.snippet(&d.body))
                .filter(|s| !s.is_empty())
                .map(|s| s.to_html())
                .unwrap_or_else(|| {
                    escape_html(
                        &d.body
                            .chars()
                            .take(index::SNIPPET_CHARS)
                            .collect::<String>(),
                    )
                });
            hits.push(SearchHit {
                document_id: d.document_id,
                title: d.title,
                tags: d.tags,
                score: r.score,
                snippet,
                signals: r.signals,
            });
        }
        Ok(hits)
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// One ranked result before it becomes a hit.
struct Ranked {
    id: String,
    score: f64,
    signals: Vec<RankSignal>,
}

/// The ranking Search returns: one list as it is, or both fused by reciprocal rank.
fn fuse(mode: SearchMode, text: &[(String, f32)], vector: &[(String, f32)], k: u32) -> Vec<Ranked> {
    let signal = |name: &str, rank: usize, score: f32| RankSignal {
        name: name.into(),
        rank: rank as u32 + 1,
        score: f64::from(score),
    };
    match mode {
        SearchMode::FullText | SearchMode::Unspecified => text
            .iter()
            .enumerate()
            .map(|(i, (id, s))| Ranked {
                id: id.clone(),
                score: f64::from(*s),
                signals: vec![signal("text", i, *s)],
            })
            .collect(),
        SearchMode::Vector => vector
            .iter()
            .enumerate()
            .map(|(i, (id, s))| Ranked {
                id: id.clone(),
                score: f64::from(*s),
                signals: vec![signal("vector", i, *s)],
            })
            .collect(),
        SearchMode::Hybrid => {
            let mut by_id: HashMap<String, Ranked> = HashMap::new();
            for (name, list) in [("text", text), ("vector", vector)] {
                for (i, (id, s)) in list.iter().enumerate() {
                    let r = by_id.entry(id.clone()).or_insert_with(|| Ranked {
                        id: id.clone(),
                        score: 0.0,
                        signals: Vec::new(),
                    });
                    r.score += 1.0 / (f64::from(k) + i as f64 + 1.0);
                    r.signals.push(signal(name, i, *s));
                }
            }
            let mut out: Vec<Ranked> = by_id.into_values().collect();
            out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
            out
        }
    }
}
