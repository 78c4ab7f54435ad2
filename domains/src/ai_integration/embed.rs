//! An Embed: the same plan and fallback as a generation (the router's chain for the
//! EMBEDDING capability), a cache of identical inputs per model, and one record.

use std::sync::Arc;

use aicore_proto::aicore::ai_integration::v1::{EmbedResponse, Embedding, ServedBy, Usage};
use aicore_proto::aicore::ai_router::v1 as router;
use aicore_proto::{Metadata, Status};
use sha2::{Digest, Sha256};

use super::chat::Recorder;
use super::generate::{Cached, Inner, Job, Target, Tried, not_configured};
use super::offline;
use super::openai::Deadlines;
use super::provider::{Embeddings, Params, ProviderError, estimate_tokens};
/// An Embed: plan, cache, provider, record.
pub async fn embed(
    inner: Arc<Inner>,
    model_id: String,
    inputs: Vec<String>,
    player: String,
    meta: Metadata,
) -> Result<EmbedResponse, Status> {
    let arrived = tokio::time::Instant::now();
    let job = Job {
        rpc: "embed",
        model_id: model_id.clone(),
        messages: Vec::new(),
        params: Params::default(),
        player: player.clone(),
        no_cache: false,
        meta: meta.clone(),
    };
    let mut recorder = Recorder::new(inner.clone(), &job);
    recorder.outcome().prompt = inputs.join("\n");
    let result = embed_inner(&inner, &job, &inputs, arrived).await;
    match &result {
        Ok(r) => {
            let o = recorder.outcome();
            o.served_by = r.served_by.clone().unwrap_or_default();
            o.usage = r.usage;
            o.provider_called = !o.served_by.cached;
            recorder.finish("ok").await;
        }
        Err((status, served_by)) => {
            let o = recorder.outcome();
            o.served_by = served_by.clone();
            o.error = status.to_string();
            recorder.finish("error").await;
        }
    }
    result.map_err(|(s, _)| s)
}

async fn embed_inner(
    inner: &Arc<Inner>,
    job: &Job,
    inputs: &[String],
    arrived: tokio::time::Instant,
) -> Result<EmbedResponse, (Status, ServedBy)> {
    let fail = |s: Status| (s, ServedBy::default());
    inner.check_budget(&job.player).map_err(fail)?;
    let plan = inner
        .plan(
            &job.model_id,
            router::Capability::Embedding,
            &job.player,
            0,
            &job.meta,
        )
        .await
        .map_err(fail)?;
    let by = inner.deadlines(&job.meta, arrived);
    let text: String = inputs.join("\n");
    let text = &text;
    let pinned = !job.model_id.is_empty();
    let decision_id = plan.decision_id.as_str();
    inner
        .follow_plan(
            &plan,
            pinned,
            by.first,
            |target, mut served_by| async move {
                let key = cache_key(&target, inputs);
                if target.provider_id != offline::ID
                    && let Some(hit) = inner.cache.get(&key)
                    && let Cached::Vectors(v) = hit.as_ref()
                {
                    served_by.cached = true;
                    return Tried::Served(respond(v.clone(), Usage::default(), served_by));
                }
                let e = match call_provider(inner, &target, inputs, by).await {
                    Ok(e) => e,
                    Err(e) => return Tried::Failed(e, served_by),
                };
                let usage = embed_usage(e.prompt_tokens, text);
                inner.report(
                    decision_id,
                    &target.model_id,
                    Ok((arrived.elapsed(), usage)),
                );
                if target.provider_id != offline::ID && inner.config.cache_entries > 0 {
                    inner
                        .cache
                        .insert(key, Arc::new(Cached::Vectors(e.vectors.clone())));
                }
                Tried::Served(respond(e.vectors, usage, served_by))
            },
        )
        .await
}

/// The cache key of `inputs` embedded by `target` (its model, provider model and endpoint).
fn cache_key(target: &Target, inputs: &[String]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [&target.model_id, &target.provider_model, &target.endpoint] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for t in inputs {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    h.finalize().into()
}

/// The response carrying `vectors`.
fn respond(vectors: Vec<Vec<f32>>, usage: Usage, served_by: ServedBy) -> EmbedResponse {
    EmbedResponse {
        dimensions: vectors.first().map_or(0, Vec::len) as u32,
        embeddings: vectors
            .into_iter()
            .map(|values| Embedding { values })
            .collect(),
        usage: Some(usage),
        served_by: Some(served_by),
    }
}

/// The vectors of `inputs` from `target`'s provider (the offline one computes them here).
async fn call_provider(
    inner: &Inner,
    target: &Target,
    inputs: &[String],
    by: Deadlines,
) -> Result<Embeddings, ProviderError> {
    if target.provider_id == offline::ID {
        let dims = match target.embedding_dimensions {
            0 => inner.config.offline_embedding_dimensions,
            d => d,
        };
        Ok(offline::embed(inputs, dims as usize))
    } else {
        match inner.providers.get(&target.provider_id) {
            Some(p) => {
                p.embed(&target.provider_model, &target.endpoint, inputs, by)
                    .await
            }
            None => Err(not_configured(&target.provider_id)),
        }
    }
}

/// Usage of an Embed: the prompt tokens as reported, or estimated from `text`.
fn embed_usage(prompt_tokens: Option<u32>, text: &str) -> Usage {
    let (prompt_tokens, estimated) = match prompt_tokens {
        Some(p) => (p, false),
        None => (estimate_tokens(text), true),
    };
    Usage {
        prompt_tokens,
        completion_tokens: 0,
        total_tokens: prompt_tokens,
        estimated,
    }
}
