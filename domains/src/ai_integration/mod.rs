//! ai-integration: runs AI requests — Complete, Chat (streaming tokens), Embed — against
//! providers, so every AI feature of a game goes through one place that bounds, counts
//! and records it. Providers are OpenAI-compatible HTTP servers configured by URL and key
//! (`[[domains.ai_integration.providers]]`: llama.cpp, Ollama, vLLM, LM Studio, hosted
//! APIs) and the built-in offline provider ([`offline`]), which needs nothing and answers
//! deterministically, labelled as offline.
//!
//! A request names a model (a model-management id) or lets ai-router choose one; the
//! router's answer carries a fallback chain, which is followed when a model fails before
//! its first token ([`generate`]). Outcomes go back to the router (latency, success), so
//! its circuits and statistics follow what callers see. Models are read from
//! model-management over NATS (cached for `model_cache_ms`); with neither the router nor
//! model-management served, a request without a model goes to the offline provider
//! (`offline_fallback`) rather than failing — still labelled.
//!
//! What is bounded and counted: timeouts per call (connect, first token, total, all within
//! the caller's deadline), concurrent calls per provider, retries (429/5xx, Retry-After
//! honoured) — all in [`openai`]; tokens per player and hour (`player_tokens_per_hour`),
//! counted per player and model and queryable with GetUsage ([`accounting`]); a cache of
//! identical deterministic requests (temperature 0 or a seed). Each request leaves one
//! `AiRecord` on the `AI` stream through the outbox.
//!
//! It does not choose models (ai-router), keep the model registry (model-management) or
//! know what the text is for (story-teller, npc-behavior).

pub mod accounting;
mod chat;
mod embed;
mod generate;
pub mod offline;
pub mod openai;
pub mod provider;
mod sse;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::ai_integration::v1::{
    AiIntegrationHandler, ChatRequest, ChatResponse, CompleteRequest, CompleteResponse,
    EmbedRequest, EmbedResponse, GenerationParams, GetUsageRequest, GetUsageResponse,
    ListProvidersRequest, ListProvidersResponse, Provider, ProviderKind, Role,
};
use aicore_proto::{Code, Metadata, Request, Status, Streaming};
use aicore_runtime::{Ctx, paging, validate};

use self::openai::{OpenAi, RetryPolicy, Secret};
use self::provider::{Message, Params};

/// One OpenAI-compatible provider (`[[domains.ai_integration.providers]]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// The id models name (`provider_id` in model-management), 1–64 characters of
    /// `[a-z0-9_.-]`; `offline` is the built-in provider's.
    pub id: String,
    /// Base URL including `/v1`: `http://127.0.0.1:8080/v1` (llama.cpp),
    /// `http://127.0.0.1:11434/v1` (Ollama), `http://127.0.0.1:8000/v1` (vLLM),
    /// `http://127.0.0.1:1234/v1` (LM Studio), `https://api.openai.com/v1`.
    pub base_url: String,
    /// Environment variable holding the API key (empty: none).
    pub api_key_env: String,
    /// File holding the API key, which must be mode 0600 or stricter (empty: none). Used
    /// when `api_key_env` is empty or unset.
    pub api_key_file: String,
    /// Calls to this provider at once; more wait (until their first-token bound).
    pub max_concurrent: usize,
    /// Ask for usage in the stream's last chunk (`stream_options.include_usage`). Turn off
    /// for a server that refuses the field; usage is then estimated.
    pub stream_usage: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            id: String::new(),
            base_url: String::new(),
            api_key_env: String::new(),
            api_key_file: String::new(),
            max_concurrent: 8,
            stream_usage: true,
        }
    }
}

/// Configuration of ai-integration (`[domains.ai_integration]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AiIntegrationConfig {
    /// Requests without a model go to the offline provider when neither ai-router nor
    /// model-management is served (instead of Unavailable). The reply says `offline`.
    pub offline_fallback: bool,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: u32,
    /// Largest prompt (Complete's prompt plus system, Chat's messages, Embed's inputs), in
    /// bytes; more is ResourceExhausted.
    pub max_prompt_bytes: usize,
    /// Most messages in one Chat.
    pub max_messages: usize,
    /// Bound on connecting to a provider, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Bound on the first token (or an embedding answer), retries and waiting for a slot
    /// included, in milliseconds.
    pub first_token_timeout_ms: u64,
    /// Bound on a whole answer, in milliseconds.
    pub total_timeout_ms: u64,
    /// Retries of a provider call answered 429 or 5xx, or refused at connect (before any
    /// token).
    pub max_retries: u32,
    /// First pause between retries, doubling per retry, in milliseconds (a provider's
    /// Retry-After wins).
    pub retry_base_ms: u64,
    /// Longest pause between retries, in milliseconds.
    pub retry_max_ms: u64,
    /// Answers kept in the cache of identical deterministic requests (0: no cache).
    pub cache_entries: u64,
    /// How long a cached answer is served, in seconds.
    pub cache_ttl_secs: u64,
    /// Tokens a player may use per hour, all models together (0: no limit); past it,
    /// ResourceExhausted until the next hour.
    pub player_tokens_per_hour: u64,
    /// Put prompts and answers into the `AI` stream's records (off: only counts, models,
    /// latency and outcome).
    pub record_prompts: bool,
    /// Vector length of the offline provider's embeddings when the model says none.
    pub offline_embedding_dimensions: u32,
    /// How long a model's spec read from model-management is reused, in milliseconds.
    pub model_cache_ms: u64,
    /// Most fallback models tried after the chosen one.
    pub max_fallbacks: usize,
    /// The OpenAI-compatible providers.
    pub providers: Vec<ProviderConfig>,
}

impl Default for AiIntegrationConfig {
    fn default() -> Self {
        AiIntegrationConfig {
            offline_fallback: true,
            default_max_tokens: 256,
            max_prompt_bytes: 256 * 1024,
            max_messages: 256,
            connect_timeout_ms: 3_000,
            first_token_timeout_ms: 30_000,
            total_timeout_ms: 120_000,
            max_retries: 2,
            retry_base_ms: 250,
            retry_max_ms: 4_000,
            cache_entries: 10_000,
            cache_ttl_secs: 600,
            player_tokens_per_hour: 0,
            record_prompts: false,
            offline_embedding_dimensions: 256,
            model_cache_ms: 2_000,
            max_fallbacks: 3,
            providers: Vec::new(),
        }
    }
}

/// Most tokens a request may ask for.
const MAX_TOKENS_LIMIT: u32 = 131_072;
/// Most texts in one Embed.
const MAX_EMBED_INPUTS: usize = 256;
/// Most stop sequences, and their longest.
const MAX_STOPS: usize = 4;
const MAX_STOP_CHARS: usize = 64;
/// Longest model id (model-management's rule).
const MAX_MODEL_ID: usize = 64;
const PROVIDERS_TOKEN: u8 = b'P';

/// The ai-integration domain.
pub struct AiIntegration {
    inner: Arc<generate::Inner>,
}

/// Reads a provider's API key from its environment variable or its 0600 file.
fn api_key(p: &ProviderConfig) -> Result<Option<Secret>, String> {
    if !p.api_key_env.is_empty()
        && let Ok(v) = std::env::var(&p.api_key_env)
        && !v.trim().is_empty()
    {
        return Ok(Some(Secret(v.trim().to_string())));
    }
    if p.api_key_file.is_empty() {
        return Ok(None);
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&p.api_key_file).map_err(|e| {
        format!(
            "providers[{}].api_key_file: cannot read {}: {e}",
            p.id, p.api_key_file
        )
    })?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "providers[{}].api_key_file: {} is readable by others (mode {:o}); make it 0600",
            p.id,
            p.api_key_file,
            meta.mode() & 0o777
        ));
    }
    let key = std::fs::read_to_string(&p.api_key_file)
        .map_err(|e| format!("providers[{}].api_key_file: {e}", p.id))?;
    let key = key.trim();
    Ok((!key.is_empty()).then(|| Secret(key.to_string())))
}

/// Builds the configured providers, refusing a bad entry with the field named.
fn providers(c: &AiIntegrationConfig) -> Result<BTreeMap<String, Arc<OpenAi>>, String> {
    let mut out = BTreeMap::new();
    for (i, p) in c.providers.iter().enumerate() {
        if validate::slug(&p.id, "id", 64).is_err() || p.id == offline::ID {
            return Err(format!(
                "providers[{i}].id: {:?} must be 1 to 64 characters of [a-z0-9_.-] and not `offline`",
                p.id
            ));
        }
        if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
            return Err(format!(
                "providers[{i}].base_url: {:?} must be an http:// or https:// URL",
                p.base_url
            ));
        }
        if out.contains_key(&p.id) {
            return Err(format!("providers[{i}].id: {:?} is configured twice", p.id));
        }
        let provider = OpenAi::new(openai::Options {
            id: p.id.clone(),
            base_url: p.base_url.clone(),
            key: api_key(p)?,
            max_concurrent: p.max_concurrent,
            connect_timeout: Duration::from_millis(c.connect_timeout_ms.max(1)),
            retry: RetryPolicy {
                max_retries: c.max_retries,
                base: Duration::from_millis(c.retry_base_ms.max(1)),
                max: Duration::from_millis(c.retry_max_ms.max(1)),
            },
            stream_usage: p.stream_usage,
        })?;
        out.insert(p.id.clone(), Arc::new(provider));
    }
    Ok(out)
}

/// The player a request is for: a player caller is always themselves (an empty field
/// means them; another id is PermissionDenied); services and admins name anyone, or
/// no one (service work).
fn player_of(meta: &Metadata, player_id: &str) -> Result<String, Status> {
    if !player_id.is_empty() {
        validate::player_id(player_id, "player_id")?;
    }
    match &meta.caller {
        Some(c) if !(c.has_role("service") || c.has_role("admin")) => {
            if player_id.is_empty() || player_id == c.account_id {
                Ok(c.account_id.clone())
            } else {
                Err(Status::with_field(
                    Code::PermissionDenied,
                    "player_id",
                    "a player may act only for themselves",
                ))
            }
        }
        _ => Ok(player_id.to_string()),
    }
}

fn check_model_id(id: &str) -> Result<(), Status> {
    let ok = id.is_empty()
        || (id.len() <= MAX_MODEL_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid(
            "model_id",
            format!("must be empty or 1 to {MAX_MODEL_ID} characters of [a-z0-9_.:-]"),
        ))
    }
}

/// Checks generation parameters, filling the defaults.
fn params(p: Option<GenerationParams>, default_max_tokens: u32) -> Result<Params, Status> {
    let p = p.unwrap_or_default();
    let max_tokens = match p.max_tokens {
        0 => default_max_tokens.max(1),
        n if n > MAX_TOKENS_LIMIT => {
            return Err(Status::invalid(
                "params.max_tokens",
                format!("must be at most {MAX_TOKENS_LIMIT}"),
            ));
        }
        n => n,
    };
    if let Some(t) = p.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(Status::invalid("params.temperature", "must be 0 to 2"));
    }
    if let Some(t) = p.top_p
        && !(0.0..=1.0).contains(&t)
    {
        return Err(Status::invalid("params.top_p", "must be 0 to 1"));
    }
    if p.stop.len() > MAX_STOPS
        || p.stop
            .iter()
            .any(|s| s.is_empty() || s.chars().count() > MAX_STOP_CHARS)
    {
        return Err(Status::invalid(
            "params.stop",
            format!("at most {MAX_STOPS} sequences of 1 to {MAX_STOP_CHARS} characters"),
        ));
    }
    Ok(Params {
        max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        stop: p.stop,
        seed: p.seed,
    })
}

fn role(r: i32, field: &str) -> Result<Role, Status> {
    match Role::try_from(r) {
        Ok(Role::Unspecified) | Err(_) => Err(Status::invalid(
            field,
            "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT",
        )),
        Ok(r) => Ok(r),
    }
}

impl AiIntegration {
    /// The domain on a context; fails naming the field of a bad provider entry.
    pub fn new(ctx: Ctx, config: AiIntegrationConfig) -> Result<Self, Status> {
        let providers = providers(&config).map_err(|e| {
            Status::new(
                Code::InvalidArgument,
                format!("[domains.ai_integration] {e}"),
            )
        })?;
        Ok(AiIntegration {
            inner: Arc::new(generate::Inner::new(ctx, config, providers)),
        })
    }

    fn config(&self) -> &AiIntegrationConfig {
        &self.inner.config
    }
}

impl AiIntegrationHandler for AiIntegration {
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<CompleteResponse, Status> {
        let Request { body: req, meta } = request;
        let c = self.config();
        if req.prompt.is_empty() {
            return Err(Status::invalid("prompt", "must not be empty"));
        }
        validate::max_bytes(
            req.prompt.len() + req.system.len(),
            c.max_prompt_bytes,
            "prompt",
            "prompt",
        )?;
        check_model_id(&req.model_id)?;
        let params = params(req.params, c.default_max_tokens)?;
        let player = player_of(&meta, &req.player_id)?;
        let mut messages = Vec::new();
        if !req.system.is_empty() {
            messages.push(Message {
                role: Role::System,
                content: req.system,
            });
        }
        messages.push(Message {
            role: Role::User,
            content: req.prompt,
        });
        let job = generate::Job {
            rpc: "complete",
            model_id: req.model_id,
            messages,
            params,
            player,
            no_cache: req.no_cache,
            meta,
        };
        chat::complete(self.inner.clone(), job).await
    }

    async fn chat(&self, request: Request<ChatRequest>) -> Result<Streaming<ChatResponse>, Status> {
        let Request { body: req, meta } = request;
        let c = self.config();
        if req.messages.is_empty() || req.messages.len() > c.max_messages {
            return Err(Status::invalid(
                "messages",
                format!("must hold 1 to {} messages", c.max_messages),
            ));
        }
        let mut messages = Vec::with_capacity(req.messages.len());
        let mut bytes = 0usize;
        for (i, m) in req.messages.into_iter().enumerate() {
            let r = role(m.role, &format!("messages[{i}].role"))?;
            bytes += m.content.len();
            messages.push(Message {
                role: r,
                content: m.content,
            });
        }
        validate::max_bytes(bytes, c.max_prompt_bytes, "messages", "prompt")?;
        check_model_id(&req.model_id)?;
        let params = params(req.params, c.default_max_tokens)?;
        let player = player_of(&meta, &req.player_id)?;
        let job = generate::Job {
            rpc: "chat",
            model_id: req.model_id,
            messages,
            params,
            player,
            no_cache: req.no_cache,
            meta,
        };
        Ok(chat::chat(self.inner.clone(), job))
    }

    async fn embed(&self, request: Request<EmbedRequest>) -> Result<EmbedResponse, Status> {
        let Request { body: req, meta } = request;
        let c = self.config();
        if req.inputs.is_empty() || req.inputs.len() > MAX_EMBED_INPUTS {
            return Err(Status::invalid(
                "inputs",
                format!("must hold 1 to {MAX_EMBED_INPUTS} texts"),
            ));
        }
        if let Some(i) = req.inputs.iter().position(String::is_empty) {
            return Err(Status::invalid(
                &format!("inputs[{i}]"),
                "must not be empty",
            ));
        }
        let bytes = req.inputs.iter().map(String::len).sum();
        validate::max_bytes(bytes, c.max_prompt_bytes, "inputs", "prompt")?;
        check_model_id(&req.model_id)?;
        let player = player_of(&meta, &req.player_id)?;
        embed::embed(self.inner.clone(), req.model_id, req.inputs, player, meta).await
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<GetUsageResponse, Status> {
        let Request { body: req, meta } = request;
        let player = player_of(&meta, &req.player_id)?;
        check_model_id(&req.model_id)?;
        let hours = match req.window {
            None => 24,
            Some(w) => {
                let secs = u64::try_from(w.seconds).unwrap_or(0);
                if secs == 0 || secs > 90 * 24 * 3600 {
                    return Err(Status::invalid("window", "must be 1 hour to 90 days"));
                }
                secs.div_ceil(3600)
            }
        };
        let models = accounting::usage(
            &self.inner.ctx.store,
            &player,
            &req.model_id,
            hours,
            self.inner.ctx.clock.now(),
        )?;
        Ok(GetUsageResponse {
            models,
            window: prost_types::Duration::try_from(Duration::from_secs(hours * 3600)).ok(),
        })
    }

    async fn list_providers(
        &self,
        request: Request<ListProvidersRequest>,
    ) -> Result<ListProvidersResponse, Status> {
        let req = request.body;
        let limit = paging::page_size(req.page_size, 50, 200)?;
        let start = if req.page_token.is_empty() {
            0
        } else {
            let raw = paging::decode_token(PROVIDERS_TOKEN, &req.page_token)?;
            u32::from_be_bytes(raw.try_into().map_err(|_| paging::bad_token())?) as usize
        };
        // The offline provider first, then the configured ones by id.
        let all: Vec<Option<Arc<OpenAi>>> = std::iter::once(None)
            .chain(self.inner.providers.values().cloned().map(Some))
            .collect();
        let page: Vec<Option<Arc<OpenAi>>> = all.iter().skip(start).take(limit).cloned().collect();
        let checks = page.into_iter().map(|p| async move {
            match p {
                None => Provider {
                    provider_id: offline::ID.into(),
                    kind: ProviderKind::Offline as i32,
                    healthy: true,
                    last_latency: Some(prost_types::Duration::default()),
                    ..Default::default()
                },
                Some(p) => {
                    let t0 = tokio::time::Instant::now();
                    let outcome = p.health(t0 + Duration::from_secs(2)).await;
                    Provider {
                        provider_id: p.id().to_string(),
                        kind: ProviderKind::OpenaiCompatible as i32,
                        base_url: p.base_url().to_string(),
                        has_api_key: p.has_key(),
                        healthy: outcome.is_ok(),
                        last_latency: prost_types::Duration::try_from(t0.elapsed()).ok(),
                        last_error: outcome.err().map(|e| e.to_string()).unwrap_or_default(),
                    }
                }
            }
        });
        let providers = futures::future::join_all(checks).await;
        let next = start + providers.len();
        let next_page_token = if next < all.len() {
            paging::encode_token(PROVIDERS_TOKEN, &(next as u32).to_be_bytes())
        } else {
            String::new()
        };
        Ok(ListProvidersResponse {
            providers,
            next_page_token,
        })
    }
}

impl aicore_runtime::Domain for AiIntegration {
    type Config = AiIntegrationConfig;

    fn build(
        ctx: &Ctx,
        config: &AiIntegrationConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(Arc::new(
            aicore_proto::aicore::ai_integration::v1::AiIntegrationServer(Arc::new(
                AiIntegration::new(ctx.clone(), config.clone())?,
            )),
        ))
    }
}

#[cfg(test)]
mod tests;
